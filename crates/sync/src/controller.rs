//! The SecretSync controller: watches SecretSyncs, the SecretProviderClasses they name and the Secrets
//! they own (label-filtered), fetches through the provider in-process, and applies the Secret.
//!
//! When it works: on any change of a SecretSync's generation, its class, its Secret (deleted,
//! tampered with), or its `keyvault-csi.io/refresh-now` annotation, at once; otherwise once per
//! refresh round. Rounds are aligned on the wall clock, and each SecretSync starts its round at a fixed
//! offset within the jitter (from its uid), so a round's fetches spread out yet belong to one provider
//! cycle: a round costs one Key Vault request per distinct object and identity, whatever the number
//! of SecretSyncs. A check that finds nothing changed writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use secrecy::ExposeSecret;

use driver::Providers;
use driver::kube::crd::v1::SecretProviderClass;
use driver::kube::{EventType, Recorder};
use driver::provider::{ErrorKind, MountRequest};
use driver::redact::TOKENS_KEY;
use driver::volume_context::{POD_NAME_KEY, POD_NAMESPACE_KEY, POD_UID_KEY, RESERVED_PREFIX, SERVICE_ACCOUNT_KEY};

use crate::api::{MANAGED_LABEL, SecretSync, SecretSyncStatus};
use crate::decide::{self, Failure, FailureReason, Provenance, Written};
use crate::metrics::{FailureLabels, ResultLabels, SyncLabels, SyncMetrics};
use crate::tokens::Tokens;

/// Upstream's field manager, so `managedFields` read the same.
pub const FIELD_MANAGER: &str = "secrets-store-sync-controller";
/// Component of the events on SecretSyncs.
pub const COMPONENT: &str = "keyvault-csi-sync-controller";
/// Where upstream says the files would go (nothing is written anywhere).
const TARGET_PATH: &str = "/mnt/secrets-store";
/// A fetched round stays shareable this long in the provider: the jitter must fit in it.
pub const MAX_JITTER: Duration = Duration::from_secs(240);

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Token audiences (one TokenRequest each); empty: no token.
    pub audiences: Vec<String>,
    /// How often each SecretSync is checked against the vault.
    pub refresh_interval: Duration,
    /// The shortest interval a SecretSync's `keyvault-csi.io/rotation-poll-interval` may ask for.
    pub min_interval: Duration,
    /// How far a SecretSync's check may be spread into its round (capped at [`MAX_JITTER`]).
    pub jitter: Duration,
    /// Service accounts must name the SecretSyncs that may use them.
    pub require_opt_in: bool,
    /// Concurrent reconciles.
    pub concurrency: u16,
    /// When some objects fail, sync the keys that could be fetched (Azure's `enablePartialSecretSync`);
    /// a SecretSync's `keyvault-csi.io/partial-sync` annotation overrides it.
    pub partial_sync: bool,
    /// The audit trail: one line per object synced into a Secret.
    pub audit: driver::audit::Audit,
}

/// What the controller remembers of a SecretSync's last check, to tell a poll from a change.
#[derive(Clone, Debug, Default)]
struct Seen {
    generation: i64,
    class: Option<(String, i64)>,
    secret_version: Option<String>,
    refresh_now: Option<String>,
    interval: Duration,
    due: Option<SystemTime>,
    failures: u32,
}

/// Everything a reconcile needs.
pub struct Context {
    client: kube::Client,
    config: Config,
    hash_key: Vec<u8>,
    providers: Providers,
    classes: Store<SecretProviderClass>,
    secrets: Store<Secret>,
    tokens: Tokens,
    metrics: SyncMetrics,
    recorder: Recorder,
    seen: Mutex<HashMap<(String, String), Seen>>,
    accounts: Mutex<HashMap<(String, String), Account>>,
}

/// A service account's opt-in annotation as last read (`None`: the account does not exist).
#[derive(Clone)]
struct Account {
    read: Instant,
    annotations: Option<BTreeMap<String, String>>,
}

/// How long a round's check trusts a service account read by an earlier check: a round of 1,000
/// SecretSyncs on five accounts reads five, not 1,000. A change of the SecretSync itself reads afresh,
/// so this bounds only how long a revoked opt-in keeps serving polls.
const ACCOUNT_CACHE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
/// Never returned: every failure becomes a condition and a requeue.
pub struct Never(String);

/// Runs the controller until `stop` resolves.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    config: Config,
    hash_key: Vec<u8>,
    providers: Providers,
    tokens: Tokens,
    metrics: SyncMetrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let syncs: Api<SecretSync> = Api::all(client.clone());
    let (classes, class_writer) = reflector::store();
    let class_stream = watcher(Api::<SecretProviderClass>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|c: &mut SecretProviderClass| c.metadata.managed_fields = None)
        .reflect(class_writer)
        .touched_objects();
    let (secrets, secret_writer) = reflector::store();
    let secret_stream = watcher(Api::<Secret>::all(client.clone()), watcher::Config::default().labels(MANAGED_LABEL))
        .default_backoff()
        .modify(|s: &mut Secret| s.metadata.managed_fields = None)
        .reflect(secret_writer)
        .touched_objects();

    let controller = kube::runtime::Controller::new(syncs, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(config.concurrency));
    let store = controller.store();
    let by_class = store.clone();
    let controller = controller
        .watches_stream(class_stream, move |c: SecretProviderClass| {
            let (ns, name) = (c.namespace().unwrap_or_default(), c.name_any());
            by_class
                .state()
                .into_iter()
                .filter(|s| s.namespace().as_deref() == Some(&ns) && s.spec.secret_provider_class_name == name)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .watches_stream(secret_stream, |s: Secret| {
            // The Secret has its SecretSync's name.
            Some(ObjectRef::new(&s.name_any()).within(&s.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(stop);

    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), COMPONENT),
        client,
        config,
        hash_key,
        providers,
        classes: classes.clone(),
        secrets: secrets.clone(),
        tokens,
        metrics,
        seen: Mutex::default(),
        accounts: Mutex::default(),
    });
    tokio::spawn({
        let (store, classes, secrets) = (store.clone(), classes, secrets);
        async move {
            use driver::kube::synced;
            let synced = async { synced(&store).await && synced(&classes).await && synced(&secrets).await };
            if synced.await {
                ready.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(secretsyncs = store.state().len(), "watch caches synced");
            }
        }
    });
    let forget = ctx.clone();
    controller
        .run(reconcile, |_, _: &Never, _| Action::requeue(Duration::from_secs(30)), ctx)
        .for_each(|result| {
            match &result {
                Err(controller::Error::ObjectNotFound(r)) => {
                    // Deleted: its Secret goes with it (owner reference); forget its state and series.
                    let ns = r.namespace.clone().unwrap_or_default();
                    forget.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns.clone(), r.name.clone()));
                    forget.metrics.forget(&ns, &r.name);
                }
                // A watch failing (RBAC, a missing CRD, the API server away): retried with backoff.
                Err(e) => tracing::warn!(error = %e, "SecretSync controller"),
                Ok(_) => {}
            }
            std::future::ready(())
        })
        .await;
}

/// Where a check was triggered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// Its round came: share the round's fetches.
    Poll(u64),
    /// Something changed (or it is new to this process).
    Change,
    /// `forceSynchronization` or the refresh-now annotation: nothing fetched before may be reused.
    Forced,
}

async fn reconcile(ss: Arc<SecretSync>, ctx: Arc<Context>) -> Result<Action, Never> {
    use tracing::Instrument;
    let span =
        tracing::info_span!("secretsync", namespace = %ss.namespace().unwrap_or_default(), name = %ss.name_any());
    // One SecretSync's input must not stop the controller: a panic is caught, counted in
    // task_panics_total{task="secretsync"}, and the object is retried a round later.
    let tasks = ctx.metrics.tasks.clone();
    match driver::supervise::isolate(check(ss, ctx.clone()).instrument(span)).await {
        Ok(action) => Ok(action),
        Err(panic) => {
            tasks.record_isolated("secretsync", &panic);
            Ok(Action::requeue(ctx.config.refresh_interval))
        }
    }
}

/// One check of a SecretSync: decides whether anything is due, syncs, records the outcome.
async fn check(ss: Arc<SecretSync>, ctx: Arc<Context>) -> Action {
    let (ns, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    let key = (ns.clone(), name.clone());
    let generation = ss.metadata.generation.unwrap_or(0);
    let class = ctx.classes.get(&ObjectRef::new(&ss.spec.secret_provider_class_name).within(&ns));
    let class_id = class.as_ref().map(|c| (c.uid().unwrap_or_default(), c.metadata.generation.unwrap_or(0)));
    let live = ctx.secrets.get(&ObjectRef::new(&name).within(&ns));
    let secret_version = live.as_ref().and_then(|s| s.resource_version());
    let refresh_now = ss.annotations().get(driver::annotations::REFRESH_NOW).cloned();
    let (schedule, invalid_interval) =
        Schedule::of(&ctx.config, ss.annotations().get(driver::annotations::ROTATION_INTERVAL).map(String::as_str));
    let now = SystemTime::now();
    let previous = ctx.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();

    let trigger = match &previous {
        Some(p)
            if p.generation == generation
                && p.class == class_id
                && p.secret_version == secret_version
                && p.interval == schedule.interval =>
        {
            if p.refresh_now != refresh_now && refresh_now.is_some() {
                Trigger::Forced
            } else if p.due.is_none_or(|d| d <= now) {
                Trigger::Poll(schedule.round(now))
            } else {
                // A status write or an unrelated touch: nothing to do before the round.
                let wait = p.due.and_then(|d| d.duration_since(now).ok()).unwrap_or_default();
                return Action::requeue(wait);
            }
        }
        Some(p) if p.generation != generation && generation > 0 => Trigger::Forced,
        _ => Trigger::Change,
    };
    let started = Instant::now();
    tracing::debug!(?trigger, "checking");
    if let Some(e) = &invalid_interval
        && !matches!(trigger, Trigger::Poll(_))
    {
        // Once per change of the SecretSync, not on every round.
        ctx.recorder
            .object_event(
                &reference(&ss),
                COMPONENT,
                EventType::Warning,
                "InvalidRotationInterval",
                &format!("{e}; using {:?}", schedule.interval),
            )
            .await;
    }
    let outcome = sync(&ss, &ctx, class.as_deref(), live.as_deref(), trigger).await;
    let elapsed = started.elapsed();
    let status_before = ss.status.clone().unwrap_or_default();
    let mut seen = Seen {
        generation,
        class: class_id,
        secret_version,
        refresh_now: refresh_now.clone(),
        interval: schedule.interval,
        due: None,
        failures: previous.as_ref().map_or(0, |p| p.failures),
    };
    let labels = SyncLabels { namespace: ns.clone(), name: name.clone() };
    let next_round = schedule.next_due(ss.uid().as_deref().unwrap_or(&name), now);
    if let Ok(done) = &outcome {
        // Our own write's watch event is not a change (a partial sync writes too).
        seen.secret_version = done.secret_version.clone().or(seen.secret_version);
    }
    let wait = match (failure_of(outcome.as_ref()), &outcome) {
        (None, Ok(done)) => {
            seen.failures = 0;
            let due = next_round;
            seen.due = Some(due);
            ctx.metrics.last_success.get_or_create(&labels).set(unix(now));
            ctx.metrics.ready.get_or_create(&labels).set(1);
            let result = if done.written.is_some() { "written" } else { "unchanged" };
            ctx.metrics.reconciles.get_or_create(&ResultLabels { result: result.into() }).inc();
            tracing::debug!(result, elapsed_ms = elapsed.as_millis() as u64, "checked");
            due.duration_since(now).unwrap_or_default()
        }
        (Some(f), _) | (None, Err(f)) => {
            seen.failures += 1;
            ctx.metrics.ready.get_or_create(&labels).set(0);
            let result = if outcome.is_ok() { "partial" } else { "failed" };
            ctx.metrics.reconciles.get_or_create(&ResultLabels { result: result.into() }).inc();
            ctx.metrics
                .failures
                .get_or_create(&FailureLabels {
                    namespace: ns.clone(),
                    name: name.clone(),
                    reason: f.reason.as_str().into(),
                })
                .inc();
            tracing::warn!(reason = f.reason.as_str(), error = %f.message, failures = seen.failures, "sync failed");
            // Never later than the next round (which shares its fetches anyway).
            let wait = backoff(seen.failures, f).min(next_round.duration_since(now).unwrap_or_default());
            // The retry is due then, not at the status write's watch event.
            seen.due = Some(now + wait);
            wait
        }
    };
    write_status(&ss, &ctx, &status_before, generation, outcome.as_ref()).await;
    ctx.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, seen);
    Action::requeue(wait)
}

/// What went wrong in a check, if anything: its failure, or a partial sync's.
fn failure_of<'a>(outcome: Result<&'a Done, &'a Failure>) -> Option<&'a Failure> {
    match outcome {
        Ok(done) => done.partial.as_ref(),
        Err(f) => Some(f),
    }
}

fn files_of(r: &driver::provider::MountResponse) -> BTreeMap<String, Vec<u8>> {
    r.files.iter().map(|f| (f.path.clone(), f.contents.expose_secret().to_vec())).collect()
}

/// Whether a SecretSync syncs what could be fetched when some objects fail: its
/// `keyvault-csi.io/partial-sync` annotation (`true`/`false`), else the controller's `--partial-sync`.
fn partial_sync(ss: &SecretSync, config: &Config) -> bool {
    match ss.annotations().get(decide::PARTIAL_SYNC_ANNOTATION).map(|v| v.trim()) {
        Some("true") => true,
        Some("false") => false,
        _ => config.partial_sync,
    }
}

/// The class's `objects` parameter (the `array:` list Azure's provider and upstream's test provider
/// read) as one parameter per object; `None` when it is not such a list.
fn split_objects(attributes: &BTreeMap<String, String>) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Objects {
        array: Vec<String>,
    }
    let objects: Objects = serde_saphyr::from_str(attributes.get("objects")?).ok()?;
    // YAML reads JSON: each part is the same list with one entry.
    Some(objects.array.into_iter().map(|o| serde_json::json!({ "array": [o] }).to_string()).collect())
}

/// Fetches each object on its own (objects that succeeded in the failed fetch are shared from it, as
/// the cycle is the same): the files of those that succeed and the errors of those that fail; `None`
/// when nothing succeeds.
async fn fetch_each(
    provider: &dyn driver::provider::Provider,
    request: &MountRequest,
    parts: Vec<String>,
    served: impl Fn(&driver::provider::MountResponse),
) -> Option<(BTreeMap<String, Vec<u8>>, Vec<String>)> {
    let fetches = parts.into_iter().map(|objects| {
        let mut r = request.clone();
        r.attributes.insert("objects".into(), objects);
        provider.mount(r)
    });
    let mut files = BTreeMap::new();
    let mut errors = Vec::new();
    for result in futures_util::future::join_all(fetches).await {
        match result {
            Ok(r) => {
                served(&r);
                files.extend(files_of(&r));
            }
            Err(e) => errors.push(e.message),
        }
    }
    (!files.is_empty()).then_some((files, errors))
}

/// The service account's annotations (`None`: it does not exist): from the cache for a round's
/// check, read afresh otherwise.
async fn account_annotations(
    ctx: &Context,
    ns: &str,
    sa: &str,
    cached: bool,
) -> Result<Option<BTreeMap<String, String>>, Failure> {
    let key = (ns.to_string(), sa.to_string());
    if cached
        && let Some(a) = ctx.accounts.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
        && a.read.elapsed() < ACCOUNT_CACHE
    {
        return Ok(a.annotations.clone());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let account = api.get_opt(sa).await.map_err(|e| {
        Failure::new(
            FailureReason::ControllerSyncError,
            format!("failed to get service account {ns}/{sa}: {}", driver::kube::describe(&e)),
        )
    })?;
    let annotations = account.map(|a| a.metadata.annotations.unwrap_or_default());
    let mut accounts = ctx.accounts.lock().unwrap_or_else(|e| e.into_inner());
    accounts.retain(|_, a| a.read.elapsed() < ACCOUNT_CACHE);
    accounts.insert(key, Account { read: Instant::now(), annotations: annotations.clone() });
    Ok(annotations)
}

/// What a successful check did.
struct Done {
    hash: String,
    written: Option<Written>,
    secret_version: Option<String>,
    /// Partial sync: some keys kept their earlier value (`PartialSync`).
    partial: Option<Failure>,
}

async fn sync(
    ss: &SecretSync,
    ctx: &Context,
    class: Option<&SecretProviderClass>,
    live: Option<&Secret>,
    trigger: Trigger,
) -> Result<Done, Failure> {
    let (ns, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    let object = &ss.spec.secret_object;
    decide::check_metadata(object)?;
    let class_name = &ss.spec.secret_provider_class_name;
    let owned;
    let class = match class {
        Some(c) => c,
        None => {
            // Not in the watch cache (created a moment ago, or the watch is behind): ask the API.
            let api: Api<SecretProviderClass> = Api::namespaced(ctx.client.clone(), &ns);
            owned =
                api.get_opt(class_name).await.map_err(|e| misconfigured(class_name, &driver::kube::describe(&e)))?;
            owned.as_ref().ok_or_else(|| misconfigured(class_name, "not found"))?
        }
    };
    let spec = &class.spec.spec;
    let sa = &ss.spec.service_account_name;
    if ctx.config.require_opt_in {
        let annotations = account_annotations(ctx, &ns, sa, matches!(trigger, Trigger::Poll(_))).await?;
        let annotations = annotations.ok_or_else(|| {
            Failure::new(FailureReason::ControllerSyncError, format!("service account {ns}/{sa} not found"))
        })?;
        decide::check_opt_in(&annotations, &ns, sa, &name)?;
    }
    let mut attributes: BTreeMap<String, String> = spec
        .parameters
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The provider's view of "who asks": the SecretSync (no pod is involved).
    attributes.insert(POD_NAME_KEY.into(), name.clone());
    attributes.insert(POD_NAMESPACE_KEY.into(), ns.clone());
    attributes.insert(POD_UID_KEY.into(), ss.uid().unwrap_or_default());
    attributes.insert(SERVICE_ACCOUNT_KEY.into(), sa.clone());
    if !ctx.config.audiences.is_empty() {
        let tokens = ctx
            .tokens
            .attribute(&ns, sa, &ctx.config.audiences)
            .await
            .map_err(|e| Failure::new(FailureReason::ControllerSyncError, e))?;
        attributes.insert(TOKENS_KEY.into(), tokens.expose_secret().to_string());
    }
    let provider = ctx.providers.get(&spec.provider).map_err(|e| misconfigured(class_name, &e.to_string()))?;
    let request = MountRequest {
        attributes,
        secrets: None,
        target_path: TARGET_PATH.into(),
        permission: 0o644,
        current_object_versions: BTreeMap::new(),
        deadline: Some(Instant::now() + Duration::from_secs(120)),
        background: matches!(trigger, Trigger::Poll(_)),
        cycle: match trigger {
            Trigger::Poll(round) => Some(round),
            _ => None,
        },
        fresh: trigger == Trigger::Forced,
    };
    let audit_subject =
        driver::audit::Subject { namespace: &ns, pod: "", secret: &name, service_account: sa, class: class_name };
    let audited = |r: &driver::provider::MountResponse| {
        ctx.config.audit.served(&audit_subject, r, driver::audit::Trigger::Sync);
    };
    let (files, errors) = match provider.mount(request.clone()).await {
        Ok(r) => {
            audited(&r);
            (files_of(&r), Vec::new())
        }
        Err(e) => {
            let failure = Failure::new(
                FailureReason::ProviderError,
                format!("failed to fetch from provider {:?}: {}", spec.provider, e.message),
            )
            .with_throttled(e.kind == ErrorKind::ResourceExhausted);
            let parts = partial_sync(ss, &ctx.config).then(|| split_objects(&request.attributes)).flatten();
            match parts {
                Some(parts) if parts.len() > 1 => {
                    fetch_each(provider.as_ref(), &request, parts, audited).await.ok_or(failure)?
                }
                _ => return Err(failure),
            }
        }
    };
    // After a partial fetch, a key whose object failed keeps the value the Secret (ours) already has.
    let previous = (!errors.is_empty())
        .then(|| live.filter(|l| owned_by(l, ss)))
        .flatten()
        .map(|l| l.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect::<BTreeMap<_, _>>());
    let partial = decide::partial_data(object, &files, previous.as_ref()).map_err(|f| match errors.first() {
        // A key nothing can fill: the provider's error says why.
        Some(e) => Failure::new(FailureReason::ProviderError, format!("{}; {}", f.message, e)),
        None => f,
    })?;
    let partial_failure = (!partial.kept.is_empty()).then(|| decide::partial_failure(&partial, &errors));
    let data = partial.data;
    let shape = serde_json::json!({"type": object.type_, "labels": object.labels, "annotations": object.annotations})
        .to_string();
    let ss_uid = ss.uid().unwrap_or_default();
    let class_uid = class.uid().unwrap_or_default();
    let provenance = Provenance {
        class: (&class_uid, class.metadata.generation.unwrap_or(0)),
        sync: (&ss_uid, ss.metadata.generation.unwrap_or(0)),
        force: &ss.spec.force_synchronization,
        shape,
    };
    let hash = decide::sync_hash(&ctx.hash_key, &data, &provenance);
    let desired = desired_secret(ss, &data);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The label-filtered cache does not see foreign Secrets, nor one written a moment ago: ask.
    let existing = match live {
        Some(s) => Some(s.clone()),
        None => api.get_opt(&name).await.map_err(|e| patch_failed(&ns, &name, &driver::kube::describe(&e)))?,
    };
    if let Some(existing) = &existing {
        if !owned_by(existing, ss) {
            // Never take over a Secret that is not ours.
            return Err(Failure::new(FailureReason::ControllerPatchError, foreign(existing, ss)));
        }
        if matches(existing, &desired) {
            // Up to date (whatever the status says: a lost status write is redone, not the Secret).
            return Ok(Done {
                hash,
                written: None,
                secret_version: existing.resource_version(),
                partial: partial_failure,
            });
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(|e| patch_failed(&ns, &name, &driver::kube::describe(&e)))?;
    ctx.metrics.wrote("secret");
    let written = if existing.is_some() { Written::Updated } else { Written::Created };
    tracing::info!(keys = data.len(), ?written, "Secret written");
    ctx.recorder
        .object_event(
            &reference(ss),
            COMPONENT,
            EventType::Normal,
            "SecretSynced",
            &format!(
                "Secret {ns}/{name} {} ({} keys)",
                if written == Written::Created { "created" } else { "updated" },
                data.len()
            ),
        )
        .await;
    ctx.metrics.wrote("event");
    Ok(Done { hash, written: Some(written), secret_version: applied.resource_version(), partial: partial_failure })
}

/// Writes the status when it changed (conditions, hash, observedGeneration), and a Warning event when
/// a failure is new or its message changed.
async fn write_status(
    ss: &SecretSync,
    ctx: &Context,
    before: &SecretSyncStatus,
    generation: i64,
    outcome: Result<&Done, &Failure>,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut after = before.clone();
    after.observed_generation = Some(generation);
    if let Ok(done) = outcome {
        // What the Secret now holds, even after a partial sync.
        after.sync_hash = done.hash.clone();
    }
    match (failure_of(outcome), outcome) {
        (None, Ok(done)) => {
            let written = done.written.unwrap_or(Written::Updated);
            // (After any success the Secret exists: SecretCreated is True.)
            after.conditions = decide::conditions(&before.conditions, generation, &now, Ok(written));
            if done.written.is_some() || before.sync_hash != done.hash || !is_ready(before) {
                after.last_successful_sync_time = Some(now.clone());
            }
        }
        (Some(f), _) | (None, Err(f)) => {
            after.conditions = decide::conditions(&before.conditions, generation, &now, Err(f));
            let old = before.conditions.iter().find(|c| c.type_ == decide::READY);
            if old.is_none_or(|c| c.message != f.message) {
                ctx.recorder
                    .object_event(&reference(ss), COMPONENT, EventType::Warning, f.reason.as_str(), &f.message)
                    .await;
                ctx.metrics.wrote("event");
            }
        }
    }
    if after == *before {
        return;
    }
    let api: Api<SecretSync> = Api::namespaced(ctx.client.clone(), &ss.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": after });
    match api.patch_status(&ss.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => ctx.metrics.wrote("status"),
        Err(e) => tracing::warn!(error = %driver::kube::describe(&e), "failed to write the SecretSync's status"),
    }
}

fn is_ready(status: &SecretSyncStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == decide::READY && c.status == "True")
}

fn misconfigured(class: &str, cause: &str) -> Failure {
    Failure::new(
        FailureReason::SecretProviderClassMisconfigured,
        format!("failed to get SecretProviderClass {class:?}: {cause}"),
    )
}

fn patch_failed(ns: &str, name: &str, cause: &str) -> Failure {
    Failure::new(FailureReason::ControllerPatchError, format!("failed to patch secret {ns}/{name}: {cause}"))
}

/// The Secret a SecretSync writes: its name, the managed label, one owner reference, type and data.
fn desired_secret(ss: &SecretSync, data: &BTreeMap<String, Vec<u8>>) -> Secret {
    let object = &ss.spec.secret_object;
    let mut labels = object.labels.clone();
    labels.insert(MANAGED_LABEL.into(), String::new());
    Secret {
        metadata: ObjectMeta {
            name: Some(ss.name_any()),
            namespace: ss.namespace(),
            labels: Some(labels),
            annotations: Some(object.annotations.clone()).filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner_reference(ss)]),
            ..Default::default()
        },
        type_: Some(object.type_.trim().to_string()),
        data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
        ..Default::default()
    }
}

/// Upstream's owner reference: no `controller`, no `blockOwnerDeletion`.
fn owner_reference(ss: &SecretSync) -> OwnerReference {
    OwnerReference {
        api_version: SecretSync::api_version(&()).into_owned(),
        kind: SecretSync::kind(&()).into_owned(),
        name: ss.name_any(),
        uid: ss.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// Whether the Secret's owner references name this SecretSync (by uid).
pub fn owned_by(secret: &Secret, ss: &SecretSync) -> bool {
    let uid = ss.uid().unwrap_or_default();
    secret.owner_references().iter().any(|o| o.kind == "SecretSync" && o.uid == uid)
}

/// Whether the live Secret already holds what would be written.
fn matches(live: &Secret, desired: &Secret) -> bool {
    let contains = |have: &BTreeMap<String, String>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    live.type_ == desired.type_
        && live.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default()
        && contains(live.labels(), &desired.metadata.labels)
        && contains(live.annotations(), &desired.metadata.annotations)
}

/// Why a Secret of the SecretSync's name is refused: whose it is (its owners, else its field managers).
pub fn foreign(secret: &Secret, ss: &SecretSync) -> String {
    let (ns, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    let owners: Vec<String> = secret.owner_references().iter().map(|o| format!("{} {}", o.kind, o.name)).collect();
    let whose = if owners.is_empty() {
        let managers: Vec<String> = secret
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if managers.is_empty() {
            "not created by a SecretSync".to_string()
        } else {
            format!("written by {}", managers.join(", "))
        }
    } else {
        format!("owned by {}", owners.join(", "))
    };
    format!(
        "secret {ns}/{name} already exists and is not managed by this SecretSync ({whose}); delete it or rename the SecretSync"
    )
}

fn reference(ss: &SecretSync) -> ObjectReference {
    ObjectReference {
        api_version: Some(SecretSync::api_version(&()).into_owned()),
        kind: Some(SecretSync::kind(&()).into_owned()),
        name: Some(ss.name_any()),
        namespace: ss.namespace(),
        uid: ss.uid(),
        resource_version: ss.resource_version(),
        ..Default::default()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// When a SecretSync is checked: every `interval`, in rounds aligned on the clock (so SecretSyncs of
/// one interval share a round's fetches), at a fixed offset within `jitter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    interval: Duration,
    jitter: Duration,
}

impl Schedule {
    /// The controller's interval, or the SecretSync's `keyvault-csi.io/rotation-poll-interval`
    /// (raised to `min_interval`); an invalid annotation is reported and the default applies.
    fn of(config: &Config, annotation: Option<&str>) -> (Self, Option<String>) {
        let (interval, invalid) = match driver::annotations::class_interval(annotation, config.min_interval) {
            Ok(Some(c)) => (c.interval, c.capped),
            Ok(None) => (config.refresh_interval, None),
            Err(e) => (config.refresh_interval, Some(e)),
        };
        let interval = interval.max(Duration::from_secs(1));
        (Self { interval, jitter: config.jitter.min(MAX_JITTER).min(interval / 2) }, invalid)
    }

    /// A SecretSync's fixed offset into every round (from its uid, so a restart keeps it).
    fn offset(&self, uid: &str) -> Duration {
        let j = self.jitter.as_millis() as u64;
        if j == 0 {
            return Duration::ZERO;
        }
        let h = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Duration::from_millis(h % j)
    }

    /// The start (Unix ms) of the round `now` belongs to; also the provider cycle of its fetches,
    /// unique across intervals.
    fn round(&self, now: SystemTime) -> u64 {
        let interval = self.interval.as_millis() as u64;
        let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        now - now % interval
    }

    /// When the SecretSync's next check is due: the next round's start plus its offset.
    fn next_due(&self, uid: &str, now: SystemTime) -> SystemTime {
        let next = self.round(now) + self.interval.as_millis() as u64;
        SystemTime::UNIX_EPOCH + Duration::from_millis(next) + self.offset(uid)
    }
}

/// Retry delay after `failures` failures in a row: 5 s doubling to 5 min (throttling starts at 30 s),
/// so a storm of 429s is not answered with a storm of retries.
fn backoff(failures: u32, f: &Failure) -> Duration {
    let base = if f.throttled { 30 } else { 5 };
    Duration::from_secs((base << failures.saturating_sub(1).min(10)).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interval: u64, jitter: u64) -> Config {
        Config {
            audiences: vec![],
            refresh_interval: Duration::from_secs(interval),
            min_interval: Duration::from_secs(30),
            jitter: Duration::from_secs(jitter),
            require_opt_in: true,
            concurrency: 1,
            partial_sync: false,
            audit: driver::audit::Audit::off(),
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_class_objects_list_splits_into_one_list_per_object_and_anything_else_does_not() {
        let objects =
            "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: key\n";
        let attrs = BTreeMap::from([("objects".to_string(), objects.to_string())]);
        let parts = split_objects(&attrs).unwrap();
        assert_eq!(parts.len(), 2);
        #[derive(serde::Deserialize)]
        struct Objects {
            array: Vec<String>,
        }
        let b: Objects = serde_saphyr::from_str(&parts[1]).unwrap();
        assert_eq!(b.array, vec!["objectName: b\nobjectType: key\n".to_string()], "the entry, verbatim");
        assert_eq!(split_objects(&BTreeMap::new()), None);
        let other = BTreeMap::from([("objects".to_string(), "a,b".to_string())]);
        assert_eq!(split_objects(&other), None, "not the array: list");
    }

    #[test]
    fn every_secret_sync_checks_once_per_round_at_its_own_offset_within_the_jitter() {
        let (s, invalid) = Schedule::of(&config(3600, 60), None);
        assert_eq!(invalid, None);
        let due_a = s.next_due("uid-a", at(7200 + 10));
        let due_b = s.next_due("uid-b", at(7200 + 3000));
        for d in [due_a, due_b] {
            let into = d.duration_since(at(10_800)).expect("in the next round");
            assert!(into < Duration::from_secs(60), "{into:?}");
        }
        assert_ne!(due_a, due_b, "spread within the round");
        assert_eq!(s.round(due_a), s.round(due_b), "one round: one provider cycle");
        assert_eq!(s.round(due_a), 10_800_000);
        assert_eq!(s.next_due("uid-a", at(1)), s.next_due("uid-a", at(2)), "stable across restarts");
        // The jitter is capped so a round's fetches stay shareable, and at half the interval.
        assert!(Schedule::of(&config(3600, 3600), None).0.offset("x") < MAX_JITTER);
        assert!(Schedule::of(&config(60, 600), None).0.offset("x") <= Duration::from_secs(30));
        assert_eq!(Schedule::of(&config(60, 0), None).0.offset("x"), Duration::ZERO);
    }

    #[test]
    fn a_secret_sync_may_ask_for_its_own_interval_within_the_floor() {
        let c = config(3600, 60);
        assert_eq!(Schedule::of(&c, Some("5m")).0.interval, Duration::from_secs(300));
        assert_eq!(Schedule::of(&c, Some("1s")).0.interval, Duration::from_secs(30), "raised to the floor");
        let (s, invalid) = Schedule::of(&c, Some("soon"));
        assert_eq!(s.interval, Duration::from_secs(3600));
        assert!(invalid.unwrap().contains("keyvault-csi.io/rotation-poll-interval"));
        // Rounds of different intervals never share a cycle number unless they start together.
        let five = Schedule::of(&c, Some("5m")).0;
        let hour = Schedule::of(&c, None).0;
        assert_ne!(five.round(at(3600 + 300)), hour.round(at(3600 + 300)));
        assert_eq!(five.round(at(7200 + 10)), hour.round(at(7200 + 10)), "same start, same fetch time");
    }

    /// The most hostile values a SecretSync's annotation can carry: a round is still computed.
    #[test]
    fn hostile_intervals_are_capped_or_refused_and_rounds_still_compute() {
        let c = config(3600, 60);
        let (s, warning) = Schedule::of(&c, Some("2562047h"));
        assert_eq!(s.interval, driver::annotations::MAX_CLASS_INTERVAL);
        assert!(warning.unwrap().contains("capped at 720h"));
        let _ = s.next_due("uid", SystemTime::now());
        for v in ["3000000000000000h", "1e400h", &"9".repeat(10_000)] {
            let (s, warning) = Schedule::of(&c, Some(v));
            assert_eq!(s.interval, Duration::from_secs(3600), "{v:.20}");
            assert!(warning.unwrap().len() < 400, "the value is quoted bounded");
            let _ = s.next_due("uid", SystemTime::now());
        }
    }

    #[test]
    fn failures_back_off_exponentially_and_throttling_harder() {
        let f = Failure::new(FailureReason::ProviderError, "x");
        assert_eq!(backoff(1, &f), Duration::from_secs(5));
        assert_eq!(backoff(2, &f), Duration::from_secs(10));
        assert_eq!(backoff(20, &f), Duration::from_secs(300));
        let t = f.clone().with_throttled(true);
        assert_eq!(backoff(1, &t), Duration::from_secs(30));
        assert_eq!(backoff(4, &t), Duration::from_secs(240));
    }

    fn sync(uid: &str) -> SecretSync {
        let mut ss = SecretSync::new(
            "db",
            crate::api::SecretSyncSpec {
                secret_provider_class_name: "spc".into(),
                service_account_name: "sa".into(),
                secret_object: crate::api::SecretObject {
                    type_: "Opaque".into(),
                    data: vec![],
                    labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
                    annotations: BTreeMap::new(),
                },
                ..Default::default()
            },
        );
        ss.metadata.namespace = Some("ns".into());
        ss.metadata.uid = Some(uid.into());
        ss
    }

    #[test]
    fn the_secret_is_upstreams_and_a_foreign_one_is_named_not_taken() {
        let ss = sync("uid-1");
        let d = desired_secret(&ss, &BTreeMap::from([("password".to_string(), b"x".to_vec())]));
        assert_eq!(d.metadata.labels.as_ref().unwrap()[MANAGED_LABEL], "");
        assert_eq!(d.metadata.labels.as_ref().unwrap()["team"], "a");
        let owners = d.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].api_version.as_str(), owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("secret-sync.x-k8s.io/v1alpha1", "SecretSync", "uid-1")
        );
        assert_eq!(owners[0].controller, None, "upstream sets neither controller nor blockOwnerDeletion");
        assert!(owned_by(&d, &ss));
        assert!(!owned_by(&d, &sync("uid-2")), "a deleted and recreated SecretSync is another owner");
        assert!(matches(&d, &d));
        let mut tampered = d.clone();
        tampered.data.as_mut().unwrap().insert("password".into(), ByteString(b"y".to_vec()));
        assert!(!matches(&tampered, &d));
        let mut extra = d.clone();
        extra.data.as_mut().unwrap().insert("old-key".into(), ByteString(b"y".to_vec()));
        assert!(!matches(&extra, &d), "a key no longer listed is pruned");

        let mut theirs = Secret::default();
        theirs.metadata.managed_fields =
            Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("kubectl-create".into()),
                ..Default::default()
            }]);
        assert!(!owned_by(&theirs, &ss));
        assert_eq!(
            foreign(&theirs, &ss),
            "secret ns/db already exists and is not managed by this SecretSync (written by kubectl-create); \
             delete it or rename the SecretSync"
        );
        theirs.metadata.owner_references =
            Some(vec![OwnerReference { kind: "Deployment".into(), name: "web".into(), ..Default::default() }]);
        assert!(foreign(&theirs, &ss).contains("(owned by Deployment web)"));
    }
}
