//! Bounds on text that a client sent and that is echoed back: in a record's log line, an
//! error message, an event, a dead letter.
//!
//! Whatever a client sends (a 17 MB field name, a record full of NULs), what the platform
//! writes about it stays small: every echo goes through `bounded`, which cuts at a
//! character boundary and replaces control characters, so the stored form cannot grow by
//! escaping either. Events, log buckets and dead letters are then small by construction,
//! and the projector's splitting of log buckets (infra `views`) is the second line.

/// A client value quoted inside a message (a field name, a raw email): enough to spot it.
pub const ECHO_MAX_BYTES: usize = 64;
/// An echoed email that could not be read as one, on its log line.
pub const RAW_EMAIL_MAX_BYTES: usize = 256;
/// The message of one record's outcome (one log line).
pub const MESSAGE_MAX_BYTES: usize = 512;
/// An error kept once per batch for operators (a dead letter and its event).
pub const ERROR_MAX_BYTES: usize = 2048;

const ELLIPSIS: &str = "…";
const REPLACEMENT: char = '\u{FFFD}';

/// `text` with control characters replaced (tab, newline and carriage return by a space,
/// the others by U+FFFD) and, when it is longer than `max_bytes` (at least 3), cut at a
/// character boundary and marked with `…`, so that the result is at most `max_bytes`
/// bytes. Reads no further into `text` than that: a huge input costs what a small one does.
pub fn bounded(text: &str, max_bytes: usize) -> String {
    let fits = shown_len_up_to(text, max_bytes) <= max_bytes;
    let budget = if fits {
        max_bytes
    } else {
        max_bytes.saturating_sub(ELLIPSIS.len())
    };
    let mut out = String::with_capacity(budget + ELLIPSIS.len());
    for c in text.chars().map(shown_as) {
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    if !fits {
        out.push_str(ELLIPSIS);
    }
    out
}

/// A client value quoted in a message, e.g. `"phone"`, bounded by `ECHO_MAX_BYTES`.
pub fn quoted(text: &str) -> String {
    // Not `{:?}`: it spells unassigned and private-use characters as `\u{...}`, up to 10
    // bytes for 4, and the bound would not hold. Controls are already replaced.
    let shown = bounded(text, ECHO_MAX_BYTES);
    let mut out = String::with_capacity(shown.len() + 2);
    out.push('"');
    for c in shown.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn shown_as(c: char) -> char {
    match c {
        '\t' | '\n' | '\r' => ' ',
        c if c.is_control() => REPLACEMENT,
        c => c,
    }
}

/// The length of `text` once shown, counted only until it passes `limit`.
fn shown_len_up_to(text: &str, limit: usize) -> usize {
    let mut total = 0;
    for c in text.chars() {
        total += shown_as(c).len_utf8();
        if total > limit {
            break;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_with_an_ellipsis() {
        assert_eq!(bounded("phone", 64), "phone");
        let cut = bounded(&"x".repeat(17_000_000), ECHO_MAX_BYTES);
        assert!(cut.len() <= ECHO_MAX_BYTES);
        assert!(cut.ends_with('…') && cut.starts_with("xxxx"));
        assert_eq!(quoted("phone"), "\"phone\"");
    }

    #[test]
    fn control_characters_are_not_echoed() {
        assert_eq!(bounded("a\0b\u{85}c\nd", 64), "a\u{FFFD}b\u{FFFD}c d");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // 10 bytes: three two-byte letters and the three-byte ellipsis; a fourth letter
        // would leave no room for it.
        let cut = bounded(&"é".repeat(100), 10);
        assert_eq!(cut, "ééé…");
    }

    proptest! {
        #[test]
        fn bounded_text_is_within_its_bound_and_a_prefix_when_clean(
            text in "\\PC{0,300}",
            max_bytes in 3usize..200,
        ) {
            let out = bounded(&text, max_bytes);
            prop_assert!(out.len() <= max_bytes, "{} > {max_bytes}", out.len());
            prop_assert!(!out.chars().any(char::is_control));
            if text.len() <= max_bytes && !text.chars().any(char::is_control) {
                prop_assert_eq!(&out, &text);
            } else if let Some(kept) = out.strip_suffix('…') {
                prop_assert!(text.starts_with(kept));
            }
        }

        #[test]
        fn quoted_text_is_bounded_whatever_it_holds(text in ".{0,400}") {
            // Escaping may double each kept byte (quotes, backslashes), never more.
            prop_assert!(quoted(&text).len() <= 2 * ECHO_MAX_BYTES + 2);
        }
    }
}
