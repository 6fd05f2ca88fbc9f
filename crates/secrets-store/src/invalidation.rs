//! Invalidations: how Key Vault change events reach the nodes.
//!
//! One leader-elected consumer (the controller) pulls events from a Storage queue and writes one
//! entry per changed object into a single small ConfigMap in the driver's own namespace
//! ([`CONFIGMAP`]). Every node watches that one object (a field-selected watch: one watch per node,
//! one small event per change), never users' classes or pods, and refreshes only the volumes that
//! hold the object. The same ConfigMap carries the consumer's heartbeat: while it is fresh, nodes poll
//! at the long `--events-poll-interval`; when it goes stale (queue unreachable, consumer gone), they
//! fall back to `--rotation-poll-interval` until it is back.
//!
//! The format is ours and versionless: `data["<vault>.<type>.<name>"]` is a JSON [`Entry`], plus
//! [`SEQ_KEY`] and [`HEARTBEAT_KEY`]. At most [`MAX_ENTRIES`] entries are kept (the oldest go), so the
//! object stays far below the 1 MiB limit (≈ 200 bytes an entry).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The ConfigMap's name (in the driver's namespace).
pub const CONFIGMAP: &str = "keyvault-csi-invalidations";
/// The consumer's last successful queue read (RFC 3339).
pub const HEARTBEAT_KEY: &str = "heartbeat";
/// The last entry's sequence number.
pub const SEQ_KEY: &str = "seq";
/// Entries kept.
pub const MAX_ENTRIES: usize = 1000;
/// How often the consumer refreshes its heartbeat when nothing else is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A heartbeat older than this means events are down: nodes poll at their normal interval.
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// Histogram buckets for an event's latency (`event_to_file_seconds` on nodes, the consumer's lag):
/// the event path's target is about 3 s.
pub const EVENT_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// One changed object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The version the event announced ("" when none).
    #[serde(rename = "v", default)]
    pub version: String,
    /// The event's time (Unix ms), for the event-to-file latency.
    #[serde(rename = "t", default)]
    pub event_ms: u64,
    /// Sequence number: a new event for the same object always changes the entry.
    #[serde(rename = "s")]
    pub seq: u64,
}

/// What an entry's key names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Vault (lowercase).
    pub vault: String,
    /// `secret`, `key` or `cert`.
    pub kind: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    /// The ConfigMap key: `<vault>.<type>.<name>` (ConfigMap keys allow `[-._a-zA-Z0-9]`; vault and
    /// object names are `[-a-zA-Z0-9]`, so the dots split it unambiguously).
    pub fn key(&self) -> String {
        format!("{}.{}.{}", self.vault, self.kind, self.name)
    }

    /// Parses a key; `None` for the bookkeeping keys and anything malformed.
    pub fn parse(key: &str) -> Option<Self> {
        let mut it = key.splitn(3, '.');
        let (vault, kind, name) = (it.next()?, it.next()?, it.next()?);
        let ok = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        (ok(vault, 24) && matches!(kind, "secret" | "key" | "cert") && ok(name, 127)).then(|| Self {
            vault: vault.to_ascii_lowercase(),
            kind: kind.into(),
            name: name.into(),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Whether the heartbeat in `data` is fresh at `now`.
pub fn healthy(data: &BTreeMap<String, String>, now: SystemTime) -> bool {
    data.get(HEARTBEAT_KEY)
        .and_then(|h| h.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from)
        .is_some_and(|h| now.duration_since(h).unwrap_or_default() < STALE_AFTER)
}

/// The consumer's side: the entries as written, and the merge patch of each new batch.
#[derive(Debug, Default)]
pub struct Board {
    entries: HashMap<String, Entry>,
    seq: u64,
}

impl Board {
    /// Resumes from the ConfigMap's data (a new leader continues the sequence).
    pub fn resume(data: &BTreeMap<String, String>) -> Self {
        let entries: HashMap<String, Entry> = data
            .iter()
            .filter(|(k, _)| ObjectKey::parse(k).is_some())
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v).ok()?)))
            .collect();
        let seq = data
            .get(SEQ_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
            .max(entries.values().map(|e| e.seq).max().unwrap_or(0));
        Self { entries, seq }
    }

    /// Records changes; returns the JSON merge patch of the ConfigMap's `data` (new entries, evicted
    /// ones as `null`, the sequence and the heartbeat), or `None` when `changes` is empty and
    /// `heartbeat` is false.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = (ObjectKey, String, Option<SystemTime>)>,
        now: SystemTime,
        heartbeat: bool,
    ) -> Option<serde_json::Value> {
        let mut data = serde_json::Map::new();
        for (object, version, at) in changes {
            // Duplicates (Event Grid delivers at least once) and late, older events still bump the
            // entry: the node's refresh finds the version it has and changes nothing.
            self.seq += 1;
            let entry = Entry { version, event_ms: at.map(unix_ms).unwrap_or(0), seq: self.seq };
            let key = object.key();
            data.insert(key.clone(), serde_json::Value::String(serde_json::to_string(&entry).expect("plain struct")));
            self.entries.insert(key, entry);
        }
        if data.is_empty() && !heartbeat {
            return None;
        }
        while self.entries.len() > MAX_ENTRIES {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.seq).map(|(k, _)| k.clone()).expect("non-empty");
            self.entries.remove(&oldest);
            data.insert(oldest, serde_json::Value::Null);
        }
        data.insert(SEQ_KEY.into(), self.seq.to_string().into());
        data.insert(
            HEARTBEAT_KEY.into(),
            jiff::Timestamp::try_from(now).map(|t| t.to_string()).unwrap_or_default().into(),
        );
        Some(serde_json::json!({ "data": data }))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A node's side: the entries it has acted on.
#[derive(Debug, Default)]
pub struct Seen {
    primed: bool,
    seqs: HashMap<String, u64>,
    /// The board's sequence and size when last read: nodes read it every second, and it changes
    /// only when an event arrives (a heartbeat alone keeps both).
    last: Option<(String, usize)>,
}

/// One invalidation a node acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// The object.
    pub object: ObjectKey,
    /// The entry.
    pub entry: Entry,
}

impl Seen {
    /// The entries new or changed since the last call. The first call only learns what is there:
    /// a node starting up has just fetched its volumes (or will, on adoption) and owes nothing to
    /// events older than itself.
    pub fn news(&mut self, data: &BTreeMap<String, String>) -> Vec<Invalidation> {
        let last = data.get(SEQ_KEY).map(|seq| (seq.clone(), data.len()));
        if self.primed && last.is_some() && last == self.last {
            return Vec::new();
        }
        self.last = last;
        let mut news = Vec::new();
        let mut now: HashMap<String, u64> = HashMap::with_capacity(data.len());
        for (k, v) in data.iter().take(MAX_ENTRIES + 2) {
            let (Some(object), Ok(entry)) = (ObjectKey::parse(k), serde_json::from_str::<Entry>(v)) else { continue };
            if self.primed && self.seqs.get(k) != Some(&entry.seq) {
                news.push(Invalidation { object, entry: entry.clone() });
            }
            now.insert(k.clone(), entry.seq);
        }
        self.seqs = now;
        self.primed = true;
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectKey {
        ObjectKey { vault: "kv1".into(), kind: "secret".into(), name: name.into() }
    }

    fn data_after(patches: &[serde_json::Value]) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        for p in patches {
            for (k, v) in p["data"].as_object().unwrap() {
                match v.as_str() {
                    Some(s) => data.insert(k.clone(), s.to_string()),
                    None => data.remove(k),
                };
            }
        }
        data
    }

    #[test]
    fn keys_round_trip_and_refuse_what_no_vault_can_name() {
        let k = ObjectKey { vault: "kv-1".into(), kind: "cert".into(), name: "web.example".replace('.', "-") };
        assert_eq!(ObjectKey::parse(&k.key()), Some(k));
        for bad in ["heartbeat", "seq", "kv1.secret", "kv1.blob.x", "kv1.secret.a.b", "../x.secret.y", "kv1.secret."] {
            assert_eq!(ObjectKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_node_acts_once_per_new_event_and_not_on_what_predates_it() {
        let now = SystemTime::now();
        let mut board = Board::default();
        let p1 = board.apply([(obj("a"), "v1".into(), Some(now))], now, false).unwrap();
        let mut seen = Seen::default();
        assert!(seen.news(&data_after(std::slice::from_ref(&p1))).is_empty(), "priming");
        let p2 = board.apply([(obj("b"), "v1".into(), None), (obj("a"), "v2".into(), None)], now, false).unwrap();
        let data = data_after(&[p1.clone(), p2.clone()]);
        let mut news: Vec<String> = seen.news(&data).into_iter().map(|i| i.object.name).collect();
        news.sort();
        assert_eq!(news, ["a", "b"]);
        assert!(seen.news(&data).is_empty(), "nothing new");
        // A duplicate delivery of the same event is a new entry: the refresh it causes is a no-op.
        let p3 = board.apply([(obj("b"), "v1".into(), None)], now, false).unwrap();
        assert_eq!(seen.news(&data_after(&[p1, p2, p3])).len(), 1);
        assert!(healthy(&data, now));
        assert!(!healthy(&data, now + STALE_AFTER));
        assert!(!healthy(&BTreeMap::new(), now));
    }

    #[test]
    fn the_board_stays_bounded_and_a_new_leader_continues_its_sequence() {
        let now = SystemTime::now();
        let mut board = Board::default();
        let mut patches = Vec::new();
        for i in 0..MAX_ENTRIES + 5 {
            patches.push(board.apply([(obj(&format!("o{i}")), String::new(), None)], now, false).unwrap());
        }
        let data = data_after(&patches);
        assert_eq!(board.len(), MAX_ENTRIES);
        assert_eq!(data.len(), MAX_ENTRIES + 2, "entries, seq and heartbeat");
        assert!(!data.contains_key(&obj("o0").key()), "the oldest went");
        let resumed = Board::resume(&data);
        assert_eq!(resumed.seq, board.seq);
        assert!(board.apply([], now, false).is_none());
        assert!(board.apply([], now, true).is_some(), "a heartbeat alone");
    }
}
