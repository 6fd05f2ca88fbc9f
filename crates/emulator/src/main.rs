//! `kv-emulator`: runs the Azure emulator until SIGTERM/SIGINT, for the demo, benchmarks and manual use.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Azure Key Vault, Entra ID and IMDS emulator.
#[derive(Parser)]
#[command(name = "kv-emulator", version)]
struct Args {
    /// Seed YAML: vaults, objects, identities, access rules.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// HTTPS address for Key Vault (`https://<vault>.vault.azure.net:<port>`) and Entra ID.
    #[arg(long, default_value = "127.0.0.1:8443")]
    https_addr: SocketAddr,
    /// Plain HTTP address for IMDS and NMI.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// HTTPS address of AKS's identity binding token proxy (SNI-routed, as on AKS).
    #[arg(long, default_value = "127.0.0.1:8444")]
    token_proxy_addr: SocketAddr,
    /// Where to write the CA certificate clients must trust.
    #[arg(long, default_value = "kv-emulator-ca.pem")]
    ca_file: PathBuf,
    /// Use this CA certificate (PEM) instead of generating one (with --ca-key).
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Write the listening addresses as JSON to this file once serving (for scripts).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let args = Args::parse();
    let seed = match &args.seed {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("--seed {}: {e}", p.display()))?;
            emulator::Seed::from_yaml(&text).map_err(|e| anyhow::anyhow!("--seed {}: {e}", p.display()))?
        }
        None => emulator::Seed::default(),
    };
    let mut b = emulator::Emulator::builder()
        .seed(seed)
        .https_addr(args.https_addr)
        .http_addr(args.http_addr)
        .token_proxy_addr(args.token_proxy_addr)
        .ca_file(&args.ca_file);
    if let (Some(c), Some(k)) = (&args.ca_cert, &args.ca_key) {
        b = b.ca(std::fs::read_to_string(c)?, std::fs::read_to_string(k)?);
    }
    let h = b.start().await?;
    let info = serde_json::json!({
        "https": h.https_addr.to_string(),
        "http": h.http_addr.to_string(),
        "tokenProxy": h.token_proxy_addr.to_string(),
        "authority": h.authority_url(),
        "vaultSuffix": h.vault_suffix(),
        "caFile": args.ca_file,
    });
    eprintln!("kv-emulator serving: {info}");
    if let Some(p) = &args.ready_file {
        std::fs::write(p, info.to_string())?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
