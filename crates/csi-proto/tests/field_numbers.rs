//! Every field number of the generated messages, checked on the wire against the CSI spec v1.13 and the
//! upstream provider proto. A wrong number here would break kubelet (or providers) silently.

use csi_proto::csi::{self, volume_capability as vc};
use csi_proto::provider as pb;
use prost::Message;

/// Top-level field numbers present in an encoded message, in order of appearance.
fn field_numbers(buf: &[u8]) -> Vec<u32> {
    fn varint(buf: &[u8], i: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = buf[*i];
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let (mut i, mut out) = (0, Vec::new());
    while i < buf.len() {
        let key = varint(buf, &mut i);
        match key & 7 {
            0 => {
                varint(buf, &mut i);
            }
            2 => {
                let len = varint(buf, &mut i) as usize;
                i += len;
            }
            1 => i += 8,
            5 => i += 4,
            t => panic!("unexpected wire type {t}"),
        }
        let n = (key >> 3) as u32;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out.sort();
    out
}

fn numbers<M: Message>(m: M) -> Vec<u32> {
    field_numbers(&m.encode_to_vec())
}

fn map() -> std::collections::HashMap<String, String> {
    [("k".to_string(), "v".to_string())].into()
}

fn capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume {
            fs_type: "t".into(),
            mount_flags: vec!["f".into()],
            volume_mount_group: "g".into(),
        })),
        access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

#[test]
fn identity_messages_match_the_spec() {
    assert_eq!(
        numbers(csi::GetPluginInfoResponse { name: "n".into(), vendor_version: "v".into(), manifest: map() }),
        [1, 2, 3]
    );
    let cap = csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::Service(csi::plugin_capability::Service { r#type: 1 })),
    };
    assert_eq!(numbers(cap), [1]);
    let exp = csi::PluginCapability {
        r#type: Some(csi::plugin_capability::Type::VolumeExpansion(csi::plugin_capability::VolumeExpansion {
            r#type: 1,
        })),
    };
    assert_eq!(numbers(exp), [2]);
    assert_eq!(numbers(csi::GetPluginCapabilitiesResponse { capabilities: vec![cap] }), [1]);
    assert_eq!(numbers(csi::ProbeResponse { ready: Some(true) }), [1]);
}

#[test]
fn node_messages_match_the_spec() {
    assert_eq!(
        numbers(csi::NodePublishVolumeRequest {
            volume_id: "v".into(),
            publish_context: map(),
            staging_target_path: "s".into(),
            target_path: "t".into(),
            volume_capability: Some(capability()),
            readonly: true,
            secrets: map(),
            volume_context: map(),
        }),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        numbers(csi::NodeStageVolumeRequest {
            volume_id: "v".into(),
            publish_context: map(),
            staging_target_path: "s".into(),
            volume_capability: Some(capability()),
            secrets: map(),
            volume_context: map(),
        }),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(numbers(csi::NodeUnpublishVolumeRequest { volume_id: "v".into(), target_path: "t".into() }), [1, 2]);
    assert_eq!(
        numbers(csi::NodeUnstageVolumeRequest { volume_id: "v".into(), staging_target_path: "s".into() }),
        [1, 2]
    );
    assert_eq!(
        numbers(csi::NodeGetVolumeStatsRequest {
            volume_id: "v".into(),
            volume_path: "p".into(),
            staging_target_path: "s".into()
        }),
        [1, 2, 3]
    );
    assert_eq!(
        numbers(csi::NodeGetVolumeStatsResponse {
            usage: vec![csi::VolumeUsage { available: 1, total: 2, used: 3, unit: 1 }],
            volume_condition: Some(csi::VolumeCondition { abnormal: true, message: "m".into() }),
        }),
        [1, 2]
    );
    assert_eq!(numbers(csi::VolumeUsage { available: 1, total: 2, used: 3, unit: 1 }), [1, 2, 3, 4]);
    assert_eq!(numbers(csi::VolumeCondition { abnormal: true, message: "m".into() }), [1, 2]);
    assert_eq!(
        numbers(csi::NodeExpandVolumeRequest {
            volume_id: "v".into(),
            volume_path: "p".into(),
            capacity_range: Some(csi::CapacityRange { required_bytes: 1, limit_bytes: 2 }),
            staging_target_path: "s".into(),
            volume_capability: Some(capability()),
            secrets: map(),
        }),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(numbers(csi::NodeExpandVolumeResponse { capacity_bytes: 1 }), [1]);
    assert_eq!(numbers(csi::CapacityRange { required_bytes: 1, limit_bytes: 2 }), [1, 2]);
    assert_eq!(
        numbers(csi::NodeGetInfoResponse {
            node_id: "n".into(),
            max_volumes_per_node: 1,
            accessible_topology: Some(csi::Topology { segments: map() }),
        }),
        [1, 2, 3]
    );
    assert_eq!(numbers(csi::Topology { segments: map() }), [1]);
    let rpc = csi::NodeServiceCapability {
        r#type: Some(csi::node_service_capability::Type::Rpc(csi::node_service_capability::Rpc { r#type: 1 })),
    };
    assert_eq!(numbers(rpc), [1]);
    assert_eq!(numbers(csi::node_service_capability::Rpc { r#type: 1 }), [1]);
    assert_eq!(numbers(csi::NodeGetCapabilitiesResponse { capabilities: vec![rpc] }), [1]);
}

#[test]
fn volume_capability_matches_the_spec() {
    assert_eq!(numbers(capability()), [2, 3]);
    let block =
        csi::VolumeCapability { access_type: Some(vc::AccessType::Block(vc::BlockVolume {})), access_mode: None };
    assert_eq!(numbers(block), [1]);
    assert_eq!(
        numbers(vc::MountVolume { fs_type: "t".into(), mount_flags: vec!["f".into()], volume_mount_group: "g".into() }),
        [1, 2, 3]
    );
    assert_eq!(numbers(vc::AccessMode { mode: 1 }), [1]);
}

#[test]
fn enum_values_match_the_spec() {
    use csi::node_service_capability::rpc::Type as Rpc;
    use csi::plugin_capability::service::Type as Svc;
    use vc::access_mode::Mode;
    assert_eq!(
        [
            Rpc::Unknown,
            Rpc::StageUnstageVolume,
            Rpc::GetVolumeStats,
            Rpc::ExpandVolume,
            Rpc::VolumeCondition,
            Rpc::SingleNodeMultiWriter,
            Rpc::VolumeMountGroup
        ]
        .map(|t| t as i32),
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        [
            Svc::Unknown,
            Svc::ControllerService,
            Svc::VolumeAccessibilityConstraints,
            Svc::GroupControllerService,
            Svc::SnapshotMetadataService
        ]
        .map(|t| t as i32),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(
        [
            Mode::Unknown,
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter
        ]
        .map(|t| t as i32),
        [0, 1, 2, 3, 4, 5, 6, 7]
    );
    use csi::volume_usage::Unit;
    assert_eq!([Unit::Unknown, Unit::Bytes, Unit::Inodes].map(|u| u as i32), [0, 1, 2]);
}

#[test]
fn provider_messages_match_upstream() {
    assert_eq!(numbers(pb::VersionRequest { version: "v".into() }), [1]);
    assert_eq!(
        numbers(pb::VersionResponse { version: "v".into(), runtime_name: "n".into(), runtime_version: "r".into() }),
        [1, 2, 3]
    );
    let ov = pb::ObjectVersion { id: "i".into(), version: "v".into() };
    assert_eq!(numbers(ov.clone()), [1, 2]);
    assert_eq!(
        numbers(pb::MountRequest {
            attributes: "a".into(),
            secrets: "s".into(),
            target_path: "t".into(),
            permission: "420".into(),
            current_object_version: vec![ov.clone()],
        }),
        [1, 2, 3, 4, 5]
    );
    let file = pb::File { path: "p".into(), mode: 420, contents: b"c".to_vec() };
    assert_eq!(numbers(file.clone()), [1, 2, 3]);
    assert_eq!(numbers(pb::Error { code: "c".into() }), [1]);
    assert_eq!(
        numbers(pb::MountResponse {
            object_version: vec![ov],
            error: Some(pb::Error { code: "c".into() }),
            files: vec![file]
        }),
        [1, 2, 3]
    );
}

#[test]
fn the_csi_secret_extension_marks_the_secrets_fields() {
    // The descriptor set protox built must carry `csi_secret = 1059` on each `secrets` map.
    let proto = include_str!("../../../proto/csi.proto");
    assert!(proto.contains("bool csi_secret = 1059;"));
    assert_eq!(proto.matches("[(csi_secret) = true]").count(), 3, "NodeStage, NodePublish and NodeExpand secrets");
}
