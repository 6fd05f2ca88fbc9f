//! The audit trail (ours, opt-in with `--audit-log`): one JSON line per object version served to a
//! pod's volume or a Secret, naming who got what and why: pod, namespace, service account, identity
//! kind and client id, vault, object, version, trigger and whether the fetch was shared (cache hit).
//! Never a value, a token or a credential.
//!
//! Lines go through a bounded queue to a writer thread, so a slow sink never delays a mount; they
//! are rate-bounded (token bucket), and what the queue or the rate refuses is counted as dropped
//! (`audit_lines_dropped_total`), never silently lost.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::provider::MountResponse;
use crate::volume_context::PublishParams;

/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Standard output (the driver's own logs go to standard error: a separate stream for collectors).
    Stdout,
    /// Appended to a file.
    File(std::path::PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty audit log destination".into()),
            "stdout" | "-" => Ok(Self::Stdout),
            p if p.starts_with('/') => Ok(Self::File(p.into())),
            p => Err(format!("audit log destination {p:?}: use stdout or an absolute file path")),
        }
    }
}

/// Why an object was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// kubelet's first publish of a volume.
    Mount,
    /// kubelet's republish of a live volume (`requiresRepublish`).
    Republish,
    /// The rotation poller.
    Rotation,
    /// A refresh-now request.
    Refresh,
    /// A Key Vault change event (ours; see `docs/change-events.md`).
    Event,
    /// A SecretSync (the controller).
    Sync,
}

/// One audit line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// Always `keyvault-csi.audit/v1`: what a collector filters on.
    pub kind: &'static str,
    /// Why.
    pub trigger: Trigger,
    /// Namespace of the pod or Secret.
    pub namespace: &'a str,
    /// Pod ("" for a SecretSync).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub pod: &'a str,
    /// Secret ("" for a pod's volume).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub secret: &'a str,
    /// Service account.
    pub service_account: &'a str,
    /// SecretProviderClass.
    pub class: &'a str,
    /// Identity kind.
    pub identity: &'a str,
    /// Identity client id.
    pub client_id: &'a str,
    /// Vault that served the object.
    pub vault: &'a str,
    /// Object id (`secret/db-password`).
    pub object: &'a str,
    /// Version.
    pub version: &'a str,
    /// `hit` (shared with another fetch) or `miss` (a Key Vault request of its own).
    pub cache: &'static str,
    /// Served by a failover vault.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
    /// Served from the node's last known good, fetched this many seconds ago.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_seconds: Option<u64>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Inner {
    tx: std::sync::mpsc::SyncSender<String>,
    rate: f64,
    bucket: Mutex<Bucket>,
    lines: Counter,
    dropped: Counter,
}

/// The audit trail: off (every call a no-op) or writing to a sink.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

/// Who is served, for [`Audit::served`].
pub struct Subject<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod, or "".
    pub pod: &'a str,
    /// Secret, or "".
    pub secret: &'a str,
    /// Service account.
    pub service_account: &'a str,
    /// Class.
    pub class: &'a str,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Audit({})", if self.enabled() { "on" } else { "off" })
    }
}

impl Audit {
    /// No audit trail.
    pub fn off() -> Self {
        Self::default()
    }

    /// What `--audit-log` and `--audit-log-rate` ask for: off when `log` is empty, else `stdout` or an
    /// absolute file path. Errors name the flag.
    pub fn from_flags(log: &str, rate: u32) -> Result<Self, String> {
        if log.is_empty() {
            return Ok(Self::off());
        }
        let sink: Sink = log.parse().map_err(|e: String| format!("--audit-log: {e}"))?;
        Self::start(&sink, rate).map_err(|e| format!("--audit-log {log}: {e}"))
    }

    /// Writes to `sink`, at most `rate` lines per second (bursts of one second's worth).
    pub fn start(sink: &Sink, rate: u32) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            while let Ok(line) = rx.recv() {
                let mut batch = line;
                batch.push('\n');
                while let Ok(more) = rx.try_recv() {
                    batch.push_str(&more);
                    batch.push('\n');
                }
                if out.write_all(batch.as_bytes()).and_then(|()| out.flush()).is_err() {
                    tracing::warn!("cannot write the audit log");
                }
            }
        })?;
        let rate = f64::from(rate.max(1));
        Ok(Self {
            inner: Some(Arc::new(Inner {
                tx,
                rate,
                bucket: Mutex::new(Bucket { tokens: rate, at: Instant::now() }),
                lines: Counter::default(),
                dropped: Counter::default(),
            })),
        })
    }

    /// Whether lines are written.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// (lines written or queued, lines dropped) so far.
    pub fn counts(&self) -> (u64, u64) {
        self.inner.as_ref().map_or((0, 0), |i| (i.lines.get(), i.dropped.get()))
    }

    /// Registers `audit_lines_total` and `audit_lines_dropped_total` (when the trail is on).
    pub fn register(&self, registry: &mut Registry) {
        if let Some(i) = &self.inner {
            registry.register("audit_lines", "Audit lines written (--audit-log)", i.lines.clone());
            registry.register(
                "audit_lines_dropped",
                "Audit lines dropped: over --audit-log-rate, or the writer fell behind",
                i.dropped.clone(),
            );
        }
    }

    /// One line per object version `response` served to `subject`.
    pub fn served(&self, subject: &Subject<'_>, response: &MountResponse, trigger: Trigger) {
        let Some(inner) = &self.inner else { return };
        let time = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        for s in &response.served {
            let record = Record {
                time: time.clone(),
                kind: "keyvault-csi.audit/v1",
                trigger,
                namespace: subject.namespace,
                pod: subject.pod,
                secret: subject.secret,
                service_account: subject.service_account,
                class: subject.class,
                identity: &response.requester.identity,
                client_id: &response.requester.client_id,
                vault: &s.source,
                object: &s.id,
                version: &s.version,
                cache: if s.cache_hit { "hit" } else { "miss" },
                failover: s.failover,
                stale_seconds: s.stale_seconds,
            };
            inner.emit(&record);
        }
    }

    /// [`Audit::served`] for a pod's volume.
    pub fn volume(&self, params: &PublishParams, response: &MountResponse, trigger: Trigger) {
        let subject = Subject {
            namespace: &params.pod.namespace,
            pod: &params.pod.name,
            secret: "",
            service_account: &params.pod.service_account,
            class: &params.class_name,
        };
        self.served(&subject, response, trigger);
    }
}

impl Inner {
    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn emit(&self, record: &Record<'_>) {
        let sent = self.admit() && serde_json::to_string(record).is_ok_and(|line| self.tx.try_send(line).is_ok());
        if sent { &self.lines } else { &self.dropped }.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Requester, Served};

    #[test]
    fn the_flags_name_themselves_when_wrong() {
        assert!(!Audit::from_flags("", 200).unwrap().enabled());
        assert!(Audit::from_flags("stdout", 200).unwrap().enabled());
        let relative = Audit::from_flags("audit.log", 200).unwrap_err();
        assert!(relative.starts_with("--audit-log: "), "{relative}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/audit.log");
        let err = Audit::from_flags(missing.to_str().unwrap(), 200).unwrap_err();
        assert!(err.starts_with(&format!("--audit-log {}: ", missing.display())), "{err}");
        let file = dir.path().join("audit.log");
        assert!(Audit::from_flags(file.to_str().unwrap(), 200).unwrap().enabled());
        assert!(file.exists());
    }

    fn response(n: usize) -> MountResponse {
        MountResponse {
            served: (0..n)
                .map(|i| Served {
                    id: format!("secret/s{i}"),
                    version: format!("v{i}"),
                    source: "kv1".into(),
                    failover: i == 1,
                    cache_hit: i == 0,
                    stale_seconds: None,
                })
                .collect(),
            requester: Requester { identity: "workload".into(), client_id: "cid".into() },
            ..Default::default()
        }
    }

    fn subject() -> Subject<'static> {
        Subject { namespace: "ns", pod: "web-0", secret: "", service_account: "app", class: "kv" }
    }

    fn lines(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= want {
                return text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("fewer than {want} audit lines in {}", path.display());
    }

    #[test]
    fn one_line_per_object_with_who_what_and_why_and_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::start(&Sink::File(path.clone()), 1000).unwrap();
        let mut r = response(2);
        r.files = vec![crate::provider::File {
            path: "s0".into(),
            mode: 0o644,
            contents: secrecy::SecretSlice::from(b"hunter2-value".to_vec()),
        }];
        audit.served(&subject(), &r, Trigger::Rotation);
        let got = lines(&path, 2);
        assert_eq!(got[0]["kind"], "keyvault-csi.audit/v1");
        assert_eq!(got[0]["trigger"], "rotation");
        assert_eq!(
            (&got[0]["pod"], &got[0]["namespace"], &got[0]["serviceAccount"], &got[0]["class"]),
            (&"web-0".into(), &"ns".into(), &"app".into(), &"kv".into())
        );
        assert_eq!((&got[0]["identity"], &got[0]["clientId"]), (&"workload".into(), &"cid".into()));
        assert_eq!(
            (&got[0]["object"], &got[0]["version"], &got[0]["vault"]),
            (&"secret/s0".into(), &"v0".into(), &"kv1".into())
        );
        assert_eq!((&got[0]["cache"], &got[1]["cache"]), (&"hit".into(), &"miss".into()));
        assert_eq!((got[0].get("failover"), &got[1]["failover"]), (None, &true.into()));
        assert!(got[0].get("secret").is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"), "no value in the audit trail");
        assert_eq!(audit.counts(), (2, 0));
    }

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::start(&Sink::File(path.clone()), 10).unwrap();
        audit.served(&subject(), &response(25), Trigger::Mount);
        let (written, dropped) = audit.counts();
        assert_eq!(written + dropped, 25);
        assert!((10..=11).contains(&written), "a burst of one second's worth: {written}");
        assert_eq!(lines(&path, written as usize).len(), written as usize);
    }

    #[test]
    fn off_writes_nothing_and_destinations_parse() {
        let audit = Audit::off();
        audit.served(&subject(), &response(3), Trigger::Mount);
        assert_eq!(audit.counts(), (0, 0));
        assert_eq!("stdout".parse::<Sink>(), Ok(Sink::Stdout));
        assert_eq!("/var/log/a.log".parse::<Sink>(), Ok(Sink::File("/var/log/a.log".into())));
        assert!("relative.log".parse::<Sink>().is_err());
    }
}
