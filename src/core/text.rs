//! Untrusted text (token names, header values, STS's fields) as it may appear in an error or a
//! log line: bounded in length, and escaped where a terminal or a log parser could be misled.

/// The most characters of untrusted text an error message shows.
pub(crate) const MAX_SHOWN_CHARS: usize = 64;
/// The most characters of a token name shown in errors and logs; Teleport's names are shorter.
pub(crate) const MAX_NAME_CHARS: usize = 128;

/// At most `max` characters of `text`, then `...` when it was longer.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// [`bounded`], with anything odd escaped (control characters, quotes, backslashes).
pub(crate) fn escaped(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max).collect();
    let mut out: String = cut.escape_debug().collect();
    if cut.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// [`escaped`], quoted: how an error message shows a value it did not write.
pub(crate) fn quoted(text: &str, max: usize) -> String {
    format!("\"{}\"", escaped(text, max))
}

/// [`escaped`] at the length errors show.
pub(crate) fn escaped_shown(text: &str) -> String {
    escaped(text, MAX_SHOWN_CHARS)
}

/// [`quoted`] at the length errors show.
pub(crate) fn quoted_shown(text: &str) -> String {
    quoted(text, MAX_SHOWN_CHARS)
}

/// A token name as errors and logs show it: at most 128 characters.
pub(crate) fn bounded_name(name: &str) -> String {
    bounded(name, MAX_NAME_CHARS)
}

/// A token name quoted and escaped, for an error message.
pub(crate) fn quoted_name(name: &str) -> String {
    quoted(name, MAX_NAME_CHARS)
}

/// `text` with every byte outside RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`), and
/// outside `keep`, written as `%XX` (uppercase hex): SigV4's URI encoding with `keep` empty.
/// Its callers (the presigner, the emulator, the certificate SANs) are all behind `io`.
#[cfg_attr(not(feature = "io"), allow(dead_code))]
pub(crate) fn percent_encode(text: &str, keep: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_bounded_and_escaped() {
        assert_eq!(bounded("t", 128), "t");
        assert_eq!(bounded(&"x".repeat(10_000), 128).len(), 131);
        assert_eq!(bounded(&"\u{e9}".repeat(200), 128).chars().count(), 131);
        assert_eq!(quoted("a\r\nb", 64), "\"a\\r\\nb\"");
        assert_eq!(quoted_name(&"x".repeat(1000)).len(), 128 + 3 + 2);
        assert_eq!(escaped("\u{1b}[2K", 64), "\\u{1b}[2K");
        assert_eq!(escaped("plain", 64), "plain", "positive control");
        assert_eq!(percent_encode("a/b c~", b""), "a%2Fb%20c~");
        assert_eq!(percent_encode("a/b@c", b"/"), "a/b%40c");
    }
}
