//! Command-line flags. Names and defaults follow the upstream driver (upstream's `cmd/secrets-store-csi-driver/main.go`) so existing
//! DaemonSet manifests and Helm values keep working; Go-style values (`--flag=true`, `2m`) are accepted.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Secrets Store CSI driver with the Azure Key Vault provider built in.
#[derive(Debug, Parser)]
#[command(
    name = "keyvault-csi",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    /// Node driver flags (the default command).
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print version information as JSON and exit.
    #[arg(long, global = true)]
    pub version: bool,
    /// Log verbosity, as klog's `-v` (0: info; 2-4: debug; 5 and above: trace, with request dumps).
    #[arg(short = 'v', long = "v", global = true, default_value_t = 0, value_name = "LEVEL")]
    pub verbosity: u8,
    /// Log in JSON instead of text.
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = parse_go_bool, value_name = "BOOL")]
    pub log_format_json: bool,
    /// A subcommand; without one, the CSI node driver runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags of `keyvault-csi check`: the check's own, and the Azure provider's as the driver has them
/// (for `--live`).
#[derive(Debug, clap::Args)]
pub struct CheckCommand {
    /// What to check.
    #[command(flatten)]
    pub check: keyvault_bridge::check::CheckArgs,
    /// The Azure provider's settings.
    #[command(flatten)]
    pub azure: keyvault_bridge::AzureArgs,
}

/// Subcommands besides the node driver.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a SecretProviderClass into a directory without a cluster (and keep it fresh).
    Mount(crate::standalone::MountArgs),
    /// Find what is wrong with SecretProviderClass manifests (exit 0 clean, 1 problems, 2 unreadable).
    Check(Box<CheckCommand>),
    /// Print the SecretProviderClass and SecretProviderClassPodStatus CRDs (YAML) and exit.
    Crds,
    /// Serve the Azure provider on the upstream v1alpha1 provider protocol, for the upstream driver.
    Provider(crate::provider_server::ProviderArgs),
    /// Keep Kubernetes Secrets in step with SecretSync objects (secret-sync.x-k8s.io), without pods.
    SyncController(Box<crate::sync_controller::SyncControllerArgs>),
}

/// Flags of the CSI node driver.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// CSI endpoint: `unix://<path>` or `tcp://<host:port>`.
    #[arg(long, default_value = "unix://tmp/csi.sock", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,
    /// CSI driver name.
    #[arg(long, default_value = "secrets-store.csi.k8s.io")]
    pub drivername: String,
    /// Node id reported to kubelet (the chart passes the node name).
    #[arg(long, default_value = "")]
    pub nodeid: String,
    /// Directory of external provider sockets.
    #[arg(long, default_value = "/var/run/secrets-store-csi-providers")]
    pub provider_volume: PathBuf,
    /// Comma-separated directories searched for provider sockets before `--provider-volume`.
    #[arg(long, default_value = "/etc/kubernetes/secrets-store-csi-providers", value_delimiter = ',')]
    pub additional_provider_volume_paths: Vec<PathBuf>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz (`:8095` = all interfaces).
    #[arg(long, default_value = ":8095", value_parser = parse_listen_addr)]
    pub metrics_addr: std::net::SocketAddr,
    /// Who may read `/metrics`.
    #[command(flatten)]
    pub metrics_auth: crate::http::MetricsAuthArgs,
    /// Also serve `/metrics/provider`: the unprivileged provider's metrics from its Unix socket, behind
    /// the same checks as `/metrics` (ours; the chart sets it with `metrics.auth`).
    #[arg(long, value_name = "PATH")]
    pub provider_metrics_socket: Option<PathBuf>,
    /// The audit trail.
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Metrics backend; only Prometheus is supported.
    #[arg(long, default_value = "Prometheus", value_parser = parse_metrics_backend)]
    pub metrics_backend: String,
    /// Re-fetch mounted contents every `--rotation-poll-interval`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub enable_secret_rotation: bool,
    /// With rotation on, refresh volumes on the driver's own schedule (a node-wide poller); false: only
    /// when kubelet republishes (CSIDriver `requiresRepublish`), as upstream v1.6 does.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub rotation_poller: bool,
    /// How often mounted contents are re-fetched when rotation is on.
    #[arg(long, default_value = "2m", value_parser = parse_go_duration, value_name = "DURATION")]
    pub rotation_poll_interval: Duration,
    /// While Key Vault change events flow (the controller's consumer heartbeat is fresh), poll
    /// mounted volumes this rarely instead: events bring changes within seconds and polls are the
    /// safety net (ours; e.g. `1h`). Unset: no change events on this node.
    #[arg(long, value_parser = parse_go_duration, value_name = "DURATION")]
    pub events_poll_interval: Option<Duration>,
    /// Namespace of the change-event invalidations ConfigMap (the chart's release namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub events_namespace: String,
    /// The shortest rotation interval a SecretProviderClass may ask for with its
    /// `keyvault-csi.io/rotation-poll-interval` annotation (ours); shorter ones are raised to this.
    #[arg(long, default_value = "30s", value_parser = parse_min_interval, value_name = "DURATION")]
    pub min_rotation_poll_interval: Duration,
    /// Warn on the pod (a `CertificateExpiring` event) this long before a mounted certificate
    /// expires; 0 disables the warning (the `certificate_expiry_timestamp_seconds` gauge stays).
    #[arg(long, default_value = "720h", value_parser = parse_go_duration, value_name = "DURATION")]
    pub cert_expiry_warning: Duration,
    /// Whether kubelet's NodePublishVolume waits for the pod status and the Secret sync (ours):
    /// `background` returns once the files are in place and a per-node writer records the rest, in
    /// order, retrying until the API server answers; `synchronous` is upstream's (a status that cannot
    /// be written fails the mount). Rotation writes in the background either way.
    #[arg(long, default_value = "background", value_name = "background|synchronous")]
    pub api_writes: driver::api_writes::WriteMode,
    /// Volumes that may owe API writes at once (ours); a new mount beyond it fails with UNAVAILABLE
    /// until the API server answers (kubelet retries it).
    #[arg(long, default_value_t = driver::api_writes::DEFAULT_LIMIT as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_writes_limit: u32,
    /// After a restart, mint the CSIDriver's `tokenRequests` tokens (TokenRequest bound to the pod) for
    /// the volumes taken back, so they rotate before kubelet's next republish (ours; needs
    /// `serviceaccounts/token create`, which the chart grants only with this). Off: kubelet's next
    /// republish brings the tokens, as with every mount.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub restart_token_requests: bool,
    /// Largest provider response accepted, in bytes.
    #[arg(long, default_value_t = 4_194_304, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_call_recv_msg_size: u32,
    /// Periodically call `Version` on external providers and log failures.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub provider_health_check: bool,
    /// Interval of the provider health check.
    #[arg(long, default_value = "2m", value_parser = parse_go_duration, value_name = "DURATION")]
    pub provider_health_check_interval: Duration,
    /// Accepted for compatibility with upstream manifests; Go's pprof has no equivalent here.
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub enable_pprof: bool,
    /// Accepted for compatibility with upstream manifests.
    #[arg(long, default_value_t = 6065)]
    pub pprof_port: u16,
    /// Kubeconfig for running outside the cluster (default: `KUBECONFIG`, then in-cluster config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve SecretProviderClasses from the YAML manifests in this directory instead of the
    /// Kubernetes API (running without a cluster, tests).
    #[arg(long, value_name = "DIR")]
    pub class_dir: Option<PathBuf>,
    /// A directory of provider sockets searched first and shared only with this pod's own provider
    /// container (ours; the chart's `provider.isolation: process`): providers found there are trusted
    /// to speak keyvault-csi's extension of v1alpha1 (rotation cycles, failover sources, error codes).
    #[arg(long, value_name = "DIR")]
    pub internal_provider_dir: Option<PathBuf>,
    /// Serve `spec.provider: azure` in-process (false: through `<provider dir>/azure.sock`, e.g. the
    /// upstream Azure provider, or this binary's `provider` command in its own container).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true",
          value_parser = parse_go_bool, value_name = "BOOL")]
    pub builtin_azure_provider: bool,
    /// The in-process Azure provider (`spec.provider: azure`).
    #[command(flatten)]
    pub azure: keyvault_bridge::AzureArgs,
}

pub use driver::socket::{Endpoint, parse_endpoint};

/// Go-style listen address: `:8095` means every interface.
pub fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().map_err(|_| format!("invalid address {s:?}: expected [host]:port"))
}

fn parse_metrics_backend(s: &str) -> Result<String, String> {
    if s.eq_ignore_ascii_case("prometheus") {
        Ok(s.to_string())
    } else {
        Err(format!("unsupported metrics backend {s:?}: only Prometheus is supported"))
    }
}

pub use keyvault_bridge::flags::parse_go_bool;

pub use secrets_store::duration::parse_go_duration;

fn parse_min_interval(s: &str) -> Result<Duration, String> {
    let d = parse_go_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("invalid duration {s:?}: must be at least 1s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        assert!(parse_go_bool("True").unwrap());
        assert!(!parse_go_bool("0").unwrap());
        assert!(parse_go_bool("yes").is_err());
    }

    #[test]
    fn defaults_match_upstream() {
        let cli = Cli::try_parse_from(["keyvault-csi"]).unwrap();
        assert_eq!(cli.node.endpoint, Endpoint::Unix("/tmp/csi.sock".into()));
        assert_eq!(cli.node.drivername, "secrets-store.csi.k8s.io");
        assert_eq!(cli.node.provider_volume, PathBuf::from("/var/run/secrets-store-csi-providers"));
        assert_eq!(
            cli.node.additional_provider_volume_paths,
            vec![PathBuf::from("/etc/kubernetes/secrets-store-csi-providers")]
        );
        assert_eq!(cli.node.metrics_addr.port(), 8095);
        assert!(!cli.node.enable_secret_rotation);
        assert_eq!(cli.node.rotation_poll_interval, Duration::from_secs(120));
        assert_eq!(cli.node.max_call_recv_msg_size, 4_194_304);
    }

    #[test]
    fn the_charts_arguments_parse() {
        let cli = Cli::try_parse_from([
            "keyvault-csi",
            "-v=5",
            "--log-format-json",
            "--endpoint=unix:///csi/csi.sock",
            "--nodeid=node-1",
            "--provider-volume=/var/run/secrets-store-csi-providers",
            "--additional-provider-volume-paths=/etc/kubernetes/secrets-store-csi-providers,/x",
            "--enable-secret-rotation=true",
            "--rotation-poll-interval=30s",
            "--metrics-addr=:8095",
            "--provider-health-check=false",
            "--provider-health-check-interval=2m",
            "--max-call-recv-msg-size=8388608",
        ])
        .unwrap();
        assert_eq!(cli.verbosity, 5);
        assert!(cli.log_format_json && cli.node.enable_secret_rotation);
        assert_eq!(cli.node.additional_provider_volume_paths.len(), 2);
        assert_eq!(cli.node.rotation_poll_interval, Duration::from_secs(30));
        let bare = Cli::try_parse_from(["keyvault-csi", "--enable-secret-rotation", "--v=2"]).unwrap();
        assert!(bare.node.enable_secret_rotation);
        assert_eq!(bare.verbosity, 2);
    }
}

/// The audit trail's flags (node driver and SecretSync controller).
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Audit trail (ours): one JSON line per object served to a pod or Secret, to `stdout` or an
    /// absolute file path. Off when empty.
    #[arg(long, default_value = "", value_name = "stdout|PATH")]
    pub audit_log: String,
    /// Most audit lines per second; more are dropped and counted in `audit_lines_dropped_total`.
    #[arg(long, default_value_t = 200, value_name = "LINES")]
    pub audit_log_rate: u32,
}

impl AuditArgs {
    /// The audit trail these flags ask for.
    pub fn start(&self) -> anyhow::Result<secrets_store::audit::Audit> {
        secrets_store::audit::Audit::from_flags(&self.audit_log, self.audit_log_rate).map_err(anyhow::Error::msg)
    }
}
