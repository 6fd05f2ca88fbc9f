//! AKS's identity binding token proxy, as a workload sees it.
//!
//! On AKS the proxy answers at the API server's address: a TLS connection whose SNI is the cluster's
//! binding name (`a<base32hex(SHA-256("identity-binding" + cluster id))>.ests.aks`) reaches the
//! proxy, any other name reaches the API server, whose certificate names the cluster
//! (`hcp-kubernetes.<cluster id>.svc.cluster.local`), which is how clients compute the SNI name.
//! The proxy takes an Entra ID client-credentials request whose assertion is a service-account token
//! for `api://AKSIdentityBinding`, checks the token, the binding and the service account's grant, and
//! answers with an Entra ID token for the bound identity: no federated credential per service account.
//!
//! Here one listener plays both: the certificate is chosen by SNI, and the SNI of the connection
//! decides what a request reaches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use crate::StartError;
use crate::state::State;

/// The audience of the tokens the proxy exchanges.
pub const BINDING_AUDIENCE: &str = "api://AKSIdentityBinding";
/// The API server's in-cluster name, which the proxy's default URL uses.
pub const API_SERVER_HOST: &str = "kubernetes.default.svc.cluster.local";

/// The SNI name of a cluster's binding endpoint, as AKS derives it.
pub fn sni_name(cluster_id: &str) -> String {
    let digest = sha2::Sha256::digest(format!("identity-binding{cluster_id}").as_bytes());
    format!("a{}.ests.aks", data_encoding::BASE32HEX_NOPAD.encode(&digest).to_ascii_lowercase())
}

/// Picks the certificate by SNI: a binding's name gets the proxy's certificate, anything else the
/// API server's.
#[derive(Debug)]
struct BySni {
    bindings: HashMap<String, Arc<CertifiedKey>>,
    api_server: Arc<CertifiedKey>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        Some(name.and_then(|n| self.bindings.get(&n).cloned()).unwrap_or_else(|| self.api_server.clone()))
    }
}

fn certified(sans: Vec<String>, issuer: &rcgen::Issuer<'static, KeyPair>) -> Result<Arc<CertifiedKey>, StartError> {
    let e = |e: rcgen::Error| StartError::Tls(e.to_string());
    let cn = sans[0].clone();
    let mut params = CertificateParams::new(sans).map_err(e)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, issuer).map_err(e)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let ck = CertifiedKey::from_der(vec![CertificateDer::from(cert.der().to_vec())], der, &provider)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    Ok(Arc::new(ck))
}

/// The listener's TLS: the API server's certificate (naming each bound cluster) and one per binding.
pub fn tls_config(
    cluster_ids: &[String],
    issuer: &rcgen::Issuer<'static, KeyPair>,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let mut sans: Vec<String> =
        [API_SERVER_HOST, "kubernetes.default.svc", "kubernetes.default", "kubernetes", "localhost", "127.0.0.1"]
            .map(String::from)
            .into();
    sans.extend(cluster_ids.iter().map(|id| format!("hcp-kubernetes.{id}.svc.cluster.local")));
    let api_server = certified(sans, issuer)?;
    let mut bindings = HashMap::new();
    for id in cluster_ids {
        let name = sni_name(id);
        bindings.insert(name.clone(), certified(vec![name], issuer)?);
    }
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { bindings, api_server }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the proxy (and the stand-in API server) until the task is dropped.
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let sni = stream.get_ref().1.server_name().map(str::to_ascii_lowercase).unwrap_or_default();
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (state, sni) = (state.clone(), sni.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, &sni, req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    })
}

async fn handle(state: &Arc<State>, sni: &str, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(Body::new(body), 1 << 20).await.unwrap_or_default();
    let cluster = state.world().bindings.iter().map(|b| b.cluster_id.clone()).find(|id| sni_name(id) == sni);
    let Some(cluster) = cluster else {
        // Not the binding's name: the API server answers, and it has no such path.
        return api_server_not_found(parts.uri.path());
    };
    let segs: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
    match (&parts.method, segs.as_slice()) {
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            let form = crate::form_urlencoded(&String::from_utf8_lossy(&body));
            crate::entra::binding_token(state, &cluster, tenant, &form)
        }
        _ => crate::plain(StatusCode::NOT_FOUND, "not a token endpoint"),
    }
}

fn api_server_not_found(path: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("the server could not find the requested resource ({path})"),
        "reason": "NotFound", "details": {}, "code": 404,
    });
    crate::http::json_response(StatusCode::NOT_FOUND, &body)
}

/// Where the proxy listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sni_names_are_dns_labels_under_ests_aks() {
        let n = super::sni_name("e2e");
        assert!(n.starts_with('a') && n.ends_with(".ests.aks") && n.len() == 53 + ".ests.aks".len(), "{n}");
        assert_eq!(n, n.to_ascii_lowercase());
    }
}
