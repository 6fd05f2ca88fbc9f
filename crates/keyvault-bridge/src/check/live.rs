//! `keyvault-csi check --live`: what a mount of the class would do, checked against the cluster and
//! Key Vault before a pod tries. Each check passes or fails with the error text it prevents. Objects
//! are fetched exactly as a mount fetches them (proving the identity's `get` permission), held in
//! memory, and dropped: no value is printed, logged or written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_bridge::check::{
    class_exists, driver_registration, node_count, service_account_token, synced_secret, token_audience,
};
use kube_bridge::credentials::tokens_json;
use kube_bridge::describe;
use secrets_store::volume_context::{Caller, provider_attributes};
use serde::Serialize;

use super::Finding;

/// The token audiences of workload identity and of identity binding (`useAzureTokenProxy`).
const WORKLOAD_AUDIENCE: &str = "api://AzureADTokenExchange";
const BINDING_AUDIENCE: &str = keyvault::identity::proxy::BINDING_AUDIENCE;

/// Flags of `check --live`.
#[derive(Debug, Args, Clone)]
pub struct LiveArgs {
    /// Namespace of the class (and of the pods that will use it).
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// SecretProviderClass name.
    #[arg(long)]
    pub class: Option<String>,
    /// A SecretSync instead of a class: its class and service account are checked, plus the opt-in,
    /// its keys against the class's files, the Secret it will write and the controller.
    #[arg(long, value_name = "NAME", conflicts_with = "class")]
    pub secret_sync: Option<String>,
    /// Service account of the pods (workload identity: a token for it is requested and exchanged).
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Secret the pods pass as `nodePublishSecretRef` (service principal `clientid`/`clientsecret`).
    #[arg(long, value_name = "SECRET")]
    pub node_publish_secret_ref: Option<String>,
    /// Kubeconfig (default: `KUBECONFIG`, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With `--events-queue-url`: the change-event queue is checked (Peek Messages) with the
    /// controller's identity, instead of a class.
    #[arg(long, value_name = "URL")]
    pub events_queue_url: Option<String>,
    /// The controller's service account (`<namespace>/<name>`), whose federated token reads the queue.
    #[arg(long, default_value = "kube-system/keyvault-csi-sync-controller", value_name = "NS/NAME")]
    pub events_service_account: String,
    /// Tenant and client id of the queue's identity (workload identity).
    #[arg(long, default_value = "", value_name = "TENANT")]
    pub events_tenant_id: String,
    /// See `--events-tenant-id`.
    #[arg(long, default_value = "", value_name = "CLIENT_ID")]
    pub events_client_id: String,
    /// Nodes that mount the class, for the Key Vault budget (default: the cluster's node count).
    #[arg(long, value_name = "N")]
    pub nodes: Option<u64>,
    /// The nodes' `--rotation-poll-interval` (a class annotation overrides it), for the budget.
    #[arg(long, default_value = "2m", value_parser = secrets_store::duration::parse_go_duration, value_name = "DURATION")]
    pub rotation_poll_interval: Duration,
}

pub use secrets_store::check::{Check, Status};

/// The live report: the offline findings of the class in the cluster, then the live checks.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Offline findings.
    pub findings: Vec<Finding>,
    /// Live checks.
    pub checks: Vec<Check>,
}

/// Runs the live checks with the Azure provider configured as the driver's flags have it; `Err` when
/// the cluster cannot be asked at all (exit code 2).
pub async fn run(client: &kube::Client, args: &LiveArgs, azure: &keyvault::Config) -> Result<Report, String> {
    let ns = args.namespace.as_str();
    let client = client.clone();
    let mut report = Report::default();
    if let Some(url) = &args.events_queue_url {
        report.checks.extend(event_queue(&client, args, azure, url).await);
        return Ok(report);
    }
    let mut service_account = args.service_account.clone();
    let mut sync_object = None;
    let class = match &args.secret_sync {
        Some(name) => match sync::check::secret_sync(&client, ns, name).await? {
            (checks, Some(ss)) => {
                report.checks.extend(checks);
                service_account = ss.spec.service_account_name.clone();
                sync_object = Some(ss);
                sync_object.as_ref().map(|s| s.spec.secret_provider_class_name.as_str()).unwrap_or_default()
            }
            (checks, None) => {
                report.checks.extend(checks);
                return Ok(report);
            }
        },
        None => args
            .class
            .as_deref()
            .ok_or("--live needs --class or --secret-sync (and --namespace), or --events-queue-url")?,
    };
    let args = &LiveArgs { service_account, ..args.clone() };
    let checks = &mut report.checks;

    // 1. The class exists in the pod's namespace.
    let (check, spc) = class_exists(&client, ns, class).await?;
    checks.push(check);
    let Some(spc) = spc else { return Ok(report) };
    let manifest = secrets_store::class::SecretProviderClass {
        api_version: "secrets-store.csi.x-k8s.io/v1".into(),
        kind: "SecretProviderClass".into(),
        metadata: secrets_store::class::Metadata {
            name: class.into(),
            namespace: Some(ns.into()),
            annotations: Default::default(),
        },
        spec: spc.spec.spec.clone(),
    };
    report.findings = super::check_class(&manifest);
    if let Some(ss) = &sync_object {
        let files = secrets_store::lint::ParametersLint::lint(&crate::lint::AzureLint, &manifest.spec).files;
        report.findings.extend(sync::lint::lint_sync(ss, files.as_ref()));
    }
    let checks = &mut report.checks;

    // 2. The driver is installed and registered on the nodes.
    checks.push(driver_registration(&client).await);
    let params = &spc.spec.spec.parameters;
    let lint = keyvault::lint::lint(params, azure.write_cert_and_key_in_separate_files);
    let mode = lint.class.as_ref().map(|c| &c.identity);
    // The audience kubelet must mint for this class's identity, if it uses a service-account token.
    let audience = match mode {
        _ if args.node_publish_secret_ref.is_some() => None,
        Some(keyvault::params::IdentityMode::Workload { .. }) => Some(WORKLOAD_AUDIENCE),
        Some(keyvault::params::IdentityMode::TokenProxy { .. }) => Some(BINDING_AUDIENCE),
        _ => None,
    };
    if let Some(audience) = audience {
        let prevents = if audience == BINDING_AUDIENCE {
            format!(
                "failed to parse service account token for identity binding, error: token for audience {audience} not found"
            )
        } else {
            format!("failed to parse workload identity tokens, error: token for audience {audience} not found")
        };
        checks.push(token_audience(&client, audience, prevents).await);
    }

    // 2b. Polls across the cluster fit in the vault's budget.
    let nodes = match args.nodes {
        Some(n) => Some(n),
        None => node_count(&client).await,
    };
    let annotation =
        spc.metadata.annotations.as_ref().and_then(|a| a.get(secrets_store::annotations::ROTATION_INTERVAL));
    let interval =
        match secrets_store::annotations::class_interval(annotation.map(String::as_str), Duration::from_secs(30)) {
            Ok(Some(c)) => c.interval,
            _ => args.rotation_poll_interval,
        };
    let objects = lint.objects().len() as u64;
    match nodes {
        Some(nodes) => checks.push(budget(nodes, objects, interval)),
        None => checks.push(Check::skip("Key Vault budget", "cannot count nodes (pass --nodes)")),
    }

    // 3. Synced Secrets are ours to write.
    for so in &spc.spec.spec.secret_objects {
        checks.push(synced_secret(&client, ns, so.secret_name.trim()).await);
    }

    // 4. Identity and objects, as a mount would fetch them.
    if spc.spec.spec.provider != "azure" {
        checks.push(Check::skip(
            "objects",
            format!("provider {:?} is not the built-in Azure provider", spc.spec.spec.provider),
        ));
        return Ok(report);
    }
    let caller = Caller { pod: "keyvault-csi-check", namespace: ns, uid: "", service_account: &args.service_account };
    let mut tokens = None;
    let mut secrets = keyvault::params::SecretMap::new();
    if let Some(name) = &args.node_publish_secret_ref {
        match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
            Ok(Some(s)) => {
                for (k, v) in s.data.unwrap_or_default() {
                    secrets.insert(k, String::from_utf8_lossy(&v.0).into_owned().into());
                }
                checks.push(Check::pass(
                    "nodePublishSecretRef",
                    format!("Secret {ns}/{name} has keys {:?}", secrets.keys().collect::<Vec<_>>()),
                ));
            }
            Ok(None) => {
                checks.push(Check::fail(
                    "nodePublishSecretRef",
                    format!("Secret {ns}/{name} does not exist"),
                    Some(format!("failed to get node publish secret {ns}/{name}")),
                ));
                return Ok(report);
            }
            Err(e) => {
                checks.push(Check::fail(
                    "nodePublishSecretRef",
                    format!("cannot read Secret {ns}/{name}: {}", describe(&e)),
                    None,
                ));
                return Ok(report);
            }
        }
    } else if let Some(audience) = audience {
        match service_account_token(&client, ns, &args.service_account, audience).await {
            Ok(token) => {
                tokens = Some(tokens_json([(audience, &token)]));
                checks.push(Check::pass(
                    "service account token",
                    format!("kubelet can get a {audience} token for {ns}/{}", args.service_account),
                ));
            }
            Err(c) => {
                checks.push(c);
                return Ok(report);
            }
        }
    }
    let provider = keyvault::Provider::new(azure.clone()).map_err(|e| format!("Azure provider: {e}"))?;
    // Objects the reader could not read are explained by the offline findings.
    let mut identity_ok = None;
    for object in lint.objects() {
        let name = object.spec.name.clone();
        let mut attrs = provider_attributes(params, &caller.context(), tokens.as_ref());
        attrs.insert("objects".into(), secrets_store::provider::one_object(&object.source));
        let request = keyvault::MountRequest {
            attributes: attrs,
            secrets: secrets.clone(),
            default_mode: 0o644,
            deadline: Some(Instant::now() + Duration::from_secs(60)),
            ..Default::default()
        };
        let check = format!("object {name}");
        match provider.mount(request).await {
            Ok(r) => {
                identity_ok = Some(true);
                let versions: Vec<String> =
                    r.object_versions.iter().map(|(id, v)| format!("{id} version {v}")).collect();
                // The files are dropped here: only their count and sizes are reported.
                let bytes: usize =
                    r.files.iter().map(|f| secrecy::ExposeSecret::expose_secret(&f.contents).len()).sum();
                checks.push(Check::pass(
                    check,
                    format!("{} ({} file(s), {bytes} bytes)", versions.join(", "), r.files.len()),
                ));
            }
            Err(e) => {
                if e.origin.is_token_service() {
                    identity_ok.get_or_insert(false);
                }
                let prevents = format!(
                    "failed to mount secrets store objects for pod {ns}/<pod>, err: rpc error: code = Unknown desc = failed to mount objects, error: {e}"
                );
                checks.push(Check::fail(check, e.to_string(), Some(prevents)));
            }
        }
    }
    match identity_ok {
        Some(true) => checks.push(Check::pass("identity", "Key Vault accepted the identity")),
        Some(false) => checks.push(Check::fail(
            "identity",
            "no token for the identity (see the object checks): check the client ID, tenant and, for workload identity, the federated credential's issuer and subject",
            None,
        )),
        None => {}
    }
    Ok(report)
}

/// The change-event queue, as the controller reads it: its URL, a token for the controller's service
/// account exchanged for a Storage token, and Peek Messages (which takes nothing off the queue).
async fn event_queue(client: &kube::Client, args: &LiveArgs, azure: &keyvault::Config, url: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let url = match keyvault::events::check_queue_url(url) {
        Ok(u) => u,
        Err(e) => return vec![Check::fail("queue URL", e, None)],
    };
    checks.push(Check::pass("queue URL", url.clone()));
    if args.events_tenant_id.is_empty() || args.events_client_id.is_empty() {
        checks.push(Check::fail("queue identity", "--events-tenant-id and --events-client-id are required", None));
        return checks;
    }
    let Some((ns, sa)) = args.events_service_account.split_once('/') else {
        checks.push(Check::fail("queue identity", "--events-service-account must be <namespace>/<name>", None));
        return checks;
    };
    let token = match service_account_token(client, ns, sa, WORKLOAD_AUDIENCE).await {
        Ok(t) => t,
        Err(c) => {
            checks.push(c);
            return checks;
        }
    };
    let identity = match keyvault::params::own_workload_identity(
        &args.events_client_id,
        secrecy::ExposeSecret::expose_secret(&token.token),
    ) {
        Ok(i) => i,
        Err(e) => {
            checks.push(Check::fail("queue identity", e, None));
            return checks;
        }
    };
    let provider = match keyvault::Provider::new(azure.clone()) {
        Ok(p) => p,
        Err(e) => {
            checks.push(Check::fail("queue", format!("Azure provider: {e}"), None));
            return checks;
        }
    };
    let cloud = match provider.default_cloud() {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::fail("queue", e.to_string(), None));
            return checks;
        }
    };
    let q = keyvault::events::QueueClient { url, tenant: args.events_tenant_id.clone(), identity, cloud };
    match provider.queue_peek(&q).await {
        Ok(n) => checks.push(Check::pass(
            "queue access",
            format!("{ns}/{sa} (client {}) can read the queue ({n} message(s) visible)", args.events_client_id),
        )),
        Err(e) => checks.push(Check::fail(
            "queue access",
            e.to_string(),
            Some("ChangeEventsUnavailable: nodes poll at --rotation-poll-interval".into()),
        )),
    }
    checks
}

/// What polling this class on `nodes` nodes every `interval` costs its vault (see
/// [`keyvault::budget`]): a warning past half of Key Vault's limit, with the ways out.
pub fn budget(nodes: u64, objects: u64, interval: Duration) -> Check {
    let b = keyvault::budget::Budget::of(nodes, objects, interval);
    if b.strained() {
        Check::warn("Key Vault budget", b.describe())
    } else {
        Check::pass("Key Vault budget", b.describe())
    }
}
