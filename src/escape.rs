//! Making hostile text safe to show: branch names, reasons and signer names are attacker-chosen
//! bytes, and a terminal obeys escape sequences and bidi overrides.

/// Escapes control characters (C0, DEL, C1), bidi controls and other invisible format characters
/// the way Rust's `escape_debug` would, leaving printable text (quotes and non-ASCII letters) as is.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_dangerous(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Like [`text`] but leaves backslashes alone: for messages that may already hold escaped text.
pub fn controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push('\\'),
            c => out.push_str(&text(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out
}

/// Like [`text`] for bytes that may not be UTF-8: invalid bytes become `\xNN`.
pub fn bytes(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        out.push_str(&text(chunk.valid()));
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Bad input as echoed in an error: escaped, and cut to its first 64 characters so that a
/// megabyte of garbage cannot flood a terminal or a log.
pub fn excerpt(s: &str) -> String {
    const SHOWN: usize = 64;
    let count = s.chars().count();
    if count <= SHOWN {
        return text(s);
    }
    let head: String = s.chars().take(SHOWN).collect();
    format!("{}… ({count} characters)", text(&head))
}

fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x2069 | 0xfeff | 0xfff9..=0xfffb)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_what_a_terminal_would_obey() {
        assert_eq!(super::text("a\x1b[31mb\nc\0"), "a\\u{1b}[31mb\\nc\\u{0}");
        assert_eq!(super::text("évidemment \"ok\" $(x)"), "évidemment \"ok\" $(x)");
        assert_eq!(super::text("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(super::bytes(b"hot\xfffix"), "hot\\xfffix");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(super::excerpt("abc\n"), "abc\\n");
        let long = super::excerpt(&"x".repeat(10_000));
        assert!(long.len() < 100 && long.ends_with("(10000 characters)"), "{long}");
    }
}
