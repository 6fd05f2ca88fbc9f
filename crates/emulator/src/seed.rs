//! The seed file: vaults and their objects, identities, federated credentials and access rules.
//!
//! ```yaml
//! tenants:
//!   - id: 72f988bf-0000-0000-0000-000000000001
//!     applications:
//!       - clientId: app-client-id
//!         objectId: app-object-id
//!         clientSecret: s3cret              # service principal (nodePublishSecretRef)
//!         federatedCredentials:             # workload identity
//!           - issuer: https://oidc.cluster.local/
//!             subject: system:serviceaccount:default:app
//!             audience: api://AzureADTokenExchange
//! managedIdentities:                        # IMDS; omit clientId-less entry for no system identity
//!   - { tenant: 72f988bf-..., clientId: uami-client, objectId: uami-object }
//!   - { tenant: 72f988bf-..., objectId: node-system-identity, systemAssigned: true }
//! podIdentities:                            # aad-pod-identity NMI
//!   - { namespace: default, clientId: uami-client }
//! issuers:                                  # service-account issuers (public keys)
//!   - { url: https://oidc.cluster.local/, publicKeyPem: "-----BEGIN PUBLIC KEY-----..." }
//!   - { url: https://kubernetes.default.svc.cluster.local, jwks: '{"keys":[...]}' }  # a real cluster's keys
//! identityBindings:                        # AKS identity binding, served by the token proxy
//!   - clusterId: 64f1c0de                   # API server certificate: hcp-kubernetes.<id>.svc.cluster.local
//!     issuer: https://oidc.cluster.local/
//!     tenant: 72f988bf-...
//!     clientId: uami-client
//!     serviceAccounts: [system:serviceaccount:default:app]   # the RBAC grants; "*" = any
//! vaults:
//!   - name: kv1
//!     tenant: 72f988bf-...
//!     access:                               # principals by object id or client id
//!       - { principal: app-client-id, secrets: [get, list], keys: [get], certificates: [get] }
//!     throttle: { limit: 4000, windowSeconds: 10 }
//!     secrets:
//!       - { name: db-password, value: hunter2 }
//!       - name: api-key
//!         versions: [ { value: old }, { value: new, contentType: text/plain } ]
//!     keys: [ { name: my-key, kty: RSA, size: 2048 }, { name: ec-key, kty: EC, curve: P-384 } ]
//!     certificates: [ { name: my-cert, subject: CN=example.com, contentType: application/x-pkcs12 } ]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole seed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Entra tenants and their applications.
    #[serde(default)]
    pub tenants: Vec<TenantSeed>,
    /// IMDS identities.
    #[serde(default)]
    pub managed_identities: Vec<ManagedIdentitySeed>,
    /// NMI pod identity assignments.
    #[serde(default)]
    pub pod_identities: Vec<PodIdentitySeed>,
    /// Service-account token issuers known to Entra.
    #[serde(default)]
    pub issuers: Vec<IssuerSeed>,
    /// Vaults.
    #[serde(default)]
    pub vaults: Vec<VaultSeed>,
    /// AKS identity bindings, served by the token proxy.
    #[serde(default)]
    pub identity_bindings: Vec<IdentityBindingSeed>,
    /// Storage accounts whose queues receive vaults' change events.
    #[serde(default)]
    pub storage_accounts: Vec<crate::queue::StorageAccountSeed>,
}

/// An AKS identity binding: a user-assigned identity bound to one cluster, and the service accounts
/// the cluster grants it to (the `use-managed-identity` verb on `cid.wi.aks.azure.com`, which the
/// proxy checks).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityBindingSeed {
    /// The cluster's id (its API server certificate names `hcp-kubernetes.<id>.svc.cluster.local`).
    pub cluster_id: String,
    /// The cluster's service-account issuer (its tokens are checked against it).
    pub issuer: String,
    /// Tenant of the identity.
    pub tenant: String,
    /// Client id of the bound identity (a managed identity or an application of the tenant).
    pub client_id: String,
    /// `system:serviceaccount:<ns>:<name>` granted the identity; `*` grants every service account.
    #[serde(default)]
    pub service_accounts: Vec<String>,
}

/// A tenant.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSeed {
    /// Tenant id.
    pub id: String,
    /// App registrations / user-assigned identities usable with client credentials.
    #[serde(default)]
    pub applications: Vec<ApplicationSeed>,
}

/// An application (or user-assigned managed identity) in a tenant.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSeed {
    /// Client (application) id.
    pub client_id: String,
    /// Object id of its service principal.
    #[serde(default)]
    pub object_id: String,
    /// Client secret, if it has one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Federated identity credentials.
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredentialSeed>,
}

/// A federated identity credential.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedCredentialSeed {
    /// Issuer URL.
    pub issuer: String,
    /// `system:serviceaccount:<ns>:<sa>`.
    pub subject: String,
    /// Audience (`api://AzureADTokenExchange`).
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_audience() -> String {
    "api://AzureADTokenExchange".into()
}

/// A managed identity reachable through IMDS.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManagedIdentitySeed {
    /// Tenant.
    pub tenant: String,
    /// Client id (user-assigned); empty for the system-assigned identity.
    #[serde(default)]
    pub client_id: String,
    /// Object id.
    #[serde(default)]
    pub object_id: String,
    /// The VM's system-assigned identity.
    #[serde(default)]
    pub system_assigned: bool,
}

/// A pod identity binding for NMI.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodIdentitySeed {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name; empty matches every pod of the namespace.
    #[serde(default)]
    pub pod: String,
    /// Client id of a managed identity.
    pub client_id: String,
}

/// A service-account issuer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSeed {
    /// Issuer URL.
    pub url: String,
    /// SPKI PEM; absent (and no `jwks`): the emulator generates a key and can mint tokens for this issuer.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// The issuer's JWKS document (JSON text), as a cluster serves it at `/openid/v1/jwks`.
    #[serde(default)]
    pub jwks: Option<String>,
}

/// A vault.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultSeed {
    /// Vault name (DNS label).
    pub name: String,
    /// Tenant whose tokens it accepts.
    pub tenant: String,
    /// Access policy.
    #[serde(default)]
    pub access: Vec<AccessSeed>,
    /// Throttling.
    #[serde(default)]
    pub throttle: Option<ThrottleSeed>,
    /// Secrets.
    #[serde(default)]
    pub secrets: Vec<SecretSeed>,
    /// Keys.
    #[serde(default)]
    pub keys: Vec<KeySeed>,
    /// Certificates.
    #[serde(default)]
    pub certificates: Vec<CertificateSeed>,
}

/// One access-policy entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessSeed {
    /// Object id or client id.
    pub principal: String,
    /// Secret permissions: get, list, set.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Key permissions: get, list, create.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Certificate permissions: get, list, create, import.
    #[serde(default)]
    pub certificates: Vec<String>,
}

/// Throttling settings of a vault.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleSeed {
    /// Requests per window.
    pub limit: u64,
    /// Window length in seconds.
    #[serde(default = "default_window")]
    pub window_seconds: u64,
}

fn default_window() -> u64 {
    10
}

/// A secret with one or more versions.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSeed {
    /// Name.
    pub name: String,
    /// Value of the only version (shorthand).
    #[serde(default)]
    pub value: Option<String>,
    /// Content type of the only version.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Versions, oldest first.
    #[serde(default)]
    pub versions: Vec<SecretVersionSeed>,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One secret version.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVersionSeed {
    /// Value.
    pub value: String,
    /// Content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Enabled (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    #[serde(default)]
    pub exp: Option<i64>,
}

fn yes() -> bool {
    true
}

/// A key to generate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySeed {
    /// Name.
    pub name: String,
    /// RSA, RSA-HSM, EC, EC-HSM.
    #[serde(default = "rsa")]
    pub kty: String,
    /// RSA size.
    #[serde(default)]
    pub size: Option<u32>,
    /// EC curve.
    #[serde(default)]
    pub curve: Option<String>,
    /// How many versions to create (default 1).
    #[serde(default)]
    pub versions: Option<usize>,
}

fn rsa() -> String {
    "RSA".into()
}

/// A certificate to generate (root → intermediate → leaf).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSeed {
    /// Name.
    pub name: String,
    /// Subject (`CN=...`).
    #[serde(default)]
    pub subject: Option<String>,
    /// `application/x-pkcs12` (default) or `application/x-pem-file`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Leaf key type (RSA default, or EC).
    #[serde(default)]
    pub kty: Option<String>,
    /// EC curve.
    #[serde(default)]
    pub curve: Option<String>,
    /// The leaf's validity from now, in days (default: decades); a short one tests expiry warnings.
    #[serde(default)]
    pub valid_days: Option<u32>,
}

impl Seed {
    /// Parses YAML.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}
