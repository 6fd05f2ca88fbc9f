//! The emulator's mutable world: tenants, identities, vaults, and the test controls (stats, faults,
//! throttling). One mutex: the emulator favours obviousness over throughput.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::events::{Change, ObjectType, What};
use crate::model::{
    Attributes, CertMaterial, CertVersion, KeySpec, KeyVersion, PKCS12, SecretVersion, Versions, generate_key,
    new_version,
};
use crate::seed::{FederatedCredentialSeed, Seed};
use crate::tokens::{Issuer, Signer};

/// An application in a tenant.
#[derive(Clone, Debug)]
pub struct Application {
    /// Client id.
    pub client_id: String,
    /// Object id.
    pub object_id: String,
    /// Client secret.
    pub client_secret: Option<String>,
    /// Federated credentials.
    pub federated: Vec<FederatedCredentialSeed>,
}

/// A managed identity.
#[derive(Clone, Debug)]
pub struct ManagedIdentity {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Object id.
    pub object_id: String,
    /// System-assigned.
    pub system_assigned: bool,
}

/// Per-kind permissions of one principal.
#[derive(Clone, Debug, Default)]
pub struct Permissions {
    /// By object kind (`secrets`, `keys`, `certificates`): allowed operations.
    pub allowed: BTreeMap<&'static str, Vec<String>>,
}

/// A vault.
#[derive(Debug)]
pub struct Vault {
    /// Name.
    pub name: String,
    /// Tenant.
    pub tenant: String,
    /// Principal (object or client id) → permissions.
    pub access: BTreeMap<String, Permissions>,
    /// Secrets.
    pub secrets: Versions<SecretVersion>,
    /// Keys.
    pub keys: Versions<KeyVersion>,
    /// Certificates.
    pub certificates: Versions<CertVersion>,
    /// Certificate operations (`create`), by certificate name: what `GET …/pending` reports.
    pub operations: BTreeMap<String, CertOperation>,
    /// Throttle: limit per window.
    pub throttle_limit: u64,
    /// Throttle window.
    pub throttle_window: Duration,
    window_start: Instant,
    window_count: u64,
    /// Changes not yet delivered to the queues subscribed to this vault (see [`crate::queue`]).
    pub changes: Vec<crate::events::Change>,
    /// Expiry events already sent.
    pub announced: crate::queue::Announced,
}

/// A certificate's latest `create` operation.
#[derive(Clone, Debug)]
pub struct CertOperation {
    /// `request_id`.
    pub request_id: String,
    /// The CSR (DER) the operation made.
    pub csr: Vec<u8>,
    /// The issuer named in the policy.
    pub issuer: String,
}

/// Undelivered changes a vault keeps.
pub const MAX_PENDING_CHANGES: usize = 10_000;

/// Azure's per-vault limit for GETs: 4,000 per 10 s.
pub const DEFAULT_THROTTLE: (u64, u64) = (4000, 10);

impl Vault {
    /// An empty vault.
    pub fn new(name: &str, tenant: &str) -> Self {
        Self {
            name: name.into(),
            tenant: tenant.into(),
            access: BTreeMap::new(),
            secrets: BTreeMap::new(),
            keys: BTreeMap::new(),
            certificates: BTreeMap::new(),
            operations: BTreeMap::new(),
            throttle_limit: DEFAULT_THROTTLE.0,
            throttle_window: Duration::from_secs(DEFAULT_THROTTLE.1),
            window_start: Instant::now(),
            window_count: 0,
            changes: Vec::new(),
            announced: Default::default(),
        }
    }

    /// Counts a request against the throttle; `Err(retry_after_secs)` when over the limit.
    pub fn admit(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= self.throttle_window {
            self.window_start = now;
            self.window_count = 0;
        }
        if self.window_count >= self.throttle_limit {
            let left = self.throttle_window.saturating_sub(now.duration_since(self.window_start));
            return Err(left.as_secs_f64().ceil().max(1.0) as u64);
        }
        self.window_count += 1;
        Ok(())
    }

    /// Whether `principals` (object id, client id) may do `op` on `kind`.
    pub fn allows(&self, principals: &[&str], kind: &str, op: &str) -> bool {
        principals.iter().any(|p| {
            self.access
                .get(*p)
                .and_then(|perm| perm.allowed.get(kind))
                .is_some_and(|ops| ops.iter().any(|o| o.eq_ignore_ascii_case(op) || o.eq_ignore_ascii_case("all")))
        })
    }

    /// Grants `ops` on `kind` to `principal`.
    pub fn grant(&mut self, principal: &str, kind: &'static str, ops: &[String]) {
        self.access
            .entry(principal.to_string())
            .or_default()
            .allowed
            .entry(kind)
            .or_default()
            .extend(ops.iter().cloned());
    }

    /// Adds a secret version (a Key Vault "set").
    pub fn set_secret(
        &mut self,
        name: &str,
        value: String,
        content_type: Option<String>,
        tags: BTreeMap<String, String>,
        enabled: bool,
    ) -> SecretVersion {
        let v = SecretVersion {
            version: new_version(),
            value,
            content_type,
            tags,
            attributes: Attributes::at(enabled, next_created(self.secrets.get(name).map(|v| v.as_slice()))),
            managed_key: false,
        };
        self.secrets.entry(name.to_string()).or_default().push(v.clone());
        self.record(Change::new_version(ObjectType::Secret, name, &v.version, None, None));
        v
    }

    /// Records a change for the event subscriptions (bounded: an undelivered backlog past
    /// [`MAX_PENDING_CHANGES`] loses its oldest, like events Event Grid gives up on).
    fn record(&mut self, change: Change) {
        if self.changes.len() >= MAX_PENDING_CHANGES {
            self.changes.remove(0);
        }
        self.changes.push(change);
    }

    /// The near-expiry and expired events due now for current versions, each announced once.
    pub fn expiry_events(&mut self, now: i64, near: i64) -> Vec<Change> {
        // (type, name, version, nbf, exp) of each object's current version.
        type Current = (ObjectType, String, String, Option<i64>, Option<i64>);
        let mut current: Vec<Current> = Vec::new();
        for (name, v) in &self.secrets {
            if let Some(l) = v.last().filter(|l| !l.managed_key) {
                current.push((ObjectType::Secret, name.clone(), l.version.clone(), l.attributes.nbf, l.attributes.exp));
            }
        }
        for (name, v) in &self.keys {
            if let Some(l) = v.last().filter(|l| !l.managed) {
                current.push((ObjectType::Key, name.clone(), l.version.clone(), l.attributes.nbf, l.attributes.exp));
            }
        }
        for (name, v) in &self.certificates {
            if let Some(l) = v.last() {
                current.push((
                    ObjectType::Certificate,
                    name.clone(),
                    l.version.clone(),
                    l.attributes.nbf,
                    l.attributes.exp,
                ));
            }
        }
        let mut due = Vec::new();
        for (kind, name, version, nbf, exp) in current {
            let Some(exp) = exp else { continue };
            for (what, at) in [(What::NearExpiry, exp - near), (What::Expired, exp)] {
                let key = (kind, name.clone(), version.clone(), what);
                if now >= at && !self.announced.contains(&key) {
                    self.announced.insert(key);
                    let mut c = Change::new_version(kind, &name, &version, nbf, Some(exp));
                    c.what = what;
                    due.push(c);
                }
            }
        }
        due
    }

    /// Sets the validity window (`nbf`, `exp`, Unix seconds) of a secret's newest version.
    pub fn set_secret_window(&mut self, name: &str, nbf: Option<i64>, exp: Option<i64>) -> Option<SecretVersion> {
        let v = self.secrets.get_mut(name)?.last_mut()?;
        v.attributes.nbf = nbf;
        v.attributes.exp = exp;
        // The event of the version being set carries its window.
        if let Some(c) = self
            .changes
            .iter_mut()
            .rev()
            .find(|c| c.kind == ObjectType::Secret && c.name == name && c.version == v.version)
        {
            c.nbf = nbf;
            c.exp = exp;
        }
        Some(v.clone())
    }

    /// Adds a key version.
    pub fn create_key(&mut self, name: &str, spec: KeySpec) -> Result<KeyVersion, String> {
        let k = KeyVersion {
            version: new_version(),
            jwk: generate_key(spec)?,
            tags: BTreeMap::new(),
            attributes: Attributes::at(true, next_created(self.keys.get(name).map(|v| v.as_slice()))),
            managed: false,
        };
        self.keys.entry(name.to_string()).or_default().push(k.clone());
        self.record(Change::new_version(ObjectType::Key, name, &k.version, None, None));
        Ok(k)
    }

    /// Adds a certificate version with its managed key and secret, as Key Vault does.
    pub fn add_certificate(
        &mut self,
        name: &str,
        material: &CertMaterial,
        content_type: &str,
    ) -> Result<CertVersion, String> {
        let version = new_version();
        let created = next_created(self.certificates.get(name).map(|v| v.as_slice()));
        let value = material.secret_value(content_type)?;
        let cert = CertVersion {
            version: version.clone(),
            cer: material.leaf().to_vec(),
            content_type: content_type.to_string(),
            subject: material.subject(),
            key_spec: material.key_spec(),
            tags: BTreeMap::new(),
            attributes: Attributes::at(true, created),
        };
        self.keys.entry(name.to_string()).or_default().push(KeyVersion {
            version: version.clone(),
            jwk: material.jwk()?,
            tags: BTreeMap::new(),
            attributes: Attributes::at(true, created),
            managed: true,
        });
        self.secrets.entry(name.to_string()).or_default().push(SecretVersion {
            version,
            value,
            content_type: Some(content_type.to_string()),
            tags: BTreeMap::new(),
            attributes: Attributes::at(true, created),
            managed_key: true,
        });
        self.certificates.entry(name.to_string()).or_default().push(cert.clone());
        self.record(Change::new_version(
            ObjectType::Certificate,
            name,
            &cert.version,
            cert.attributes.nbf,
            cert.attributes.exp,
        ));
        Ok(cert)
    }
}

/// Creation times strictly increase per object, so "newest first" is well defined even within a second.
fn next_created<T: HasCreated>(versions: Option<&[T]>) -> i64 {
    let now = crate::model::now();
    versions.and_then(|v| v.last()).map(|l| l.created() + 1).unwrap_or(now).max(now)
}

trait HasCreated {
    fn created(&self) -> i64;
}
impl HasCreated for SecretVersion {
    fn created(&self) -> i64 {
        self.attributes.created
    }
}
impl HasCreated for KeyVersion {
    fn created(&self) -> i64 {
        self.attributes.created
    }
}
impl HasCreated for CertVersion {
    fn created(&self) -> i64 {
        self.attributes.created
    }
}

/// Injected faults for a vault (or `*` for all).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Added to every request.
    pub latency_ms: u64,
    /// Fraction (0..1) of requests that fail with `error_status`.
    pub error_rate: f64,
    /// 500 or 503.
    pub error_status: Option<u16>,
    /// Every request fails with 503.
    pub outage: bool,
}

/// One counted request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StatKey {
    /// Vault name, or `entra` / `imds` / `nmi`.
    pub vault: String,
    /// `secrets`, `keys`, `certificates`, `token`...
    pub kind: String,
    /// Object name.
    pub object: String,
    /// HTTP method.
    pub method: String,
    /// Response status.
    pub status: u16,
    /// Caller's object id (or client id), empty when unauthenticated.
    pub identity: String,
}

/// Everything the emulator knows.
pub struct World {
    /// Tenant id → applications by client id.
    pub tenants: HashMap<String, HashMap<String, Application>>,
    /// Managed identities.
    pub managed: Vec<ManagedIdentity>,
    /// NMI assignments: (namespace, pod or "") → client id.
    pub pod_identities: Vec<(String, String, String)>,
    /// Issuers by URL.
    pub issuers: HashMap<String, Issuer>,
    /// Vaults by lowercase name.
    pub vaults: HashMap<String, Vault>,
    /// Per-vault faults (`*` = all).
    pub faults: HashMap<String, Faults>,
    /// Request counts.
    pub stats: BTreeMap<StatKey, u64>,
    /// AKS identity bindings.
    pub bindings: Vec<crate::seed::IdentityBindingSeed>,
    /// Storage accounts (the change-event queues) by name.
    pub storage: HashMap<String, crate::queue::Account>,
}

/// The shared state.
pub struct State {
    /// The world, behind one lock.
    pub world: Mutex<World>,
    /// Signs access tokens.
    pub signer: Signer,
    /// Authority host as clients address it (`https://login.microsoftonline.com:PORT`).
    pub authority: Mutex<String>,
}

impl State {
    /// Builds the world from a seed.
    pub fn from_seed(seed: &Seed) -> Result<Self, String> {
        let mut world = World {
            tenants: HashMap::new(),
            managed: Vec::new(),
            pod_identities: Vec::new(),
            issuers: HashMap::new(),
            vaults: HashMap::new(),
            faults: HashMap::new(),
            stats: BTreeMap::new(),
            bindings: seed.identity_bindings.clone(),
            storage: seed
                .storage_accounts
                .iter()
                .map(|a| (a.name.to_ascii_lowercase(), crate::queue::Account::from_seed(a)))
                .collect(),
        };
        for t in &seed.tenants {
            let apps = world.tenants.entry(t.id.clone()).or_default();
            for a in &t.applications {
                apps.insert(
                    a.client_id.clone(),
                    Application {
                        client_id: a.client_id.clone(),
                        object_id: if a.object_id.is_empty() { a.client_id.clone() } else { a.object_id.clone() },
                        client_secret: a.client_secret.clone(),
                        federated: a.federated_credentials.clone(),
                    },
                );
            }
        }
        for m in &seed.managed_identities {
            world.managed.push(ManagedIdentity {
                tenant: m.tenant.clone(),
                client_id: m.client_id.clone(),
                object_id: if m.object_id.is_empty() { m.client_id.clone() } else { m.object_id.clone() },
                system_assigned: m.system_assigned,
            });
        }
        for p in &seed.pod_identities {
            world.pod_identities.push((p.namespace.clone(), p.pod.clone(), p.client_id.clone()));
        }
        for i in &seed.issuers {
            let issuer = match (&i.jwks, &i.public_key_pem) {
                (Some(jwks), _) => Issuer::from_jwks(&i.url, jwks)?,
                (None, Some(pem)) => Issuer::external(&i.url, pem)?,
                (None, None) => Issuer::generated(&i.url),
            };
            world.issuers.insert(i.url.clone(), issuer);
        }
        for v in &seed.vaults {
            let mut vault = Vault::new(&v.name, &v.tenant);
            for a in &v.access {
                vault.grant(&a.principal, "secrets", &a.secrets);
                vault.grant(&a.principal, "keys", &a.keys);
                vault.grant(&a.principal, "certificates", &a.certificates);
            }
            if let Some(t) = &v.throttle {
                vault.throttle_limit = t.limit;
                vault.throttle_window = Duration::from_secs(t.window_seconds.max(1));
            }
            for s in &v.secrets {
                if let Some(value) = &s.value {
                    vault.set_secret(&s.name, value.clone(), s.content_type.clone(), s.tags.clone(), true);
                }
                for ver in &s.versions {
                    vault.set_secret(&s.name, ver.value.clone(), ver.content_type.clone(), s.tags.clone(), ver.enabled);
                    if ver.nbf.is_some() || ver.exp.is_some() {
                        vault.set_secret_window(&s.name, ver.nbf, ver.exp);
                    }
                }
            }
            for k in &v.keys {
                let spec =
                    KeySpec::parse(&k.kty, k.size, k.curve.as_deref()).map_err(|e| format!("key {}: {e}", k.name))?;
                for _ in 0..k.versions.unwrap_or(1).max(1) {
                    vault.create_key(&k.name, spec).map_err(|e| format!("key {}: {e}", k.name))?;
                }
            }
            for c in &v.certificates {
                let spec = KeySpec::parse(c.kty.as_deref().unwrap_or("RSA"), None, c.curve.as_deref())?;
                let subject = c.subject.clone().unwrap_or_else(|| format!("CN={}", c.name));
                let material = CertMaterial::generate_valid_for(&subject, spec, c.valid_days)
                    .map_err(|e| format!("certificate {}: {e}", c.name))?;
                vault.add_certificate(&c.name, &material, c.content_type.as_deref().unwrap_or(PKCS12))?;
            }
            // What the seed put there existed before any subscription.
            vault.changes.clear();
            world.vaults.insert(v.name.to_ascii_lowercase(), vault);
        }
        Ok(Self {
            world: Mutex::new(world),
            signer: Signer::generate("emulator-1"),
            authority: Mutex::new(String::new()),
        })
    }

    /// Locks the world.
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request.
    pub fn count(&self, key: StatKey) {
        *self.world().stats.entry(key).or_default() += 1;
    }

    /// The authority URL clients use, e.g. `https://login.microsoftonline.com:8443`.
    pub fn authority(&self) -> String {
        self.authority.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
