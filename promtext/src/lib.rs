//! Prometheus text exposition (format 0.0.4) writer, shared by the gateway's
//! `/metrics` (`gateway/src/metrics.rs`, `gateway/src/endpoints_view.rs`) and the
//! simulator's vLLM-shaped `/metrics` (`sim/src/metrics.rs`).
//!
//! A [`PromWriter`] appends to a caller's `String`: [`PromWriter::family`] writes a
//! family's `# HELP` / `# TYPE` pair once, [`PromWriter::sample`] writes one series
//! line (label values escaped: `\` → `\\`, `"` → `\"`, newline → `\n`), and
//! [`PromWriter::histogram`] writes a histogram's cumulative `_bucket` lines with `le`,
//! the `+Inf` bucket, `_sum` and `_count`. Numbers follow a [`Style`]:
//! [`Style::PLAIN`] (the gateway: integers bare, floats as Rust's shortest round-trip
//! form, `le` last, `_sum` before `_count`) or [`Style::PYTHON`] (the sim, copying
//! vLLM's dump: every value a float as Python's `prometheus_client` prints it — `8.0`,
//! `1.7956480950568624e+09` —, `le` in its alphabetical place among sorted label names,
//! `_count` before `_sum`). Both styles write `+Inf`, `-Inf` and `NaN`.
//!
//! The writer allocates nothing per line: one `String` holds the current family's
//! name, floats are formatted on the stack. Debug builds also remember every family
//! name and panic on a family written twice (a scrape Prometheus would reject).
//!
//! # Why not the `prometheus-client` crate
//!
//! shardgate keeps metrics shard-local in plain structs (no atomics, no cross-core
//! traffic on the request path), publishes a copy every 500 ms and merges the copies
//! only when scraped, so it needs an encoder for values it already holds, not metric
//! objects. `prometheus-client` (0.26, read from its source) cannot serve as that
//! encoder here:
//! - its encoders (`DescriptorEncoder`, `MetricEncoder`) have crate-private
//!   constructors; the only way in is `encode(&mut writer, &Registry)` over a
//!   `Registry` of boxed `Send + Sync + 'static` `Collector`s, so each scrape would
//!   wrap our merged maps in trait objects (or keep a registry holding the hub) just
//!   to reach a writer;
//! - the simulator must reproduce vLLM's bytes: Python-style floats (`8.0`,
//!   `e+09`), `le` between `engine` and `model_name`, `_count` before `_sum`. The
//!   crate formats floats with `dtoa` / its own Go style, always appends `le` last and
//!   writes `_sum` first, so the sim would keep its own writer anyway — two writers
//!   again, which is what this crate removes;
//! - its 0.0.4 encoder first renders into an internal buffer and then copies it into
//!   the caller's writer, and label sets go through its `EncodeLabelSet` traits
//!   (per-series objects) where a `&[(&str, &str)]` does here.
//!
//! What it would add (atomic `Counter`/`Gauge`/`Family` behind `Arc`) is exactly what
//! the shard-local design avoids on the hot path, so this module (about 370 lines
//! before its tests) does the one job the three callers need.

use std::fmt::Write as _;

/// A family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped`.
    Untyped,
}

impl Kind {
    /// The word in `# TYPE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// How numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floats {
    /// Integers bare (`3`), floats as Rust's shortest round-trip decimal (`0.005`,
    /// `1` for 1.0, never an exponent).
    Plain,
    /// Every value as a float, as Python's `prometheus_client` writes it (`3.0`,
    /// `0.005`, `2.7e-05`, `1.7956480950568624e+09`).
    Python,
}

/// Where a histogram's `le` label goes among the caller's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LePlacement {
    /// After all of them.
    Last,
    /// Before the first label whose name sorts after `le` (the caller passes labels
    /// sorted by name).
    Sorted,
}

/// The dialect of the output: numbers, `le` placement, `_sum`/`_count` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Number format.
    pub floats: Floats,
    /// `le` placement.
    pub le: LePlacement,
    /// Write `_count` before `_sum` (Python's client does), else `_sum` first.
    pub count_before_sum: bool,
}

impl Style {
    /// The gateway's: integers bare, shortest floats, `le` last, `_sum` then `_count`.
    pub const PLAIN: Style = Style {
        floats: Floats::Plain,
        le: LePlacement::Last,
        count_before_sum: false,
    };
    /// vLLM's (Python `prometheus_client`): every value a Python float, `le` among
    /// sorted label names, `_count` then `_sum`.
    pub const PYTHON: Style = Style {
        floats: Floats::Python,
        le: LePlacement::Sorted,
        count_before_sum: true,
    };
}

/// A sample value: integers and floats, written per [`Style`].
pub trait Value {
    /// Append `self` to `out` in `floats`' format.
    fn write_to(&self, floats: Floats, out: &mut String);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, floats: Floats, out: &mut String) {
                match floats {
                    Floats::Plain => {
                        let _ = write!(out, "{self}");
                    }
                    Floats::Python => write_float(out, Floats::Python, *self as f64),
                }
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i32, i64);

impl Value for bool {
    fn write_to(&self, floats: Floats, out: &mut String) {
        u8::from(*self).write_to(floats, out);
    }
}

impl Value for f64 {
    fn write_to(&self, floats: Floats, out: &mut String) {
        write_float(out, floats, *self);
    }
}

/// Append `d` to `out` in `floats`' format (`+Inf`, `-Inf`, `NaN` in both).
pub fn write_float(out: &mut String, floats: Floats, d: f64) {
    if d.is_nan() {
        out.push_str("NaN");
    } else if d == f64::INFINITY {
        out.push_str("+Inf");
    } else if d == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        match floats {
            Floats::Plain => {
                let _ = write!(out, "{d}");
            }
            Floats::Python => write_python_float(out, d),
        }
    }
}

/// `d` as Python's `prometheus_client` writes it (`floatToGoString`): `repr(d)`,
/// with a Go-style exponent once the integer part has more than six digits.
pub fn python_float(d: f64) -> String {
    let mut s = String::new();
    write_float(&mut s, Floats::Python, d);
    s
}

/// A finite `d` in Python's format.
fn write_python_float(out: &mut String, d: f64) {
    // Rust's `{:?}` is Python's `repr` but for the exponent's form.
    let mut buf = StackStr::default();
    let _ = write!(buf, "{d:?}");
    let s = buf.as_str();
    if let Some((mantissa, exp)) = s.split_once('e') {
        // Rust writes `2.7e-5` / `1e16`; Python writes `2.7e-05` / `1e+16`.
        let (sign, digits) = exp.strip_prefix('-').map_or(('+', exp), |d| ('-', d));
        out.push_str(mantissa);
        out.push('e');
        out.push(sign);
        if digits.len() < 2 {
            out.push('0');
        }
        out.push_str(digits);
        return;
    }
    match s.find('.') {
        // Go switches to an exponent sooner than Python: move the point after the
        // first digit and drop trailing zeros (and a bare point).
        Some(dot) if d > 0.0 && dot > 6 => {
            let mut m = StackStr::default();
            let _ = write!(m, "{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            out.push_str(m.as_str().trim_end_matches(['0', '.']));
            let _ = write!(out, "e+0{}", dot - 1);
        }
        _ => out.push_str(s),
    }
}

/// A 64-byte string on the stack (an `f64`'s `{:?}` needs at most 24).
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl StackStr {
    fn as_str(&self) -> &str {
        // Only `write_str` fills it, with whole `str`s.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Append `v` escaped as a label value (`\`, `"`, newline).
pub fn escape_label_value(out: &mut String, v: &str) {
    escape(out, v, true);
}

fn escape(out: &mut String, v: &str, quote: bool) {
    let mut from = 0;
    for (i, b) in v.bytes().enumerate() {
        let rep = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'"' if quote => "\\\"",
            _ => continue,
        };
        out.push_str(&v[from..i]);
        out.push_str(rep);
        from = i + 1;
    }
    out.push_str(&v[from..]);
}

/// Writes Prometheus text into a `String`; see the crate doc.
#[derive(Debug)]
pub struct PromWriter<'a> {
    out: &'a mut String,
    style: Style,
    /// The family being written (set by [`Self::family`]).
    family: String,
    /// Every family written so far (debug builds: a second `# TYPE` is a bug).
    #[cfg(debug_assertions)]
    seen: std::collections::HashSet<String>,
}

impl<'a> PromWriter<'a> {
    /// A writer appending to `out` in `style`.
    pub fn new(out: &'a mut String, style: Style) -> Self {
        PromWriter {
            out,
            style,
            family: String::new(),
            #[cfg(debug_assertions)]
            seen: std::collections::HashSet::new(),
        }
    }

    /// The style in use.
    pub fn style(&self) -> Style {
        self.style
    }

    /// Start family `name`: its `# HELP` (backslash and newline escaped) and `# TYPE`
    /// lines. Samples that follow belong to it.
    ///
    /// # Panics
    /// In debug builds, when `name` was already written by this writer.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        #[cfg(debug_assertions)]
        assert!(
            self.seen.insert(name.to_owned()),
            "metric family {name} written twice"
        );
        self.family.clear();
        self.family.push_str(name);
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape(self.out, help, false);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        self
    }

    /// One line of the current family: its name plus `suffix` (`""`, `_bucket`, …),
    /// `labels` in the order given (no braces when empty), and `value`.
    pub fn sample(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl Value,
    ) -> &mut Self {
        self.series(suffix, labels, None);
        value.write_to(self.style.floats, self.out);
        self.out.push('\n');
        self
    }

    /// A histogram series of the current family. `buckets` are (upper bound, count of
    /// observations in that bucket alone), bounds ascending; an `f64::INFINITY` bound,
    /// last, holds the observations above every finite bound. Writes one cumulative
    /// `_bucket` per finite bound, the `+Inf` bucket (always), `_sum` and `_count`
    /// (all observations), in the style's order.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: impl IntoIterator<Item = (f64, u64)>,
        sum: f64,
    ) -> &mut Self {
        let floats = self.style.floats;
        let mut cumulative = 0u64;
        let mut last = f64::NEG_INFINITY;
        for (bound, n) in buckets {
            debug_assert!(bound > last, "histogram bounds must ascend");
            last = bound;
            cumulative += n;
            if bound == f64::INFINITY {
                continue;
            }
            self.series("_bucket", labels, Some(bound));
            cumulative.write_to(floats, self.out);
            self.out.push('\n');
        }
        self.series("_bucket", labels, Some(f64::INFINITY));
        cumulative.write_to(floats, self.out);
        self.out.push('\n');
        if self.style.count_before_sum {
            self.sample("_count", labels, cumulative);
            self.sample("_sum", labels, sum);
        } else {
            self.sample("_sum", labels, sum);
            self.sample("_count", labels, cumulative);
        }
        self
    }

    /// `family+suffix{labels}` and the space before the value; `le` placed per style.
    fn series(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<f64>) {
        debug_assert!(!self.family.is_empty(), "sample before any family");
        self.out.push_str(&self.family);
        self.out.push_str(suffix);
        if labels.is_empty() && le.is_none() {
            self.out.push(' ');
            return;
        }
        let le_at = match (le, self.style.le) {
            (None, _) => usize::MAX,
            (Some(_), LePlacement::Last) => labels.len(),
            (Some(_), LePlacement::Sorted) => labels
                .iter()
                .position(|(name, _)| *name > "le")
                .unwrap_or(labels.len()),
        };
        self.out.push('{');
        let mut first = true;
        for i in 0..=labels.len() {
            if i == le_at {
                if let Some(bound) = le {
                    if !first {
                        self.out.push(',');
                    }
                    first = false;
                    self.out.push_str("le=\"");
                    write_float(self.out, self.style.floats, bound);
                    self.out.push('"');
                }
            }
            if let Some((name, value)) = labels.get(i) {
                if !first {
                    self.out.push(',');
                }
                first = false;
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape(self.out, value, true);
                self.out.push('"');
            }
        }
        self.out.push_str("} ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(f: impl FnOnce(&mut PromWriter<'_>)) -> String {
        let mut out = String::new();
        f(&mut PromWriter::new(&mut out, Style::PLAIN));
        out
    }

    #[test]
    fn label_values_are_escaped() {
        let text = plain(|w| {
            w.family("x", "a \\ help\nline with \"quotes\"", Kind::Gauge)
                .sample("", &[("a", "back\\slash \"q\"\nnl"), ("b", "")], 1u8);
        });
        assert_eq!(
            text,
            "# HELP x a \\\\ help\\nline with \"quotes\"\n# TYPE x gauge\n\
             x{a=\"back\\\\slash \\\"q\\\"\\nnl\",b=\"\"} 1\n"
        );
    }

    #[test]
    fn a_family_is_written_once_with_many_samples() {
        let text = plain(|w| {
            w.family("reqs_total", "Requests.", Kind::Counter);
            for code in ["200", "404", "500"] {
                w.sample("", &[("code", code)], 7u64);
            }
            w.family("up", "Up.", Kind::Gauge).sample("", &[], true);
        });
        assert_eq!(text.matches("# HELP reqs_total").count(), 1);
        assert_eq!(text.matches("# TYPE reqs_total counter").count(), 1);
        assert_eq!(text.matches("reqs_total{code=").count(), 3);
        assert!(text.ends_with("# TYPE up gauge\nup 1\n"), "{text}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "written twice")]
    fn a_family_written_twice_panics_in_debug_builds() {
        plain(|w| {
            w.family("x", "X.", Kind::Gauge);
            w.family("x", "X.", Kind::Gauge);
        });
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let text = plain(|w| {
            w.family("lat_seconds", "Latency.", Kind::Histogram)
                .histogram(
                    &[("model", "m")],
                    [(0.005, 1), (0.5, 0), (1.0, 2), (f64::INFINITY, 3)],
                    12.25,
                );
        });
        assert_eq!(
            text,
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
             lat_seconds_bucket{model=\"m\",le=\"0.005\"} 1\n\
             lat_seconds_bucket{model=\"m\",le=\"0.5\"} 1\n\
             lat_seconds_bucket{model=\"m\",le=\"1\"} 3\n\
             lat_seconds_bucket{model=\"m\",le=\"+Inf\"} 6\n\
             lat_seconds_sum{model=\"m\"} 12.25\n\
             lat_seconds_count{model=\"m\"} 6\n"
        );
    }

    #[test]
    fn histogram_without_an_overflow_bucket_still_writes_inf() {
        let text = plain(|w| {
            w.family("h", "H.", Kind::Histogram)
                .histogram(&[], [(1.0, 2), (2.0, 1)], 4.0);
        });
        assert!(text.contains("h_bucket{le=\"2\"} 3\nh_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.ends_with("h_sum 4\nh_count 3\n"), "{text}");
    }

    #[test]
    fn python_style_sorts_le_and_counts_before_sum() {
        let mut out = String::new();
        PromWriter::new(&mut out, Style::PYTHON)
            .family("vllm:ttft", "TTFT.", Kind::Histogram)
            .histogram(
                &[("engine", "0"), ("model_name", "m")],
                [(0.04, 0), (2560.0, 2), (f64::INFINITY, 1)],
                3000.1,
            );
        assert_eq!(
            out,
            "# HELP vllm:ttft TTFT.\n# TYPE vllm:ttft histogram\n\
             vllm:ttft_bucket{engine=\"0\",le=\"0.04\",model_name=\"m\"} 0.0\n\
             vllm:ttft_bucket{engine=\"0\",le=\"2560.0\",model_name=\"m\"} 2.0\n\
             vllm:ttft_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 3.0\n\
             vllm:ttft_count{engine=\"0\",model_name=\"m\"} 3.0\n\
             vllm:ttft_sum{engine=\"0\",model_name=\"m\"} 3000.1\n"
        );
    }

    #[test]
    fn plain_floats() {
        let f = |d| {
            let mut s = String::new();
            write_float(&mut s, Floats::Plain, d);
            s
        };
        assert_eq!(f(1.0), "1");
        assert_eq!(f(600.0), "600");
        assert_eq!(f(0.0001), "0.0001");
        assert_eq!(f(2.5e-7), "0.00000025");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
    }

    #[test]
    fn python_floats_match_prometheus_client() {
        assert_eq!(python_float(8.0), "8.0");
        assert_eq!(python_float(0.25806451612903225), "0.25806451612903225");
        assert_eq!(python_float(1.7956480950568624e9), "1.7956480950568624e+09");
        assert_eq!(python_float(4855529472.0), "4.855529472e+09");
        assert_eq!(python_float(2560.0), "2560.0");
        assert_eq!(python_float(2.7e-5), "2.7e-05");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(1.5e-300), "1.5e-300");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(-3.0), "-3.0");
        assert_eq!(python_float(f64::INFINITY), "+Inf");
        assert_eq!(python_float(f64::NAN), "NaN");
    }

    #[test]
    fn integers_follow_the_style() {
        let mut s = String::new();
        7u64.write_to(Floats::Plain, &mut s);
        (-2i64).write_to(Floats::Python, &mut s);
        false.write_to(Floats::Plain, &mut s);
        assert_eq!(s, "7-2.00");
    }
}
