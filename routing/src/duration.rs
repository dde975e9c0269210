//! Duration strings as Kubernetes manifests write them.
//!
//! Gateway API durations (`HTTPRoute.spec.rules[].timeouts`) follow Go's
//! `time.ParseDuration`: one or more `<number><unit>` pairs such as `300s`,
//! `50ms`, `1h30m` or `2.5s`. The Gateway API schema itself only allows
//! integers with `h`, `m`, `s`, `ms`; we accept the wider Go grammar (fractions,
//! `ns`, `us`/`µs`) because the inference resources of the seed use it too.
//! Signs are rejected (a timeout or latency is never negative), so are empty
//! strings, missing or unknown units and values that overflow `u64`
//! nanoseconds (≈ 584 years). The bare string `"0"` is accepted, as in Go.
//!
//! The `serde_*` helpers let typed config structs hold [`std::time::Duration`]
//! directly, so a bad value is reported with its field path by
//! `serde_path_to_error`.

use std::time::Duration;

/// The grammar [`parse_duration`] accepts, as a regular expression (the CRDs'
/// schemas carry it, so `kubectl apply` refuses what the parser would).
pub const PATTERN: &str = r"^(0|((([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(ns|us|µs|μs|ms|s|m|h))+)$";

/// Nanoseconds per unit, longest unit names first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go / Gateway API duration string (`"300s"`, `"10ms"`, `"1h30m"`,
/// `"1.5s"`, `"0s"`).
///
/// The error is a human-readable sentence naming the offending input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let fail = |why: &str| Err(format!("invalid duration {s:?}: {why}"));
    if s.is_empty() {
        return fail("empty string");
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return fail("negative durations are not allowed");
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        // Integer part.
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &s[int_start..i];
        // Fraction part.
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &s[frac_start..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return fail("expected a number (e.g. \"300s\", \"50ms\", \"1h30m\")");
        }
        // Unit: everything up to the next digit or '.'.
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
            i += 1;
        }
        let unit = &s[unit_start..i];
        if unit.is_empty() {
            return fail("missing unit (use one of h, m, s, ms, us, ns)");
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return fail(&format!(
                "unknown unit {unit:?} (use one of h, m, s, ms, us, ns)"
            ));
        };
        let mut value: u128 = 0;
        for d in int_digits.bytes() {
            value = match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(d - b'0')))
            {
                Some(v) if v <= u128::from(u64::MAX) => v,
                _ => return fail("too large"),
            };
        }
        let mut nanos = value.saturating_mul(scale);
        // Fraction: at most 18 digits matter (sub-nanosecond beyond that).
        let mut frac: u128 = 0;
        let mut denom: u128 = 1;
        for d in frac_digits.bytes().take(18) {
            frac = frac * 10 + u128::from(d - b'0');
            denom *= 10;
        }
        nanos = nanos.saturating_add(frac * scale / denom);
        total = total.saturating_add(nanos);
        if total > u128::from(u64::MAX) {
            return fail("too large");
        }
    }
    let total = u64::try_from(total).unwrap_or(u64::MAX);
    Ok(Duration::from_nanos(total))
}

/// Formats a duration the way the config writes it (`"300s"`, `"50ms"`,
/// `"1.5s"`), for `shardgate check` and error messages.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos % 1_000_000 == 0 && nanos < 1_000_000_000 {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 && nanos < 1_000_000 {
        format!("{}us", nanos / 1_000)
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// `#[serde(deserialize_with = "...")]` helper for a required duration field.
pub(crate) fn serde_required<'de, D>(de: D) -> Result<Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    de.deserialize_any(DurationVisitor)
}

/// `#[serde(default, deserialize_with = "...")]` helper for an optional
/// duration field.
pub(crate) fn serde_optional<'de, D>(de: D) -> Result<Option<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"300s\", \"50ms\" or \"1h30m\"")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
            serde_required(de).map(Some)
        }
    }
    de.deserialize_option(Opt)
}

struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration string such as \"300s\", \"50ms\" or \"1h30m\"")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        if v == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(E::custom(format!(
                "invalid duration {v}: missing unit (write e.g. \"{v}s\" or \"{v}ms\")"
            )))
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!(
                "invalid duration {v}: negative durations are not allowed"
            ))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: missing unit (write e.g. \"{v}s\")"
        )))
    }
}

#[cfg(test)]
mod pattern_tests {
    #[test]
    fn the_pattern_accepts_what_the_parser_accepts() {
        let re = regex::Regex::new(super::PATTERN).unwrap_or_else(|e| panic!("{e}"));
        for s in [
            "0", "300s", "50ms", "1h30m", "2.5s", ".5s", "1.s", "10us", "3µs", "7ns",
        ] {
            assert!(super::parse_duration(s).is_ok(), "{s}");
            assert!(re.is_match(s), "{s}");
        }
        for s in [
            "",
            "00",
            "5",
            "-1s",
            "1 s",
            "5 minutes",
            "1d",
            "s",
            "1.2.3s",
        ] {
            assert!(super::parse_duration(s).is_err(), "{s}");
            assert!(!re.is_match(s), "{s}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepts_go_style() {
        let ok = [
            ("300s", Duration::from_secs(300)),
            ("60s", Duration::from_secs(60)),
            ("50ms", Duration::from_millis(50)),
            ("10ms", Duration::from_millis(10)),
            ("1h30m", Duration::from_secs(5400)),
            ("2.5s", Duration::from_millis(2500)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("7µs", Duration::from_micros(7)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.000000001s", Duration::from_nanos(1)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn rejects_bad() {
        for s in [
            "",
            "-1s",
            "+1s",
            "10",
            "1x",
            "fast",
            "s",
            "1 s",
            " 1s",
            "1s ",
            "1..5s",
            "1d",
            "ms10",
            ".s",
            "99999999999999999999h",
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains("invalid duration"), "{s}: {err}");
        }
        assert!(parse_duration("1d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["300s", "50ms", "0s", "1.5s", "7us", "3ns"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
