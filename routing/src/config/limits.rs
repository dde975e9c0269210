//! Limits checked before any YAML is parsed: total size and nesting depth.
//!
//! The YAML parser's cost grows faster than linearly with nesting (a 200 KB
//! file nested 100,000 levels deep took 47 s to reject), so [`nesting_depth`]
//! estimates the depth of every document with one linear pass over the text
//! first, and a document deeper than [`LoadLimits::max_depth`] (64 by default;
//! real Kubernetes manifests stay under 20) is refused before parsing. The
//! estimate counts block indentation levels, compact `- - ` sequence entries
//! and flow brackets outside quoted scalars and comments, and skips the lines
//! of block scalars (`|`, `>`); it never reads less than the real depth of
//! ordinary manifests and may read a level or two more.
//!
//! [`LoadLimits::max_bytes`] (64 MiB by default) bounds the total size of all
//! sources; the gateway applies it while reading files too.

/// Limits on configuration sources (`--max-config-bytes`, `--max-config-depth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Total bytes of all sources together.
    pub max_bytes: usize,
    /// Nesting depth of any one document.
    pub max_depth: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_bytes: 64 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// The first document of `text` whose estimated nesting depth exceeds
/// `max`: `(document index, depth reached)`. Linear in `text`; stops at the
/// first excess.
pub fn nesting_depth(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut doc = 0usize;
    let mut seen_any = false;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Inside a quoted scalar that spans lines: its quote character.
    let mut quote: Option<u8> = None;
    // Inside a block scalar: the indentation of the line that opened it.
    let mut block_scalar: Option<usize> = None;
    for line in text.lines() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let blank = indent == bytes.len();
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        if quote.is_none() && (line.starts_with("---") || line.starts_with("...")) {
            let rest = &bytes[3..];
            if rest.is_empty() || rest[0] == b' ' || rest[0] == b'\t' {
                if line.starts_with("---") && seen_any {
                    doc += 1;
                }
                seen_any = true;
                indents.clear();
                flow = 0;
                continue;
            }
        }
        if blank {
            continue;
        }
        let mut i = indent;
        let mut depth = flow;
        if quote.is_none() && flow == 0 {
            if bytes[i] == b'#' {
                continue;
            }
            // Levels in half-steps: a sequence entry sits half a step inside
            // a key at its own indentation (`a:` then `- x` at column 0).
            let is_seq = |at: usize| {
                bytes.get(at) == Some(&b'-') && matches!(bytes.get(at + 1), Some(b' ') | None)
            };
            let level = 2 * indent + usize::from(is_seq(i));
            while indents.last().is_some_and(|&l| l >= level) {
                indents.pop();
            }
            indents.push(level);
            // Compact nested entries: `- - - x`, `- name: x`.
            while is_seq(i) {
                i += 2;
                indents.push(2 * i + usize::from(is_seq(i)));
            }
            depth = indents.len();
        }
        seen_any = true;
        let mut last = b' ';
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            match quote {
                Some(q) => {
                    if b == b'\\' && q == b'"' {
                        j += 1;
                    } else if b == q {
                        if q == b'\'' && bytes.get(j + 1) == Some(&b'\'') {
                            j += 1;
                        } else {
                            quote = None;
                        }
                    }
                }
                None => match b {
                    b'"' | b'\'' if matches!(last, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(b)
                    }
                    b'#' if matches!(last, b' ' | b'\t') => break,
                    b'[' | b'{' => {
                        flow += 1;
                        depth = depth.max(indents.len() + flow);
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            last = b;
            j += 1;
        }
        if depth > max {
            return Some((doc, depth));
        }
        // A block scalar header ends the line: `key: |`, `- >-`, `|2`.
        if quote.is_none() && flow == 0 {
            let t = line.trim_end();
            let head = t.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
            if (head.ends_with(" |") || head.ends_with(" >") || head == "|" || head == ">")
                && !t.trim_start().starts_with('#')
            {
                block_scalar = Some(indent);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        // The smallest limit the text stays within.
        (0..200)
            .find(|&m| nesting_depth(text, m).is_none())
            .unwrap_or(200)
    }

    #[test]
    fn ordinary_manifests_read_their_depth() {
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: 1\n"), 3);
        assert_eq!(depth("a:\n- name: x\n  value: y\n"), 3);
        assert_eq!(depth("a: [1, {b: 2}]\n"), 3);
        assert_eq!(depth("a: \"[[[[\"\nb: '{{{{'\nc: x # [[[[\n"), 1);
        assert_eq!(depth("a: |\n  [[[[\n      {{{{\n        - - -\nb: 1\n"), 1);
        let seed = include_str!("../../tests/data/seed-manifests.yaml");
        assert!(depth(seed) <= 16, "{}", depth(seed));
    }

    #[test]
    fn deep_documents_are_found_with_their_index() {
        let deep_flow = format!("a: 1\n---\nb: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(matches!(nesting_depth(&deep_flow, 64), Some((1, d)) if d > 64));
        let deep_block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(matches!(nesting_depth(&deep_block, 64), Some((0, 65))));
        let compact = format!("{}x\n", "- ".repeat(100));
        assert!(nesting_depth(&compact, 64).is_some());
        // One linear pass, even for the 100,000-deep file of #12.
        assert!(nesting_depth(&"[".repeat(100_000), 64).is_some());
    }
}
