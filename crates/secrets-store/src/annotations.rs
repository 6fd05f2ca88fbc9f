//! Annotations the driver reads (ours, under `keyvault-csi.io/`; upstream ignores them, so a class or
//! pod carrying them stays portable):
//!
//! - [`REFRESH_NOW`] on a pod or a SecretProviderClass: any new value (a timestamp, by convention)
//!   refreshes the pod's volumes, or every volume of the class on this node, within seconds.
//! - [`ROTATION_INTERVAL`] on a SecretProviderClass: its volumes' rotation interval instead of
//!   `--rotation-poll-interval`, never below `--min-rotation-poll-interval`.
//!
//! Both are read from the driver's watch caches on every poller tick, so `kubectl annotate` is the
//! whole interface and nothing is remounted.

use std::time::Duration;

use crate::duration::parse_go_duration;

/// The prefix of every annotation the driver reads; the watch caches keep only these.
pub const PREFIX: &str = "keyvault-csi.io/";
/// Refresh now: set or change its value.
pub const REFRESH_NOW: &str = "keyvault-csi.io/refresh-now";
/// A class's rotation interval (a Go duration such as `30s`, `10m`, `24h`).
pub const ROTATION_INTERVAL: &str = "keyvault-csi.io/rotation-poll-interval";

/// Values longer than this are cut in events and logs (an annotation value is the user's text).
const MAX_SHOWN: usize = 64;

/// The refresh-now values a volume's pod and class carry. A volume is refreshed when these differ
/// from the ones it was last refreshed (or mounted) with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshMarks {
    /// The pod's [`REFRESH_NOW`].
    pub pod: Option<String>,
    /// The class's [`REFRESH_NOW`].
    pub class: Option<String>,
}

impl RefreshMarks {
    /// Which request changed since `seen`, as `(object kind, value)` for the event.
    pub fn requested_since(&self, seen: &RefreshMarks) -> Option<(&'static str, &str)> {
        if self.pod != seen.pod
            && let Some(v) = &self.pod
        {
            return Some(("pod", v));
        }
        if self.class != seen.class
            && let Some(v) = &self.class
        {
            return Some(("SecretProviderClass", v));
        }
        None
    }
}

/// What the cluster says about a volume right now (from the watch caches).
#[derive(Clone, Debug, Default)]
pub struct VolumeHints {
    /// Refresh-now values.
    pub refresh: RefreshMarks,
    /// The class's [`ROTATION_INTERVAL`], unparsed.
    pub class_interval: Option<String>,
}

/// `--min-rotation-poll-interval`'s default: the shortest interval a class may ask for.
pub const DEFAULT_MIN_CLASS_INTERVAL: Duration = Duration::from_secs(30);

/// The longest rotation interval a class may ask for (30 days): longer values are capped, with a
/// Warning, so no timer, deadline or backoff computed from a class ever leaves sane time.
pub const MAX_CLASS_INTERVAL: Duration = Duration::from_secs(30 * 86_400);

/// Annotation values longer than this are refused unparsed.
pub const MAX_VALUE_LEN: usize = 256;

/// A class's usable rotation interval, and why it differs from what the annotation says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInterval {
    /// The interval that applies.
    pub interval: Duration,
    /// Set when the value was capped at [`MAX_CLASS_INTERVAL`] (the caller warns).
    pub capped: Option<String>,
}

/// A class's rotation interval from its annotation: `Ok(None)` without one; below `floor` it is
/// raised to `floor` (so one class cannot hammer a vault), above [`MAX_CLASS_INTERVAL`] it is capped
/// (and the caller warns); an unparsable, overlong or zero value is an error (the node's interval
/// applies, and the caller warns). Messages quote the value bounded ([`shown`]).
pub fn class_interval(raw: Option<&str>, floor: Duration) -> Result<Option<ClassInterval>, String> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.len() > MAX_VALUE_LEN {
        return Err(format!("annotation {ROTATION_INTERVAL}: value longer than {MAX_VALUE_LEN} bytes"));
    }
    let d = parse_go_duration(raw.trim()).map_err(|e| format!("annotation {ROTATION_INTERVAL}: {e}"))?;
    if d.is_zero() {
        return Err(format!("annotation {ROTATION_INTERVAL}: {:?} must be a positive duration", shown(raw)));
    }
    let capped = (d > MAX_CLASS_INTERVAL).then(|| {
        format!("annotation {ROTATION_INTERVAL}: {:?} is longer than the maximum; capped at 720h", shown(raw))
    });
    Ok(Some(ClassInterval { interval: d.clamp(floor, MAX_CLASS_INTERVAL.max(floor)), capped }))
}

/// An annotation value as shown in an event or log line: trimmed to a bounded length.
pub fn shown(value: &str) -> String {
    let mut s: String = value.chars().take(MAX_SHOWN).collect();
    if value.chars().count() > MAX_SHOWN {
        s.push('…');
    }
    s
}

/// Keeps only the annotations the driver reads (what the watch caches store).
pub fn retain_ours(annotations: &mut Option<std::collections::BTreeMap<String, String>>) {
    if let Some(a) = annotations.as_mut() {
        a.retain(|k, _| k.starts_with(PREFIX));
        if a.is_empty() {
            *annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(30);

    #[test]
    fn a_class_interval_is_parsed_and_bounded_below() {
        let ok = |d| Ok(Some(ClassInterval { interval: d, capped: None }));
        assert_eq!(class_interval(None, FLOOR), Ok(None));
        assert_eq!(class_interval(Some("10m"), FLOOR), ok(Duration::from_secs(600)));
        assert_eq!(class_interval(Some(" 24h "), FLOOR), ok(Duration::from_secs(86_400)));
        assert_eq!(class_interval(Some("1s"), FLOOR), ok(FLOOR));
        let huge = class_interval(Some("2562047h"), FLOOR).unwrap().unwrap();
        assert_eq!(huge.interval, MAX_CLASS_INTERVAL);
        assert!(huge.capped.unwrap().contains("capped at 720h"));
        let long = "9".repeat(MAX_VALUE_LEN + 1) + "h";
        for bad in ["0", "soon", "-5m", "10", "99999999999999h", long.as_str()] {
            let e = class_interval(Some(bad), FLOOR).unwrap_err();
            assert!(e.contains(ROTATION_INTERVAL), "{e}");
        }
    }

    #[test]
    fn a_changed_pod_value_wins_over_a_changed_class_value_and_removal_asks_nothing() {
        let seen = RefreshMarks { pod: Some("1".into()), class: Some("a".into()) };
        let now = RefreshMarks { pod: Some("2".into()), class: Some("b".into()) };
        assert_eq!(now.requested_since(&seen), Some(("pod", "2")));
        let class_only = RefreshMarks { pod: Some("1".into()), class: Some("b".into()) };
        assert_eq!(class_only.requested_since(&seen), Some(("SecretProviderClass", "b")));
        assert_eq!(seen.requested_since(&seen), None);
        assert_eq!(RefreshMarks::default().requested_since(&seen), None);
    }

    #[test]
    fn values_are_shown_bounded_and_only_our_annotations_are_kept() {
        assert_eq!(shown("2026-12-01T10:00:00Z"), "2026-12-01T10:00:00Z");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), MAX_SHOWN + 1);
        let mut a = Some(
            [("kubectl.kubernetes.io/last-applied-configuration", "{}"), (REFRESH_NOW, "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        retain_ours(&mut a);
        assert_eq!(a.unwrap().keys().collect::<Vec<_>>(), vec![REFRESH_NOW]);
        let mut none = Some([("a".to_string(), "b".to_string())].into_iter().collect());
        retain_ours(&mut none);
        assert!(none.is_none());
    }
}
