//! End-to-end: the real binary, driven over its real socket the way kubelet drives it, with real tmpfs
//! mounts and a v1alpha1 provider on a real socket.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use csi_proto::csi;
use support::*;
use tonic::Code;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn setup(extra: &[&str]) -> (Node, TestProvider, DriverProcess) {
    let node = Node::new();
    let provider = TestProvider::start(&node.path("providers"), "e2e-provider").await;
    node.add_class("default", "spc", "e2e-provider", &[("param", "from-class"), ("keep", "class-only")]);
    let driver = DriverProcess::start(&node, extra).await;
    (node, provider, driver)
}

#[tokio::test]
async fn identity_and_node_info_follow_upstream() {
    let (_node, _provider, driver) = setup(&[]).await;
    let mut id = driver.identity_client().await;
    let info = id.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "secrets-store.csi.k8s.io");
    assert!(info.vendor_version.starts_with('v'));
    let caps = id.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.capabilities.is_empty(), "only served services are advertised");
    assert_eq!(id.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));

    let mut node = driver.node_client().await;
    assert_eq!(node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner().node_id, "node-1");
    let caps = node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.capabilities.is_empty(), "nothing optional is served, so nothing is advertised");
    let stats = node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest::default()).await.unwrap_err();
    assert_eq!(stats.code(), Code::Unimplemented);
    let expand = node.node_expand_volume(csi::NodeExpandVolumeRequest::default()).await.unwrap_err();
    assert_eq!((expand.code(), expand.message()), (Code::Unimplemented, "NodeExpandVolume is not implemented"));
    let stage = node.node_stage_volume(csi::NodeStageVolumeRequest::default()).await.unwrap_err();
    assert_eq!((stage.code(), stage.message()), (Code::InvalidArgument, "Volume ID missing in request"));
    let ok = csi::NodeStageVolumeRequest {
        volume_id: "v".into(),
        staging_target_path: "/s".into(),
        volume_capability: Some(Default::default()),
        ..Default::default()
    };
    node.node_stage_volume(ok).await.unwrap();
    let unstage = csi::NodeUnstageVolumeRequest { volume_id: "v".into(), staging_target_path: "/s".into() };
    node.node_unstage_volume(unstage).await.unwrap();

    // A Controller RPC reaches a service this driver does not serve: UNIMPLEMENTED, as upstream's stubs.
    let ch = channel(&driver.socket).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<csi::ProbeRequest, csi::ProbeResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/csi.v1.Controller/CreateVolume");
    let err = grpc.unary(tonic::Request::new(csi::ProbeRequest {}), path, codec).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn publish_mounts_a_tmpfs_and_writes_the_providers_files_with_their_modes() {
    let (node, provider, driver) = setup(&[]).await;
    provider.set_files(&[("username", 0o644, "admin"), ("db/password", 0o600, "s3cr3t-value"), ("zero", 0, "z")], "v1");
    let mut vol = PodVolume::new("web-0", "spc");
    vol.tokens = Some(tokens_json("api://AzureADTokenExchange", "eyJ.token-one.sig"));
    vol.tokens_in_secrets = true;
    vol.secrets.insert("clientsecret".into(), "nodepublish-secret-value".into());
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();

    let target = vol.target(&node);
    assert_eq!(driver.mounts_at(&target), vec!["tmpfs".to_string()], "the target is a real tmpfs");
    assert_eq!(std::fs::read_to_string(target.join("username")).unwrap(), "admin");
    assert_eq!(std::fs::read_to_string(target.join("db/password")).unwrap(), "s3cr3t-value");
    assert_eq!(mode(&target.join("username")), 0o644);
    assert_eq!(mode(&target.join("db/password")), 0o600);
    assert_eq!(mode(&target.join("zero")), 0);

    // The provider got upstream's wire format: attributes = parameters overlaid by the volume context.
    let req = provider.last_request();
    let attrs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&req.attributes).unwrap();
    assert_eq!(attrs["param"], "from-class");
    assert_eq!(attrs["csi.storage.k8s.io/pod.name"], "web-0");
    assert_eq!(attrs["secretProviderClass"], "spc");
    assert!(
        attrs[TOKENS_KEY].as_str().unwrap().contains("eyJ.token-one.sig"),
        "tokens from secrets reach the provider"
    );
    let secrets: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&req.secrets).unwrap();
    assert_eq!(secrets["clientsecret"], "nodepublish-secret-value");
    assert_eq!(req.permission, "420");
    assert!(req.current_object_version.is_empty());
    assert_eq!(provider.state.lock().unwrap().authorities, vec!["localhost".to_string()]);

    vol.unpublish(&node, &mut client).await.unwrap();
    assert!(driver.mounts_at(&target).is_empty());
    assert!(!target.exists());
    driver.assert_logs_free_of(&["admin", "s3cr3t-value", "eyJ.token-one.sig", "nodepublish-secret-value"]);
}

#[tokio::test]
async fn without_secrets_the_provider_receives_json_null() {
    let (node, provider, driver) = setup(&[]).await;
    provider.set_files(&[("a", 0o644, "1")], "v1");
    let vol = PodVolume::new("p", "spc");
    vol.publish(&node, &mut driver.node_client().await).await.unwrap();
    assert_eq!(provider.last_request().secrets, "null");
}

#[tokio::test]
async fn publish_and_unpublish_are_idempotent() {
    let (node, provider, driver) = setup(&[]).await;
    provider.set_files(&[("a", 0o644, "1")], "v1");
    let vol = PodVolume::new("p", "spc");
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();
    vol.publish(&node, &mut client).await.unwrap();
    let target = vol.target(&node);
    assert_eq!(driver.mounts_at(&target).len(), 1, "a republish does not stack a second tmpfs");
    assert_eq!(provider.calls(), 1, "with rotation off a republish of a live mount does not call the provider");
    vol.unpublish(&node, &mut client).await.unwrap();
    vol.unpublish(&node, &mut client).await.unwrap();
    assert!(driver.mounts_at(&target).is_empty());

    let unknown = csi::NodeUnpublishVolumeRequest {
        volume_id: "csi-unknown".into(),
        target_path: node.path("kubelet/pods/nope/volumes/kubernetes.io~csi/x/mount").to_string_lossy().into(),
    };
    client.node_unpublish_volume(unknown).await.unwrap();
    let missing = client.node_unpublish_volume(csi::NodeUnpublishVolumeRequest::default()).await.unwrap_err();
    assert_eq!((missing.code(), missing.message()), (Code::InvalidArgument, "Volume ID missing in request"));
}

#[tokio::test]
async fn unsafe_payloads_are_rejected_and_nothing_is_written_or_left_mounted() {
    let (node, provider, driver) = setup(&[]).await;
    let mut client = driver.node_client().await;
    let cases: &[&[(&str, i32, &str)]] = &[
        &[("ok", 0o644, "v"), ("../x", 0o644, "escape")],
        &[("/abs", 0o644, "abs")],
        &[("a//b", 0o644, "dbl")],
        &[("..data", 0o644, "reserved")],
        &[("same", 0o644, "one"), ("same", 0o644, "two")],
    ];
    for files in cases {
        provider.set_files(files, "v1");
        let vol = PodVolume::new("bad", "spc");
        let err = vol.publish(&node, &mut client).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{files:?}: {}", err.message());
        assert!(
            err.message()
                .starts_with("failed to mount secrets store objects for pod default/bad, err: invalid file path"),
            "{}",
            err.message()
        );
        let target = vol.target(&node);
        assert!(driver.mounts_at(&target).is_empty(), "{files:?}: no mount left behind");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "{files:?}: nothing written");
    }
    assert!(!node.path("kubelet/pods/x").exists() && !node.path("x").exists());
}

#[tokio::test]
async fn a_provider_failure_after_mounting_leaves_no_mount_behind() {
    let (node, provider, driver) = setup(&[]).await;
    provider.state.lock().unwrap().error_code = Some("ProviderBinaryNotFound".into());
    let vol = PodVolume::new("p", "spc");
    let err = vol.publish(&node, &mut driver.node_client().await).await.unwrap_err();
    assert_eq!(
        err.message(),
        "failed to mount secrets store objects for pod default/p, err: mount request failed with provider error code ProviderBinaryNotFound"
    );
    assert!(driver.mounts_at(&vol.target(&node)).is_empty());

    provider.state.lock().unwrap().error_code = None;
    provider.state.lock().unwrap().fail =
        Some(tonic::Status::permission_denied("keyvault: 403 Forbidden for secret/db"));
    let err = vol.publish(&node, &mut driver.node_client().await).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("403 Forbidden for secret/db"), "{}", err.message());
    assert!(driver.mounts_at(&vol.target(&node)).is_empty());
}

#[tokio::test]
async fn class_and_provider_errors_carry_upstreams_messages() {
    let (node, _provider, driver) = setup(&[]).await;
    let mut client = driver.node_client().await;

    let vol = PodVolume::new("p", "does-not-exist");
    let err = vol.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        err.message(),
        "failed to get secretproviderclass default/does-not-exist, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"does-not-exist\" not found"
    );

    node.add_class("default", "no-provider-sock", "no-such-provider", &[("a", "b")]);
    let vol = PodVolume::new("fc-bad-provider", "no-provider-sock");
    let err = vol.publish(&node, &mut client).await.unwrap_err();
    assert_eq!(
        err.message(),
        "failed to mount secrets store objects for pod default/fc-bad-provider, err: error connecting to provider \"no-such-provider\": provider not found: provider \"no-such-provider\""
    );
    assert!(driver.mounts_at(&vol.target(&node)).is_empty());

    node.add_class("default", "spc-no-objects", "e2e-provider", &[]);
    let err = PodVolume::new("p", "spc-no-objects").publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.message(), "parameters not set in default/spc-no-objects");

    let err = PodVolume::new("p", "").publish(&node, &mut client).await.unwrap_err();
    assert_eq!(err.message(), "secretProviderClass is not set");

    let mut rw = PodVolume::new("p", "spc");
    rw.readonly = false;
    let err = rw.publish(&node, &mut client).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "Readonly is not true in request"));

    let mut req = PodVolume::new("p", "spc").publish_request(&node);
    req.volume_capability = None;
    let err = client.node_publish_volume(req).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "Volume capability missing in request"));
}

#[tokio::test]
async fn the_provider_socket_is_found_in_additional_dirs_first() {
    let node = Node::new();
    let main = TestProvider::start(&node.path("providers"), "dual").await;
    let extra = TestProvider::start(&node.path("providers-extra"), "dual").await;
    extra.set_files(&[("a", 0o644, "from-extra")], "v1");
    main.set_files(&[("a", 0o644, "from-main")], "v1");
    node.add_class("default", "dual", "dual", &[("x", "y")]);
    let driver = DriverProcess::start(&node, &[]).await;
    let vol = PodVolume::new("p", "dual");
    vol.publish(&node, &mut driver.node_client().await).await.unwrap();
    assert_eq!(std::fs::read_to_string(vol.target(&node).join("a")).unwrap(), "from-extra");
    assert_eq!(main.calls(), 0);
}

#[tokio::test]
async fn rotation_refreshes_changed_files_and_a_failed_refresh_keeps_the_old_ones() {
    let (node, provider, driver) =
        setup(&["--enable-secret-rotation", "--rotation-poll-interval=200ms", "--rotation-poller=false"]).await;
    provider.set_files(&[("a", 0o644, "first-value")], "v1");
    let mut vol = PodVolume::new("p", "spc");
    vol.tokens = Some(tokens_json("aud", "token-gen-1"));
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();
    let target = vol.target(&node);

    // Within the interval: kubelet's republish does not reach the provider.
    vol.publish(&node, &mut client).await.unwrap();
    assert_eq!(provider.calls(), 1);

    tokio::time::sleep(Duration::from_millis(250)).await;
    provider.set_files(&[("a", 0o644, "second-value")], "v2");
    vol.tokens = Some(tokens_json("aud", "token-gen-2"));
    vol.publish(&node, &mut client).await.unwrap();
    assert_eq!(provider.calls(), 2);
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "second-value");
    assert!(provider.last_request().attributes.contains("token-gen-2"), "fresh tokens from the republish are used");
    let current: Vec<_> =
        provider.last_request().current_object_version.iter().map(|v| (v.id.clone(), v.version.clone())).collect();
    assert_eq!(current, vec![("secret/a".to_string(), "v1".to_string())], "the provider learns what is mounted");

    tokio::time::sleep(Duration::from_millis(250)).await;
    provider.state.lock().unwrap().fail = Some(tonic::Status::unavailable("vault unreachable"));
    vol.publish(&node, &mut client).await.expect("a failed refresh of a healthy volume reports success to kubelet");
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "second-value", "old files stay");
    assert_eq!(driver.mounts_at(&target).len(), 1);
    assert!(driver.logs().contains("keeping its current files"));
    driver.assert_logs_free_of(&["first-value", "second-value", "token-gen-1", "token-gen-2"]);
}

#[tokio::test]
async fn a_broken_or_vanished_tmpfs_is_remounted_and_refilled() {
    let (node, provider, driver) =
        setup(&["--enable-secret-rotation", "--rotation-poll-interval=1h", "--rotation-poller=false"]).await;
    provider.set_files(&[("a", 0o644, "v")], "v1");
    let vol = PodVolume::new("p", "spc");
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();
    let target = vol.target(&node);
    // The node rebooted, or someone unmounted it: the directory is there, the tmpfs is gone.
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(driver.mounts_at(&target).is_empty());
    vol.publish(&node, &mut client).await.unwrap();
    assert_eq!(driver.mounts_at(&target), vec!["tmpfs".to_string()]);
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "v");
    assert_eq!(provider.calls(), 2);
}

/// File contents of generation `g`: big enough that a torn write would show.
fn body(g: usize) -> String {
    format!("{g:08};").repeat(4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_a_torn_or_mixed_file_across_1000_swaps() {
    let (node, provider, driver) =
        setup(&["--enable-secret-rotation", "--rotation-poll-interval=0s", "--rotation-poller=false"]).await;
    provider.set_files(&[("a", 0o644, &body(0)), ("dir/b", 0o644, &body(0))], "0");
    let vol = PodVolume::new("p", "spc");
    let mut client = driver.node_client().await;
    vol.publish(&node, &mut client).await.unwrap();
    let target = vol.target(&node);

    let stop = Arc::new(AtomicBool::new(false));
    // Swaps started and finished. The writer keeps the previous generation until the next swap, so a
    // read may find its generation gone only if two swaps began after a generation it could have
    // resolved was current: on a loaded machine a reader can stall that long between two path lookups.
    let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, target, started, done) = (stop.clone(), target.clone(), started.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut reads, mut seen, mut failures, mut retired) = (0usize, HashSet::new(), Vec::new(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                for f in ["a", "dir/b"] {
                    let current = done.load(Ordering::SeqCst);
                    match std::fs::read_to_string(target.join(f)) {
                        Ok(c) => {
                            let g: usize = c[..8].parse().unwrap_or(usize::MAX);
                            if c != body(g) {
                                failures.push(format!("torn read of {f}"));
                            }
                            seen.insert(g);
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::NotFound
                                && started.load(Ordering::SeqCst) >= current + 2 =>
                        {
                            retired += 1
                        }
                        Err(e) => failures.push(format!("read {f} (within one swap): {e}")),
                    }
                }
                reads += 1;
            }
            (reads, seen.len(), failures, retired)
        })
    };
    for g in 1..=1000 {
        provider.set_files(&[("a", 0o644, &body(g)), ("dir/b", 0o644, &body(g))], &g.to_string());
        started.fetch_add(1, Ordering::SeqCst);
        vol.publish(&node, &mut client).await.unwrap();
        done.fetch_add(1, Ordering::SeqCst);
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, generations, failures, retired) = reader.join().unwrap();
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    assert!(reads > 100 && generations > 10, "the reader raced the swaps ({reads} reads, {generations} generations)");
    eprintln!("{reads} reads, {generations} generations seen, {retired} outlived by two swaps");
    assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), body(1000));
    assert_eq!(provider.calls(), 1001);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_publish_finish_then_exits_cleanly() {
    let (node, provider, mut driver) = setup(&[]).await;
    provider.set_files(&[("a", 0o644, "v")], "v1");
    provider.state.lock().unwrap().delay = Duration::from_millis(1500);
    let vol = PodVolume::new("p", "spc");
    let mut client = driver.node_client().await;
    let publish = {
        let (vol, req) = (vol.clone(), vol.publish_request(&node));
        let _ = vol;
        tokio::spawn(async move { client.node_publish_volume(req).await })
    };
    // The publish is in flight once the provider has it (it answers 1.5 s later).
    while provider.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    driver.signal(nix::sys::signal::Signal::SIGTERM);
    publish.await.unwrap().expect("the in-flight publish completes");
    assert_eq!(driver.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(!driver.socket.exists(), "the socket is removed on exit");
    assert_eq!(std::fs::read_to_string(vol.target(&node).join("a")).unwrap(), "v");
}
