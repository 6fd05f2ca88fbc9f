//! `keyvault-csi check` for the Azure parameters of a SecretProviderClass: every problem in one run.
//!
//! The rules a mount enforces come from the same reader as the mount ([`crate::params::read`]), read
//! without stopping. On top of them, rules only a linter can afford: unknown or misspelt parameters,
//! driver settings put in a class, deprecated or ignored identity settings, and placeholders left in
//! from a tutorial (`<KEY_VAULT_NAME>`), which a mount only discovers as a Key Vault or Entra ID error.

use std::collections::{BTreeMap, BTreeSet};

use crate::params::read::{self, ClassParameters, Findings, IdentityMode, ReadOptions};
use crate::params::{ClassObject, Finding, Severity};

/// Parameters the Azure provider reads.
pub const KNOWN_PARAMETERS: &[&str] = &[
    "keyvaultName",
    "tenantID",
    "tenantId",
    "cloudName",
    "cloudEnvFileName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "useAzureTokenProxy",
    "userAssignedIdentityID",
    "clientID",
    "objects",
    "failoverKeyvaultNames",
    "resourceGroup",
    "subscriptionId",
];

/// Names people give the Azure provider that are not its name (`azure`).
pub const PROVIDER_ALIASES: &[&str] =
    &["azurekeyvault", "azure-keyvault", "azure_keyvault", "azure-key-vault", "keyvault", "akv", "azurekv"];

/// Driver settings that people put in a class, where they do nothing.
const DRIVER_SETTINGS: &[&str] =
    &["enableSecretRotation", "rotationPollInterval", "syncSecret", "syncSecretEnabled", "filteredWatchSecret"];

/// Parameters whose values are names or IDs a tutorial leaves as placeholders.
const IDENTIFIERS: &[&str] = &["keyvaultName", "tenantId", "tenantID", "clientID", "userAssignedIdentityID"];

/// What the linter found, and what it learnt about the class.
#[derive(Clone, Debug)]
pub struct Lint {
    /// Every problem, errors first in reading order, then warnings.
    pub findings: Vec<Finding>,
    /// The class as far as it could be read (identity mode, objects, the files they write).
    pub class: Option<ClassParameters>,
}

impl Lint {
    /// The files a mount of this class writes (`None` when the objects could not be read).
    pub fn files(&self) -> Option<&BTreeSet<String>> {
        self.class.as_ref().map(|c| &c.files)
    }

    /// The objects that could be read.
    pub fn objects(&self) -> &[ClassObject] {
        self.class.as_ref().map_or(&[], |c| &c.objects)
    }
}

/// Whether `parameters` look like the Azure provider's (for a class whose provider name is wrong).
pub fn looks_like_azure(parameters: &BTreeMap<String, String>) -> bool {
    ["keyvaultName", "tenantId", "tenantID"].iter().any(|k| parameters.contains_key(*k))
}

/// Lints the parameters of a class. `split_cert_and_key` is the driver's
/// `--write-cert-and-key-in-separate-files`.
pub fn lint(parameters: &BTreeMap<String, String>, split_cert_and_key: bool) -> Lint {
    let mut f = Findings::all();
    unknown_parameters(parameters, &mut f);
    let placeholders = placeholders(parameters, &mut f);
    let clouds = crate::cloud::Clouds::default();
    let options = ReadOptions { default_mode: 0o644, clouds: &clouds, split_cert_and_key };
    let class = read::read(parameters, options, &mut f, |mode, f| {
        identity(mode, parameters, f);
        Ok(())
    })
    .ok();
    if let Some(class) = &class {
        object_placeholders(&class.objects, &mut f);
    }
    // A placeholder explains the other errors on its field (`"<KEY_VAULT_NAME>"` is also too long).
    f.retain(|x| {
        x.severity == Severity::Warning || !placeholders.contains(&x.field) || x.message.contains("placeholder")
    });
    let mut findings = f.into_list();
    findings.sort_by_key(|x| x.severity);
    Lint { findings, class }
}

fn unknown_parameters(parameters: &BTreeMap<String, String>, f: &mut Findings) {
    for key in parameters.keys() {
        if KNOWN_PARAMETERS.contains(&key.as_str()) {
            continue;
        }
        if key.starts_with("csi.storage.k8s.io/") {
            let _ = f.error(key.as_str(), "reserved for kubelet's pod attributes; the driver drops it", "remove it");
        } else if let Some(s) = DRIVER_SETTINGS.iter().find(|s| s.eq_ignore_ascii_case(key)) {
            f.warning(
                key.as_str(),
                format!("{s} is a driver setting (Helm value or flag), not a class parameter; it has no effect here"),
                "remove it and set it on the driver",
            );
        } else if let Some(k) = KNOWN_PARAMETERS.iter().find(|k| similar(key, k)) {
            f.warning(key.as_str(), format!("unknown parameter; did you mean {k:?}?"), format!("rename it to {k}"));
        } else {
            f.warning(key.as_str(), "unknown parameter, ignored by the Azure provider", "remove it");
        }
    }
}

/// Case-insensitive edit distance of at most 2: a typo.
pub fn similar(a: &str, b: &str) -> bool {
    strsim::levenshtein(&a.to_lowercase(), &b.to_lowercase()) <= 2
}

/// A tutorial's placeholder: `<KEY_VAULT_NAME>`, `<your-tenant-id>`, `${TENANT_ID}`.
fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    (v.starts_with('<') && v.ends_with('>')) || (v.starts_with("${") && v.ends_with('}'))
}

/// Reports placeholders among the identifiers; returns the fields that hold one.
fn placeholders(parameters: &BTreeMap<String, String>, f: &mut Findings) -> Vec<String> {
    let mut fields = Vec::new();
    for key in IDENTIFIERS {
        let Some(value) = parameters.get(*key).filter(|v| is_placeholder(v)) else { continue };
        let field = if *key == "tenantID" { "tenantId" } else { key };
        let _ = f.error(
            field,
            format!("{:?} is an unfilled placeholder", value.trim()),
            format!("replace it with the real {key}"),
        );
        fields.push(field.to_string());
    }
    fields
}

fn object_placeholders(objects: &[ClassObject], f: &mut Findings) {
    for (i, o) in objects.iter().enumerate() {
        for (field, value) in
            [("objectName", &o.spec.name), ("objectAlias", &o.spec.alias), ("objectVersion", &o.spec.version)]
        {
            if is_placeholder(value) {
                let _ = f.error(
                    format!("objects[{i}].{field}"),
                    format!("{value:?} is an unfilled placeholder"),
                    format!("replace it with the object's real {field}"),
                );
            }
        }
    }
}

/// What a mode needs that the class alone can tell.
fn identity(mode: &IdentityMode, parameters: &BTreeMap<String, String>, f: &mut Findings) {
    let set = |k: &str| !read::get(parameters, k).is_empty();
    match mode {
        IdentityMode::PodIdentity => f.warning(
            "usePodIdentity",
            "usePodIdentity (aad-pod-identity) is deprecated and fails on clusters without NMI",
            "use workload identity: remove usePodIdentity, set clientID and a service account federated with it",
        ),
        IdentityMode::TokenProxy { client_id } if client_id.is_empty() => {
            let _ = f.error(
                "clientID",
                "clientID is required for identity binding",
                "set clientID to the client id of the user-assigned identity bound to this cluster",
            );
        }
        IdentityMode::ManagedIdentity { .. } if set("clientID") => f.warning(
            "clientID",
            "ignored with useVMManagedIdentity; the identity is userAssignedIdentityID (or the node's system-assigned one)",
            "remove clientID, or remove useVMManagedIdentity for workload identity",
        ),
        _ => {}
    }
    if set("userAssignedIdentityID") && !matches!(mode, IdentityMode::ManagedIdentity { .. }) {
        f.warning(
            "userAssignedIdentityID",
            "ignored unless useVMManagedIdentity is \"true\"",
            "set useVMManagedIdentity: \"true\", or use clientID for workload identity",
        );
    }
}

#[cfg(test)]
mod tests;
