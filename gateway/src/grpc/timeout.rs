//! `grpc-timeout`: a positive integer of at most 8 ASCII digits and a unit,
//! `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds,
//! `n` nanoseconds (the gRPC over HTTP/2 spec). The gateway answers a call
//! whose deadline passes with `DEADLINE_EXCEEDED` and passes the remaining
//! time upstream.

use std::time::Duration;

/// Longest value the spec allows: 8 digits.
pub const MAX_DIGITS: usize = 8;

/// A `grpc-timeout` value as a duration; `None` when malformed.
pub fn parse(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value (the finest unit that fits 8 digits,
/// rounded up so the upstream never gets more time than is left).
pub fn format(d: Duration, out: &mut String) {
    use std::fmt::Write;
    const MAX: u128 = 99_999_999;
    let ns = d.as_nanos();
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
    ] {
        let v = ns.div_ceil(per);
        if v <= MAX {
            let _ = write!(out, "{v}{unit}");
            return;
        }
    }
    let _ = write!(out, "{}H", ns.div_ceil(3_600_000_000_000).min(MAX));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse(b"30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed() {
        for bad in [
            &b""[..],
            b"S",
            b"10",
            b"10s",
            b"-1S",
            b"1 S",
            b"123456789S",
            b"1.5S",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn formats_in_the_finest_unit() {
        let f = |d| {
            let mut s = String::new();
            format(d, &mut s);
            s
        };
        assert_eq!(f(Duration::from_millis(250)), "250000u");
        assert_eq!(f(Duration::from_nanos(5)), "5n");
        assert_eq!(f(Duration::from_secs(1000)), "1000000m");
        assert_eq!(f(Duration::from_secs(10 * 86400)), "864000S");
    }

    proptest! {
        #[test]
        fn format_round_trips_never_shorter(ns in 0u64..u64::MAX / 4) {
            let d = Duration::from_nanos(ns);
            let mut s = String::new();
            format(d, &mut s);
            let back = parse(s.as_bytes()).unwrap();
            prop_assert!(back >= d);
        }
    }
}
