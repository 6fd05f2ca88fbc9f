//! When a SecretSync is checked, and why: the rounds, the back-off after failures, and the one
//! decision that tells a round's poll from a change or a forced check (pure, tested here).

use std::time::{Duration, SystemTime};

use super::{Config, MAX_JITTER};
use crate::decide::Failure;

/// What the controller remembers of a SecretSync's last check, to tell a poll from a change.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// The SecretSync and its inputs as that check saw them.
    pub(super) observed: Observed,
    pub(super) due: Option<SystemTime>,
    pub(super) failures: u32,
}

/// Where a check was triggered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trigger {
    /// Its round came: share the round's fetches.
    Poll(u64),
    /// Something changed (or it is new to this process).
    Change,
    /// `forceSynchronization` or the refresh-now annotation: nothing fetched before may be reused.
    Forced,
}

/// What a SecretSync and its inputs look like now, as [`Seen`] remembers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Observed {
    pub(super) generation: i64,
    pub(super) class: Option<(String, i64)>,
    pub(super) secret_version: Option<String>,
    pub(super) refresh_now: Option<String>,
    pub(super) interval: Duration,
    /// Change events about objects it holds (a count: a new one forces a check).
    pub(super) invalidations: u64,
}

/// Why the SecretSync is checked now, or how long nothing is due: a change of its generation, class,
/// Secret or interval is a change (a new generation forces a fetch, like `forceSynchronization`); a new
/// refresh-now value or a change event about one of its objects forces one; otherwise the round's poll
/// once it is due.
pub(super) fn trigger_of(
    previous: Option<&Seen>,
    now: &Observed,
    schedule: &Schedule,
    at: SystemTime,
) -> Result<Trigger, Duration> {
    match previous {
        Some(p)
            if Observed {
                refresh_now: now.refresh_now.clone(),
                invalidations: now.invalidations,
                ..p.observed.clone()
            } == *now =>
        {
            if (p.observed.refresh_now != now.refresh_now && now.refresh_now.is_some())
                || p.observed.invalidations != now.invalidations
            {
                Ok(Trigger::Forced)
            } else if p.due.is_none_or(|d| d <= at) {
                Ok(Trigger::Poll(schedule.round(at)))
            } else {
                // A status write or an unrelated touch: nothing to do before the round.
                Err(p.due.and_then(|d| d.duration_since(at).ok()).unwrap_or_default())
            }
        }
        Some(p) if p.observed.generation != now.generation && now.generation > 0 => Ok(Trigger::Forced),
        _ => Ok(Trigger::Change),
    }
}

/// When a SecretSync is checked: every `interval`, in rounds aligned on the clock (so SecretSyncs of
/// one interval share a round's fetches), at a fixed offset within `jitter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Schedule {
    pub(super) interval: Duration,
    jitter: Duration,
}

impl Schedule {
    /// The controller's interval, or the SecretSync's `keyvault-csi.io/rotation-poll-interval`
    /// (raised to `min_interval`); an invalid annotation is reported and the default applies.
    pub(super) fn of(config: &Config, annotation: Option<&str>) -> (Self, Option<String>) {
        let (interval, invalid) = match secrets_store::annotations::class_interval(annotation, config.min_interval) {
            Ok(Some(c)) => (c.interval, c.capped),
            Ok(None) => (config.refresh_interval, None),
            Err(e) => (config.refresh_interval, Some(e)),
        };
        let interval = interval.max(Duration::from_secs(1));
        (Self { interval, jitter: config.jitter.min(MAX_JITTER).min(interval / 2) }, invalid)
    }

    /// A SecretSync's fixed offset into every round (from its uid, so a restart keeps it).
    pub(super) fn offset(&self, uid: &str) -> Duration {
        let j = self.jitter.as_millis() as u64;
        if j == 0 {
            return Duration::ZERO;
        }
        let h = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        Duration::from_millis(h % j)
    }

    /// The start (Unix ms) of the round `now` belongs to; also the provider cycle of its fetches,
    /// unique across intervals.
    pub(super) fn round(&self, now: SystemTime) -> u64 {
        let interval = self.interval.as_millis() as u64;
        let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        now - now % interval
    }

    /// When the SecretSync's next check is due: the next round's start plus its offset.
    pub(super) fn next_due(&self, uid: &str, now: SystemTime) -> SystemTime {
        let next = self.round(now) + self.interval.as_millis() as u64;
        SystemTime::UNIX_EPOCH + Duration::from_millis(next) + self.offset(uid)
    }
}

/// Retry delay after `failures` failures in a row: 5 s doubling to 5 min (throttling starts at 30 s),
/// so a storm of 429s is not answered with a storm of retries.
pub(super) fn backoff(failures: u32, f: &Failure) -> Duration {
    let base = if f.throttled { 30 } else { 5 };
    Duration::from_secs((base << failures.saturating_sub(1).min(10)).min(300))
}

pub(super) fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::FailureReason;

    fn config(interval: u64, jitter: u64) -> Config {
        Config {
            audiences: vec![],
            refresh_interval: Duration::from_secs(interval),
            min_interval: Duration::from_secs(30),
            jitter: Duration::from_secs(jitter),
            require_opt_in: true,
            concurrency: 1,
            partial_sync: false,
            audit: secrets_store::audit::Audit::off(),
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn every_secret_sync_checks_once_per_round_at_its_own_offset_within_the_jitter() {
        let (s, invalid) = Schedule::of(&config(3600, 60), None);
        assert_eq!(invalid, None);
        let due_a = s.next_due("uid-a", at(7200 + 10));
        let due_b = s.next_due("uid-b", at(7200 + 3000));
        for d in [due_a, due_b] {
            let into = d.duration_since(at(10_800)).expect("in the next round");
            assert!(into < Duration::from_secs(60), "{into:?}");
        }
        assert_ne!(due_a, due_b, "spread within the round");
        assert_eq!(s.round(due_a), s.round(due_b), "one round: one provider cycle");
        assert_eq!(s.round(due_a), 10_800_000);
        assert_eq!(s.next_due("uid-a", at(1)), s.next_due("uid-a", at(2)), "stable across restarts");
        // The jitter is capped so a round's fetches stay shareable, and at half the interval.
        assert!(Schedule::of(&config(3600, 3600), None).0.offset("x") < MAX_JITTER);
        assert!(Schedule::of(&config(60, 600), None).0.offset("x") <= Duration::from_secs(30));
        assert_eq!(Schedule::of(&config(60, 0), None).0.offset("x"), Duration::ZERO);
    }

    #[test]
    fn a_secret_sync_may_ask_for_its_own_interval_within_the_floor() {
        let c = config(3600, 60);
        assert_eq!(Schedule::of(&c, Some("5m")).0.interval, Duration::from_secs(300));
        assert_eq!(Schedule::of(&c, Some("1s")).0.interval, Duration::from_secs(30), "raised to the floor");
        let (s, invalid) = Schedule::of(&c, Some("soon"));
        assert_eq!(s.interval, Duration::from_secs(3600));
        assert!(invalid.unwrap().contains("keyvault-csi.io/rotation-poll-interval"));
        // Rounds of different intervals never share a cycle number unless they start together.
        let five = Schedule::of(&c, Some("5m")).0;
        let hour = Schedule::of(&c, None).0;
        assert_ne!(five.round(at(3600 + 300)), hour.round(at(3600 + 300)));
        assert_eq!(five.round(at(7200 + 10)), hour.round(at(7200 + 10)), "same start, same fetch time");
    }

    /// The most hostile values a SecretSync's annotation can carry: a round is still computed.
    #[test]
    fn hostile_intervals_are_capped_or_refused_and_rounds_still_compute() {
        let c = config(3600, 60);
        let (s, warning) = Schedule::of(&c, Some("2562047h"));
        assert_eq!(s.interval, secrets_store::annotations::MAX_CLASS_INTERVAL);
        assert!(warning.unwrap().contains("capped at 720h"));
        let _ = s.next_due("uid", SystemTime::now());
        for v in ["3000000000000000h", "1e400h", &"9".repeat(10_000)] {
            let (s, warning) = Schedule::of(&c, Some(v));
            assert_eq!(s.interval, Duration::from_secs(3600), "{v:.20}");
            assert!(warning.unwrap().len() < 400, "the value is quoted bounded");
            let _ = s.next_due("uid", SystemTime::now());
        }
    }

    #[test]
    fn failures_back_off_exponentially_and_throttling_harder() {
        let f = Failure::new(FailureReason::ProviderError, "x");
        assert_eq!(backoff(1, &f), Duration::from_secs(5));
        assert_eq!(backoff(2, &f), Duration::from_secs(10));
        assert_eq!(backoff(20, &f), Duration::from_secs(300));
        let t = f.clone().with_throttled(true);
        assert_eq!(backoff(1, &t), Duration::from_secs(30));
        assert_eq!(backoff(4, &t), Duration::from_secs(240));
    }

    #[test]
    fn a_poll_a_change_and_a_forced_check_are_told_apart() {
        let schedule = Schedule::of(&config(60, 0), None).0;
        let now = Observed {
            generation: 2,
            class: Some(("c".into(), 1)),
            secret_version: Some("7".into()),
            refresh_now: None,
            interval: schedule.interval,
            invalidations: 0,
        };
        let seen = |due: u64| Seen { observed: now.clone(), due: Some(at(due)), failures: 0 };
        // New to this process: a change.
        assert_eq!(trigger_of(None, &now, &schedule, at(100)), Ok(Trigger::Change));
        // Nothing changed and the round is not due: wait for it.
        assert_eq!(trigger_of(Some(&seen(130)), &now, &schedule, at(100)), Err(Duration::from_secs(30)));
        // Due: the round's poll (its fetches shared with the round).
        assert_eq!(trigger_of(Some(&seen(100)), &now, &schedule, at(100)), Ok(Trigger::Poll(60_000)));
        // A new refresh-now value forces a fetch; a removed one does not.
        let asked = Observed { refresh_now: Some("1".into()), ..now.clone() };
        assert_eq!(trigger_of(Some(&seen(130)), &asked, &schedule, at(100)), Ok(Trigger::Forced));
        let mut was_asked = seen(130);
        was_asked.observed.refresh_now = Some("1".into());
        assert_eq!(trigger_of(Some(&was_asked), &now, &schedule, at(100)), Err(Duration::from_secs(30)));
        // A new generation forces; the class or the Secret changing is a change.
        let edited = Observed { generation: 3, ..now.clone() };
        assert_eq!(trigger_of(Some(&seen(130)), &edited, &schedule, at(100)), Ok(Trigger::Forced));
        let class_changed = Observed { class: Some(("c".into(), 2)), ..now.clone() };
        assert_eq!(trigger_of(Some(&seen(130)), &class_changed, &schedule, at(100)), Ok(Trigger::Change));
        let tampered = Observed { secret_version: Some("8".into()), ..now.clone() };
        assert_eq!(trigger_of(Some(&seen(130)), &tampered, &schedule, at(100)), Ok(Trigger::Change));
        // A change event about one of its objects forces a fetch (nothing from before it is reused).
        let event = Observed { invalidations: 1, ..now.clone() };
        assert_eq!(trigger_of(Some(&seen(130)), &event, &schedule, at(100)), Ok(Trigger::Forced));
    }
}
