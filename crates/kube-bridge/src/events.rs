//! Events on pods (core/v1, as upstream's client-go recorder writes them, so `kubectl describe pod`
//! and event exporters show them unchanged). Best effort: a failed event is logged, never returned.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;

use secrets_store::volume_context::PodInfo;

/// Upstream's component for secret-sync events.
pub const SYNC_COMPONENT: &str = "csi-secrets-store-controller";
/// Upstream's component for rotation events.
pub const ROTATION_COMPONENT: &str = "csi-secrets-store-rotation";
/// Component of events about a mount that upstream has no event for (ours).
pub const MOUNT_COMPONENT: &str = "keyvault-csi";

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something worked.
    Normal,
    /// Something needs attention.
    Warning,
}

/// Writes events about pods.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
}

impl Recorder {
    /// Events reported from `node`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self { client, node: node.to_string() }
    }

    /// Records `reason`/`message` on the pod. Messages must never carry secret values.
    pub async fn pod_event(&self, pod: &PodInfo, component: &str, kind: EventType, reason: &str, message: &str) {
        let involved = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        self.object_event(&involved, component, kind, reason, message).await;
    }

    /// Records `reason`/`message` on any namespaced object. Messages must never carry secret values.
    pub async fn object_event(
        &self,
        involved: &ObjectReference,
        component: &str,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let (name, namespace) =
            (involved.name.clone().unwrap_or_default(), involved.namespace.clone().unwrap_or_default());
        let event = Event {
            metadata: ObjectMeta {
                // client-go's naming: <object>.<unix nanos in hex>.
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: involved.clone(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(match kind {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource { component: Some(component.into()), host: Some(self.node.clone()) }),
            reporting_component: Some(component.into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(object = %name, %namespace, reason, error = %super::describe(&e), "failed to record an event");
        }
    }
}
