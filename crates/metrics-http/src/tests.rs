//! The server over real TCP (and TLS), driven by an HTTP client; the authorizer is a fake that counts
//! its reviews (the real TokenReview/SubjectAccessReview pair is tested against a real API server in
//! tests/kubernetes.rs, and on the kit in `make e2e`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::auth::{Authorizer, CACHE_ENTRIES, Decision, Guard};
use super::*;

/// "reader" may read `/metrics*`, "other" is authenticated but not allowed, "down" cannot be
/// reviewed, anything else is unauthenticated.
#[derive(Clone, Default)]
struct Fake {
    reviews: Arc<AtomicUsize>,
}

impl Authorizer for Fake {
    fn review<'a>(
        &'a self,
        token: &'a str,
        verb: &'a str,
        path: &'a str,
    ) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match token {
                "reader" if verb == "get" && path.starts_with("/metrics") => Decision::Allowed,
                "reader" | "other" => Decision::Forbidden { user: format!("system:serviceaccount:ns:{token}") },
                "down" => Decision::Unavailable("connection refused".into()),
                _ => Decision::Unauthenticated,
            }
        })
    }
}

fn health() -> Health {
    let mut registry = prometheus_client::registry::Registry::default();
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    counter.inc();
    registry.register("probe_things", "Things.", counter);
    let health = Health::with_registry(registry);
    health.set_ready(true);
    health
}

async fn start(server: Server) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, serving) = server
        .bind("127.0.0.1:0".parse().unwrap(), "--metrics-addr", async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(serving);
    (addr, stop)
}

fn pem_pair() -> (String, String, reqwest::Certificate) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.pem();
    let root = reqwest::Certificate::from_pem(cert.as_bytes()).unwrap();
    (cert, certified.signing_key.serialize_pem(), root)
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn plain_server_serves_metrics_and_probes_openly() {
    let (addr, _stop) = start(Server::new(health())).await;
    let client = reqwest::Client::new();
    let (status, body) = get(&client, &format!("http://{addr}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("probe_things_total 1"), "{body}");
    assert_eq!(get(&client, &format!("http://{addr}/readyz"), None).await, (200, "ok".into()));
}

#[tokio::test]
async fn a_probe_port_serves_no_metrics() {
    let (addr, _stop) = start(Server::new(health()).probes_only()).await;
    let client = reqwest::Client::new();
    assert_eq!(get(&client, &format!("http://{addr}/metrics"), None).await.0, 404);
    assert_eq!(get(&client, &format!("http://{addr}/healthz"), None).await, (200, "ok".into()));
}

#[tokio::test]
async fn secure_metrics_answer_401_403_503_and_200_and_leave_the_probes_open() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root) = pem_pair();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let fake = Fake::default();
    let server = Server::new(health())
        .with_auth(Arc::new(Guard::new(fake.clone())))
        .with_tls(tls::Source::Files { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") });
    let (addr, _stop) = start(server).await;
    let client = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
    let url = format!("https://localhost:{}/metrics", addr.port());

    // Plain HTTP on the TLS port is refused.
    assert!(reqwest::get(format!("http://{addr}/metrics")).await.is_err(), "no plain HTTP on the TLS port");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"metrics\"");
    assert_eq!(get(&client, &url, Some("expired")).await.0, 401);
    let (status, body) = get(&client, &url, Some("other")).await;
    assert_eq!(status, 403);
    assert_eq!(body, "Forbidden (user=system:serviceaccount:ns:other, verb=get, path=/metrics)\n");
    let (status, body) = get(&client, &url, Some("down")).await;
    assert_eq!(status, 503);
    assert!(body.contains("connection refused") && !body.contains("down"), "{body}");
    let (status, body) = get(&client, &url, Some("reader")).await;
    assert_eq!(status, 200);
    assert!(body.contains("probe_things_total 1"), "{body}");
    // A malformed or oversized header is a 401, not a review.
    let before = fake.reviews.load(Ordering::SeqCst);
    let huge = "a".repeat(auth::MAX_TOKEN_BYTES + 1);
    assert_eq!(get(&client, &url, Some(&huge)).await.0, 401);
    let response = client.get(&url).header("authorization", "Basic cmVhZGVy").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(fake.reviews.load(Ordering::SeqCst), before);
    // Probes need no token.
    let probe = format!("https://localhost:{}/readyz", addr.port());
    assert_eq!(get(&client, &probe, None).await, (200, "ok".into()));
}

#[tokio::test]
async fn decisions_are_cached_by_token_and_path_and_unavailable_is_not() {
    let fake = Fake::default();
    let guard = Guard::new(fake.clone());
    for _ in 0..5 {
        assert_eq!(guard.decide("reader", "get", "/metrics").await, Decision::Allowed);
        assert!(matches!(guard.decide("other", "get", "/metrics").await, Decision::Forbidden { .. }));
    }
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 2, "one review per token");
    assert_eq!(guard.decide("reader", "get", "/metrics/provider").await, Decision::Allowed);
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 3, "a path is its own decision");
    for _ in 0..3 {
        assert!(matches!(guard.decide("down", "get", "/metrics").await, Decision::Unavailable(_)));
    }
    assert_eq!(fake.reviews.load(Ordering::SeqCst), 6, "no answer is asked again");
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_keeps_the_cache_bounded() {
    let guard = Guard::new(Fake::default());
    for i in 0..CACHE_ENTRIES + 300 {
        assert_eq!(guard.decide(&format!("junk-{i}"), "get", "/metrics").await, Decision::Unauthenticated);
    }
    assert_eq!(guard.cached_len(), CACHE_ENTRIES);
    // The allowed token still gets its answer (and is remembered) with the cache full.
    assert_eq!(guard.decide("reader", "get", "/metrics").await, Decision::Allowed);
    assert_eq!(guard.cached_len(), CACHE_ENTRIES);
}

/// An authorizer that never answers: callers beyond the slots get 503 after the wait, not a hang.
struct Stuck;

impl Authorizer for Stuck {
    fn review<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Pin<Box<dyn Future<Output = Decision> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn reviews_in_flight_are_capped() {
    let guard = Arc::new(Guard::new(Stuck));
    for i in 0..auth::MAX_IN_FLIGHT {
        let guard = guard.clone();
        tokio::spawn(async move { guard.decide(&format!("t{i}"), "get", "/metrics").await });
    }
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let decision = guard.decide("one-more", "get", "/metrics").await;
    assert_eq!(decision, Decision::Unavailable("too many access reviews in flight".into()));
    assert_eq!(started.elapsed(), auth::REVIEW_WAIT);
}

#[tokio::test]
async fn changed_certificate_files_are_reloaded_and_a_bad_pair_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (c1, k1, _) = pem_pair();
    std::fs::write(&cert, &c1).unwrap();
    std::fs::write(&key, &k1).unwrap();
    let (_, reload) = tls::config(&tls::Source::Files { cert: cert.clone(), key: key.clone() }).await.unwrap();
    let mut reload = reload.expect("files are watched");
    assert!(!reload.check(), "unchanged files are not reloaded");
    let bump = |path: &std::path::Path| {
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
    };
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").unwrap();
    bump(&key);
    assert!(!reload.check(), "a broken key is not swapped in");
    let (c2, k2, _) = pem_pair();
    std::fs::write(&cert, c2).unwrap();
    std::fs::write(&key, k2).unwrap();
    bump(&cert);
    assert!(reload.check(), "a new valid pair is swapped in");
}

#[tokio::test]
async fn a_self_signed_certificate_serves_without_files() {
    let server = Server::new(health())
        .with_auth(Arc::new(Guard::new(Fake::default())))
        .with_tls(tls::Source::SelfSigned(vec!["node-1".into()]));
    let (addr, _stop) = start(server).await;
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    assert_eq!(get(&client, &format!("https://{addr}/metrics"), Some("reader")).await.0, 200);
}

#[tokio::test]
async fn provider_metrics_are_relayed_from_the_socket_behind_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("metrics.socket");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(Server::new(health()).serve_unix(listener, std::future::pending()));
    let server = Server::new(Health::default()).with_provider_metrics(socket.clone());
    let guarded = server.clone().with_auth(Arc::new(Guard::new(Fake::default())));
    let (addr, _stop) = start(server).await;
    let (guarded_addr, _stop2) = start(guarded).await;
    let client = reqwest::Client::new();
    let (status, body) = get(&client, &format!("http://{addr}/metrics/provider"), None).await;
    assert_eq!(status, 200);
    assert!(body.contains("probe_things_total 1"), "{body}");
    assert_eq!(get(&client, &format!("http://{guarded_addr}/metrics/provider"), None).await.0, 401);
    assert_eq!(get(&client, &format!("http://{guarded_addr}/metrics/provider"), Some("reader")).await.0, 200);
    // The provider away: 502 naming the socket.
    std::fs::remove_file(&socket).unwrap();
    let (status, body) = get(&client, &format!("http://{addr}/metrics/provider"), None).await;
    assert_eq!(status, 502);
    assert!(body.contains("metrics.socket") && body.contains("cannot connect"), "{body}");
}
