//! Header helpers: hop-by-hop rules (RFC 9110 §7.6.1) and ASCII-case-insensitive
//! comparisons.
//!
//! All comparisons are ASCII case-insensitive and allocation-free; list values
//! are split on `,` and trimmed of optional whitespace (SP / HTAB), empty list
//! elements are ignored (RFC 9110 §5.6.1).

/// Header names a proxy must never forward, lower case.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether `name` is one of the fixed hop-by-hop headers that a proxy must not
/// forward (`connection`, `keep-alive`, `proxy-connection`, `te`, `trailer`,
/// `transfer-encoding`, `upgrade`, `proxy-authenticate`, `proxy-authorization`).
pub fn is_hop_by_hop(name: impl AsRef<[u8]>) -> bool {
    let name = name.as_ref();
    // Most names have a length no hop-by-hop name has: one bit test answers
    // them, where walking the list cost ~45 instructions per field.
    if name.len() >= 32 || HOP_LENGTHS & (1 << name.len()) == 0 {
        return false;
    }
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Bit `n` set when some name in [`HOP_BY_HOP`] is `n` bytes long (all are
/// shorter than 32).
const HOP_LENGTHS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < HOP_BY_HOP.len() {
        assert!(HOP_BY_HOP[i].len() < 32);
        bits |= 1 << HOP_BY_HOP[i].len();
        i += 1;
    }
    bits
};

/// Whether any `Connection` field among `fields` (spans into `buf`) lists a token
/// other than `close` / `keep-alive`, i.e. names extra hop-by-hop fields. Computed
/// once per head so the per-field hop-by-hop check is usually a fixed-list test.
pub(crate) fn names_extra_connection_tokens(
    buf: &[u8],
    fields: &[(crate::Span, crate::Span)],
) -> bool {
    fields.iter().any(|(n, v)| {
        n.get(buf).eq_ignore_ascii_case(b"connection")
            && list_elements(v.get(buf)).any(|t| {
                !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
            })
    })
}

/// Whether the comma-separated `Connection` header value `conn_value` lists `name`.
pub fn connection_lists(conn_value: &[u8], name: impl AsRef<[u8]>) -> bool {
    let name = name.as_ref();
    list_elements(conn_value).any(|token| token.eq_ignore_ascii_case(name))
}

/// The non-empty, OWS-trimmed elements of a comma-separated header value.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// `value` without leading and trailing SP / HTAB.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_hop_by_hop_names_any_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name));
            assert!(is_hop_by_hop(name.to_ascii_uppercase()));
        }
        assert!(is_hop_by_hop("Transfer-Encoding"));
        assert!(is_hop_by_hop("TE"));
        assert!(!is_hop_by_hop("content-length"));
        assert!(!is_hop_by_hop("host"));
        assert!(!is_hop_by_hop("tee"));
        assert!(!is_hop_by_hop(""));
        // Same length as a hop-by-hop name, not one of them (the full compare).
        assert!(!is_hop_by_hop("user-agent"));
        assert!(!is_hop_by_hop("x-forwarded-proto"));
        assert!(!is_hop_by_hop("a".repeat(40)));
    }

    #[test]
    fn connection_tokens() {
        assert!(connection_lists(b"close", "close"));
        assert!(connection_lists(b"Keep-Alive, Upgrade", "upgrade"));
        assert!(connection_lists(b" x-foo ,\tclose\t", "CLOSE"));
        assert!(connection_lists(b",,close,", "close"));
        assert!(!connection_lists(b"closed", "close"));
        assert!(!connection_lists(b"", "close"));
        assert!(!connection_lists(b"keep-alive", "close"));
    }

    #[test]
    fn trims_ows_only() {
        assert_eq!(trim_ows(b" \t a b \t"), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
        let v: Vec<&[u8]> = list_elements(b" a, ,b ,").collect();
        assert_eq!(v, vec![&b"a"[..], &b"b"[..]]);
    }
}
