//! The edges where an error becomes something an operator or a tenant reads, and the process boundary
//! between the unprivileged provider and the privileged driver.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use secrets_store::provider::{MountResponse, ProviderError};

use crate::{MARKER, no_marker, planted_bytes, scrub, text};

/// Whether `key` (the labels an error picks) is new on this thread. Labels are functions of an error's
/// kind, never of its text, so each combination is rendered and checked once: the check stays cheap
/// enough for libFuzzer's rates.
fn first_time(key: String) -> bool {
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashSet<String>> = Default::default();
    }
    SEEN.with(|s| s.borrow_mut().insert(key))
}

/// Renders `registry` and applies the marker rule to every label.
fn labels_clean(registry: &Registry) {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("the registry renders");
    no_marker("a metric label", &out);
}

/// A Key Vault or parameter error, followed as the in-process provider follows it: the message, the
/// provider's `keyvault_request` labels, then the driver's side ([`provider_edge`]).
pub(crate) fn keyvault_edge(e: &keyvault::Error) {
    no_marker("a provider error", &e.to_string());
    if first_time(format!("keyvault {:?}", e.kind)) {
        let metrics = keyvault::metrics::ProviderMetrics::default();
        keyvault::Observer::object_fetched(&metrics, "secret", "s", std::time::Duration::ZERO, Some(e.kind));
        let mut registry = Registry::default();
        keyvault::metrics::register_provider(&mut registry, &metrics, Arc::new(keyvault::Stats::default()));
        labels_clean(&registry);
    }
    provider_edge(keyvault_bridge::provider_error(e));
}

/// A provider's failure as the driver reports it: the gRPC status kubelet shows (and records as the
/// pod's `FailedMount` event), the publish and rotation error counters' labels.
pub(crate) fn provider_edge(source: ProviderError) {
    no_marker("a provider error", &source.to_string());
    publish_edge(driver::error::PublishError::Provider { pod: "ns/web".into(), source });
}

/// Any publish failure, at the node's edge.
pub(crate) fn publish_edge(error: driver::error::PublishError) {
    let status = error.to_status();
    no_marker("a gRPC status (kubelet's FailedMount event)", status.message());
    if !first_time(format!("publish {} {}", error.label(), error.class())) {
        return;
    }
    let metrics = driver::metrics::Metrics::default();
    metrics.publish_error("azure", &error);
    metrics.rotation_error("azure", &error);
    let mut registry = Registry::default();
    registry.register("node_publish_error", "", metrics.node_publish_error.clone());
    registry.register("rotation_reconcile_error", "", metrics.rotation_reconcile_error.clone());
    labels_clean(&registry);
}

/// What the unprivileged provider process answers, read by the privileged one: a v1alpha1
/// `MountResponse` (protobuf; an input that does not decode becomes one file whose path and mode come
/// from it) plus keyvault-csi's metadata documents. Every file's contents carry the marker, the files
/// are checked as the writer checks them (paths confined, no duplicates), and nothing the provider
/// sends reaches an error, a label or a log line.
pub(crate) fn provider_wire(input: &[u8]) {
    use csi_proto::provider as pb;
    use prost::Message;
    let mut response = pb::MountResponse::decode(input).unwrap_or_else(|_| {
        let (head, body) = input.split_at(input.len().min(48));
        pb::MountResponse {
            object_version: vec![pb::ObjectVersion { id: text(head), version: "v1".into() }],
            error: None,
            files: vec![pb::File {
                path: text(head),
                mode: i32::from_le_bytes(*body.first_chunk().unwrap_or(&0o644i32.to_le_bytes())),
                contents: planted_bytes(body),
            }],
        }
    });
    // Paths, ids and codes are the provider's (quoted in errors); contents are secret.
    for f in &mut response.files {
        f.path = scrub(&f.path);
        f.contents.splice(0..0, MARKER.bytes());
    }
    for v in &mut response.object_version {
        v.id = scrub(&v.id);
        v.version = scrub(&v.version);
    }
    if let Some(e) = &mut response.error {
        e.code = scrub(&e.code);
    }
    if let Some(e) = &response.error {
        // A provider's error code is not secret (it is quoted), but it must stay a bounded label.
        assert!(secrets_store::provider::provider_code_label(&e.code).len() <= 64);
    }
    let paths: Vec<String> = response.files.iter().map(|f| f.path.clone()).collect();
    match secrets_store::external::from_wire("azure", response) {
        Ok(mut out) => {
            assert!(out.files.iter().all(|f| f.mode <= 0o7777), "a mode outside 0o7777 was accepted");
            let mut md = tonic::metadata::MetadataMap::new();
            // Not secret-bearing (versions, vault names, a client id): unplanted.
            let doc = tonic::metadata::MetadataValue::from_bytes(text(input).as_bytes());
            md.insert_bin(secrets_store::external::ext::SERVED, doc.clone());
            md.insert_bin(secrets_store::external::ext::REQUESTER, doc);
            secrets_store::external::read_ext(&md, &mut out);
            assert!(
                out.served.iter().all(|s| out.object_versions.contains_key(&s.id)),
                "the provider added a served entry no file backs"
            );
            no_marker("a mount response's Debug", &format!("{out:?}"));
            written(&out, &paths);
        }
        Err(e) => provider_edge(e),
    }
}

/// The writer's check of a provider's files: a refused payload is reported without contents; an
/// accepted one stays inside the target.
fn written(out: &MountResponse, paths: &[String]) {
    match driver::atomic_writer::validate_payload(&out.files) {
        Ok(()) => {
            for f in &out.files {
                assert!(paths.contains(&f.path));
                assert!(!f.path.starts_with('/') && !f.path.split('/').any(|c| c == ".." || c.is_empty()));
                assert!(f.contents.expose_secret().starts_with(MARKER.as_bytes()));
            }
        }
        Err(source) => {
            no_marker("a refused payload", &source.to_string());
            publish_edge(driver::error::PublishError::Payload { pod: "ns/web".into(), source });
        }
    }
}
