//! `keyvault-csi mount`: the driver without a cluster (`driver::standalone`). Mounts a tmpfs at
//! `--target`, writes the files a SecretProviderClass describes, and with `--rotation-poll-interval`
//! keeps them fresh until stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use driver::Driver;
use driver::mounter::{Mounter, PlainDirMounter, TmpfsMounter};
use driver::node::PublishOutcome;
use driver::standalone::{Caller, OneClass};
use secrets_store::external::ExternalProviders;
use secrets_store::provider::Providers;

use crate::app::App;
use crate::cli::parse_go_duration;
use keyvault_bridge::AzureArgs;

/// Flags of `keyvault-csi mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// SecretProviderClass manifest (YAML).
    #[arg(long, value_name = "FILE")]
    pub class: PathBuf,
    /// Directory to mount the files at (created if missing).
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Pod name reported to the provider.
    #[arg(long, default_value = "standalone")]
    pub pod_name: String,
    /// Namespace (default: the class's, else `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Service account name reported to the provider.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Client id of a service principal (with --client-secret-file), like a nodePublishSecretRef.
    #[arg(long, requires = "client_secret_file")]
    pub client_id: Option<String>,
    /// File holding the service principal's client secret.
    #[arg(long, value_name = "FILE", requires = "client_id")]
    pub client_secret_file: Option<PathBuf>,
    /// File holding a service-account token (JWT) for workload identity (audience api://AzureADTokenExchange).
    #[arg(long, value_name = "FILE")]
    pub service_account_token_file: Option<PathBuf>,
    /// Re-fetch every interval until stopped (`0`: mount once and exit).
    #[arg(long, default_value = "0", value_parser = parse_go_duration, value_name = "DURATION")]
    pub rotation_poll_interval: Duration,
    /// Write into the directory without mounting a tmpfs (no CAP_SYS_ADMIN needed; the files then
    /// live on the directory's filesystem, possibly on disk).
    #[arg(long)]
    pub no_tmpfs: bool,
    /// Azure provider settings.
    #[command(flatten)]
    pub azure: AzureArgs,
}

fn read_secret_file(p: &PathBuf, flag: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p).with_context(|| format!("{flag} {}", p.display()))?.trim().to_string())
}

/// Runs `keyvault-csi mount`.
pub async fn run(args: MountArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.class).with_context(|| format!("--class {}", args.class.display()))?;
    let spc = secrets_store::class::parse_manifest(&text)
        .map_err(|e| anyhow::anyhow!("--class {}: {e}", args.class.display()))?;
    let namespace = args.namespace.clone().or(spc.metadata.namespace.clone()).unwrap_or_else(|| "default".into());
    let target =
        if args.target.is_absolute() { args.target.clone() } else { std::env::current_dir()?.join(&args.target) };

    let rotation = (!args.rotation_poll_interval.is_zero()).then_some(args.rotation_poll_interval);
    let mut app = App::new();
    let (azure, _) = app.azure(&args.azure, rotation, true)?;
    let providers =
        Providers::new(ExternalProviders::new(vec![], "/var/run/secrets-store-csi-providers".into(), 4 << 20))
            .with_builtin("azure", azure);
    let mounter: Arc<dyn Mounter> = if args.no_tmpfs { Arc::new(PlainDirMounter) } else { Arc::new(TmpfsMounter) };
    let classes = Arc::new(OneClass { namespace: namespace.clone(), name: spc.metadata.name.clone(), spec: spc.spec });
    let config = driver::standalone::config(format!("v{}", env!("CARGO_PKG_VERSION")), rotation);
    let driver = Driver::new(config, mounter, classes, providers);

    let mut secrets = BTreeMap::new();
    if let (Some(id), Some(file)) = (&args.client_id, &args.client_secret_file) {
        secrets.insert("clientid".to_string(), id.clone());
        secrets.insert("clientsecret".to_string(), read_secret_file(file, "--client-secret-file")?);
    }
    let tokens = match &args.service_account_token_file {
        Some(f) => {
            let jwt = read_secret_file(f, "--service-account-token-file")?;
            // Its expiry as kubelet would state it (the provider checks the JWT's own `exp`).
            let exp = keyvault::params::jwt_claims(&jwt).map_or(0, |c| c.2);
            let expires = k8s_openapi::jiff::Timestamp::from_second(exp).unwrap_or_default();
            let token = kube_bridge::credentials::MintedToken { token: jwt.into(), expires };
            Some(kube_bridge::credentials::tokens_json([(keyvault::params::WI_AUDIENCE, &token)]))
        }
        None => None,
    };
    let caller = Caller { pod_name: args.pod_name.clone(), namespace, service_account: args.service_account.clone() };
    let params = driver::standalone::params(&spc.metadata.name, &caller, target.clone(), secrets, tokens);

    match driver.publish(params.clone(), None).await {
        Ok(PublishOutcome::Published { files, .. }) => {
            let how = if args.no_tmpfs { "plain directory, not tmpfs" } else { "tmpfs" };
            tracing::info!(target = %target.display(), files, "mounted ({how})");
            eprintln!("mounted {files} file(s) at {} ({how})", target.display());
        }
        Ok(other) => tracing::info!(?other, "nothing to do"),
        Err(e) => {
            let hint = match &e {
                driver::error::PublishError::Mount { .. } => {
                    "\nhint: mounting a tmpfs needs CAP_SYS_ADMIN: run as root, inside `unshare -rm`, or pass --no-tmpfs"
                }
                _ => "",
            };
            anyhow::bail!("{e}{hint}");
        }
    }
    if rotation.is_none() {
        return Ok(());
    }
    // The node driver's own poller keeps the volume fresh (failures keep the current files).
    let (driver, stop) = (Arc::new(driver), app.stopped());
    app.spawn("rotation poller", async move {
        driver.run_rotation(stop).await;
        Ok(())
    });
    app.run_until_signal(std::time::Duration::from_secs(10)).await?;
    tracing::info!(target = %target.display(), "stopped; the files stay mounted");
    Ok(())
}
