//! Identity binding (`useAzureTokenProxy`): the token request for Entra ID goes to AKS's token proxy
//! instead, as the v1.8 Azure provider sends it.
//!
//! - The request keeps its path and query (`/<tenant>/oauth2/v2.0/token`) and goes to
//!   `--token-proxy-url` (default the API server's in-cluster address).
//! - TLS trusts only the service-account CA (`--token-proxy-ca-file`), re-read when it changes, and
//!   sends the SNI name of the cluster's binding endpoint: `--sni-name`, or computed from the
//!   `hcp-kubernetes.<cluster id>.svc.cluster.local` name in the API server's own certificate.
//! - The client assertion is the pod's token for `api://AKSIdentityBinding`.
//!
//! Upstream sets process-wide environment variables once at start-up to get this transport out of the
//! Go SDK; here everything is per provider and per request, and a failure (no CA file, no cluster id)
//! is reported by the mount that needs the mode, not at start-up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::http::{AsyncRawResponse, HttpClient, Request, Url};
use sha2::Digest;

use crate::error::{Error, ErrorKind, Origin, Result};

/// The audience of the service-account token the proxy exchanges.
pub const BINDING_AUDIENCE: &str = "api://AKSIdentityBinding";
/// Upstream's default proxy: the API server's in-cluster name.
pub const DEFAULT_PROXY_URL: &str = "https://kubernetes.default.svc.cluster.local";
/// The service-account CA kubelet projects into every pod.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

const API_SERVER_HOST: &str = "kubernetes.default.svc.cluster.local";
const SAN_PREFIX: &str = "hcp-kubernetes.";
const SAN_SUFFIX: &str = ".svc.cluster.local";

/// How the token proxy is reached (`--token-proxy-url`, `--sni-name`, `--token-proxy-ca-file`).
#[derive(Clone, Debug)]
pub struct TokenProxyConfig {
    /// Proxy URL; `None` is the API server's in-cluster address.
    pub url: Option<String>,
    /// TLS server name; `None` computes it from the API server's certificate.
    pub sni_name: Option<String>,
    /// The CA that signs the proxy's (and the API server's) certificate.
    pub ca_file: PathBuf,
    /// `host:port` of the API server whose certificate names the cluster (for the SNI name).
    pub api_server: String,
}

impl Default for TokenProxyConfig {
    /// Upstream's defaults; the API server's port from `KUBERNETES_SERVICE_PORT`, as upstream reads it.
    fn default() -> Self {
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok().filter(|p| !p.is_empty());
        Self {
            url: None,
            sni_name: None,
            ca_file: DEFAULT_CA_FILE.into(),
            api_server: format!("{API_SERVER_HOST}:{}", port.as_deref().unwrap_or("443")),
        }
    }
}

/// The SNI name AKS derives from a cluster id: `a` + base32hex(SHA-256("identity-binding" + id)),
/// lower case, + `.ests.aks` (an RFC 1035 label: starts with a letter, 53 characters).
pub fn sni_name_for_cluster(cluster_id: &str) -> String {
    let digest = sha2::Sha256::digest(format!("identity-binding{cluster_id}").as_bytes());
    let encoded = data_encoding::BASE32HEX_NOPAD.encode(&digest);
    format!("a{}.ests.aks", encoded.to_ascii_lowercase())
}

/// The cluster id in an API server certificate's DNS names (`hcp-kubernetes.<id>.svc.cluster.local`).
pub fn cluster_id_from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().find_map(|n| n.strip_prefix(SAN_PREFIX)?.strip_suffix(SAN_SUFFIX).filter(|id| !id.is_empty()))
}

/// The token proxy of one provider: the SNI name once computed, and a client per CA content.
pub struct TokenProxy {
    config: TokenProxyConfig,
    /// `--azure-resolve-to` (tests): every name resolves here.
    resolve_to: Option<IpAddr>,
    sni: tokio::sync::OnceCell<String>,
    client: Mutex<Option<(Vec<u8>, Arc<ProxiedClient>)>>,
}

fn unavailable(kind: ErrorKind, message: String) -> Error {
    Error::new(kind, format!("proxy transport not available: {message}")).from(Origin::TokenProxy)
}

impl TokenProxy {
    /// A proxy that connects nowhere until a mount needs it.
    pub fn new(config: TokenProxyConfig, resolve_to: Option<IpAddr>) -> Self {
        Self { config, resolve_to, sni: tokio::sync::OnceCell::new(), client: Mutex::new(None) }
    }

    /// The proxy URL, validated as the SDKs validate it.
    fn url(&self) -> Result<Url> {
        let raw = self.config.url.as_deref().unwrap_or(DEFAULT_PROXY_URL);
        let bad = |why: &str| unavailable(ErrorKind::InvalidInput, format!("token proxy URL {raw:?} {why}"));
        let mut url = Url::parse(raw).map_err(|e| bad(&format!("cannot be parsed: {e}")))?;
        if url.scheme() != "https" {
            return Err(bad("must use the https scheme"));
        }
        if url.host_str().is_none() {
            return Err(bad("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain user info"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not contain a query or a fragment"));
        }
        if url.path().is_empty() {
            url.set_path("/");
        }
        Ok(url)
    }

    fn read_ca(&self) -> Result<Vec<u8>> {
        let path = &self.config.ca_file;
        std::fs::read(path).map_err(|e| {
            unavailable(
                ErrorKind::InvalidInput,
                format!("read CA file {}: {e} (--token-proxy-ca-file)", path.display()),
            )
        })
    }

    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        if let Some(ip) = self.resolve_to {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| unavailable(ErrorKind::Unavailable, format!("resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(unavailable(ErrorKind::Unavailable, format!("resolve {host}: no address")));
        }
        Ok(addrs)
    }

    /// `--sni-name`, or the name computed from the API server's certificate (once; retried after a
    /// failure).
    async fn sni_name(&self, deadline: Instant) -> Result<String> {
        if let Some(name) = &self.config.sni_name {
            return Ok(name.clone());
        }
        self.sni.get_or_try_init(|| self.compute_sni_name(deadline)).await.cloned()
    }

    async fn compute_sni_name(&self, deadline: Instant) -> Result<String> {
        let wrap = |kind, m: String| {
            unavailable(kind, format!("compute SNI name: extract cluster ID from API server certificate: {m}"))
        };
        let ca = std::fs::read(&self.config.ca_file).map_err(|e| {
            wrap(
                ErrorKind::InvalidInput,
                format!(
                    "read CA file {}: {e} (use --sni-name flag to skip automatic SNI detection)",
                    self.config.ca_file.display()
                ),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&ca) {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            let file = self.config.ca_file.display();
            return Err(wrap(ErrorKind::InvalidInput, format!("no valid certificates found in {file}")));
        }
        let (host, port) = split_host_port(&self.config.api_server).ok_or_else(|| {
            wrap(ErrorKind::InvalidInput, format!("bad API server address {:?}", self.config.api_server))
        })?;
        let addrs = self.addresses(&host, port).await.map_err(|e| wrap(ErrorKind::Unavailable, e.message))?;
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| wrap(ErrorKind::InvalidInput, format!("bad API server name {host:?}: {e}")))?;
        let budget = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&addrs[..]).await?;
            connector.connect(name, tcp).await
        };
        let stream = match tokio::time::timeout(budget, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(wrap(ErrorKind::Unavailable, format!("TLS connect to API server: {e}"))),
            Err(_) => return Err(wrap(ErrorKind::DeadlineExceeded, "TLS connect to API server: timed out".into())),
        };
        let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let leaf = leaf.ok_or_else(|| wrap(ErrorKind::Internal, "no certificates presented by API server".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| wrap(ErrorKind::Internal, format!("cannot parse the API server certificate: {e}")))?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let id = cluster_id_from_names(names.iter().map(String::as_str)).ok_or_else(|| {
            unavailable(
                ErrorKind::InvalidInput,
                "compute SNI name: cluster ID SAN not found in API server certificate (use --sni-name flag to provide SNI name explicitly)".into(),
            )
        })?;
        let sni = sni_name_for_cluster(id);
        tracing::info!(sni_name = %sni, "computed the identity binding SNI name from the API server certificate");
        Ok(sni)
    }

    /// The HTTP client that sends Entra ID token requests to the proxy.
    pub async fn client(&self, deadline: Instant) -> Result<Arc<dyn HttpClient>> {
        let url = self.url()?;
        let sni = self.sni_name(deadline).await?;
        let ca = self.read_ca()?;
        // The guard must not live across an await (the future would not be Send).
        let reuse = {
            let cached = self.client.lock().unwrap_or_else(|e| e.into_inner());
            match cached.as_ref() {
                // Empty mid-rotation: keep the client built from the last good CA (as the SDKs do).
                Some((_, client)) if ca.is_empty() => Some(client.clone()),
                Some((seen, client)) if *seen == ca => Some(client.clone()),
                _ => None,
            }
        };
        if let Some(client) = reuse {
            return Ok(client);
        }
        if ca.is_empty() {
            let file = self.config.ca_file.display();
            return Err(unavailable(ErrorKind::Unavailable, format!("CA file {file} is empty")));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs = self.addresses(&host, port).await?;
        let certs = reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| {
            unavailable(ErrorKind::InvalidInput, format!("parse CA file {}: {e}", self.config.ca_file.display()))
        })?;
        let inner = reqwest::Client::builder()
            .user_agent(concat!("keyvault-csi/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .tls_certs_only(certs)
            .resolve_to_addrs(&sni, &addrs)
            .http1_only()
            .build()
            .map_err(|e| unavailable(ErrorKind::Internal, format!("cannot build the proxy client: {e}")))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let client = Arc::new(ProxiedClient { inner, proxy: url, sni, host_header: authority });
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some((ca, client.clone()));
        Ok(client)
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(|c| c.ok()).collect()
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

/// Sends a request to the proxy: its URL's path appended to the proxy's, connected to the proxy's
/// address with the binding's SNI name, `Host` the proxy's.
#[derive(Debug)]
pub struct ProxiedClient {
    inner: reqwest::Client,
    proxy: Url,
    sni: String,
    host_header: String,
}

/// `proxy` + the request's path, with the request's query.
pub fn rewrite(proxy: &Url, request: &Url) -> Url {
    let mut url = proxy.clone();
    let base = proxy.path().trim_end_matches('/');
    url.set_path(&format!("{base}/{}", request.path().trim_start_matches('/')));
    url.set_query(request.query());
    url
}

#[async_trait::async_trait]
impl HttpClient for ProxiedClient {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        let mut url = rewrite(&self.proxy, request.url());
        // Connect by the SNI name (pinned to the proxy's addresses), so TLS sends and checks it.
        url.set_host(Some(&self.sni)).map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                format!("SNI name {:?}: {e}", self.sni),
            )
        })?;
        *request.url_mut() = url;
        request.insert_header("host", self.host_header.clone());
        self.inner.execute_request(&request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_name_is_an_rfc1035_label_derived_from_the_cluster_id() {
        let a = sni_name_for_cluster("cluster-1");
        assert!(a.starts_with('a') && a.ends_with(".ests.aks"), "{a}");
        let label = a.strip_suffix(".ests.aks").unwrap();
        // 32 bytes of SHA-256 in unpadded base32 = 52 characters, plus the leading letter.
        assert_eq!(label.len(), 53);
        assert!(label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, sni_name_for_cluster("cluster-2"));
        assert_eq!(a, sni_name_for_cluster("cluster-1"));
    }

    #[test]
    fn cluster_id_comes_from_the_hcp_name() {
        let names = ["kubernetes", "kubernetes.default.svc", "hcp-kubernetes.64f1c0de.svc.cluster.local"];
        assert_eq!(cluster_id_from_names(names), Some("64f1c0de"));
        assert_eq!(cluster_id_from_names(["hcp-kubernetes..svc.cluster.local"]), None);
        assert_eq!(cluster_id_from_names(["kubernetes.default.svc.cluster.local"]), None);
    }

    #[test]
    fn the_request_path_and_query_are_kept_under_the_proxy_path() {
        let req = Url::parse("https://login.microsoftonline.com:8443/tenant/oauth2/v2.0/token?x=1").unwrap();
        let at_root = rewrite(&Url::parse("https://kubernetes.default.svc.cluster.local").unwrap(), &req);
        assert_eq!(at_root.as_str(), "https://kubernetes.default.svc.cluster.local/tenant/oauth2/v2.0/token?x=1");
        let under = rewrite(&Url::parse("https://proxy:9443/ib/").unwrap(), &req);
        assert_eq!(under.as_str(), "https://proxy:9443/ib/tenant/oauth2/v2.0/token?x=1");
    }

    #[tokio::test]
    async fn bad_urls_and_a_missing_ca_are_errors_at_use_not_at_start() {
        let p = |url: &str| {
            TokenProxy::new(
                TokenProxyConfig {
                    url: Some(url.into()),
                    sni_name: Some("a.ests.aks".into()),
                    ca_file: "/nonexistent/ca.crt".into(),
                    api_server: "kubernetes.default.svc.cluster.local:443".into(),
                },
                None,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = p("http://proxy").client(deadline).await.err().unwrap();
        assert!(e.message.contains("must use the https scheme"), "{e}");
        let e = p("https://u:p@proxy").client(deadline).await.err().unwrap();
        assert!(e.message.contains("user info"), "{e}");
        let e = p("https://proxy/?a=b").client(deadline).await.err().unwrap();
        assert!(e.message.contains("query"), "{e}");
        let e = p("https://proxy").client(deadline).await.err().unwrap();
        assert!(e.message.starts_with("proxy transport not available: read CA file /nonexistent/ca.crt"), "{e}");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn without_a_sni_name_or_ca_the_computation_says_how_to_skip_it() {
        let proxy = TokenProxy::new(
            TokenProxyConfig { ca_file: "/nonexistent/ca.crt".into(), ..TokenProxyConfig::default() },
            None,
        );
        let e = proxy.client(Instant::now() + Duration::from_secs(5)).await.err().unwrap();
        assert!(e.message.contains("compute SNI name"), "{e}");
        assert!(e.message.contains("use --sni-name flag"), "{e}");
    }
}
