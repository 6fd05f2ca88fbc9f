//! Wires the in-process Azure Key Vault provider into the driver's provider interface, and builds its
//! configuration from flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use secrets_store::provider::{ErrorKind, File, MountRequest, MountResponse, Provider, ProviderError};

use crate::cli::{parse_go_bool, parse_go_duration};

/// The upstream Azure provider's flags, plus endpoint overrides for the emulator.
#[derive(Debug, Args, Clone)]
pub struct AzureArgs {
    /// Order PFX-derived certificate chains leaf → intermediate → root.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub construct_pem_chain: bool,
    /// Also write `<name>.crt` and `<name>.key` for certificate-backed secrets.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub write_cert_and_key_in_separate_files: bool,
    /// Cloud used when a class names none.
    #[arg(long, default_value = "AzurePublicCloud")]
    pub cloud_name: String,
    /// The one directory a class's `cloudEnvFileName` may name a file in (ours: upstream opens any path
    /// in its provider pod). Relative names are taken inside it; `..` and symlinks out are refused.
    #[arg(long, default_value = keyvault::cloud::DEFAULT_ENV_DIR, value_name = "DIR")]
    pub cloud_env_dir: PathBuf,
    /// Sustained Key Vault requests per second per vault (Azure allows 400/s; default half of it).
    #[arg(long, default_value_t = 200.0)]
    pub keyvault_rate_limit: f64,
    /// Concurrent Key Vault requests per vault.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub keyvault_concurrency: u32,
    /// How long a fetched object may be shared by identical fetches of the same identity.
    #[arg(long, default_value = "5s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub keyvault_dedup_window: Duration,
    /// Extra CA certificates (PEM file) to trust for Key Vault and Entra ID (emulator, proxies).
    #[arg(long, value_name = "FILE")]
    pub azure_extra_ca_file: Option<PathBuf>,
    /// Send every Azure request to this IP address (emulator only; never in production).
    #[arg(long, value_name = "IP")]
    pub azure_resolve_to: Option<std::net::IpAddr>,
    /// Port of vault URLs (emulator only).
    #[arg(long, value_name = "PORT")]
    pub azure_vault_port: Option<u16>,
    /// Entra ID authority, overriding the cloud's (e.g. `https://login.microsoftonline.com:8443`).
    #[arg(long, value_name = "URL")]
    pub azure_authority_host: Option<String>,
    /// IMDS endpoint (default `http://169.254.169.254`).
    #[arg(long, value_name = "URL")]
    pub azure_imds_endpoint: Option<String>,
    /// aad-pod-identity NMI endpoint (default `http://localhost:2579`).
    #[arg(long, value_name = "URL")]
    pub azure_nmi_endpoint: Option<String>,
    /// URL of the token proxy endpoint for identity binding. If not set, defaults to the in-cluster
    /// Kubernetes API server endpoint.
    #[arg(long, value_name = "URL")]
    pub token_proxy_url: Option<String>,
    /// TLS server name for identity binding proxy connection. If not set, it is computed from the API
    /// server's serving certificate.
    #[arg(long, value_name = "NAME")]
    pub sni_name: Option<String>,
    /// CA certificate (PEM) the identity binding proxy's certificate is checked against (ours; upstream
    /// always uses the service-account CA).
    #[arg(long, value_name = "FILE", default_value = keyvault::identity::proxy::DEFAULT_CA_FILE)]
    pub token_proxy_ca_file: PathBuf,
}

impl AzureArgs {
    /// The provider's configuration; errors name the flag. `poll_interval` (rotation) caps the dedup
    /// window (which serves kubelet's mounts and republishes) at a quarter of it; rotation cycles share
    /// fetches by cycle instead.
    pub fn config(&self, poll_interval: Option<Duration>) -> anyhow::Result<keyvault::Config> {
        let extra_ca_pem = match &self.azure_extra_ca_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("--azure-extra-ca-file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        if !self.keyvault_rate_limit.is_finite() || self.keyvault_rate_limit <= 0.0 {
            anyhow::bail!("--keyvault-rate-limit must be positive");
        }
        let mut c = keyvault::Config {
            construct_pem_chain: self.construct_pem_chain,
            write_cert_and_key_in_separate_files: self.write_cert_and_key_in_separate_files,
            clouds: keyvault::cloud::Clouds {
                default_cloud: self.cloud_name.clone(),
                env_dir: self.cloud_env_dir.clone(),
            },
            network: keyvault::NetworkConfig {
                extra_ca_pem,
                resolve_all_to: self.azure_resolve_to,
                vault_port: self.azure_vault_port,
                authority_override: self.azure_authority_host.clone(),
                imds_url: self.azure_imds_endpoint.clone(),
                nmi_url: self.azure_nmi_endpoint.clone(),
                token_proxy: keyvault::identity::proxy::TokenProxyConfig {
                    url: self.token_proxy_url.clone().filter(|u| !u.is_empty()),
                    sni_name: self.sni_name.clone().filter(|s| !s.is_empty()),
                    ca_file: self.token_proxy_ca_file.clone(),
                    ..Default::default()
                },
            },
            dedup_window: match poll_interval {
                Some(p) => self.keyvault_dedup_window.min(p / 4),
                None => self.keyvault_dedup_window,
            },
            ..Default::default()
        };
        c.limits.rate_per_sec = self.keyvault_rate_limit;
        c.limits.burst = (self.keyvault_rate_limit * 2.0).max(1.0);
        c.limits.concurrency = self.keyvault_concurrency as usize;
        if keyvault::cloud::builtin(&self.cloud_name).is_none()
            && !self.cloud_name.eq_ignore_ascii_case("AzureStackCloud")
        {
            anyhow::bail!("--cloud-name {:?} is not a known cloud", self.cloud_name);
        }
        Ok(c)
    }
}

/// The Azure provider behind the driver's `Provider` interface: the one place where its types meet
/// the driver's (requests, files, and the one map of error kinds).
pub struct AzureProvider {
    /// The provider.
    pub provider: Arc<keyvault::Provider>,
    /// Where `grpc_request` is recorded for in-process calls (as if the call had crossed the upstream
    /// socket); `None` when the v1alpha1 server records it.
    pub metrics: Option<keyvault::metrics::ProviderMetrics>,
}

/// The driver's kind of a Key Vault failure (which decides the gRPC status code).
fn driver_kind(kind: keyvault::ErrorKind) -> ErrorKind {
    match kind {
        keyvault::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
        keyvault::ErrorKind::NotFound => ErrorKind::NotFound,
        keyvault::ErrorKind::Forbidden => ErrorKind::PermissionDenied,
        keyvault::ErrorKind::Throttled => ErrorKind::ResourceExhausted,
        keyvault::ErrorKind::Unavailable => ErrorKind::Unavailable,
        keyvault::ErrorKind::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        keyvault::ErrorKind::Internal => ErrorKind::Internal,
    }
}

#[async_trait]
impl Provider for AzureProvider {
    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let req = keyvault::MountRequest {
            attributes: request.attributes,
            secrets: request.secrets.unwrap_or_default(),
            default_mode: request.permission,
            deadline: request.deadline,
            priority: if request.background { keyvault::Priority::Background } else { keyvault::Priority::Mount },
            cycle: request.cycle,
            fresh: request.fresh,
        };
        let started = std::time::Instant::now();
        let result = self.provider.mount(req).await;
        let result = match result {
            Ok(r) => Ok(MountResponse {
                files: r.files.into_iter().map(|f| File { path: f.path, mode: f.mode, contents: f.contents }).collect(),
                object_versions: r.object_versions,
                served: r
                    .served
                    .into_iter()
                    .map(|s| secrets_store::provider::Served {
                        id: s.id,
                        version: s.version,
                        source: s.vault,
                        failover: s.failover,
                        cache_hit: s.cache_hit,
                    })
                    .collect(),
                requester: secrets_store::provider::Requester {
                    identity: r.identity.kind.to_string(),
                    client_id: r.identity.client_id,
                },
            }),
            Err(e) => Err(ProviderError::new(driver_kind(e.kind), "ProviderError", mount_failure(&e))),
        };
        if let Some(metrics) = &self.metrics {
            let code = result.as_ref().err().map_or(tonic::Code::Ok, |e| e.kind.grpc_code());
            metrics.grpc("/v1alpha1.CSIDriverProvider/Mount", &format!("{code:?}"), started.elapsed());
        }
        result
    }
}

/// The upstream Azure provider's wrapper text for a failed mount, so messages read as they did with
/// two DaemonSets.
pub fn mount_failure(e: &keyvault::Error) -> String {
    format!("failed to mount objects, error: {}", e.message)
}

/// The Azure provider's parameter linter, for `keyvault-csi check`.
pub struct AzureLint;

impl secrets_store::lint::ParametersLint for AzureLint {
    fn provider(&self) -> &str {
        "azure"
    }

    fn aliases(&self) -> &[&str] {
        keyvault::lint::PROVIDER_ALIASES
    }

    fn recognises(&self, spec: &secrets_store::class::SecretProviderClassSpec) -> bool {
        keyvault::lint::looks_like_azure(&spec.parameters)
    }

    fn lint(&self, spec: &secrets_store::class::SecretProviderClassSpec) -> secrets_store::lint::ParametersReport {
        let lint = keyvault::lint::lint(&spec.parameters, false);
        let findings = lint
            .findings
            .iter()
            .map(|f| match f.severity {
                keyvault::params::Severity::Error => secrets_store::lint::Finding::error(&f.field, &f.message, &f.fix),
                keyvault::params::Severity::Warning => {
                    secrets_store::lint::Finding::warning(&f.field, &f.message, &f.fix)
                }
            })
            .collect();
        secrets_store::lint::ParametersReport { findings, files: lint.files().cloned() }
    }
}

#[cfg(test)]
mod tests {
    //! Where the driver's and the provider's types meet, so one test can print them all.

    use std::collections::BTreeMap;

    use csi_proto::csi::{NodePublishVolumeRequest, VolumeCapability};
    use secrets_store::volume_context::PublishParams;

    /// A service-account JWT (`iss`, `sub`, `exp` in 2100); its signature is the marker searched for.
    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL29pZGMvIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om5zOnNhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.sig-TOKEN-VALUE";
    /// The same, expired in 1970.
    const EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL29pZGMvIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Om5zOnNhIiwiZXhwIjoxMDAwfQ.sig-TOKEN-VALUE";
    const CLIENT_SECRET: &str = "client-secret-VALUE";
    const FILE: &str = "file-contents-VALUE";

    fn tokens_json(token: &str) -> String {
        format!(
            r#"{{"api://AzureADTokenExchange":{{"token":"{token}","expirationTimestamp":"2100-01-01T00:00:00Z"}}}}"#
        )
    }

    fn assert_clean(what: &str, debug: String) {
        for secret in [TOKEN, "sig-TOKEN-VALUE", CLIENT_SECRET, FILE] {
            assert!(!debug.contains(secret), "{what} prints a secret in its Debug output: {debug}");
        }
    }

    #[test]
    fn no_debug_output_of_a_request_params_volume_or_error_holds_a_secret() {
        let context: BTreeMap<String, String> = [
            ("secretProviderClass", "spc"),
            ("csi.storage.k8s.io/pod.name", "web"),
            ("csi.storage.k8s.io/pod.namespace", "ns"),
            ("csi.storage.k8s.io/serviceAccount.tokens", &tokens_json(TOKEN)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let request = NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount".into(),
            volume_capability: Some(VolumeCapability::default()),
            readonly: true,
            volume_context: context.into_iter().collect(),
            secrets: [("clientid".to_string(), "id".to_string()), ("clientsecret".to_string(), CLIENT_SECRET.into())]
                .into(),
            ..Default::default()
        };
        let params = PublishParams::parse(request).unwrap();
        assert_clean("PublishParams", format!("{params:?}"));
        let volume = driver::registry::Volume::fresh(params.clone(), "azure".into(), BTreeMap::new());
        assert_clean("Volume", format!("{volume:?}"));

        let spc_parameters: BTreeMap<String, String> = [
            ("keyvaultName", "kv1"),
            ("tenantId", "t"),
            ("clientID", "c"),
            ("objects", "array:\n  - |\n    objectName: a\n    objectType: secret\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let driver_request = secrets_store::provider::MountRequest {
            attributes: params.attributes(&spc_parameters),
            secrets: params.secrets.clone(),
            target_path: params.target_path.clone(),
            permission: 0o644,
            current_object_versions: BTreeMap::new(),
            deadline: None,
            background: false,
            cycle: None,
            fresh: false,
        };
        assert_clean("driver MountRequest", format!("{driver_request:?}"));
        let file = secrets_store::provider::File::new("a", 0o644, FILE.as_bytes().to_vec());
        assert_clean("driver File", format!("{file:?}"));

        let kv_request = keyvault::MountRequest {
            attributes: driver_request.attributes.clone(),
            secrets: driver_request.secrets.clone().unwrap_or_default(),
            default_mode: 0o644,
            ..Default::default()
        };
        assert_clean("keyvault MountRequest", format!("{kv_request:?}"));
        // Workload identity (the token) and a service principal (the client secret).
        let wi =
            keyvault::params::parse(&kv_request.attributes, &Default::default(), 0o644, &Default::default(), false);
        let mut sp_attributes = kv_request.attributes.clone();
        sp_attributes.remove("clientID");
        let sp = keyvault::params::parse(&sp_attributes, &kv_request.secrets, 0o644, &Default::default(), false);
        for parsed in [wi, sp] {
            let parsed = parsed.expect("a class that parses");
            assert_clean("MountParams", format!("{parsed:?}"));
            assert_clean("Identity", format!("{:?}", parsed.identity));
        }

        // Errors a mount can fail with, as kubelet and the logs see them.
        let provider_error = secrets_store::provider::ProviderError::new(
            secrets_store::provider::ErrorKind::PermissionDenied,
            "ProviderError",
            "failed to mount objects, error: 403",
        );
        let publish_error = driver::error::PublishError::Provider { pod: "ns/web".into(), source: provider_error };
        assert_clean("PublishError", format!("{publish_error:?} {publish_error} {:?}", publish_error.to_status()));
        let mut expired = kv_request.attributes.clone();
        expired.insert("csi.storage.k8s.io/serviceAccount.tokens".into(), tokens_json(EXPIRED));
        let e = keyvault::params::parse(&expired, &Default::default(), 0o644, &Default::default(), false).unwrap_err();
        assert!(e.message.contains("expired"), "{e}");
        assert_clean("keyvault Error", format!("{e:?} {e}"));
    }
}
