//! A fast, zero-copy parser for the Prometheus text exposition format 0.0.4.
//!
//! The control thread scrapes every endpoint's `/metrics` every 100 ms (the
//! default), so a 50 KiB vLLM dump (≈ 640 lines) is parsed ten times a second
//! per endpoint; the parser therefore allocates nothing per sample:
//!
//! - metric names and label names are `&str` slices of the input;
//! - label values are [`LabelValue`]s: the raw slice between the quotes,
//!   unescaped lazily (`\\`, `\"`, `\n`) only when asked, and compared with
//!   [`LabelValue::eq_str`] without allocating;
//! - samples reach the caller through a callback ([`parse`]) or an iterator
//!   ([`Lines`]).
//!
//! Accepted: `# HELP` and `# TYPE` lines (other `#` lines are comments, so an
//! OpenMetrics `# EOF` is harmless), blank lines, CRLF line ends, spaces or
//! tabs between tokens, an optional trailing comma inside `{}`, values as Go's
//! `ParseFloat` writes them (`NaN`, `+Inf`, `-Inf`, exponents), optional
//! integer millisecond timestamps. An unknown escape in a label value (`\t`)
//! is kept literally rather than failing the line: one odd label must not cost
//! a scheduling signal.
//!
//! Errors are per line: a malformed line is skipped and counted in
//! [`ParseStats`]; parsing never panics (a proptest feeds it random bytes).
//! Each line is UTF-8-validated on its own, so one bad byte costs one line.

use std::borrow::Cow;
use std::fmt;

/// A metric family's type, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricType {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped`, or no `# TYPE` line for the family.
    #[default]
    Untyped,
}

impl MetricType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            "untyped" | "unknown" => Self::Untyped,
            _ => return None,
        })
    }
}

/// A label value as written between the quotes, escapes not yet applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelValue<'a> {
    raw: &'a str,
}

impl<'a> LabelValue<'a> {
    /// The value exactly as written (escape sequences included).
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the value contains an escape sequence.
    pub fn is_escaped(&self) -> bool {
        self.raw.as_bytes().contains(&b'\\')
    }

    /// The unescaped value; borrows unless the value has escapes.
    pub fn get(&self) -> Cow<'a, str> {
        if !self.is_escaped() {
            return Cow::Borrowed(self.raw);
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        }
        Cow::Owned(out)
    }

    /// Compares the unescaped value with `s`, without allocating.
    pub fn eq_str(&self, s: &str) -> bool {
        if !self.is_escaped() {
            return self.raw == s;
        }
        let mut want = s.bytes();
        let mut raw = self.raw.bytes();
        while let Some(b) = raw.next() {
            let (first, second) = if b == b'\\' {
                match raw.next() {
                    Some(b'n') => (b'\n', None),
                    Some(b'\\') => (b'\\', None),
                    Some(b'"') => (b'"', None),
                    Some(other) => (b'\\', Some(other)),
                    None => (b'\\', None),
                }
            } else {
                (b, None)
            };
            if want.next() != Some(first) {
                return false;
            }
            if let Some(second) = second {
                if want.next() != Some(second) {
                    return false;
                }
            }
        }
        want.next().is_none()
    }
}

impl PartialEq<str> for LabelValue<'_> {
    fn eq(&self, other: &str) -> bool {
        self.eq_str(other)
    }
}

impl PartialEq<&str> for LabelValue<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.eq_str(other)
    }
}

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.get())
    }
}

/// One `name="value"` pair of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    /// Label name.
    pub name: &'a str,
    /// Label value.
    pub value: LabelValue<'a>,
}

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Metric name (with any `_bucket` / `_sum` / `_count` suffix).
    pub name: &'a str,
    /// The value (may be NaN or ±Inf).
    pub value: f64,
    /// Optional timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The type of the family from the latest `# TYPE` line whose name is
    /// this sample's name or its name less a `_bucket`, `_sum`, `_count`,
    /// `_created` or `_total` suffix; `Untyped` otherwise.
    pub kind: MetricType,
    /// The validated text between `{` and `}` (empty without labels).
    labels: &'a str,
}

impl<'a> Sample<'a> {
    /// The labels in written order.
    pub fn labels(&self) -> Labels<'a> {
        Labels { rest: self.labels }
    }

    /// The value of label `name`, if present (first occurrence).
    pub fn label(&self, name: &str) -> Option<LabelValue<'a>> {
        self.labels().find(|l| l.name == name).map(|l| l.value)
    }

    /// The raw text between the braces (validated).
    pub fn labels_raw(&self) -> &'a str {
        self.labels
    }
}

/// Iterator over a sample's labels. Re-scans the (already validated) label
/// text, so it costs no allocation and stops quietly on anything unexpected.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = Label<'a>;

    fn next(&mut self) -> Option<Label<'a>> {
        let s = self.rest;
        let b = s.as_bytes();
        let mut i = skip_blanks(b, 0);
        if i < b.len() && b[i] == b',' {
            i = skip_blanks(b, i + 1);
        }
        let name_start = i;
        let name_end = scan_label_name(b, i)?;
        let name = s.get(name_start..name_end)?;
        i = skip_blanks(b, name_end);
        if b.get(i) != Some(&b'=') {
            self.rest = "";
            return None;
        }
        i = skip_blanks(b, i + 1);
        if b.get(i) != Some(&b'"') {
            self.rest = "";
            return None;
        }
        let value_start = i + 1;
        let value_end = scan_quoted(b, value_start)?;
        let raw = s.get(value_start..value_end)?;
        self.rest = s.get(value_end + 1..).unwrap_or("");
        Some(Label {
            name,
            value: LabelValue { raw },
        })
    }
}

/// What a non-blank line holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Entry<'a> {
    /// A sample.
    Sample(Sample<'a>),
    /// `# HELP name text` (text raw: `\\` and `\n` escapes not applied).
    Help {
        /// Family name.
        name: &'a str,
        /// Docstring, raw.
        text: &'a str,
    },
    /// `# TYPE name type`.
    Type {
        /// Family name.
        name: &'a str,
        /// The declared type.
        kind: MetricType,
    },
    /// Any other `#` line.
    Comment,
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorKind {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The metric name is missing or has a forbidden character.
    BadName,
    /// A label is malformed (name, `=`, quotes, separators or an unclosed
    /// `{`).
    BadLabels,
    /// The value is missing or not a float.
    BadValue,
    /// The timestamp is not an integer.
    BadTimestamp,
    /// Something follows the timestamp.
    TrailingGarbage,
    /// A `# HELP` / `# TYPE` line lacks its name or has an unknown type.
    BadMetadata,
}

impl fmt::Display for LineErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::BadName => "bad metric name",
            Self::BadLabels => "bad labels",
            Self::BadValue => "bad value",
            Self::BadTimestamp => "bad timestamp",
            Self::TrailingGarbage => "trailing characters",
            Self::BadMetadata => "bad # HELP / # TYPE line",
        })
    }
}

/// A skipped line: its 1-based number and the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub kind: LineErrorKind,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

/// Totals of one [`parse`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Samples handed to the callback.
    pub samples: usize,
    /// Lines skipped as malformed.
    pub errors: usize,
    /// The first skipped line, for a log message.
    pub first_error: Option<LineError>,
    /// Lines read (blank ones included).
    pub lines: usize,
}

/// Parses a whole exposition, calling `on_sample` for every sample line.
/// Malformed lines are skipped and counted; never panics, never allocates.
pub fn parse<'a>(input: &'a [u8], mut on_sample: impl FnMut(&Sample<'a>)) -> ParseStats {
    let mut stats = ParseStats::default();
    let mut lines = Lines::new(input);
    for entry in &mut lines {
        match entry {
            Ok(Entry::Sample(s)) => {
                stats.samples += 1;
                on_sample(&s);
            }
            Ok(_) => {}
            Err(e) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(e);
                }
            }
        }
    }
    stats.lines = lines.line;
    stats
}

/// Iterator over the non-blank lines of an exposition.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    input: &'a [u8],
    pos: usize,
    line: usize,
    family: &'a str,
    family_type: MetricType,
}

impl<'a> Lines<'a> {
    /// Starts at the beginning of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            line: 0,
            family: "",
            family_type: MetricType::Untyped,
        }
    }

    fn kind_of(&self, name: &str) -> MetricType {
        if self.family.is_empty() {
            return MetricType::Untyped;
        }
        let Some(rest) = name.strip_prefix(self.family) else {
            return MetricType::Untyped;
        };
        match rest {
            "" | "_bucket" | "_sum" | "_count" | "_created" | "_total" => self.family_type,
            _ => MetricType::Untyped,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Entry<'a>, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = self.input.get(self.pos..)?;
            if rest.is_empty() {
                return None;
            }
            let (raw, advance) = match memchr::memchr(b'\n', rest) {
                Some(n) => (&rest[..n], n + 1),
                None => (rest, rest.len()),
            };
            self.pos += advance;
            self.line += 1;
            let raw = trim_end(raw);
            let start = skip_blanks(raw, 0);
            let Some(raw) = raw.get(start..) else {
                continue;
            };
            if raw.is_empty() {
                continue;
            }
            let line = self.line;
            let err = |kind| Some(Err(LineError { line, kind }));
            let Ok(text) = std::str::from_utf8(raw) else {
                return err(LineErrorKind::InvalidUtf8);
            };
            if raw[0] == b'#' {
                return match parse_comment(text) {
                    Ok(entry) => {
                        if let Entry::Type { name, kind } = entry {
                            self.family = name;
                            self.family_type = kind;
                        }
                        Some(Ok(entry))
                    }
                    Err(kind) => err(kind),
                };
            }
            return match parse_sample(text) {
                Ok(mut s) => {
                    s.kind = self.kind_of(s.name);
                    Some(Ok(Entry::Sample(s)))
                }
                Err(kind) => err(kind),
            };
        }
    }
}

/// Parses one sample line (no line terminator, no leading `#`).
pub fn parse_sample(line: &str) -> Result<Sample<'_>, LineErrorKind> {
    let b = line.as_bytes();
    let mut i = skip_blanks(b, 0);
    let name_start = i;
    i = scan_metric_name(b, i).ok_or(LineErrorKind::BadName)?;
    let name = line.get(name_start..i).ok_or(LineErrorKind::BadName)?;
    let name_end = i;
    i = skip_blanks(b, i);
    let mut labels = "";
    let mut had_labels = false;
    if b.get(i) == Some(&b'{') {
        let open = i + 1;
        let close = scan_labels(b, open).ok_or(LineErrorKind::BadLabels)?;
        labels = line.get(open..close).ok_or(LineErrorKind::BadLabels)?;
        i = close + 1;
        had_labels = true;
    }
    let after = skip_blanks(b, i);
    if after >= b.len() {
        return Err(LineErrorKind::BadValue);
    }
    if !had_labels && after == name_end {
        // `foo-1`: the name ran into a character names may not hold.
        return Err(LineErrorKind::BadName);
    }
    i = after;
    let value_start = i;
    i = scan_token(b, i);
    let value_text = line.get(value_start..i).ok_or(LineErrorKind::BadValue)?;
    let value = parse_float(value_text).ok_or(LineErrorKind::BadValue)?;
    i = skip_blanks(b, i);
    let mut timestamp_ms = None;
    if i < b.len() {
        let ts_start = i;
        i = scan_token(b, i);
        let ts = line.get(ts_start..i).ok_or(LineErrorKind::BadTimestamp)?;
        timestamp_ms = Some(ts.parse::<i64>().map_err(|_| LineErrorKind::BadTimestamp)?);
        if skip_blanks(b, i) < b.len() {
            return Err(LineErrorKind::TrailingGarbage);
        }
    }
    Ok(Sample {
        name,
        value,
        timestamp_ms,
        kind: MetricType::Untyped,
        labels,
    })
}

fn parse_comment(line: &str) -> Result<Entry<'_>, LineErrorKind> {
    let rest = line.get(1..).unwrap_or("");
    let body = rest.get(skip_blanks(rest.as_bytes(), 0)..).unwrap_or("");
    if body.len() == rest.len() {
        return Ok(Entry::Comment); // `#HELP` without a blank is a comment.
    }
    let (keyword, after) = split_token(body);
    match keyword {
        "HELP" => {
            let (name, text) = split_token(after);
            if scan_metric_name(name.as_bytes(), 0) != Some(name.len()) {
                return Err(LineErrorKind::BadMetadata);
            }
            Ok(Entry::Help { name, text })
        }
        "TYPE" => {
            let (name, after) = split_token(after);
            let (kind, tail) = split_token(after);
            if scan_metric_name(name.as_bytes(), 0) != Some(name.len()) || !tail.is_empty() {
                return Err(LineErrorKind::BadMetadata);
            }
            let kind = MetricType::parse(kind).ok_or(LineErrorKind::BadMetadata)?;
            Ok(Entry::Type { name, kind })
        }
        _ => Ok(Entry::Comment),
    }
}

/// Splits off the first blank-separated token; the rest has its leading
/// blanks removed.
fn split_token(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let end = scan_token(b, 0);
    let rest = skip_blanks(b, end);
    // Both indices sit on ASCII blanks or the end: char boundaries.
    (s.get(..end).unwrap_or(""), s.get(rest..).unwrap_or(""))
}

/// Go's `ParseFloat` spellings: Rust's parser accepts `NaN`, `+Inf`, `-Inf`,
/// `Inf`, exponents and leading `+`; it also accepts `infinity`, harmlessly.
fn parse_float(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

#[inline]
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

#[inline]
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    i
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., last] = b {
        if is_blank(*last) || *last == b'\r' {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[inline]
fn scan_token(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !is_blank(b[i]) {
        i += 1;
    }
    i
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`; returns the end index.
fn scan_metric_name(b: &[u8], i: usize) -> Option<usize> {
    let first = *b.get(i)?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first == b':') {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
        j += 1;
    }
    Some(j)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`; returns the end index.
fn scan_label_name(b: &[u8], i: usize) -> Option<usize> {
    let first = *b.get(i)?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    Some(j)
}

/// From just after an opening quote, the index of the closing quote.
fn scan_quoted(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
    }
}

/// Validates `name="value", …` from just after `{`; returns the index of `}`.
fn scan_labels(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = skip_blanks(b, i);
        if *b.get(i)? == b'}' {
            return Some(i);
        }
        i = scan_label_name(b, i)?;
        i = skip_blanks(b, i);
        if *b.get(i)? != b'=' {
            return None;
        }
        i = skip_blanks(b, i + 1);
        if *b.get(i)? != b'"' {
            return None;
        }
        i = scan_quoted(b, i + 1)? + 1;
        i = skip_blanks(b, i);
        match *b.get(i)? {
            b',' => i += 1,
            b'}' => return Some(i),
            _ => return None,
        }
    }
}
