//! `keyvault-csi check --live`: what a mount of the class would do, checked against the cluster and
//! Key Vault before a pod tries. Each check passes or fails with the error text it prevents. Objects
//! are fetched exactly as a mount fetches them (proving the identity's `get` permission), held in
//! memory, and dropped: no value is printed, logged or written.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use driver::kube::crd::v1::SecretProviderClass;
use driver::kube::credentials::{MintError, MintedToken, mint_token, tokens_json};
use driver::volume_context::{Caller, provider_attributes};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use driver::kube::describe;

use super::Finding;

/// Audience of workload-identity tokens.
/// The token audiences of workload identity and of identity binding (`useAzureTokenProxy`).
const WORKLOAD_AUDIENCE: &str = "api://AzureADTokenExchange";
const BINDING_AUDIENCE: &str = keyvault::identity::proxy::BINDING_AUDIENCE;
/// The CSI driver name.
const DRIVER: &str = "secrets-store.csi.k8s.io";

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
    #[arg(long, default_value = "2m", value_parser = driver::duration::parse_go_duration, value_name = "DURATION")]
    pub rotation_poll_interval: Duration,
    /// The Azure provider's settings, as the driver has them.
    #[command(flatten)]
    pub azure: crate::azure::AzureArgs,
}

/// Result of one live check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// A mount would fail (or misbehave).
    Fail,
    /// Could not be checked from here.
    Skip,
    /// Works now, but will not at scale (the Key Vault budget).
    Warn,
}

/// One live check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// Outcome.
    pub status: Status,
    /// Details (never a secret value).
    pub detail: String,
    /// The error a pod would get (`kubectl describe pod`), when the check fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prevents: Option<String>,
}

fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
    Check { check: check.into(), status: Status::Pass, detail: detail.into(), prevents: None }
}

fn fail(check: impl Into<String>, detail: impl Into<String>, prevents: Option<String>) -> Check {
    Check { check: check.into(), status: Status::Fail, detail: detail.into(), prevents }
}

fn skip(check: impl Into<String>, detail: impl Into<String>) -> Check {
    Check { check: check.into(), status: Status::Skip, detail: detail.into(), prevents: None }
}

/// The live report: the offline findings of the class in the cluster, then the live checks.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Offline findings.
    pub findings: Vec<Finding>,
    /// Live checks.
    pub checks: Vec<Check>,
}

/// Runs the live checks; `Err` when the cluster cannot be asked at all (exit code 2).
pub async fn run(args: &LiveArgs) -> Result<Report, String> {
    let ns = args.namespace.as_str();
    let client = crate::kube_client(args.kubeconfig.as_deref()).await?;
    let mut report = Report::default();
    if let Some(url) = &args.events_queue_url {
        report.checks.extend(event_queue(&client, args, url).await);
        return Ok(report);
    }
    let mut service_account = args.service_account.clone();
    let mut sync_object = None;
    let class = match &args.secret_sync {
        Some(name) => match secret_sync(&client, ns, name, &mut report).await? {
            Some(ss) => {
                service_account = ss.spec.service_account_name.clone();
                sync_object = Some(ss);
                sync_object.as_ref().map(|s| s.spec.secret_provider_class_name.as_str()).unwrap_or_default()
            }
            None => return Ok(report),
        },
        None => args
            .class
            .as_deref()
            .ok_or("--live needs --class or --secret-sync (and --namespace), or --events-queue-url")?,
    };
    let args = &LiveArgs { service_account, ..args.clone() };
    let checks = &mut report.checks;

    // 1. The class exists in the pod's namespace.
    let spc = match Api::<SecretProviderClass>::namespaced(client.clone(), ns).get_opt(class).await {
        Ok(Some(spc)) => spc,
        Ok(None) => {
            let e = driver::class::ClassError::NotFound { namespace: ns.into(), name: class.into() };
            checks.push(fail(
                "class exists",
                format!("no SecretProviderClass {class} in namespace {ns}"),
                Some(e.to_string()),
            ));
            return Ok(report);
        }
        Err(e) => return Err(format!("cannot read SecretProviderClass {ns}/{class}: {}", describe(&e))),
    };
    checks
        .push(pass("class exists", format!("SecretProviderClass {ns}/{class}, provider {:?}", spc.spec.spec.provider)));
    let manifest = driver::class::SecretProviderClass {
        api_version: "secrets-store.csi.x-k8s.io/v1".into(),
        kind: "SecretProviderClass".into(),
        metadata: driver::class::Metadata {
            name: class.into(),
            namespace: Some(ns.into()),
            annotations: Default::default(),
        },
        spec: spc.spec.spec.clone(),
    };
    report.findings = super::check_class(&manifest);
    if let Some(ss) = &sync_object {
        let files = driver::lint::ParametersLint::lint(&crate::azure::AzureLint, &manifest.spec).files;
        report.findings.extend(sync::lint::lint_sync(ss, files.as_ref()));
    }
    let checks = &mut report.checks;

    // 2. The driver is installed and registered on the nodes.
    checks.push(driver_registration(&client).await);
    let params = &spc.spec.spec.parameters;
    let lint = keyvault::lint::lint(params, args.azure.write_cert_and_key_in_separate_files);
    let mode = lint.class.as_ref().map(|c| &c.identity);
    // The audience kubelet must mint for this class's identity, if it uses a service-account token.
    let audience = match mode {
        _ if args.node_publish_secret_ref.is_some() => None,
        Some(keyvault::params::IdentityMode::Workload { .. }) => Some(WORKLOAD_AUDIENCE),
        Some(keyvault::params::IdentityMode::TokenProxy { .. }) => Some(BINDING_AUDIENCE),
        _ => None,
    };
    if let Some(audience) = audience {
        checks.push(token_audience(&client, audience).await);
    }

    // 2b. Polls across the cluster fit in the vault's budget.
    let nodes = match args.nodes {
        Some(n) => Some(n),
        None => Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
            .ok()
            .map(|l| l.items.len() as u64),
    };
    let annotation = spc.metadata.annotations.as_ref().and_then(|a| a.get(driver::annotations::ROTATION_INTERVAL));
    let interval = match driver::annotations::class_interval(annotation.map(String::as_str), Duration::from_secs(30)) {
        Ok(Some(c)) => c.interval,
        _ => args.rotation_poll_interval,
    };
    let objects = lint.objects().len() as u64;
    match nodes {
        Some(nodes) => checks.push(budget(nodes, objects, interval)),
        None => checks.push(skip("Key Vault budget", "cannot count nodes (pass --nodes)")),
    }

    // 3. Synced Secrets are ours to write.
    for so in &spc.spec.spec.secret_objects {
        checks.push(synced_secret(&client, ns, so.secret_name.trim()).await);
    }

    // 4. Identity and objects, as a mount would fetch them.
    if spc.spec.spec.provider != "azure" {
        checks
            .push(skip("objects", format!("provider {:?} is not the built-in Azure provider", spc.spec.spec.provider)));
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
                checks.push(pass(
                    "nodePublishSecretRef",
                    format!("Secret {ns}/{name} has keys {:?}", secrets.keys().collect::<Vec<_>>()),
                ));
            }
            Ok(None) => {
                checks.push(fail(
                    "nodePublishSecretRef",
                    format!("Secret {ns}/{name} does not exist"),
                    Some(format!("failed to get node publish secret {ns}/{name}")),
                ));
                return Ok(report);
            }
            Err(e) => {
                checks.push(fail(
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
                checks.push(pass(
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
    let provider =
        match args.azure.config(None).and_then(|c| keyvault::Provider::new(c).map_err(|e| anyhow::anyhow!("{e}"))) {
            Ok(p) => p,
            Err(e) => return Err(format!("Azure provider: {e}")),
        };
    // Objects the reader could not read are explained by the offline findings.
    let mut identity_ok = None;
    for object in lint.objects() {
        let name = object.spec.name.clone();
        let mut attrs = provider_attributes(params, &caller.context(), tokens.as_ref());
        attrs.insert("objects".into(), driver::provider::one_object(&object.source));
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
                checks.push(pass(check, format!("{} ({} file(s), {bytes} bytes)", versions.join(", "), r.files.len())));
            }
            Err(e) => {
                if e.origin.is_token_service() {
                    identity_ok.get_or_insert(false);
                }
                let prevents = format!(
                    "failed to mount secrets store objects for pod {ns}/<pod>, err: rpc error: code = Unknown desc = failed to mount objects, error: {e}"
                );
                checks.push(fail(check, e.to_string(), Some(prevents)));
            }
        }
    }
    match identity_ok {
        Some(true) => checks.push(pass("identity", "Key Vault accepted the identity")),
        Some(false) => checks.push(fail(
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
async fn event_queue(client: &kube::Client, args: &LiveArgs, url: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let url = match keyvault::events::check_queue_url(url) {
        Ok(u) => u,
        Err(e) => return vec![fail("queue URL", e, None)],
    };
    checks.push(pass("queue URL", url.clone()));
    if args.events_tenant_id.is_empty() || args.events_client_id.is_empty() {
        checks.push(fail("queue identity", "--events-tenant-id and --events-client-id are required", None));
        return checks;
    }
    let Some((ns, sa)) = args.events_service_account.split_once('/') else {
        checks.push(fail("queue identity", "--events-service-account must be <namespace>/<name>", None));
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
            checks.push(fail("queue identity", e, None));
            return checks;
        }
    };
    let provider =
        match args.azure.config(None).and_then(|c| keyvault::Provider::new(c).map_err(|e| anyhow::anyhow!("{e}"))) {
            Ok(p) => p,
            Err(e) => {
                checks.push(fail("queue", format!("Azure provider: {e}"), None));
                return checks;
            }
        };
    let cloud = match provider.default_cloud() {
        Ok(c) => c,
        Err(e) => {
            checks.push(fail("queue", e.to_string(), None));
            return checks;
        }
    };
    let q = keyvault::events::QueueClient { url, tenant: args.events_tenant_id.clone(), identity, cloud };
    match provider.queue_peek(&q).await {
        Ok(n) => checks.push(pass(
            "queue access",
            format!("{ns}/{sa} (client {}) can read the queue ({n} message(s) visible)", args.events_client_id),
        )),
        Err(e) => checks.push(fail(
            "queue access",
            e.to_string(),
            Some("ChangeEventsUnavailable: nodes poll at --rotation-poll-interval".into()),
        )),
    }
    checks
}

/// Key Vault's limit for GETs per vault per 10 s.
pub const VAULT_GETS_PER_10S: f64 = 4000.0;

/// What polling this class on `nodes` nodes every `interval` costs its vault, against Key Vault's
/// limit: GETs per 10 s = nodes × objects × 10 / interval (one identity per class; more identities
/// multiply it). Above half of the limit: a warning, with the ways out.
pub fn budget(nodes: u64, objects: u64, interval: Duration) -> Check {
    let per_10s = nodes as f64 * objects as f64 * 10.0 / interval.as_secs_f64().max(1.0);
    let share = per_10s / VAULT_GETS_PER_10S * 100.0;
    let detail = format!(
        "{nodes} node(s) × {objects} object(s) every {interval:?}: {per_10s:.0} GETs per 10 s, {share:.0} % of one vault's {VAULT_GETS_PER_10S:.0}"
    );
    if share > 50.0 {
        let fix = "lengthen the class's keyvault-csi.io/rotation-poll-interval, turn on change events (events.enabled, docs/change-events.md: polls every hour, changes in seconds), or move widely shared objects to a SecretSync (one fetch per interval for the cluster)";
        Check {
            check: "Key Vault budget".into(),
            status: Status::Warn,
            detail: format!("{detail}{}; {fix}", if share > 100.0 { ": Key Vault will throttle (429)" } else { "" }),
            prevents: None,
        }
    } else {
        pass("Key Vault budget", detail)
    }
}

async fn driver_registration(client: &kube::Client) -> Check {
    let prevents = Some(format!("driver name {DRIVER} not found in the list of registered CSI drivers"));
    match Api::<CSIDriver>::all(client.clone()).get_opt(DRIVER).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail("CSI driver registered", format!("no CSIDriver {DRIVER}: install the chart"), prevents);
        }
        Err(e) => {
            return fail("CSI driver registered", format!("cannot read CSIDriver {DRIVER}: {}", describe(&e)), None);
        }
    }
    let nodes = match Api::<CSINode>::all(client.clone()).list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => return skip("CSI driver registered", format!("cannot list CSINodes: {}", describe(&e))),
    };
    let (with, without): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| n.spec.drivers.iter().any(|d| d.name == DRIVER));
    let name = |n: &&CSINode| n.metadata.name.clone().unwrap_or_default();
    if with.is_empty() {
        return fail("CSI driver registered", format!("registered on none of {} node(s)", nodes.len()), prevents);
    }
    if !without.is_empty() {
        let missing: Vec<String> = without.iter().take(5).map(name).collect();
        return fail(
            "CSI driver registered",
            format!("registered on {} of {} nodes; missing on {}", with.len(), nodes.len(), missing.join(", ")),
            prevents,
        );
    }
    pass("CSI driver registered", format!("on all {} node(s)", nodes.len()))
}

async fn token_audience(client: &kube::Client, audience: &str) -> Check {
    let c = "CSIDriver token audience";
    match Api::<CSIDriver>::all(client.clone()).get_opt(DRIVER).await {
        Ok(Some(d)) => {
            let auds: Vec<String> = d.spec.token_requests.unwrap_or_default().into_iter().map(|t| t.audience).collect();
            if auds.iter().any(|a| a == audience) {
                pass(c, format!("kubelet passes {audience} tokens"))
            } else {
                fail(
                    c,
                    format!(
                        "CSIDriver {DRIVER} requests tokens for {auds:?}, not {audience}: set tokenRequests in the chart"
                    ),
                    Some(if audience == BINDING_AUDIENCE {
                        format!(
                            "failed to parse service account token for identity binding, error: token for audience {audience} not found"
                        )
                    } else {
                        format!(
                            "failed to parse workload identity tokens, error: token for audience {audience} not found"
                        )
                    }),
                )
            }
        }
        _ => skip(c, "no CSIDriver to read"),
    }
}

async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> Result<MintedToken, Check> {
    let c = "service account token";
    match mint_token(client, ns, sa, audience, Some(600), None).await {
        Ok(t) => Ok(t),
        Err(MintError::NoToken) => Err(skip(c, "the API server returned no token")),
        Err(e) if e.code() == Some(404) => Err(fail(
            c,
            format!("service account {ns}/{sa} does not exist"),
            Some(format!("serviceaccounts \"{sa}\" not found")),
        )),
        Err(e) if e.code() == Some(403) => Err(skip(
            c,
            format!("you may not create tokens for {ns}/{sa} ({e}); the identity and objects are not checked"),
        )),
        Err(e) => Err(fail(c, e.to_string(), None)),
    }
}

/// The SecretSync's own checks: it exists, the controller runs, its service account opted in, and
/// the Secret it will write is not someone else's. `None` when it does not exist.
async fn secret_sync(
    client: &kube::Client,
    ns: &str,
    name: &str,
    report: &mut Report,
) -> Result<Option<sync::api::SecretSync>, String> {
    let checks = &mut report.checks;
    let ss = match Api::<sync::api::SecretSync>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(Some(ss)) => ss,
        Ok(None) => {
            checks.push(fail("secretsync exists", format!("no SecretSync {name} in namespace {ns}"), None));
            return Ok(None);
        }
        Err(e) => return Err(format!("cannot read SecretSync {ns}/{name}: {}", describe(&e))),
    };
    checks.push(pass(
        "secretsync exists",
        format!(
            "SecretSync {ns}/{name}: class {}, service account {}",
            ss.spec.secret_provider_class_name, ss.spec.service_account_name
        ),
    ));
    let controllers = Api::<k8s_openapi::api::apps::v1::Deployment>::all(client.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/component=sync-controller"))
        .await;
    checks.push(match controllers {
        Ok(l) if l.items.iter().any(|d| d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) > 0) => {
            pass("sync controller", "a keyvault-csi sync-controller Deployment is ready")
        }
        Ok(_) => fail(
            "sync controller",
            "no ready keyvault-csi sync-controller Deployment (chart value syncController.enabled)",
            Some("the SecretSync is never reconciled".into()),
        ),
        Err(e) => skip("sync controller", format!("cannot list Deployments: {}", describe(&e))),
    });
    let sa = &ss.spec.service_account_name;
    checks.push(match Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(sa).await {
        Ok(Some(account)) => match sync::decide::check_opt_in(
            account.metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()),
            ns,
            sa,
            name,
        ) {
            Ok(()) => pass("service account opt-in", format!("{ns}/{sa} lets SecretSync {name} use it")),
            Err(f) => fail("service account opt-in", f.message.clone(), Some(f.message)),
        },
        Ok(None) => fail("service account opt-in", format!("service account {ns}/{sa} does not exist"), None),
        Err(e) => skip("service account opt-in", format!("cannot read service account {ns}/{sa}: {}", describe(&e))),
    });
    let c = format!("Secret {name}");
    checks.push(match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(None) => pass(c, "does not exist yet; the controller will create it"),
        Ok(Some(s)) if sync::controller::owned_by(&s, &ss) => pass(c, "exists and is owned by this SecretSync"),
        Ok(Some(s)) => {
            let why = sync::controller::foreign(&s, &ss);
            fail(c, why.clone(), Some(why))
        }
        Err(kube::Error::Api(s)) if s.code == 403 => skip(c, format!("cannot read Secrets here: {}", s.message)),
        Err(e) => fail(c, describe(&e), None),
    });
    Ok(Some(ss))
}

async fn synced_secret(client: &kube::Client, ns: &str, name: &str) -> Check {
    let c = format!("synced Secret {name}");
    match Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(None) => pass(c, "does not exist yet; the driver will create it"),
        Ok(Some(s)) => {
            let managed = s.metadata.labels.as_ref().and_then(|l| l.get(driver::kube::secrets::MANAGED_LABEL));
            if managed.map(String::as_str) == Some("true") {
                pass(c, "exists and is managed by the driver")
            } else {
                let e = driver::kube::secrets::SyncError::NotManaged { namespace: ns.into(), secret: name.into() };
                fail(c, "exists and is not managed by the driver: it will not be updated", Some(e.to_string()))
            }
        }
        Err(kube::Error::Api(s)) if s.code == 403 => skip(c, format!("cannot read Secrets here: {}", s.message)),
        Err(e) => fail(c, describe(&e), None),
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_budget_warns_past_half_of_a_vaults_limit() {
        let two_min = Duration::from_secs(120);
        let small = budget(100, 10, two_min);
        assert_eq!(small.status, Status::Pass);
        assert!(small.detail.contains("83 GETs per 10 s"), "{}", small.detail);
        let big = budget(5000, 10, two_min);
        assert_eq!(big.status, Status::Warn);
        assert!(big.detail.contains("4167 GETs") && big.detail.contains("throttle"), "{}", big.detail);
        assert_eq!(budget(5000, 10, Duration::from_secs(3600)).status, Status::Pass, "events on: polls hourly");
    }
}
