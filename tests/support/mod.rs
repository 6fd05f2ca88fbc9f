//! A kubelet-style harness: starts the real `keyvault-csi` binary, talks CSI to its real Unix socket,
//! lays out pod volumes as kubelet does, and serves a v1alpha1 provider on a real socket.
//!
//! Mount tests need CAP_SYS_ADMIN: `make test` runs them as root in a private mount namespace, or as a
//! normal user inside `unshare -rm`. Without the capability they fail with a message saying so.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csi_proto::csi::{self, identity_client::IdentityClient, node_client::NodeClient};
use csi_proto::provider::{
    self as pb,
    csi_driver_provider_server::{CsiDriverProvider, CsiDriverProviderServer},
};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// Panics with a clear reason unless this process may mount (never skip silently).
pub fn require_mount_privilege() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    assert!(
        cap_eff & (1 << CAP_SYS_ADMIN) != 0,
        "these tests mount tmpfs and need CAP_SYS_ADMIN: run them with `make test`, which uses a private \
         mount namespace as root or `unshare -rm` as a normal user"
    );
}

/// A scratch node: kubelet root, provider and class directories.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Self {
        require_mount_privilege();
        let dir = tempfile::Builder::new().prefix("kvcsi-e2e").tempdir().expect("tempdir");
        for sub in ["kubelet/pods", "providers", "providers-extra", "classes", "plugin"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn socket(&self) -> PathBuf {
        self.path("plugin/csi.sock")
    }
    /// Writes a SecretProviderClass manifest into the class directory.
    pub fn add_class(&self, namespace: &str, name: &str, provider: &str, parameters: &[(&str, &str)]) {
        let mut params = String::new();
        for (k, v) in parameters {
            params.push_str(&format!("    {k}: {}\n", serde_json::to_string(v).unwrap()));
        }
        let params = if params.is_empty() { "    {}\n".to_string() } else { params };
        let params_block =
            if parameters.is_empty() { "  parameters: {}\n".to_string() } else { format!("  parameters:\n{params}") };
        let yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  provider: {provider}\n{params_block}"
        );
        std::fs::write(self.path(&format!("classes/{namespace}-{name}.yaml")), yaml).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Never leave a test mount behind, whatever the test did.
        let root = self.dir.path().to_path_buf();
        for (mp, _) in mounts_of("self") {
            if mp.starts_with(&root) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Mount points and fs types seen by process `pid` ("self" for this one).
pub fn mounts_of(pid: &str) -> Vec<(PathBuf, String)> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    driver::mounter::parse_mountinfo(&table).into_iter().map(|(p, m)| (p, m.fs_type)).collect()
}

/// The first `<key><ip:port>` in a log.
pub fn logged_addr(logs: &str, key: &str) -> Option<String> {
    // Text logs: `metrics=127.0.0.1:1234`; JSON logs: `"metrics":"127.0.0.1:1234"`.
    let json_key = format!("\"{}\":\"", key.trim_end_matches('='));
    let (start, len) = match logs.find(key) {
        Some(i) => (i, key.len()),
        None => (logs.find(&json_key)?, json_key.len()),
    };
    let rest = &logs[start + len..];
    Some(rest.split(|c: char| c.is_whitespace() || c == '"' || c == ',').next()?.to_string())
}

/// Flags pointing the binary's Azure provider at an emulator (writes its CA into the node's directory).
pub fn azure_flags(node: &Node, h: &emulator::Handle) -> Vec<String> {
    let ca = node.path("emulator-ca.pem");
    std::fs::write(&ca, &h.ca_pem).unwrap();
    vec![
        format!("--azure-extra-ca-file={}", ca.display()),
        "--azure-resolve-to=127.0.0.1".into(),
        format!("--azure-vault-port={}", h.https_addr.port()),
        format!("--azure-authority-host={}", h.authority_url()),
    ]
}

/// A `/proc/<pid>/status` value in kB (e.g. `VmRSS:`).
pub fn proc_status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The driver binary, running.
pub struct DriverProcess {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    pub metrics_addr: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_keyvault-csi")
}

impl DriverProcess {
    /// Starts the driver at the highest verbosity with the node's directories (classes from the node's
    /// class directory) and `extra` flags.
    pub async fn start(node: &Node, extra: &[&str]) -> Self {
        Self::start_with(node, extra, true).await
    }

    /// Like [`DriverProcess::start`]; without `class_dir` the driver reads classes from Kubernetes.
    pub async fn start_with(node: &Node, extra: &[&str], class_dir: bool) -> Self {
        let log_path = node.path(&format!("driver-{}.log", free_port()));
        // Port 0: the driver picks a free port and logs it (no race with other tests' listeners).
        let metrics_addr = "127.0.0.1:0".to_string();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("-v=5")
            .arg(format!("--endpoint=unix://{}", node.socket().display()))
            .arg("--nodeid=node-1")
            .arg(format!("--provider-volume={}", node.path("providers").display()))
            .arg(format!("--additional-provider-volume-paths={}", node.path("providers-extra").display()))
            .args(class_dir.then(|| format!("--class-dir={}", node.path("classes").display())))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start keyvault-csi");
        let mut p = Self { child: Some(child), socket: node.socket(), log_path, metrics_addr };
        p.wait_ready().await;
        p.metrics_addr = p.logged_addr("metrics=").expect("the driver logs its metrics address");
        p
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("driver exited early with {status}: {}", self.logs());
            }
            if self.socket.exists()
                && let Ok(ch) = channel(&self.socket).await
                && IdentityClient::new(ch).probe(csi::ProbeRequest {}).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "driver did not serve within 20 s: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An address the process logged as `<key><addr>` (text logs).
    pub fn logged_addr(&self, key: &str) -> Option<String> {
        logged_addr(&self.logs(), key)
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fails if any of `values` (secret values, tokens) appears anywhere in the driver's log.
    pub fn assert_logs_free_of(&self, values: &[&str]) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "the driver wrote no logs at -v=5");
        for v in values {
            assert!(!logs.contains(v), "a secret value leaked into the driver log: {v:?}");
        }
    }

    /// The driver's mounts at `target`.
    pub fn mounts_at(&self, target: &Path) -> Vec<String> {
        mounts_of(&self.pid()).into_iter().filter(|(p, _)| p == target).map(|(_, t)| t).collect()
    }

    pub async fn node_client(&self) -> NodeClient<Channel> {
        NodeClient::new(channel(&self.socket).await.expect("connect to csi.sock"))
    }

    pub async fn identity_client(&self) -> IdentityClient<Channel> {
        IdentityClient::new(channel(&self.socket).await.expect("connect to csi.sock"))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "driver did not exit within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A gRPC channel over a Unix socket, as kubelet dials it.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// An inline CSI volume of a pod, as kubelet describes it.
#[derive(Clone, Debug)]
pub struct PodVolume {
    pub pod: String,
    pub namespace: String,
    pub uid: String,
    pub volume: String,
    pub class: String,
    pub service_account: String,
    pub tokens: Option<String>,
    pub tokens_in_secrets: bool,
    pub secrets: BTreeMap<String, String>,
    pub readonly: bool,
}

impl PodVolume {
    pub fn new(pod: &str, class: &str) -> Self {
        Self {
            pod: pod.into(),
            namespace: "default".into(),
            uid: format!("uid-{}-{}", &pod[..pod.len().min(20)], free_port()),
            volume: "secrets-store-inline".into(),
            class: class.into(),
            service_account: "default".into(),
            tokens: None,
            tokens_in_secrets: false,
            secrets: BTreeMap::new(),
            readonly: true,
        }
    }

    /// `<kubelet root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`; kubelet creates the parent.
    pub fn target(&self, node: &Node) -> PathBuf {
        let parent = node.path(&format!("kubelet/pods/{}/volumes/kubernetes.io~csi/{}", self.uid, self.volume));
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    pub fn publish_request(&self, node: &Node) -> csi::NodePublishVolumeRequest {
        let mut ctx: std::collections::HashMap<String, String> = [
            ("secretProviderClass", self.class.as_str()),
            ("csi.storage.k8s.io/pod.name", self.pod.as_str()),
            ("csi.storage.k8s.io/pod.namespace", self.namespace.as_str()),
            ("csi.storage.k8s.io/pod.uid", self.uid.as_str()),
            ("csi.storage.k8s.io/serviceAccount.name", self.service_account.as_str()),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut secrets: std::collections::HashMap<String, String> = self.secrets.clone().into_iter().collect();
        if let Some(t) = &self.tokens {
            if self.tokens_in_secrets {
                secrets.insert(TOKENS_KEY.into(), t.clone());
            } else {
                ctx.insert(TOKENS_KEY.into(), t.clone());
            }
        }
        csi::NodePublishVolumeRequest {
            volume_id: format!("csi-{}", self.uid),
            target_path: self.target(node).to_string_lossy().into_owned(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
            }),
            readonly: self.readonly,
            secrets,
            volume_context: ctx,
            ..Default::default()
        }
    }

    pub async fn publish(&self, node: &Node, client: &mut NodeClient<Channel>) -> Result<(), tonic::Status> {
        client.node_publish_volume(self.publish_request(node)).await.map(|_| ())
    }

    pub fn unpublish_request(&self, node: &Node) -> csi::NodeUnpublishVolumeRequest {
        csi::NodeUnpublishVolumeRequest {
            volume_id: format!("csi-{}", self.uid),
            target_path: self.target(node).to_string_lossy().into_owned(),
        }
    }

    pub async fn unpublish(&self, node: &Node, client: &mut NodeClient<Channel>) -> Result<(), tonic::Status> {
        client.node_unpublish_volume(self.unpublish_request(node)).await.map(|_| ())
    }
}

/// A kubelet-style token JSON for one audience.
pub fn tokens_json(audience: &str, token: &str) -> String {
    serde_json::json!({ audience: { "token": token, "expirationTimestamp": "2030-01-01T00:00:00Z" } }).to_string()
}

/// What the test provider returns and has seen.
#[derive(Default)]
pub struct ProviderState {
    pub files: Vec<pb::File>,
    pub versions: Vec<pb::ObjectVersion>,
    pub error_code: Option<String>,
    pub fail: Option<tonic::Status>,
    pub delay: Duration,
    pub calls: usize,
    pub requests: Vec<pb::MountRequest>,
    pub authorities: Vec<String>,
}

#[derive(Clone)]
struct Authority(String);

/// A v1alpha1 provider on a real Unix socket.
#[derive(Clone)]
pub struct TestProvider {
    pub state: Arc<Mutex<ProviderState>>,
}

impl TestProvider {
    /// Serves on `<dir>/<name>.sock`.
    pub async fn start(dir: &Path, name: &str) -> Self {
        let state = Arc::new(Mutex::new(ProviderState::default()));
        let p = Self { state: state.clone() };
        let path = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let svc = CsiDriverProviderServer::new(p.clone());
        // Record the HTTP/2 :authority for the provider to check, as upstream's e2e provider does.
        let record =
            tower::ServiceBuilder::new().map_request(|mut req: tonic::codegen::http::Request<tonic::body::Body>| {
                let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
                req.extensions_mut().insert(Authority(authority));
                req
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(record)
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        p
    }

    /// Returns these files (path, mode, contents) and versions `secret/<path>` = `version`.
    pub fn set_files(&self, files: &[(&str, i32, &str)], version: &str) {
        let mut s = self.state.lock().unwrap();
        s.files = files
            .iter()
            .map(|(p, m, c)| pb::File { path: p.to_string(), mode: *m, contents: c.as_bytes().to_vec() })
            .collect();
        s.versions = files
            .iter()
            .map(|(p, _, _)| pb::ObjectVersion { id: format!("secret/{p}"), version: version.into() })
            .collect();
    }

    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }

    pub fn last_request(&self) -> pb::MountRequest {
        self.state.lock().unwrap().requests.last().cloned().expect("the provider was called")
    }
}

#[tonic::async_trait]
impl CsiDriverProvider for TestProvider {
    async fn version(
        &self,
        _: tonic::Request<pb::VersionRequest>,
    ) -> Result<tonic::Response<pb::VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "test-provider".into(),
            runtime_version: "0.0.1".into(),
        }))
    }

    async fn mount(
        &self,
        req: tonic::Request<pb::MountRequest>,
    ) -> Result<tonic::Response<pb::MountResponse>, tonic::Status> {
        // Upstream's e2e provider rejects any :authority but localhost; so does this one.
        let authority = req.extensions().get::<Authority>().map(|a| a.0.clone()).unwrap_or_default();
        let delay = {
            let mut s = self.state.lock().unwrap();
            s.calls += 1;
            s.authorities.push(authority.clone());
            s.requests.push(req.get_ref().clone());
            s.delay
        };
        if authority != "localhost" {
            return Err(tonic::Status::invalid_argument(format!("unexpected :authority {authority:?}")));
        }
        tokio::time::sleep(delay).await;
        let s = self.state.lock().unwrap();
        if let Some(status) = &s.fail {
            return Err(status.clone());
        }
        Ok(tonic::Response::new(pb::MountResponse {
            object_version: s.versions.clone(),
            error: s.error_code.clone().map(|code| pb::Error { code }),
            files: s.files.clone(),
        }))
    }
}

/// A plain HTTP GET (status, body) without pulling an HTTP client into the tests.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the first sample whose line starts with `series` (name and labels, in exposition order).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let name = series.split('{').next().unwrap_or(series);
            let related: Vec<&str> = metrics.lines().filter(|l| l.contains(name)).collect();
            panic!("no series {series}; lines with {name}:\n{}", related.join("\n"))
        })
}

impl DriverProcess {
    /// The sum of every sample of `metric` (all label sets).
    pub fn metric_sum(&self, metric: &str) -> f64 {
        let (_, m) = http_get(&self.metrics_addr, "/metrics");
        m.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `/readyz` answers 200 (watch caches synced).
    pub async fn wait_readyz(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = http_get(&self.metrics_addr, "/readyz");
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "not ready within 20 s: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
