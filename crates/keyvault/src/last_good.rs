//! Last known good (ours, opt-in per class with `maxStaleness`; Azure provider #1240, driver #1229).
//!
//! While Key Vault or Entra ID cannot be reached (5xx, a timeout, no connection), a new mount on this
//! node may be served what another volume on the node fetched, with the same identity, less than
//! `maxStaleness` ago. Never on 401, 403 or 404: those are answers, and they also forget what the
//! identity (or, for 404, the object) was served.
//!
//! Why no identity gains anything: an entry is keyed by the [`IdentityKey`] that fetched it (tenant,
//! client id and the credential's digest, or the federated issuer and subject kubelet's token names),
//! the vault and the object exactly as the class describes it. A mount is served an entry only under
//! the same key: an identity this node already proved to Key Vault for that very object, at most
//! `maxStaleness` ago, and not refused since. What a pod receives is what it would have received had
//! it started then.
//!
//! Bounded: at most [`MAX_ENTRIES`] objects and [`MAX_BYTES`] of file contents (the oldest go first),
//! nothing older than [`MAX_STALENESS`]; only classes that opt in are remembered at all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::identity::IdentityKey;
use crate::{File, Served};

/// The longest `maxStaleness` a class may ask for.
pub const MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);
/// Objects remembered at most.
pub const MAX_ENTRIES: usize = 4096;
/// File bytes remembered at most.
pub const MAX_BYTES: usize = 64 << 20;

/// Which object, fetched how, for whom.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    identity: IdentityKey,
    vault: String,
    /// The object as the class describes it (name, type, version, alias, format, mode, …; no value).
    object: String,
}

impl Key {
    pub(crate) fn new(params: &crate::params::MountParams, o: &crate::params::ObjectSpec) -> Self {
        Self {
            identity: IdentityKey::of(&params.tenant_id, &params.identity),
            vault: params.vault_name.to_ascii_lowercase(),
            object: format!("{o:?}"),
        }
    }
}

struct Entry {
    files: Vec<File>,
    served: Vec<Served>,
    at: Instant,
    bytes: usize,
}

/// The remembered objects.
#[derive(Default)]
pub struct LastGood {
    map: Mutex<HashMap<Key, Entry>>,
}

fn size(files: &[File]) -> usize {
    use secrecy::ExposeSecret;
    files.iter().map(|f| f.contents.expose_secret().len() + f.path.len()).sum()
}

impl LastGood {
    /// Remembers a successful fetch.
    pub(crate) fn remember(&self, key: Key, files: &[File], served: &[Served]) {
        let bytes = size(files);
        if bytes > MAX_BYTES {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.at) <= MAX_STALENESS);
        map.remove(&key);
        let mut total: usize = map.values().map(|e| e.bytes).sum();
        while !map.is_empty() && (map.len() >= MAX_ENTRIES || total + bytes > MAX_BYTES) {
            let oldest = map.iter().min_by_key(|(_, e)| e.at).map(|(k, _)| k.clone()).expect("not empty");
            total -= map.remove(&oldest).map_or(0, |e| e.bytes);
        }
        map.insert(key, Entry { files: files.to_vec(), served: served.to_vec(), at: now, bytes });
    }

    /// What `key` was served less than `max_age` ago, marked stale with its age.
    pub(crate) fn recall(&self, key: &Key, max_age: Duration) -> Option<(Vec<File>, Vec<Served>)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(key)?;
        let age = entry.at.elapsed();
        if age > max_age {
            return None;
        }
        let served = entry.served.iter().map(|s| Served { stale: Some(age), cache_hit: true, ..s.clone() }).collect();
        Some((entry.files.clone(), served))
    }

    /// Forgets everything `identity` was served (it was refused: 401 or 403).
    pub(crate) fn forget_identity(&self, identity: &IdentityKey) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| &k.identity != identity);
    }

    /// Forgets one object (Key Vault says it does not exist).
    pub(crate) fn forget(&self, key: &Key) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
