//! Provider requests for a SecretSync: the attributes a pod's mount would carry (the SecretSync stands
//! in for the pod), one request for the class, and, for partial sync, one request per object when it
//! fails. Every object served is written to the audit trail.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, ResourceExt};
use secrecy::ExposeSecret;

use secrets_store::class::SecretProviderClassSpec;
use secrets_store::provider::{ErrorKind, MountRequest};
use secrets_store::volume_context::{Caller, provider_attributes};

use super::schedule::Trigger;
use super::status::misconfigured;
use super::{ACCOUNT_CACHE, Account, Config, Context, TARGET_PATH};
use crate::api::SecretSync;
use crate::decide::{self, Failure, FailureReason};

/// The files of the SecretSync's objects, and the errors of those that failed (partial sync only).
pub(super) async fn fetch(
    ss: &SecretSync,
    ctx: &Context,
    spec: &SecretProviderClassSpec,
    trigger: Trigger,
) -> Result<(BTreeMap<String, Vec<u8>>, Vec<String>), Failure> {
    let (ns, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    let class_name = &ss.spec.secret_provider_class_name;
    let sa = &ss.spec.service_account_name;
    let tokens = match ctx.config.audiences.is_empty() {
        true => None,
        false => Some(
            ctx.tokens
                .attribute(&ns, sa, &ctx.config.audiences)
                .await
                .map_err(|e| Failure::new(FailureReason::ControllerSyncError, e))?,
        ),
    };
    // The provider's view of "who asks": the SecretSync (no pod is involved).
    let uid = ss.uid().unwrap_or_default();
    let caller = Caller { pod: &name, namespace: &ns, uid: &uid, service_account: sa };
    let attributes = provider_attributes(&spec.parameters, &caller.context(), tokens.as_ref());
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
    let audit_subject = secrets_store::audit::Subject {
        namespace: &ns,
        pod: "",
        secret: &name,
        service_account: sa,
        class: class_name,
    };
    let audited = |r: &secrets_store::provider::MountResponse| {
        ctx.config.audit.served(&audit_subject, r, secrets_store::audit::Trigger::Sync);
        // What change events are matched against (with a partial sync, what was served so far).
        ctx.holders.record((ns.clone(), name.clone()), r.sources());
    };
    match provider.mount(request.clone()).await {
        Ok(r) => {
            audited(&r);
            Ok((files_of(&r), Vec::new()))
        }
        Err(e) => {
            let failure = Failure::new(
                FailureReason::ProviderError,
                format!("failed to fetch from provider {:?}: {}", spec.provider, e.message),
            )
            .with_throttled(e.kind == ErrorKind::ResourceExhausted);
            let parts = partial_sync(ss, &ctx.config)
                .then(|| secrets_store::provider::split_objects(&request.attributes))
                .flatten();
            match parts {
                Some(parts) if parts.len() > 1 => {
                    fetch_each(provider.as_ref(), &request, parts, audited).await.ok_or(failure)
                }
                _ => Err(failure),
            }
        }
    }
}

pub(super) fn files_of(r: &secrets_store::provider::MountResponse) -> BTreeMap<String, Vec<u8>> {
    r.files.iter().map(|f| (f.path.clone(), f.contents.expose_secret().to_vec())).collect()
}

/// Whether a SecretSync syncs what could be fetched when some objects fail: its
/// `keyvault-csi.io/partial-sync` annotation (`true`/`false`), else the controller's `--partial-sync`.
pub(super) fn partial_sync(ss: &SecretSync, config: &Config) -> bool {
    match ss.annotations().get(decide::PARTIAL_SYNC_ANNOTATION).map(|v| v.trim()) {
        Some("true") => true,
        Some("false") => false,
        _ => config.partial_sync,
    }
}

/// Fetches each object on its own (objects that succeeded in the failed fetch are shared from it, as
/// the cycle is the same): the files of those that succeed and the errors of those that fail; `None`
/// when nothing succeeds.
pub(super) async fn fetch_each(
    provider: &dyn secrets_store::provider::Provider,
    request: &MountRequest,
    parts: Vec<String>,
    served: impl Fn(&secrets_store::provider::MountResponse),
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
pub(super) async fn account_annotations(
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
            format!("failed to get service account {ns}/{sa}: {}", kube_bridge::describe(&e)),
        )
    })?;
    let annotations = account.map(|a| a.metadata.annotations.unwrap_or_default());
    let mut accounts = ctx.accounts.lock().unwrap_or_else(|e| e.into_inner());
    accounts.retain(|_, a| a.read.elapsed() < ACCOUNT_CACHE);
    accounts.insert(key, Account { read: Instant::now(), annotations: annotations.clone() });
    Ok(annotations)
}
