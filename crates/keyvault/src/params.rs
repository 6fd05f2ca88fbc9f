//! SecretProviderClass parameters → a validated mount plan, before any network call.
//!
//! [`read`] holds every rule once; a mount ([`parse`]) stops at the first error, `check`
//! ([`crate::lint`]) collects them all. Messages follow the upstream Azure provider
//! (`pkg/provider/provider.go`) so existing runbooks match. Two checks are ours: an invalid
//! `filePermission` is an error (upstream silently writes mode 0), and two objects that would write
//! the same path are an error (upstream: the last one wins).

use std::collections::BTreeMap;

use crate::cloud::Cloud;
use crate::error::{Error, Result};

mod objects;
pub mod read;
pub mod selector;

pub use objects::{ClassObject, MAX_VERSION_HISTORY};
pub use read::{ClassParameters, Finding, Findings, IdentityMode, ReadOptions, Severity};

/// Kubelet's service-account tokens attribute.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The audience Azure workload identity exchanges.
pub const WI_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The audience AKS's identity binding proxy exchanges.
pub use crate::identity::proxy::BINDING_AUDIENCE;
const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";

pub use secrecy::{ExposeSecret, SecretString};

/// Node-publish secrets: names in the clear, every value secret.
pub type SecretMap = BTreeMap<String, SecretString>;

/// How the mount authenticates.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Workload identity: the pod's service-account token exchanged for an Entra token.
    Workload {
        /// App or user-assigned identity client id.
        client_id: String,
        /// The service-account JWT.
        token: SecretString,
        /// `sub` claim (`system:serviceaccount:<ns>:<sa>`), part of the cache key.
        subject: String,
        /// `iss` claim, part of the cache key.
        issuer: String,
    },
    /// Service principal from `nodePublishSecretRef` (`clientid`/`clientsecret`).
    ServicePrincipal {
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: SecretString,
    },
    /// The node's managed identity through IMDS; `None` = system-assigned.
    ManagedIdentity {
        /// User-assigned identity client id.
        client_id: Option<String>,
    },
    /// Identity binding: the pod's token for `api://AKSIdentityBinding`, exchanged by AKS's token
    /// proxy (`useAzureTokenProxy`).
    Binding {
        /// The user-assigned identity's client id.
        client_id: String,
        /// The service-account JWT.
        token: SecretString,
        /// `sub` claim, part of the cache key.
        subject: String,
        /// `iss` claim, part of the cache key.
        issuer: String,
    },
    /// aad-pod-identity (NMI), deprecated.
    PodIdentity {
        /// Pod name.
        pod: String,
        /// Pod namespace.
        namespace: String,
    },
}

impl PartialEq for Identity {
    /// Compares the secrets too (tests and cache keys; never on a hot path that an attacker times).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Workload { client_id: a, token: t, subject: s, issuer: i },
                Self::Workload { client_id: b, token: u, subject: r, issuer: j },
            ) => a == b && s == r && i == j && t.expose_secret() == u.expose_secret(),
            (
                Self::Binding { client_id: a, token: t, subject: s, issuer: i },
                Self::Binding { client_id: b, token: u, subject: r, issuer: j },
            ) => a == b && s == r && i == j && t.expose_secret() == u.expose_secret(),
            (
                Self::ServicePrincipal { client_id: a, secret: s },
                Self::ServicePrincipal { client_id: b, secret: r },
            ) => a == b && s.expose_secret() == r.expose_secret(),
            (Self::ManagedIdentity { client_id: a }, Self::ManagedIdentity { client_id: b }) => a == b,
            (Self::PodIdentity { pod: a, namespace: n }, Self::PodIdentity { pod: b, namespace: m }) => {
                a == b && n == m
            }
            _ => false,
        }
    }
}

impl Identity {
    /// The identity's kind and client id, as the audit trail names them (never a credential).
    pub fn summary(&self) -> crate::IdentitySummary {
        let (kind, client_id) = match self {
            Self::Workload { client_id, .. } => ("workload", client_id.clone()),
            Self::ServicePrincipal { client_id, .. } => ("service-principal", client_id.clone()),
            Self::ManagedIdentity { client_id } => ("managed-identity", client_id.clone().unwrap_or_default()),
            Self::Binding { client_id, .. } => ("identity-binding", client_id.clone()),
            Self::PodIdentity { .. } => ("pod-identity", String::new()),
        };
        crate::IdentitySummary { kind, client_id }
    }
}

/// `objectType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    /// `secret`.
    Secret,
    /// `key`.
    Key,
    /// `cert`.
    Cert,
}

impl ObjectType {
    /// The SPC spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::Key => "key",
            Self::Cert => "cert",
        }
    }
    /// The REST collection.
    pub fn collection(&self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Key => "keys",
            Self::Cert => "certificates",
        }
    }
}

/// `objectFormat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// PEM (default).
    Pem,
    /// PFX: the secret's base64 value as is.
    Pfx,
    /// JSON (ours): the secret's value is a JSON document, written as one file per `jsonKeys` entry.
    Json,
}

/// One `jsonKeys` entry (ours): a member of a JSON secret written as its own file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonKey {
    /// The member: a top-level name, or a dotted path through nested objects.
    pub key: String,
    /// `objectAlias`: the file name ("" = the key).
    pub alias: String,
    /// File mode (`filePermission`, else the object's).
    pub mode: u32,
}

impl JsonKey {
    /// The file name.
    pub fn file_name(&self) -> &str {
        if self.alias.is_empty() { &self.key } else { &self.alias }
    }
}

/// `objectEncoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As is (default).
    Utf8,
    /// Standard base64 with padding, decoded before writing.
    Base64,
    /// Hex, decoded before writing.
    Hex,
}

/// One object to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    /// `objectName`.
    pub name: String,
    /// `objectType`.
    pub kind: ObjectType,
    /// `objectVersion` ("" = latest).
    pub version: String,
    /// `objectAlias`.
    pub alias: String,
    /// `objectFormat`.
    pub format: Format,
    /// `objectEncoding`.
    pub encoding: Encoding,
    /// `objectVersionHistory` (≤ 1: single version).
    pub history: u32,
    /// File mode.
    pub mode: u32,
    /// `optional: "true"` (ours; the upstream provider ignores the field, so a class stays portable):
    /// a missing object (404) lets the mount succeed without its file.
    pub optional: bool,
    /// `objectVersionPolicy` / `objectNotAfter` (ours).
    pub policy: VersionPolicy,
    /// `jsonKeys` (ours; with `objectFormat: json`): the files written instead of the object's own.
    pub json_keys: Vec<JsonKey>,
}

/// Which version an object without `objectVersion` serves (ours; upstream always serves the current
/// version, even when it is disabled, not yet valid or expired).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionPolicy {
    /// `objectVersionPolicy: latestEnabled`: the newest version that is enabled and valid now
    /// (`nbf` ≤ now < `exp`).
    pub latest_enabled: bool,
    /// `objectNotAfter: <RFC 3339>`: the newest enabled version created at or before this time (Unix
    /// seconds), for staged rollouts.
    pub not_after: Option<i64>,
}

impl VersionPolicy {
    /// Whether a version list decides the version.
    pub fn is_set(&self) -> bool {
        self.latest_enabled || self.not_after.is_some()
    }

    /// Whether a version with these attributes may be served at `now` (Unix seconds).
    pub fn admits(&self, a: &crate::model::Attributes, now: i64) -> bool {
        if a.enabled != Some(true) {
            return false;
        }
        if self.latest_enabled && (a.nbf.is_some_and(|nbf| nbf > now) || a.exp.is_some_and(|exp| exp <= now)) {
            return false;
        }
        self.not_after.is_none_or(|t| a.created.is_some_and(|c| c <= t))
    }

    /// What the policy asks, for messages.
    pub fn describe(&self) -> String {
        match (self.latest_enabled, self.not_after) {
            (true, Some(t)) => format!("enabled, valid now and created at or before {}", rfc3339(t)),
            (true, None) => "enabled and valid now (objectVersionPolicy: latestEnabled)".into(),
            (false, Some(t)) => format!("enabled and created at or before {} (objectNotAfter)", rfc3339(t)),
            (false, None) => "enabled".into(),
        }
    }
}

fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |d| d.to_string())
}

impl ObjectSpec {
    /// The file (or, with history, directory) name.
    pub fn file_name(&self) -> &str {
        if self.alias.is_empty() { &self.name } else { &self.alias }
    }
    /// `<type>/<name>`, the id reported in object versions.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }
    /// Upstream's prefix for per-object errors.
    pub fn describe(&self) -> String {
        format!(
            "failed to get objectType:{}, objectName:{}, objectVersion:{}",
            self.kind.as_str(),
            self.name,
            self.version
        )
    }
}

/// A validated mount.
#[derive(Clone, Debug)]
pub struct MountParams {
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Vault name.
    pub vault_name: String,
    /// Failover vaults, in order (`failoverKeyvaultNames`, ours).
    pub failover_vaults: Vec<String>,
    /// Tenant.
    pub tenant_id: String,
    /// Cloud.
    pub cloud: Cloud,
    /// Identity.
    pub identity: Identity,
    /// Objects, in class order.
    pub objects: Vec<ObjectSpec>,
    /// `objectSelector` (ours): more secrets, chosen at each mount and rotation round.
    pub selector: Option<selector::Selector>,
    /// `maxStaleness` (ours): while the vault cannot be reached, serve what this node fetched with the
    /// same identity at most this long ago (see `crate::last_good`).
    pub max_staleness: Option<std::time::Duration>,
}

/// Go's `strconv.ParseBool`, with its error text.
pub fn parse_bool(s: &str) -> std::result::Result<bool, String> {
    match s {
        "" => Ok(false),
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// An octal file mode such as `0644` (also `644`).
pub fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("invalid filePermission {s:?}: must be an octal file mode such as 0644"));
    }
    let m = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
    if m > 0o7777 {
        return Err(format!("invalid filePermission {s:?}: must be at most 07777"));
    }
    Ok(m)
}

/// Paths each object writes (for the duplicate check).
pub fn output_paths(o: &ObjectSpec, split_cert_and_key: bool) -> Vec<String> {
    if o.format == Format::Json {
        return o.json_keys.iter().map(|k| k.file_name().to_string()).collect();
    }
    let name = o.file_name().to_string();
    if o.history > 1 {
        return (0..o.history).map(|i| format!("{name}/{i}")).collect();
    }
    let mut v = vec![name.clone()];
    // Only certificate-backed secrets get the extra files, but whether a secret is one is only known
    // after fetching; reserve the names so a later collision cannot appear at mount time.
    if split_cert_and_key && o.kind == ObjectType::Secret {
        v.push(format!("{name}.crt"));
        v.push(format!("{name}.key"));
    }
    v
}

/// The service-account token for `audience` from kubelet's tokens JSON.
fn sa_token(tokens: Option<&str>, audience: &str) -> std::result::Result<String, String> {
    let tokens = tokens.filter(|t| !t.trim().is_empty()).ok_or("service account tokens not found")?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(tokens).map_err(|e| {
        // Never serde's own message: it quotes the offending value, here a token (found by fuzzing).
        let what = match e.classify() {
            serde_json::error::Category::Data => "not a map of audiences to tokens",
            serde_json::error::Category::Eof => "unexpected end of input",
            _ => "not valid JSON",
        };
        format!("failed to unmarshal service account tokens, error: {what} at line {} column {}", e.line(), e.column())
    })?;
    map.get(audience)
        .and_then(|v| v.get("token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("token for audience {audience} not found"))
}

/// A workload identity from a service-account token of our own (a projected token file, as Azure
/// Workload Identity mounts it), for the controller's own calls (the change-event queue).
pub fn own_workload_identity(client_id: &str, token: &str) -> std::result::Result<Identity, String> {
    let what = "the workload identity token file";
    let (issuer, subject) = claims_of_live_token(token.trim(), WI_AUDIENCE, what)?;
    Ok(Identity::Workload {
        client_id: client_id.into(),
        token: SecretString::from(token.trim().to_string()),
        subject,
        issuer,
    })
}

/// A service-account token's `iss` and `sub`, refused when it has expired.
fn claims_of_live_token(token: &str, audience: &str, what: &str) -> std::result::Result<(String, String), String> {
    let (issuer, subject, exp) = jwt_claims(token)
        .ok_or_else(|| format!("{what}: the service account token is not a JWT with iss, sub and exp"))?;
    if exp <= now() {
        return Err(format!(
            "the service account token for audience {audience} of {subject} expired {}s ago; kubelet refreshes it on republish (is requiresRepublish set on the CSIDriver?)",
            now().saturating_sub(exp)
        ));
    }
    Ok((issuer, subject))
}

/// Reads `iss`, `sub` and `exp` of a JWT without verifying it (Entra ID verifies it).
pub fn jwt_claims(token: &str) -> Option<(String, String, i64)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((v["iss"].as_str()?.to_string(), v["sub"].as_str()?.to_string(), v["exp"].as_i64()?))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    now()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Kubelet's tokens JSON: an attribute, or (drivers that pass it so) a node-publish secret.
fn tokens_of<'a>(attrs: &'a BTreeMap<String, String>, secrets: &'a SecretMap) -> Option<&'a str> {
    attrs.get(TOKENS_KEY).map(String::as_str).or_else(|| secrets.get(TOKENS_KEY).map(|s| s.expose_secret()))
}

fn build_identity(
    mode: &IdentityMode,
    attrs: &BTreeMap<String, String>,
    secrets: &SecretMap,
    pod: (&str, &str),
) -> std::result::Result<Identity, String> {
    match mode {
        IdentityMode::PodIdentity => Ok(Identity::PodIdentity { pod: pod.0.into(), namespace: pod.1.into() }),
        IdentityMode::ManagedIdentity { client_id } => Ok(Identity::ManagedIdentity { client_id: client_id.clone() }),
        IdentityMode::TokenProxy { client_id } => {
            // Upstream's checks and texts, in upstream's order.
            if client_id.is_empty() {
                return Err("clientID is required for identity binding".into());
            }
            let tokens = tokens_of(attrs, secrets).filter(|t| !t.trim().is_empty());
            if tokens.is_none() {
                return Err("service account tokens are required for identity binding".into());
            }
            let what = "failed to parse service account token for identity binding, error";
            let token = sa_token(tokens, BINDING_AUDIENCE).map_err(|e| format!("{what}: {e}"))?;
            let (issuer, subject) = claims_of_live_token(&token, BINDING_AUDIENCE, what)?;
            Ok(Identity::Binding { client_id: client_id.clone(), token: SecretString::from(token), subject, issuer })
        }
        IdentityMode::Workload { client_id } => {
            let what = "failed to parse workload identity tokens, error";
            let token = sa_token(tokens_of(attrs, secrets), WI_AUDIENCE).map_err(|e| format!("{what}: {e}"))?;
            let (issuer, subject) = claims_of_live_token(&token, WI_AUDIENCE, what)?;
            Ok(Identity::Workload { client_id: client_id.clone(), token: SecretString::from(token), subject, issuer })
        }
        IdentityMode::ServicePrincipal => {
            let user: BTreeMap<String, &str> = secrets
                .iter()
                .filter(|(k, _)| k.as_str() != TOKENS_KEY)
                .map(|(k, v)| (k.to_ascii_lowercase(), v.expose_secret()))
                .collect();
            if user.is_empty() {
                return Err("failed to get credentials, nodePublishSecretRef secret is not set".into());
            }
            let id = user.get("clientid").ok_or("could not find clientid in secrets")?;
            let secret = user.get("clientsecret").ok_or("could not find clientsecret in secrets")?;
            Ok(Identity::ServicePrincipal {
                client_id: id.trim().to_string(),
                secret: SecretString::from(secret.trim()),
            })
        }
    }
}

/// Validates everything for a mount: attributes (parameters + pod info + tokens), node-publish
/// secrets, default mode. The first problem is the error, with upstream's message.
pub fn parse(
    attrs: &BTreeMap<String, String>,
    secrets: &SecretMap,
    default_mode: u32,
    clouds: &crate::cloud::Clouds,
    split_cert_and_key: bool,
) -> Result<MountParams> {
    let (pod_name, pod_namespace) = (read::get(attrs, POD_NAME_KEY), read::get(attrs, POD_NAMESPACE_KEY));
    if pod_name.is_empty() {
        return Err(Error::invalid("pod name is not provided"));
    }
    if pod_namespace.is_empty() {
        return Err(Error::invalid("pod namespace is not provided"));
    }
    let options = ReadOptions { default_mode, clouds, split_cert_and_key };
    let mut findings = Findings::first_error();
    let mut identity = None;
    let read = read::read(attrs, options, &mut findings, |mode, f| {
        match build_identity(mode, attrs, secrets, (&pod_name, &pod_namespace)) {
            Ok(i) => identity = Some(i),
            Err(e) => {
                f.error("identity", format!("failed to build auth config for mode {}: {e}", mode.upstream_name()), "")?
            }
        }
        Ok(())
    });
    let (Ok(read), Some(identity)) = (read, identity) else {
        let first = findings.into_list().into_iter().next();
        return Err(Error::invalid(first.map_or_else(|| "invalid parameters".into(), |f| f.message)));
    };
    let cloud = read.cloud.ok_or_else(|| Error::invalid("invalid cloudName"))?;
    let objects = read.objects.into_iter().map(|o| o.spec).collect();
    Ok(MountParams {
        pod_name,
        pod_namespace,
        vault_name: read.vault_name,
        failover_vaults: read.failover_vaults,
        tenant_id: read.tenant_id,
        cloud,
        identity,
        objects,
        selector: read.selector,
        max_staleness: read.max_staleness,
    })
}

#[cfg(test)]
mod tests;
