//! The Azure provider's flags (the upstream provider's names, plus ours) and the provider's
//! configuration built from them; every command that runs the provider (`node`, `provider`, `mount`,
//! `sync-controller`, `check --live`) flattens [`AzureArgs`] into its own flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use secrets_store::duration::parse_go_duration;

/// Go's `strconv.ParseBool` for a flag value (the same rule as class parameters, where an absent
/// value is false; a flag given as `--flag=` is an error, as with Go's `flag` package).
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    let invalid = || format!("invalid boolean {s:?}: use true or false");
    if s.is_empty() {
        return Err(invalid());
    }
    keyvault::params::parse_bool(s).map_err(|_| invalid())
}

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
    pub fn config(&self, poll_interval: Option<Duration>) -> Result<keyvault::Config, String> {
        let extra_ca_pem = match &self.azure_extra_ca_file {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| format!("--azure-extra-ca-file {}: {e}", p.display()))?)
            }
            None => None,
        };
        if !self.keyvault_rate_limit.is_finite() || self.keyvault_rate_limit <= 0.0 {
            return Err("--keyvault-rate-limit must be positive".into());
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
            return Err(format!("--cloud-name {:?} is not a known cloud", self.cloud_name));
        }
        Ok(c)
    }
}
