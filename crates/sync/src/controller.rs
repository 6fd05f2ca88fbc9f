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
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use kube_bridge::crd::v1::SecretProviderClass;
use kube_bridge::{EventType, Recorder};
use secrets_store::provider::Providers;

use crate::api::{MANAGED_LABEL, SecretSync};
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
    pub audit: secrets_store::audit::Audit,
}

mod fetch;
mod schedule;
mod secret;
mod status;

pub use secret::{foreign, owned_by};

use fetch::account_annotations;
use schedule::{Observed, Schedule, Seen, Trigger, backoff, trigger_of, unix};
use secret::{desired_secret, matches, reference};
use status::{misconfigured, patch_failed, write_status};

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
    /// What each SecretSync holds, for change events (see [`crate::events`]).
    holders: crate::events::Holders,
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
    events: Option<(crate::events::Holders, tokio::sync::mpsc::UnboundedReceiver<(String, String)>)>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (holders, triggers) = match events {
        Some((h, rx)) => (h, Some(rx)),
        None => (Default::default(), None),
    };
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
    // Change events force a check of the SecretSyncs holding the changed object.
    let controller = match triggers {
        Some(rx) => controller.reconcile_on(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                .map(|(ns, name)| ObjectRef::<SecretSync>::new(&name).within(&ns)),
        ),
        None => controller,
    };

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
        holders,
    });
    tokio::spawn({
        let (store, classes, secrets) = (store.clone(), classes, secrets);
        async move {
            use kube_bridge::synced;
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
                    forget.holders.forget(&(ns.clone(), r.name.clone()));
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

async fn reconcile(ss: Arc<SecretSync>, ctx: Arc<Context>) -> Result<Action, Never> {
    use tracing::Instrument;
    let span =
        tracing::info_span!("secretsync", namespace = %ss.namespace().unwrap_or_default(), name = %ss.name_any());
    // One SecretSync's input must not stop the controller: a panic is caught, counted in
    // task_panics_total{task="secretsync"}, and the object is retried a round later.
    let tasks = ctx.metrics.tasks.clone();
    match kube_bridge::supervise::isolate(check(ss, ctx.clone()).instrument(span)).await {
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
    let refresh_now = ss.annotations().get(secrets_store::annotations::REFRESH_NOW).cloned();
    let (schedule, invalid_interval) = Schedule::of(
        &ctx.config,
        ss.annotations().get(secrets_store::annotations::ROTATION_INTERVAL).map(String::as_str),
    );
    let now = SystemTime::now();
    let previous = ctx.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();

    let invalidations = ctx.holders.invalidations(&key);
    let observed = Observed {
        generation,
        class: class_id,
        secret_version,
        refresh_now,
        interval: schedule.interval,
        invalidations,
    };
    let trigger = match trigger_of(previous.as_ref(), &observed, &schedule, now) {
        Ok(t) => t,
        Err(wait) => return Action::requeue(wait),
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
    let mut seen = Seen { observed, due: None, failures: previous.as_ref().map_or(0, |p| p.failures) };
    let labels = SyncLabels { namespace: ns.clone(), name: name.clone() };
    let next_round = schedule.next_due(ss.uid().as_deref().unwrap_or(&name), now);
    if let Ok(done) = &outcome {
        // Our own write's watch event is not a change (a partial sync writes too).
        seen.observed.secret_version = done.secret_version.clone().or(seen.observed.secret_version);
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
            owned = api.get_opt(class_name).await.map_err(|e| misconfigured(class_name, &kube_bridge::describe(&e)))?;
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
    let (files, errors) = fetch::fetch(ss, ctx, spec, trigger).await?;
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
        None => api.get_opt(&name).await.map_err(|e| patch_failed(&ns, &name, &kube_bridge::describe(&e)))?,
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
        .map_err(|e| patch_failed(&ns, &name, &kube_bridge::describe(&e)))?;
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
