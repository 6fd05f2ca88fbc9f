//! Certificate expiry: the `notAfter` of every certificate a volume mounts, whatever the provider
//! (read from the PEM files it writes, so external providers are covered too), for the
//! `certificate_expiry_timestamp_seconds` gauge and a Warning event on the pod before expiry.
//!
//! Only the validity dates are read; nothing else of a file (and never a key) leaves this module.
//! A file holding a chain counts by its earliest `notAfter`: that is when it stops validating.
//! PFX files (`objectFormat: pfx`) are not read (they would need decoding); their PEM twins are.

use std::collections::BTreeMap;

use secrets_store::provider::File;
use secrets_store::redact::ExposeSecret;

/// File path (as in the volume) → earliest `notAfter` (Unix seconds) of the certificates in it.
pub type Expiries = BTreeMap<String, i64>;

const PEM_CERT: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The earliest `notAfter` among the PEM certificates in `contents`, if it holds any.
pub fn not_after(contents: &[u8]) -> Option<i64> {
    // Cheap pre-check: most files are plain secrets.
    if !contents.windows(PEM_CERT.len()).any(|w| w == PEM_CERT) {
        return None;
    }
    // Only the CERTIFICATE blocks are parsed: a key block in the same file is never decoded.
    let text = std::str::from_utf8(contents).ok()?;
    let mut earliest: Option<i64> = None;
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let end_marker = "-----END CERTIFICATE-----";
        let Some(end) = block.find(end_marker) else { break };
        let pem_block = &block[..end + end_marker.len()];
        rest = &block[end + end_marker.len()..];
        let Ok(p) = pem::parse(pem_block) else { continue };
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(p.contents()) {
            let t = cert.validity().not_after.timestamp();
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    earliest
}

/// The certificate files among `files`, with their expiry.
pub fn expiries(files: &[File]) -> Expiries {
    files.iter().filter_map(|f| Some((f.path.clone(), not_after(f.contents.expose_secret())?))).collect()
}

/// The warning for a file whose certificate expires at `not_after`, if that is within `warn_before`
/// of `now` (Unix seconds).
pub fn warning(file: &str, not_after: i64, now: i64, warn_before: std::time::Duration) -> Option<String> {
    let left = not_after.saturating_sub(now);
    if left > i64::try_from(warn_before.as_secs()).unwrap_or(i64::MAX) {
        return None;
    }
    // RFC 3339 with a numeric offset, as the message has always been written.
    let at = jiff::Timestamp::from_second(not_after)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .unwrap_or_default();
    Some(if left <= 0 {
        format!("certificate in file {file:?} expired at {at}")
    } else {
        format!("certificate in file {file:?} expires at {at} (in {})", human(left))
    })
}

fn human(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}m", (s + 59) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A self-signed certificate valid until `not_after` (Unix seconds), as PEM, with its key's PEM.
    fn cert(not_after: i64) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec!["example.com".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    /// A certificate's `notAfter` is the vault's (a tenant's) data: extremes warn or pass, never panic.
    #[test]
    fn extreme_not_after_values_never_panic() {
        let window = Duration::from_secs(30 * 86_400);
        for not_after in [i64::MIN, -1, 0, i64::MAX] {
            let _ = warning("f", not_after, 1_800_000_000, window);
            let _ = warning("f", not_after, i64::MAX, Duration::MAX);
        }
        assert!(warning("f", i64::MIN, 1_800_000_000, window).unwrap().contains("expired"));
        assert!(warning("f", i64::MAX, 1_800_000_000, window).is_none());
    }

    #[test]
    fn the_earliest_not_after_of_a_chain_counts_and_plain_secrets_are_skipped() {
        let (leaf, key) = cert(1_900_000_000);
        let (ca, _) = cert(2_000_000_000);
        let bundle = format!("{key}{leaf}{ca}");
        assert_eq!(not_after(bundle.as_bytes()), Some(1_900_000_000));
        assert_eq!(not_after(ca.as_bytes()), Some(2_000_000_000));
        assert_eq!(not_after(b"Pa55w0rd"), None);
        assert_eq!(not_after(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), None);
        let files =
            vec![File::new("tls", 0o644, bundle.into_bytes()), File::new("password", 0o644, b"Pa55w0rd".to_vec())];
        assert_eq!(expiries(&files), [("tls".to_string(), 1_900_000_000)].into());
    }

    #[test]
    fn a_warning_names_the_file_and_the_date_within_the_window_only() {
        let day = 86_400;
        let window = Duration::from_secs(30 * day as u64);
        assert_eq!(warning("tls", 100 * day, 0, window), None);
        let w = warning("tls", 1_900_000_000, 1_900_000_000 - 3 * day - 7200, window).unwrap();
        assert_eq!(w, "certificate in file \"tls\" expires at 2030-03-17T17:46:40+00:00 (in 3d2h)");
        let w = warning("tls", 1_900_000_000, 1_900_000_001, window).unwrap();
        assert!(w.contains("expired at 2030-03-17"), "{w}");
    }
}
