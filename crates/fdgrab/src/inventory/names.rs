//! Names as the kernel gives them: bytes. A file name may hold any byte but NUL
//! and `/`, invalid UTF-8 included, and an abstract unix socket name any byte at
//! all. Two forms come out of here:
//! - for JSON, the name as a string plus, only when that string would not give the
//!   exact bytes back, the bytes themselves (`*_bytes`, an array of 0–255);
//! - for terminals, [`escape`]: printable, one line, unambiguous.

/// `bytes` as a string, plus the bytes themselves when they are not UTF-8.
pub(crate) fn split_utf8(bytes: Vec<u8>) -> (String, Option<Vec<u8>>) {
    match String::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(e) => {
            let bytes = e.into_bytes();
            (String::from_utf8_lossy(&bytes).into_owned(), Some(bytes))
        }
    }
}

pub(crate) fn split_utf8_opt(bytes: Vec<u8>) -> (Option<String>, Option<Vec<u8>>) {
    let (s, b) = split_utf8(bytes);
    (Some(s), b)
}

/// The exact bytes of a name kept as a string and its optional exact bytes.
pub(crate) fn exact<'a>(s: &'a Option<String>, bytes: &'a Option<Vec<u8>>) -> &'a [u8] {
    match (bytes, s) {
        (Some(b), _) => b,
        (None, Some(s)) => s.as_bytes(),
        (None, None) => b"",
    }
}

pub(crate) fn exact_str<'a>(s: &'a str, bytes: &'a Option<Vec<u8>>) -> &'a [u8] {
    bytes.as_deref().unwrap_or(s.as_bytes())
}

/// `name` made safe for a terminal and for line-based parsing, in the spirit of
/// lsof: printable text stays as is; a backslash becomes `\\`; newline, tab,
/// carriage return and escape become `\n`, `\t`, `\r`, `\e`; any other control byte,
/// DEL, and every byte that is not part of valid UTF-8 become `\xNN`; Unicode
/// controls and the characters that reorder or break lines (C1 controls, bidi
/// overrides and isolates, line and paragraph separators) become `\u{XXXX}`. Every
/// escape starts with a backslash and every backslash is escaped, so two different
/// names never print the same.
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x1b' => out.push_str("\\e"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() || reorders(c) => {
                    out.push_str(&format!("\\u{{{:04x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Characters that change how the rest of a line is shown or split.
fn reorders(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(escape(b"/tmp/plain name"), "/tmp/plain name");
        assert_eq!(
            escape(b"a\nb\x1b[31mc\\d\te\r"),
            "a\\nb\\e[31mc\\\\d\\te\\r"
        );
        assert_eq!(escape(b"\x00\x07\x7f"), "\\x00\\x07\\x7f");
        assert_eq!(escape(b"caf\xc3\xa9 \xff\xfe"), "caf\u{e9} \\xff\\xfe");
        assert_eq!(
            escape("x\u{202e}y\u{85}".as_bytes()),
            "x\\u{202e}y\\u{0085}"
        );
        // A literal backslash-x sequence cannot pass for an escaped byte.
        assert_ne!(escape(b"\\xff"), escape(b"\xff"));
    }

    #[test]
    fn split_keeps_the_bytes_only_when_needed() {
        assert_eq!(split_utf8(b"ok".to_vec()), ("ok".into(), None));
        let (s, b) = split_utf8(b"a\xffb".to_vec());
        assert_eq!(s, "a\u{fffd}b");
        assert_eq!(b.as_deref(), Some(&b"a\xffb"[..]));
        assert_eq!(exact_str(&s, &b), b"a\xffb");
    }
}
