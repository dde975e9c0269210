//! Finding the `model` of an OpenAI-style JSON request body without a DOM.
//!
//! Inference requests carry the model name as a top-level `"model"` member,
//! usually next to a prompt or message list that can be megabytes long. The
//! scanner here walks the object's top-level members, skipping values without
//! building anything (strings are skipped with `memchr`, so a 1 MB prompt costs
//! a few tens of microseconds), and stops as soon as the top-level `model`
//! value has been read. Nested `"model"` keys (inside `messages`, `tools`, …)
//! never match.
//!
//! What is and is not validated:
//! - the part of the body up to and including the `model` value is checked
//!   structurally (braces, brackets, commas, colons, literals); skipped strings
//!   are only checked for a closing quote and skipped numbers for their
//!   character set — the upstream server does the full validation;
//! - the `model` string itself is fully validated (UTF-8, escapes, no raw
//!   control characters, no lone surrogates) and decoded;
//! - [`extract_model`] does not look past the model value, so a duplicate
//!   top-level `model` key later in the body is not seen. Servers that keep the
//!   *last* duplicate (Python's `json`) could then serve another model than the
//!   one routed on; [`extract_model_strict`] scans the whole body and rejects
//!   duplicates, at the price of reading the whole body.
//!
//! Nesting is bounded at [`MAX_DEPTH`] levels.

use std::borrow::Cow;

/// Maximum nesting depth of arrays/objects the scanner accepts.
pub const MAX_DEPTH: usize = 128;

/// Why a body's model could not be extracted. All are client errors (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The body is not JSON (the reason is a short static phrase).
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(&'static str),
    /// The top-level `model` member is not a string.
    #[error("`model` must be a string")]
    NotAString,
    /// The body is JSON but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
}

/// Finds the top-level `"model"` string of a JSON object body.
///
/// Returns `Ok(None)` when the object has no top-level `model` member,
/// `Cow::Borrowed` when the value has no escapes. Leading whitespace and a
/// UTF-8 byte order mark are tolerated. Scanning stops right after the model
/// value (see the module docs for what that implies).
pub fn extract_model(body: &[u8]) -> std::result::Result<Option<Cow<'_, str>>, ModelError> {
    Scanner::new(body, MODEL).run(false, &mut None)
}

/// Where the top-level `model` string's raw bytes (between its quotes, escapes
/// as written) lie in `body`: what a model rewrite replaces in place (the
/// rest of the body is copied untouched). Stops after the value, as
/// [`extract_model`] does.
pub fn model_span(body: &[u8]) -> std::result::Result<Option<std::ops::Range<usize>>, ModelError> {
    let mut span = None;
    Scanner::new(body, MODEL).run(false, &mut span)?;
    Ok(span)
}

/// Where the top-level `user` string's raw bytes (between its quotes, escapes
/// as written, not decoded) lie in `body`: the OpenAI field that names the
/// end user, which session affinity may use as the session id. `None` when
/// the body is not a JSON object, has no top-level `user`, or its value is
/// not a string. The same scan as [`model_span`] (strings skipped with
/// `memchr`, stops after the value), and it never allocates.
pub fn user_span(body: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut span = None;
    let mut scanner = Scanner::new(body, USER);
    scanner.decode = false;
    scanner.run(false, &mut span).ok()?;
    span
}

/// Like [`extract_model`], but scans (and structurally checks) the whole body
/// and rejects a body with two top-level `model` members
/// (`InvalidJson("duplicate top-level `model` key")`).
pub fn extract_model_strict(body: &[u8]) -> std::result::Result<Option<Cow<'_, str>>, ModelError> {
    Scanner::new(body, MODEL).run(true, &mut None)
}

/// The members the scanner can look for.
const MODEL: &str = "model";
const USER: &str = "user";

type Result<T> = std::result::Result<T, ModelError>;

const fn invalid<T>(why: &'static str) -> Result<T> {
    Err(ModelError::InvalidJson(why))
}

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The top-level member looked for (`model` or `user`).
    key: &'static str,
    /// Whether the value is decoded (else only its span is found, and the
    /// value returned is empty).
    decode: bool,
}

impl<'a> Scanner<'a> {
    fn new(buf: &'a [u8], key: &'static str) -> Self {
        let pos = if buf.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        Scanner {
            buf,
            pos,
            key,
            decode: true,
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.buf.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn run(
        mut self,
        strict: bool,
        span: &mut Option<std::ops::Range<usize>>,
    ) -> Result<Option<Cow<'a, str>>> {
        self.skip_ws();
        match self.peek() {
            None => return invalid("empty body"),
            Some(b'{') => self.pos += 1,
            Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                return Err(ModelError::NotAnObject)
            }
            Some(_) => return invalid("expected `{`"),
        }
        let mut found: Option<Cow<'a, str>> = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return self.finish(None);
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return invalid("expected a string key");
            }
            let is_model = self.key_is_target()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return invalid("expected `:` after key");
            }
            self.pos += 1;
            self.skip_ws();
            if is_model {
                if found.is_some() {
                    return invalid("duplicate top-level `model` key");
                }
                if self.peek() != Some(b'"') {
                    // Distinguish "not a string" from garbage.
                    self.skip_value(1)?;
                    return Err(ModelError::NotAString);
                }
                let start = self.pos + 1;
                let value = if self.decode {
                    self.read_string()?
                } else {
                    self.skip_string()?;
                    Cow::Borrowed("")
                };
                *span = Some(start..self.pos - 1);
                if !strict {
                    return Ok(Some(value));
                }
                found = Some(value);
            } else {
                self.skip_value(1)?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return self.finish(found);
                }
                None => return invalid("unexpected end of body"),
                Some(_) => return invalid("expected `,` or `}`"),
            }
        }
    }

    /// After the closing `}`: only whitespace may follow.
    fn finish(mut self, found: Option<Cow<'a, str>>) -> Result<Option<Cow<'a, str>>> {
        self.skip_ws();
        if self.pos != self.buf.len() {
            return invalid("trailing characters after the object");
        }
        Ok(found)
    }

    /// At a `"`: reads a key and says whether it is the one looked for
    /// (`model`, `user`; escapes decoded).
    fn key_is_target(&mut self) -> Result<bool> {
        let start = self.pos + 1;
        let end = self.skip_string()?;
        let raw = &self.buf[start..end];
        if raw == self.key.as_bytes() {
            return Ok(true);
        }
        // An escaped key can still spell it (e.g. "mod\u0065l"); keys
        // without a backslash cannot.
        if raw.len() > self.key.len() * 6 || memchr::memchr(b'\\', raw).is_none() {
            return Ok(false);
        }
        Ok(decode_string(raw)? == self.key)
    }

    /// At a `"`: moves past the closing quote; returns the index of the
    /// closing quote. Escapes are skipped, not validated.
    fn skip_string(&mut self) -> Result<usize> {
        let mut i = self.pos + 1;
        loop {
            match memchr::memchr2(b'"', b'\\', &self.buf[i.min(self.buf.len())..]) {
                None => return invalid("unterminated string"),
                Some(off) => {
                    let at = i + off;
                    if self.buf[at] == b'"' {
                        self.pos = at + 1;
                        return Ok(at);
                    }
                    // Backslash: skip it and the escaped byte.
                    i = at + 2;
                    if i > self.buf.len() {
                        return invalid("unterminated string");
                    }
                }
            }
        }
    }

    /// At a `"`: reads and decodes a string value.
    fn read_string(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos + 1;
        let end = self.skip_string()?;
        let raw = &self.buf[start..end];
        decode_string(raw)
    }

    /// Skips one JSON value; `depth` is the nesting depth of the value.
    fn skip_value(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return invalid("nesting too deep");
        }
        match self.peek() {
            None => invalid("unexpected end of body"),
            Some(b'"') => self.skip_string().map(|_| ()),
            Some(b'{') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    if self.peek() != Some(b'"') {
                        return invalid("expected a string key");
                    }
                    self.skip_string()?;
                    self.skip_ws();
                    if self.peek() != Some(b':') {
                        return invalid("expected `:` after key");
                    }
                    self.pos += 1;
                    self.skip_ws();
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        None => return invalid("unexpected end of body"),
                        Some(_) => return invalid("expected `,` or `}`"),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        None => return invalid("unexpected end of body"),
                        Some(_) => return invalid("expected `,` or `]`"),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
                    self.pos += 1;
                }
                if !self.buf[start..self.pos].iter().any(u8::is_ascii_digit) {
                    return invalid("malformed number");
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => invalid("unexpected character"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            invalid("unknown literal")
        }
    }
}

/// Decodes the raw bytes between the quotes of a JSON string.
fn decode_string(raw: &[u8]) -> Result<Cow<'_, str>> {
    // Raw control characters are not allowed in JSON strings (escaped ones
    // are, and appear here as printable backslash sequences).
    if raw.iter().any(|&b| b < 0x20) {
        return invalid("control character in string");
    }
    let Some(first_escape) = memchr::memchr(b'\\', raw) else {
        return match std::str::from_utf8(raw) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(_) => invalid("string is not valid UTF-8"),
        };
    };
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    let mut next_escape = Some(first_escape);
    while let Some(esc) = next_escape {
        out.extend_from_slice(&raw[i..esc]);
        let Some(&kind) = raw.get(esc + 1) else {
            return invalid("unterminated escape");
        };
        i = esc + 2;
        match kind {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'/' => out.push(b'/'),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0C),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hi = hex4(raw.get(i..i + 4))?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    // High surrogate: a low surrogate escape must follow.
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return invalid("lone surrogate in \\u escape");
                    }
                    let lo = hex4(raw.get(i + 2..i + 6))?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return invalid("lone surrogate in \\u escape");
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return invalid("lone surrogate in \\u escape");
                } else {
                    hi
                };
                let Some(ch) = char::from_u32(c) else {
                    return invalid("invalid \\u escape");
                };
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
            }
            _ => return invalid("invalid escape"),
        }
        next_escape = memchr::memchr(b'\\', &raw[i..]).map(|off| i + off);
    }
    out.extend_from_slice(&raw[i..]);
    match String::from_utf8(out) {
        Ok(s) => Ok(Cow::Owned(s)),
        Err(_) => invalid("string is not valid UTF-8"),
    }
}

fn hex4(digits: Option<&[u8]>) -> Result<u32> {
    let Some(digits) = digits else {
        return invalid("truncated \\u escape");
    };
    let mut v = 0u32;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return invalid("invalid \\u escape"),
        };
        v = v * 16 + u32::from(n);
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
