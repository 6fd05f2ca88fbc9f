//! Bounded containers for state keyed by what tenants write (class names, annotation values, object
//! and vault names). A namespace user can create any number of distinct values; nothing they create
//! may grow the node's memory or a metric's series without bound.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

/// "Have we already said this?" for warnings given once per key. Holds at most `cap` keys; when full
/// it starts over, so at worst a warning is given again (never lost, never unbounded).
pub struct SeenOnce<K> {
    cap: usize,
    seen: Mutex<HashSet<K>>,
}

/// Default capacity of a [`SeenOnce`].
pub const SEEN_ONCE_CAP: usize = 4096;

impl<K: Hash + Eq> Default for SeenOnce<K> {
    fn default() -> Self {
        Self::with_cap(SEEN_ONCE_CAP)
    }
}

impl<K: Hash + Eq> SeenOnce<K> {
    /// At most `cap` keys.
    pub fn with_cap(cap: usize) -> Self {
        Self { cap: cap.max(1), seen: Mutex::new(HashSet::new()) }
    }

    /// True the first time `key` is seen (since the set last started over).
    pub fn first_time(&self, key: K) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) {
            return false;
        }
        if seen.len() >= self.cap {
            seen.clear();
        }
        seen.insert(key)
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_key_and_never_holds_more_than_its_cap() {
        let s = SeenOnce::with_cap(100);
        assert!(s.first_time("a".to_string()));
        assert!(!s.first_time("a".to_string()));
        for i in 0..10_000 {
            s.first_time(format!("hostile-{i}"));
            assert!(s.len() <= 100);
        }
    }
}
