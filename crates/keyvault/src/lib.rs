//! The Azure Key Vault secrets provider: a SecretProviderClass's `parameters`, the pod's identity
//! material and the node-publish secrets in; files (path, mode, bytes) and object versions out.
//!
//! It knows nothing about CSI or Kubernetes types. Start at [`Provider::mount`]: [`params`] validates
//! everything before any network call, [`identity`] gets (and caches) an access token, [`vault`] talks
//! to Key Vault through the shared [`transport`] (retries, per-vault rate limit, coordinated backoff),
//! and [`convert`] turns objects into file contents exactly as the upstream provider does. All objects
//! of a mount are fetched concurrently, and identical fetches (same vault, object, version and
//! identity) that are in flight or finished within `dedup_window` share one request.

pub mod budget;
pub mod cloud;
pub mod convert;
pub mod error;
pub mod events;
pub mod failover;
pub mod identity;
pub mod json_keys;
pub mod last_good;
pub mod lint;
pub mod metrics;
pub mod model;
pub mod params;
mod select;
pub mod transport;
pub mod vault;

mod fetch;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use error::{Error, ErrorKind, Origin, Result};
pub use stats::Stats;
pub use transport::{NetworkConfig, Priority, RetryPolicy, VaultLimits};

/// Vaults whose challenge scope is remembered at once (see `vault.rs`).
pub const MAX_VAULT_SCOPES: usize = 1024;

/// Entries in the provider's shared maps, each keyed by tenant input and each bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Per-vault rate windows.
    pub vault_gates: usize,
    /// Cached tokens (identity and scope).
    pub cached_tokens: usize,
    /// Discovered challenge scopes.
    pub vault_scopes: usize,
    /// In-flight and recently finished fetches.
    pub flights: usize,
}

/// Provider settings (the upstream provider's flags, plus ours).
#[derive(Clone, Debug)]
pub struct Config {
    /// `--construct-pem-chain` (default true): order PFX chains leaf → root.
    pub construct_pem_chain: bool,
    /// `--write-cert-and-key-in-separate-files` (default false): extra `.crt` and `.key` files.
    pub write_cert_and_key_in_separate_files: bool,
    /// `--cloud-name` (cloud when a class names none) and `--cloud-env-dir`.
    pub clouds: cloud::Clouds,
    /// Endpoints, CA and name-resolution overrides.
    pub network: NetworkConfig,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-vault rate limit and concurrency.
    pub limits: VaultLimits,
    /// How long a finished fetch may be shared by identical fetches (same identity).
    pub dedup_window: Duration,
    /// Deadline of a mount whose caller gave none.
    pub default_timeout: Duration,
    /// How long a vault that failed is skipped in favour of a class's failover vaults, at first.
    pub failover_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            construct_pem_chain: true,
            write_cert_and_key_in_separate_files: false,
            clouds: cloud::Clouds::default(),
            network: NetworkConfig::default(),
            retry: RetryPolicy::default(),
            limits: VaultLimits::default(),
            dedup_window: Duration::from_secs(5),
            default_timeout: Duration::from_secs(110),
            failover_backoff: failover::FIRST_BACKOFF,
        }
    }
}

/// One mount.
#[derive(Clone, Default)]
pub struct MountRequest {
    /// Class parameters overlaid with pod attributes and the tokens JSON.
    pub attributes: BTreeMap<String, String>,
    /// Node-publish secrets (`clientid`/`clientsecret`, ...).
    pub secrets: params::SecretMap,
    /// Default file mode (0o644).
    pub default_mode: u32,
    /// When the caller gives up.
    pub deadline: Option<Instant>,
    /// Mount (a pod waits) or background refresh (rotation).
    pub priority: Priority,
    /// A rotation cycle: fetches of the same cycle (and identity) share results for as long as the
    /// cycle runs, whatever `dedup_window` says, so a cycle costs one request per distinct object.
    pub cycle: Option<u64>,
    /// A refresh-now request: share only fetches of its own cycle, never a result that finished
    /// within `dedup_window` before it (the user asked for what the vault holds now).
    pub fresh: bool,
}

impl std::fmt::Debug for MountRequest {
    /// Attribute values except the tokens, and the names of the secrets: never a token or a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attributes: BTreeMap<&str, &str> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), if k == params::TOKENS_KEY { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("MountRequest")
            .field("attributes", &attributes)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("default_mode", &format_args!("{:o}", self.default_mode))
            .field("deadline", &self.deadline)
            .field("priority", &self.priority)
            .field("cycle", &self.cycle)
            .finish()
    }
}

/// One file to write.
#[derive(Clone)]
pub struct File {
    /// Relative path.
    pub path: String,
    /// Mode.
    pub mode: u32,
    /// Contents (secret).
    pub contents: secrecy::SecretSlice<u8>,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use secrecy::ExposeSecret;
        write!(f, "File({:?}, {:o}, {} bytes)", self.path, self.mode, self.contents.expose_secret().len())
    }
}

/// The result of a mount.
#[derive(Clone, Debug, Default)]
pub struct MountResponse {
    /// Files in class order.
    pub files: Vec<File>,
    /// Object id → version.
    pub object_versions: BTreeMap<String, String>,
    /// Each object version served, with where it came from (for the audit trail and failover).
    pub served: Vec<Served>,
    /// Who asked: the identity's kind and client id (never a credential).
    pub identity: IdentitySummary,
}

/// One object version a mount served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// `<type>/<name>` (with history, `<type>/<name>/<i>`), as in the pod status.
    pub id: String,
    /// The version ("" for a missing optional object).
    pub version: String,
    /// The vault that served it.
    pub vault: String,
    /// Served by a failover vault, not the class's `keyvaultName`.
    pub failover: bool,
    /// Shared with another caller's fetch (no Key Vault request of its own).
    pub cache_hit: bool,
    /// Served from the node's last known good (`maxStaleness`, ours), fetched this long ago.
    pub stale: Option<std::time::Duration>,
}

impl Served {
    pub(crate) fn new(id: String, version: String, call: &vault::VaultCall<'_>, cache_hit: bool) -> Self {
        let failover = !call.vault.eq_ignore_ascii_case(&call.params.vault_name);
        Self { id, version, vault: call.vault.clone(), failover, cache_hit, stale: None }
    }
}

/// The identity a mount used, as the audit trail names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySummary {
    /// `workload`, `service-principal`, `managed-identity`, `identity-binding` or `pod-identity`.
    pub kind: &'static str,
    /// The client id ("" for a system-assigned identity or pod identity).
    pub client_id: String,
}

/// Told about every object fetch (for metrics): type, name, duration (retries and conversion
/// included) and the error kind, if it failed.
pub trait Observer: Send + Sync {
    /// One object (or one version list) fetched.
    fn object_fetched(&self, object_type: &str, object_name: &str, duration: Duration, error: Option<ErrorKind>);
}

/// The provider.
pub struct Provider {
    config: Config,
    transport: transport::Transport,
    tokens: identity::TokenCache,
    token_proxy: identity::proxy::TokenProxy,
    /// Vault base URL → the token scope from its challenge, discovered once (one challenge in flight).
    scopes: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<String>>>>,
    flights: Arc<fetch::Flights>,
    /// What opted-in classes were served, for outages (`maxStaleness`).
    last_good: last_good::LastGood,
    /// Vaults backing off after an outage (failover vaults).
    health: failover::Health,
    /// Started with the first mount (a runtime exists then): evicts shared results on a timer.
    janitor: std::sync::OnceLock<()>,
    stats: Arc<Stats>,
    observer: Option<Arc<dyn Observer>>,
}

impl Provider {
    /// Builds the provider (one HTTP client for its lifetime).
    pub fn new(config: Config) -> Result<Self> {
        let stats = Arc::new(Stats::default());
        let transport =
            transport::Transport::new(&config.network, config.retry.clone(), config.limits.clone(), stats.clone())?;
        let token_proxy =
            identity::proxy::TokenProxy::new(config.network.token_proxy.clone(), config.network.resolve_all_to);
        let health = failover::Health::new(config.failover_backoff);
        Ok(Self {
            config,
            transport,
            tokens: identity::TokenCache::default(),
            token_proxy,
            scopes: Mutex::new(HashMap::new()),
            last_good: last_good::LastGood::default(),
            flights: Arc::default(),
            health,
            janitor: std::sync::OnceLock::new(),
            stats,
            observer: None,
        })
    }

    /// Reports every object fetch to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// How much shared state the provider holds now (for the hostile-tenant bench and debugging).
    pub fn footprint(&self) -> Footprint {
        Footprint {
            vault_gates: self.transport.gates(),
            cached_tokens: self.tokens.len(),
            vault_scopes: self.scopes.lock().unwrap_or_else(|e| e.into_inner()).len(),
            flights: self.flights.len(),
        }
    }

    /// The cloud `--cloud-name` names (endpoints for the provider's own calls, e.g. the event queue).
    pub fn default_cloud(&self) -> Result<cloud::Cloud> {
        cloud::resolve("", "", &self.config.clouds)
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Validates the request, then fetches every object concurrently and converts it to files.
    pub async fn mount(&self, req: MountRequest) -> Result<MountResponse> {
        self.janitor.get_or_init(|| self.flights.start_janitor(self.config.dedup_window));
        let params = params::parse(
            &req.attributes,
            &req.secrets,
            req.default_mode,
            &self.config.clouds,
            self.config.write_cert_and_key_in_separate_files,
        )?;
        let deadline = req.deadline.unwrap_or_else(|| Instant::now() + self.config.default_timeout);
        let objects = match &params.selector {
            None => params.objects.clone(),
            Some(selector) => {
                let selected = select::expand(self, &params, selector, &req, deadline).await?;
                select::merge(&params.objects, selected, self.config.write_cert_and_key_in_separate_files)?
            }
        };
        let results = futures_util::future::join_all(
            objects.iter().map(|o| self.object_from_any_vault(&params, o, &req, deadline)),
        )
        .await;
        let mut resp = MountResponse { identity: params.identity.summary(), ..Default::default() };
        for (o, r) in objects.iter().zip(results) {
            // Only a new mount (or kubelet's republish) is served the last known good: a rotation round
            // keeps the volume's files as they are when the vault cannot be reached.
            let (files, served) = self.or_last_good(&params, o, r, req.cycle.is_none())?;
            resp.files.extend(files);
            resp.object_versions.extend(served.iter().map(|s| (s.id.clone(), s.version.clone())));
            for s in served.iter().filter(|s| s.failover) {
                self.stats.record_failover(&s.vault);
            }
            resp.served.extend(served);
        }
        Ok(resp)
    }

    /// Objects held for `maxStaleness` (for tests and bounds).
    pub fn last_good_len(&self) -> usize {
        self.last_good.len()
    }

    /// An object's fetch, remembered for classes with `maxStaleness`; when its vaults cannot be
    /// reached, what this node was served for it (see [`last_good`]). A 401 or 403 forgets what the
    /// identity was served, a 404 the object.
    fn or_last_good(
        &self,
        params: &params::MountParams,
        o: &params::ObjectSpec,
        result: Result<(Vec<File>, Vec<Served>)>,
        may_serve_stale: bool,
    ) -> Result<(Vec<File>, Vec<Served>)> {
        // The key (an identity digest and the object's description) is built only where it is used: a
        // class without `maxStaleness` pays nothing on success.
        let key = || last_good::Key::new(params, o);
        match result {
            Ok((files, served)) => {
                if params.max_staleness.is_some() {
                    self.last_good.remember(key(), &files, &served);
                }
                Ok((files, served))
            }
            Err(e) => {
                match e.kind {
                    ErrorKind::Forbidden if !self.last_good.is_empty() => {
                        self.last_good.forget_identity(&identity::IdentityKey::of(&params.tenant_id, &params.identity))
                    }
                    ErrorKind::NotFound if !self.last_good.is_empty() => self.last_good.forget(&key()),
                    ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => {
                        let max = params.max_staleness.filter(|_| may_serve_stale);
                        if let Some(recalled) = max.and_then(|max| self.last_good.recall(&key(), max)) {
                            let age = recalled.1.first().and_then(|s| s.stale).unwrap_or_default();
                            tracing::warn!(object = %o.name, vault = %params.vault_name, age_s = age.as_secs(), error = %e,
                                "vault unreachable; serving the last known good (maxStaleness)");
                            self.stats.record_stale(&params.vault_name);
                            return Ok(recalled);
                        }
                    }
                    _ => {}
                }
                Err(e)
            }
        }
    }

    /// One object from the class's vault or, when that vault is down, from its failover vaults in
    /// order (see [`failover`]).
    async fn object_from_any_vault(
        &self,
        params: &params::MountParams,
        o: &params::ObjectSpec,
        req: &MountRequest,
        deadline: Instant,
    ) -> Result<(Vec<File>, Vec<Served>)> {
        let vaults: Vec<&str> = std::iter::once(params.vault_name.as_str())
            .chain(params.failover_vaults.iter().map(String::as_str))
            .collect();
        let mut last_error = None;
        for (i, vault) in vaults.iter().enumerate() {
            let base = vault::vault_base(vault, params, self.config.network.vault_port);
            let last = i + 1 == vaults.len();
            if !last && self.health.is_down(&base) {
                continue;
            }
            let call = vault::VaultCall {
                provider: self,
                params,
                vault: vault.to_string(),
                base: base.clone(),
                deadline: failover::attempt_deadline(deadline, i, vaults.len()),
                priority: req.priority,
                cycle: req.cycle,
                fresh: req.fresh,
            };
            match fetch::object(&call, o).await {
                Ok(r) => {
                    if vaults.len() > 1 {
                        self.health.answered(&base);
                    }
                    return Ok(r);
                }
                Err(e) if !last && failover::fails_over(&e) && Instant::now() < deadline => {
                    tracing::warn!(object = %o.name, %vault, next = vaults[i + 1], error = %e, "vault unavailable; trying the next failover vault");
                    self.health.failed(&base);
                    last_error = Some(e);
                }
                Err(e) => {
                    if vaults.len() > 1 && failover::fails_over(&e) {
                        self.health.failed(&base);
                    }
                    return Err(match last_error {
                        Some(first) if failover::fails_over(&e) => {
                            e.context(format!("every vault failed (first: {first}); last: "))
                        }
                        _ => e,
                    });
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::new(ErrorKind::Internal, "no vault to ask")))
    }
}
