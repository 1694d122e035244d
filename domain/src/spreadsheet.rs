//! Cells of a result file that a spreadsheet will not run (OWASP "CSV injection").
//!
//! A spreadsheet treats a cell that begins with `=`, `+`, `-`, `@`, tab or carriage return
//! as a formula. A result file echoes what tenants submitted, so a record's `name` of
//! `=HYPERLINK(...)` would run on the machine of whoever opens the file. `guard` puts a `'`
//! in front of such a cell, which spreadsheets show as text.
//!
//! Two choices make the guarded file fit to fix and submit again as it is:
//! - a cell that is a plain number (`-5`, `-2.5e3`) is left alone: it evaluates to itself,
//!   and guarding it would turn a number field into text;
//! - `guard` is reversible (`unguard`): a cell that already begins with quotes before a
//!   formula character gets one more, so `unguard(guard(s)) == s` for every `s`, and an
//!   upload can take the quote off without guessing.

use std::borrow::Cow;

const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];
const GUARD: char = '\'';

/// `cell` as it can be written to a CSV a spreadsheet opens safely.
pub fn guard(cell: &str) -> Cow<'_, str> {
    if needs_guard(cell) {
        Cow::Owned(format!("{GUARD}{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The cell `guard` was given, from what it wrote.
pub fn unguard(cell: &str) -> &str {
    match cell.strip_prefix(GUARD) {
        Some(rest) if needs_guard(rest) => rest,
        _ => cell,
    }
}

/// Whether `cell`, once any quotes in front of it are set aside, begins like a formula.
fn needs_guard(cell: &str) -> bool {
    let unquoted = cell.trim_start_matches(GUARD);
    unquoted.starts_with(FORMULA_STARTS) && !is_plain_number(unquoted)
}

/// A JSON number: `-?digits(.digits)?([eE][+-]?digits)?`.
fn is_plain_number(text: &str) -> bool {
    let rest = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    digits(whole) && fraction.is_none_or(digits) && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formulas_are_quoted() {
        for cell in [
            "=1+1",
            "+1",
            "-1+cmd|' /C calc'!A0",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "=HYPERLINK(\"http://x\")",
        ] {
            assert_eq!(guard(cell), format!("'{cell}"), "{cell:?}");
        }
    }

    #[test]
    fn plain_text_and_numbers_are_left_alone() {
        for cell in [
            "",
            "Ada",
            "ada@example.com",
            "-5",
            "-2.5",
            "-1e3",
            "-0.5E-2",
            "'",
            "'x",
        ] {
            assert_eq!(guard(cell), cell, "{cell:?}");
        }
    }

    #[test]
    fn almost_numbers_are_quoted() {
        for cell in [
            "-", "-.5", "-5.", "-1e", "-1e+", "-0x10", "-5 ", "- 5", "-1-1",
        ] {
            assert_eq!(guard(cell), format!("'{cell}"), "{cell:?}");
        }
    }

    #[test]
    fn a_quote_before_a_formula_gets_one_more() {
        assert_eq!(guard("'=1"), "''=1");
        assert_eq!(unguard("''=1"), "'=1");
        assert_eq!(unguard("'=1"), "=1");
        assert_eq!(unguard("'x"), "'x");
    }

    fn any_cell() -> impl Strategy<Value = String> {
        prop_oneof!["[='+@\t\r-]{0,3}[a-z0-9.eE+-]{0,6}", ".{0,12}",]
    }

    proptest! {
        #[test]
        fn unguard_undoes_guard(cell in any_cell()) {
            let guarded = guard(&cell);
            prop_assert_eq!(unguard(&guarded), cell.as_str());
        }

        #[test]
        fn a_guarded_cell_never_begins_like_a_formula_unless_a_number(cell in any_cell()) {
            let guarded = guard(&cell);
            prop_assert!(!guarded.starts_with(FORMULA_STARTS) || is_plain_number(&guarded));
        }
    }
}
