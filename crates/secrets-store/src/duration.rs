//! Durations as Go spells them, for flags and annotations upstream manifests and operators already use.

use std::time::Duration;

/// Go's `time.ParseDuration` for non-negative durations: `2m`, `1h30m`, `1.5s`, `300ms`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    // The value is a tenant's (an annotation): quoted bounded.
    let shown = crate::annotations::shown(s);
    let bad = || format!("invalid duration {shown:?}: use a Go duration such as 30s, 2m or 1h30m");
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(format!("invalid duration {shown:?}: must not be negative"));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = body;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    // Go's durations are int64 nanoseconds: anything longer is an error there, and here.
    if total.is_nan() || total > MAX_GO_SECS {
        return Err(format!("invalid duration {shown:?}: longer than Go allows (about 292 years)"));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The longest Go duration, in seconds (`math.MaxInt64` nanoseconds).
const MAX_GO_SECS: f64 = 9_223_372_036.0;

/// `now + d`, or the farthest instant tokio can represent: time arithmetic on input never panics.
pub fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now.checked_add(d).unwrap_or_else(|| now + FAR_FUTURE)
}

/// About 30 years: far enough to mean "never", near enough for every platform's clock to add.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("2562047h").unwrap(), Duration::from_secs(2_562_047 * 3600), "Go's longest");
        for bad in ["", "2", "m", "2x", "-1s", "1m-2s", "2562048h", "99999999999999999999999h", "1e400s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let now = tokio::time::Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(later(now, Duration::from_secs(5)), now + Duration::from_secs(5));
    }
}
