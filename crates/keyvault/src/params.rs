//! SecretProviderClass parameters → a validated mount plan, before any network call.
//!
//! Messages follow the upstream Azure provider (reference §1.5) so existing runbooks match. Two checks
//! are ours: an invalid `filePermission` is an error (upstream silently writes mode 0), and two objects
//! that would write the same path are an error (upstream: the last one wins).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::cloud::{self, Cloud};
use crate::error::{Error, Result};

/// Kubelet's service-account tokens attribute.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The audience Azure workload identity exchanges.
pub const WI_AUDIENCE: &str = "api://AzureADTokenExchange";
const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";

/// A string that must never be printed (tokens, client secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the mount authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Workload identity: the pod's service-account token exchanged for an Entra token.
    Workload {
        /// App or user-assigned identity client id.
        client_id: String,
        /// The service-account JWT.
        token: Sensitive,
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
        secret: Sensitive,
    },
    /// The node's managed identity through IMDS; `None` = system-assigned.
    ManagedIdentity {
        /// User-assigned identity client id.
        client_id: Option<String>,
    },
    /// aad-pod-identity (NMI), deprecated.
    PodIdentity {
        /// Pod name.
        pod: String,
        /// Pod namespace.
        namespace: String,
    },
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
    /// Tenant.
    pub tenant_id: String,
    /// Cloud.
    pub cloud: Cloud,
    /// Identity.
    pub identity: Identity,
    /// Objects, in class order.
    pub objects: Vec<ObjectSpec>,
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

#[derive(Deserialize)]
struct ObjectsArray {
    #[serde(default)]
    array: Vec<String>,
}

/// Per-object fields as written in the class; every field is text, as in upstream (numbers too).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    object_name: Scalar,
    #[serde(default)]
    object_type: Scalar,
    #[serde(default)]
    object_version: Scalar,
    #[serde(default)]
    object_alias: Scalar,
    #[serde(default)]
    object_format: Scalar,
    #[serde(default)]
    object_encoding: Scalar,
    #[serde(default)]
    object_version_history: Scalar,
    #[serde(default)]
    file_permission: Scalar,
}

/// A YAML scalar read as its text, whatever its YAML type (`filePermission: 0755` stays `0755`).
#[derive(Default)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    fn text(&self) -> String {
        self.0.trim().to_string()
    }
}

/// Parses the `objects` parameter: stage 1 `{array: [string]}`, stage 2 each string as an object.
pub fn parse_objects(yaml: &str, default_mode: u32) -> Result<Vec<ObjectSpec>> {
    let arr: ObjectsArray = serde_saphyr::from_str(yaml)
        .map_err(|e| Error::invalid(format!("failed to yaml unmarshal objects, error: {e}")))?;
    let mut out = Vec::with_capacity(arr.array.len());
    for (i, item) in arr.array.iter().enumerate() {
        let raw: RawObject = serde_saphyr::from_str(item)
            .map_err(|e| Error::invalid(format!("unmarshal failed for keyVaultObjects at index {i}, error: {e}")))?;
        out.push(validate_object(raw, default_mode)?);
    }
    Ok(out)
}

/// One problem with one object of the class: the field and what is wrong (upstream's wording).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectProblem {
    /// The per-object field, e.g. `objectType`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks one object completely, in upstream's order; the mount path reports the first problem, the
/// `check` command all of them.
fn check_object(raw: &RawObject, default_mode: u32) -> (ObjectSpec, String, Vec<ObjectProblem>) {
    let type_text = raw.object_type.text();
    let mut problems = Vec::new();
    let mut problem = |field: &'static str, message: String| problems.push(ObjectProblem { field, message });
    let mut spec = ObjectSpec {
        name: raw.object_name.text(),
        kind: ObjectType::Secret,
        version: raw.object_version.text(),
        alias: raw.object_alias.text(),
        format: Format::Pem,
        encoding: Encoding::Utf8,
        history: 0,
        mode: default_mode,
    };
    let kind = match type_text.as_str() {
        "secret" => Some(ObjectType::Secret),
        "key" => Some(ObjectType::Key),
        "cert" => Some(ObjectType::Cert),
        _ => {
            problem("objectType", "Invalid vaultObjectTypes. Should be secret, key, or cert".into());
            None
        }
    };
    spec.kind = kind.unwrap_or(ObjectType::Secret);
    let format_text = raw.object_format.text();
    match format_text.to_ascii_lowercase().as_str() {
        "" | "pem" => {}
        "pfx" => spec.format = Format::Pfx,
        _ => problem("objectFormat", format!("invalid objectFormat: {format_text}, should be PEM or PFX")),
    }
    // Upstream compares the raw text with lower-case `pfx` only, so `PFX` on a cert or key passes
    // (and is ignored: those types have one output format). Kept, so such classes keep mounting.
    if format_text == "pfx" && kind.is_some_and(|k| k != ObjectType::Secret) {
        problem("objectFormat", "PFX format only supported for objectType: secret".into());
    }
    let encoding_text = raw.object_encoding.text();
    match encoding_text.to_ascii_lowercase().as_str() {
        "" | "utf-8" => {}
        "base64" => spec.encoding = Encoding::Base64,
        "hex" => spec.encoding = Encoding::Hex,
        _ => problem(
            "objectEncoding",
            format!("invalid objectEncoding: {encoding_text}, should be hex, base64 or utf-8"),
        ),
    }
    if !encoding_text.is_empty() && kind.is_some_and(|k| k != ObjectType::Secret) {
        problem("objectEncoding", "objectEncoding only supported for objectType: secret".into());
    }
    let name = spec.file_name().to_string();
    let name_field = if spec.alias.is_empty() { "objectName" } else { "objectAlias" };
    if name.is_empty() {
        problem(name_field, "file name must not be empty".into());
    } else if name.starts_with('/') {
        problem(name_field, "file name must be a relative path".into());
    } else if name.contains("..") {
        problem(name_field, "file name must not contain '..'".into());
    }
    let history = raw.object_version_history.text();
    if !history.is_empty() {
        match history.parse::<i32>() {
            Ok(h) => spec.history = h.max(0) as u32,
            Err(_) => problem(
                "objectVersionHistory",
                format!("invalid objectVersionHistory: {history}, should be an integer"),
            ),
        }
    }
    let perm = raw.file_permission.text();
    if !perm.is_empty() {
        match parse_mode(&perm) {
            Ok(m) => spec.mode = m,
            Err(e) => problem("filePermission", e),
        }
    }
    (spec, type_text, problems)
}

fn validate_object(raw: RawObject, default_mode: u32) -> Result<ObjectSpec> {
    let (spec, type_text, problems) = check_object(&raw, default_mode);
    match problems.into_iter().next() {
        None => Ok(spec),
        Some(p) => Err(Error::invalid(format!(
            "failed to get objectType:{type_text}, objectName:{}, objectVersion:{}: {}",
            spec.name, spec.version, p.message
        ))),
    }
}

/// Every object of an `objects` parameter with all of its problems (for `keyvault-csi check`), or the
/// parse error of the whole parameter.
pub fn check_objects(yaml: &str) -> Result<Vec<(ObjectSpec, String, Vec<ObjectProblem>)>> {
    let arr: ObjectsArray = serde_saphyr::from_str(yaml)
        .map_err(|e| Error::invalid(format!("failed to yaml unmarshal objects, error: {e}")))?;
    let mut out = Vec::new();
    for (i, item) in arr.array.iter().enumerate() {
        let raw: RawObject = serde_saphyr::from_str(item)
            .map_err(|e| Error::invalid(format!("unmarshal failed for keyVaultObjects at index {i}, error: {e}")))?;
        out.push(check_object(&raw, 0o644));
    }
    Ok(out)
}

/// Upstream's vault-name check.
pub fn validate_vault_name(name: &str) -> Result<()> {
    if name.len() < 3 || name.len() > 24 {
        return Err(Error::invalid(format!(
            "failed to get vault: Invalid vault name: {name:?}, must be between 3 and 24 chars"
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::invalid(format!(
            "failed to get vault: Invalid vault name: {name:?}, must match [-a-zA-Z0-9]{{3,24}}"
        )));
    }
    Ok(())
}

/// Paths each object writes (for the duplicate check).
pub fn output_paths(o: &ObjectSpec, split_cert_and_key: bool) -> Vec<String> {
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
fn wi_token(tokens: Option<&str>) -> std::result::Result<String, String> {
    let tokens = tokens.filter(|t| !t.trim().is_empty()).ok_or("service account tokens not found")?;
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(tokens).map_err(|e| format!("failed to unmarshal service account tokens, error: {e}"))?;
    map.get(WI_AUDIENCE)
        .and_then(|v| v.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("token for audience {WI_AUDIENCE} not found"))
}

/// Reads `iss`, `sub` and `exp` of a JWT without verifying it (Entra ID verifies it).
pub fn jwt_claims(token: &str) -> Option<(String, String, i64)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((v["iss"].as_str()?.to_string(), v["sub"].as_str()?.to_string(), v["exp"].as_i64()?))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn build_identity(
    mode: &str,
    attrs: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    pod: (&str, &str),
) -> std::result::Result<Identity, String> {
    let get = |k: &str| attrs.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let client_id = get("clientID");
    match mode {
        "PodIdentity" => Ok(Identity::PodIdentity { pod: pod.0.into(), namespace: pod.1.into() }),
        "VMManagedIdentity" => {
            let id = get("userAssignedIdentityID");
            Ok(Identity::ManagedIdentity { client_id: (!id.is_empty()).then_some(id) })
        }
        "AzureTokenProxy" => {
            Err("identity binding (useAzureTokenProxy) is not supported by keyvault-csi; use workload identity (clientID) instead".into())
        }
        _ if !client_id.is_empty() => {
            let tokens = attrs.get(TOKENS_KEY).or_else(|| secrets.get(TOKENS_KEY));
            let token = wi_token(tokens.map(String::as_str)).map_err(|e| format!("failed to parse workload identity tokens, error: {e}"))?;
            let (issuer, subject, exp) = jwt_claims(&token)
                .ok_or("failed to parse workload identity tokens, error: the service account token is not a JWT with iss, sub and exp")?;
            if exp <= now() {
                return Err(format!(
                    "the service account token for audience {WI_AUDIENCE} of {subject} expired {}s ago; kubelet refreshes it on republish (is requiresRepublish set on the CSIDriver?)",
                    now() - exp
                ));
            }
            Ok(Identity::Workload { client_id, token: Sensitive(token), subject, issuer })
        }
        _ => {
            let user: BTreeMap<String, &String> =
                secrets.iter().filter(|(k, _)| k.as_str() != TOKENS_KEY).map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            if user.is_empty() {
                return Err("failed to get credentials, nodePublishSecretRef secret is not set".into());
            }
            let id = user.get("clientid").ok_or("could not find clientid in secrets")?;
            let secret = user.get("clientsecret").ok_or("could not find clientsecret in secrets")?;
            Ok(Identity::ServicePrincipal { client_id: id.trim().to_string(), secret: Sensitive(secret.trim().to_string()) })
        }
    }
}

/// Validates everything: attributes (parameters + pod info + tokens), node-publish secrets, default mode.
pub fn parse(
    attrs: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    default_mode: u32,
    default_cloud: &str,
    split_cert_and_key: bool,
) -> Result<MountParams> {
    let get = |k: &str| attrs.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let (pod_name, pod_namespace) = (get(POD_NAME_KEY), get(POD_NAMESPACE_KEY));
    if pod_name.is_empty() {
        return Err(Error::invalid("pod name is not provided"));
    }
    if pod_namespace.is_empty() {
        return Err(Error::invalid("pod namespace is not provided"));
    }
    let mut flags = Vec::new();
    for flag in ["usePodIdentity", "useVMManagedIdentity", "useAzureTokenProxy"] {
        let v =
            parse_bool(&get(flag)).map_err(|e| Error::invalid(format!("failed to parse {flag} flag, error: {e}")))?;
        flags.push(v);
    }
    if flags.iter().filter(|f| **f).count() > 1 {
        return Err(Error::invalid(
            "only one identity mode can be enabled at a time: usePodIdentity, useVMManagedIdentity, or useAzureTokenProxy",
        ));
    }
    let mode = match (flags[0], flags[1], flags[2]) {
        (true, _, _) => "PodIdentity",
        (_, true, _) => "VMManagedIdentity",
        (_, _, true) => "AzureTokenProxy",
        _ => "None",
    };
    let vault_name = get("keyvaultName");
    if vault_name.is_empty() {
        return Err(Error::invalid("keyvaultName is not provided"));
    }
    let mut tenant_id = get("tenantID");
    if tenant_id.is_empty() {
        tenant_id = get("tenantId");
    }
    if tenant_id.is_empty() {
        return Err(Error::invalid("tenantId is not provided"));
    }
    let cloud = cloud::resolve(&get("cloudName"), &get("cloudEnvFileName"), default_cloud)?;
    let identity = build_identity(mode, attrs, secrets, (&pod_name, &pod_namespace))
        .map_err(|e| Error::invalid(format!("failed to build auth config for mode {mode}: {e}")))?;
    let objects_yaml = get("objects");
    if objects_yaml.is_empty() {
        return Err(Error::invalid("objects is not set"));
    }
    let objects = parse_objects(&objects_yaml, default_mode)?;
    if objects.is_empty() {
        return Err(Error::invalid("objects lists no object: nothing to mount"));
    }
    validate_vault_name(&vault_name)?;
    let mut seen = BTreeSet::new();
    for o in &objects {
        for p in output_paths(o, split_cert_and_key) {
            if !seen.insert(p.clone()) {
                return Err(Error::invalid(format!(
                    "{}: file {p:?} is also written by another object; give one of them a different objectAlias",
                    o.describe()
                )));
            }
        }
    }
    Ok(MountParams { pod_name, pod_namespace, vault_name, tenant_id, cloud, identity, objects })
}

#[cfg(test)]
mod tests;
