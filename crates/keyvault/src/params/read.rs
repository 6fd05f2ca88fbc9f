//! The one reader of a class's Azure parameters, shared by the mount path and `keyvault-csi check`.
//!
//! Every rule is written once, as a call to [`Findings::error`] followed by `?`. A mount reads with
//! [`Findings::first_error`], where the first error stops the reading and becomes the mount's message;
//! `check` reads with [`Findings::all`], where nothing stops it and every problem is reported.

use std::collections::{BTreeMap, BTreeSet};

use super::objects::{self, ClassObject};
use super::{output_paths, parse_bool};
use crate::cloud::{self, Cloud, Clouds};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A mount will fail.
    Error,
    /// A mount works but will not do what the author expects.
    Warning,
}

/// One problem with a class's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The parameter, relative to `spec.parameters`: `keyvaultName`, `objects[1].objectType`.
    pub field: String,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong; for an error, the exact message a mount fails with.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The reading stopped at an error (only with [`Findings::first_error`]).
#[derive(Debug)]
pub(crate) struct Stop;

/// Where the reader reports problems.
#[derive(Debug)]
pub struct Findings {
    stop_at_first_error: bool,
    list: Vec<Finding>,
}

impl Findings {
    /// For a mount: the first error stops the reading.
    pub fn first_error() -> Self {
        Self { stop_at_first_error: true, list: Vec::new() }
    }

    /// For `check`: every problem, warnings included.
    pub fn all() -> Self {
        Self { stop_at_first_error: false, list: Vec::new() }
    }

    /// Reports an error; `Err(Stop)` when reading for a mount.
    pub(crate) fn error(
        &mut self,
        field: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Result<(), Stop> {
        self.list.push(Finding {
            field: field.into(),
            severity: Severity::Error,
            message: message.into(),
            fix: fix.into(),
        });
        if self.stop_at_first_error { Err(Stop) } else { Ok(()) }
    }

    /// Reports a warning (kept only when reading for `check`).
    pub(crate) fn warning(&mut self, field: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        if !self.stop_at_first_error {
            self.list.push(Finding {
                field: field.into(),
                severity: Severity::Warning,
                message: message.into(),
                fix: fix.into(),
            });
        }
    }

    /// The findings so far.
    pub fn list(&self) -> &[Finding] {
        &self.list
    }

    /// Takes the findings.
    pub fn into_list(self) -> Vec<Finding> {
        self.list
    }

    /// Drops the findings of `field` for which `drop` says so.
    pub(crate) fn retain(&mut self, keep: impl Fn(&Finding) -> bool) {
        self.list.retain(keep);
    }
}

/// The identity mode a class selects, from its parameters alone (the material comes with the pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityMode {
    /// `clientID` without another mode: the pod's service-account token, exchanged.
    Workload {
        /// `clientID`.
        client_id: String,
    },
    /// No mode and no `clientID`: `clientid`/`clientsecret` from `nodePublishSecretRef`.
    ServicePrincipal,
    /// `useVMManagedIdentity`; `None` is the system-assigned identity.
    ManagedIdentity {
        /// `userAssignedIdentityID`.
        client_id: Option<String>,
    },
    /// `usePodIdentity` (aad-pod-identity), deprecated.
    PodIdentity,
    /// `useAzureTokenProxy` (identity binding): the pod's token for `api://AKSIdentityBinding`,
    /// exchanged by AKS's token proxy.
    TokenProxy {
        /// `clientID` (empty when missing: an error at mount).
        client_id: String,
    },
}

impl IdentityMode {
    /// Upstream's name of the mode in `failed to build auth config for mode <name>`.
    pub fn upstream_name(&self) -> &'static str {
        match self {
            Self::Workload { .. } | Self::ServicePrincipal => "None",
            Self::ManagedIdentity { .. } => "VMManagedIdentity",
            Self::PodIdentity => "PodIdentity",
            Self::TokenProxy { .. } => "AzureTokenProxy",
        }
    }
}

/// The parameters the class itself decides, read in upstream's order.
#[derive(Clone, Debug)]
pub struct ClassParameters {
    /// `keyvaultName`.
    pub vault_name: String,
    /// `failoverKeyvaultNames` (ours): vaults with the same objects, asked in order when the vault is down.
    pub failover_vaults: Vec<String>,
    /// `tenantId` (or the older `tenantID`).
    pub tenant_id: String,
    /// The cloud (`None` when `cloudName` is wrong).
    pub cloud: Option<Cloud>,
    /// The identity mode.
    pub identity: IdentityMode,
    /// The objects that could be read.
    pub objects: Vec<ClassObject>,
    /// Every file path the objects write.
    pub files: BTreeSet<String>,
    /// `objectSelector` (ours).
    pub selector: Option<super::selector::Selector>,
    /// `maxStaleness` (ours).
    pub max_staleness: Option<std::time::Duration>,
}

/// Settings the reading depends on.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions<'a> {
    /// File mode of objects without `filePermission`.
    pub default_mode: u32,
    /// Cloud of classes without `cloudName`, and where `cloudEnvFileName` may point.
    pub clouds: &'a Clouds,
    /// `--write-cert-and-key-in-separate-files`: secrets also write `<name>.crt` and `<name>.key`.
    pub split_cert_and_key: bool,
}

/// Trimmed parameter value ("" when absent).
pub(crate) fn get(params: &BTreeMap<String, String>, key: &str) -> String {
    params.get(key).map(|v| v.trim().to_string()).unwrap_or_default()
}

/// Reads the parameters. `between` runs after the cloud and before the objects, where upstream
/// builds the identity (a mount builds it there, so its errors come in upstream's order).
pub(crate) fn read(
    params: &BTreeMap<String, String>,
    options: ReadOptions<'_>,
    f: &mut Findings,
    between: impl FnOnce(&IdentityMode, &mut Findings) -> Result<(), Stop>,
) -> Result<ClassParameters, Stop> {
    let mut enabled = Vec::new();
    for flag in ["usePodIdentity", "useVMManagedIdentity", "useAzureTokenProxy"] {
        match parse_bool(&get(params, flag)) {
            Ok(true) => enabled.push(flag),
            Ok(false) => {}
            Err(e) => f.error(flag, format!("failed to parse {flag} flag, error: {e}"), "use \"true\" or \"false\"")?,
        }
    }
    if enabled.len() > 1 {
        f.error(
            enabled[1],
            "only one identity mode can be enabled at a time: usePodIdentity, useVMManagedIdentity, or useAzureTokenProxy",
            format!("keep one of {}", enabled.join(" and ")),
        )?;
    }
    let vault_name = get(params, "keyvaultName");
    if vault_name.is_empty() {
        f.error("keyvaultName", "keyvaultName is not provided", "set keyvaultName to the vault's name (not its URL)")?;
    }
    let mut tenant_id = get(params, "tenantID");
    if tenant_id.is_empty() {
        tenant_id = get(params, "tenantId");
    }
    if tenant_id.is_empty() {
        f.error("tenantId", "tenantId is not provided", "set tenantId to the vault's Entra ID tenant")?;
    }
    let cloud = match cloud::resolve(&get(params, "cloudName"), &get(params, "cloudEnvFileName"), options.clouds) {
        Ok(c) => Some(c),
        Err(e) => {
            let fix = "use AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud or AzureStackCloud";
            f.error("cloudName", e.message, fix)?;
            None
        }
    };
    let identity = match enabled.first().copied() {
        Some("usePodIdentity") => IdentityMode::PodIdentity,
        Some("useVMManagedIdentity") => {
            let id = get(params, "userAssignedIdentityID");
            IdentityMode::ManagedIdentity { client_id: (!id.is_empty()).then_some(id) }
        }
        Some(_) => IdentityMode::TokenProxy { client_id: get(params, "clientID") },
        None => match get(params, "clientID") {
            id if id.is_empty() => IdentityMode::ServicePrincipal,
            client_id => IdentityMode::Workload { client_id },
        },
    };
    between(&identity, f)?;
    let mut objects = Vec::new();
    let selector = super::selector::read(&get(params, "objectSelector"), options.default_mode, f)?;
    let yaml = get(params, "objects");
    if yaml.is_empty() {
        // A class may mount only what its selector chooses (ours).
        if selector.is_none() {
            f.error("objects", "objects is not set", "list the objects under `objects: array:`")?;
        }
    } else {
        objects = objects::read(&yaml, options.default_mode, f)?;
        if objects.is_empty() && selector.is_none() && f.list().iter().all(|x| !x.field.starts_with("objects")) {
            f.error("objects", "objects lists no object: nothing to mount", "add objects to the array")?;
        }
    }
    if !vault_name.is_empty() {
        check_vault_name("keyvaultName", &vault_name, f)?;
    }
    let failover_vaults = read_failover_vaults(params, &vault_name, f)?;
    let max_staleness = read_max_staleness(&get(params, "maxStaleness"), f)?;
    let mut files = BTreeSet::new();
    for (i, o) in objects.iter().enumerate() {
        for p in output_paths(&o.spec, options.split_cert_and_key) {
            if !files.insert(p.clone()) {
                f.error(
                    format!("objects[{i}].objectAlias"),
                    format!(
                        "{}: file {p:?} is also written by another object; give one of them a different objectAlias",
                        o.spec.describe()
                    ),
                    "give one of them a different objectAlias",
                )?;
            }
        }
    }
    Ok(ClassParameters {
        vault_name,
        failover_vaults,
        tenant_id,
        cloud,
        identity,
        objects,
        files,
        selector,
        max_staleness,
    })
}

/// Key Vault's rule for a vault name, with upstream's messages.
fn check_vault_name(field: &str, name: &str, f: &mut Findings) -> Result<(), Stop> {
    let fix = "use the vault's name: 3-24 letters, digits and dashes";
    if name.len() < 3 || name.len() > 24 {
        let shown: String = name.chars().take(64).collect();
        f.error(
            field,
            format!("failed to get vault: Invalid vault name: {shown:?}, must be between 3 and 24 chars"),
            fix,
        )
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        f.error(
            field,
            format!("failed to get vault: Invalid vault name: {name:?}, must match [-a-zA-Z0-9]{{3,24}}"),
            fix,
        )
    } else {
        Ok(())
    }
}

/// The most failover vaults a class may list.
pub const MAX_FAILOVER_VAULTS: usize = 4;

/// `failoverKeyvaultNames`: vault names separated by commas, spaces or new lines, in the order they
/// are asked.
/// `maxStaleness` (ours): a Go duration from 1s to 24h, or absent (off).
fn read_max_staleness(text: &str, f: &mut Findings) -> Result<Option<std::time::Duration>, Stop> {
    if text.is_empty() {
        return Ok(None);
    }
    let max = crate::last_good::MAX_STALENESS;
    // jiff's duration grammar takes Go's spelling (`90s`, `1h30m`) and friendlier ones (`1 hour`).
    let parsed = text.parse::<jiff::SignedDuration>().ok().and_then(|d| std::time::Duration::try_from(d).ok());
    match parsed {
        Some(d) if d >= std::time::Duration::from_secs(1) && d <= max => Ok(Some(d)),
        _ => {
            let shown: String = text.chars().take(64).collect();
            let message = format!("invalid maxStaleness {shown:?}: must be a duration from 1s to 24h, e.g. 1h");
            f.error("maxStaleness", message, "e.g. maxStaleness: 1h")?;
            Ok(None)
        }
    }
}

fn read_failover_vaults(
    params: &BTreeMap<String, String>,
    primary: &str,
    f: &mut Findings,
) -> Result<Vec<String>, Stop> {
    const FIELD: &str = "failoverKeyvaultNames";
    let text = get(params, FIELD);
    let names: Vec<String> =
        text.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty()).map(str::to_string).collect();
    if names.len() > MAX_FAILOVER_VAULTS {
        f.error(
            FIELD,
            format!("failoverKeyvaultNames lists {} vaults, at most {MAX_FAILOVER_VAULTS} are allowed", names.len()),
            "keep the nearest vaults",
        )?;
        return Ok(Vec::new());
    }
    let mut seen = BTreeSet::from([primary.to_ascii_lowercase()]);
    for n in &names {
        check_vault_name(FIELD, n, f)?;
        if !seen.insert(n.to_ascii_lowercase()) {
            f.error(
                FIELD,
                format!("failoverKeyvaultNames lists {n:?} twice (or names keyvaultName)"),
                "list each vault once",
            )?;
        }
    }
    Ok(names)
}
