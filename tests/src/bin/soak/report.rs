//! What the soak injected and what it checked: named counters any task can bump, the
//! violations found, and the table printed at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counters by section and name, e.g. `("kills", "consumer")`. Shared by every task.
#[derive(Default)]
pub struct Tally {
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
    violations: Mutex<Vec<Violation>>,
}

/// One broken guarantee: what kind, about which action (or process), and the evidence.
#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
}

/// How many violations of one kind are printed in full; the rest are only counted.
const SHOWN_PER_KIND: usize = 10;
/// Evidence longer than this (a whole log bucket) is cut.
const MAX_DETAIL: usize = 1_500;

impl Tally {
    pub fn add(&self, section: &'static str, name: impl Into<String>, by: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((section, name.into())).or_default() += by;
        }
    }

    pub fn bump(&self, section: &'static str, name: impl Into<String>) {
        self.add(section, name, 1);
    }

    pub fn violation(
        &self,
        kind: &'static str,
        subject: impl Into<String>,
        detail: impl Into<String>,
    ) {
        let mut detail: String = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push_str(" ...");
        }
        let violation = Violation {
            kind,
            subject: subject.into(),
            detail,
        };
        eprintln!(
            "[soak] VIOLATION {} {}: {}",
            violation.kind, violation.subject, violation.detail
        );
        self.bump("violations", kind);
        if let Ok(mut violations) = self.violations.lock() {
            violations.push(violation);
        }
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.violations
            .lock()
            .map(|violations| violations.clone())
            .unwrap_or_default()
    }

    /// The whole table: one block per section, then the violations by kind.
    pub fn render(&self) -> String {
        let counts = self
            .counts
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default();
        let mut out = String::new();
        let mut section = "";
        for ((name_section, name), count) in &counts {
            if *name_section != section {
                section = name_section;
                out.push_str(&format!("\n{section}\n"));
            }
            out.push_str(&format!("  {name:<44} {count:>12}\n"));
        }
        let violations = self.violations();
        out.push_str(&format!("\nviolations: {}\n", violations.len()));
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in &violations {
            let seen = shown.entry(violation.kind).or_default();
            *seen += 1;
            if *seen <= SHOWN_PER_KIND {
                out.push_str(&format!(
                    "  {} {}: {}\n",
                    violation.kind, violation.subject, violation.detail
                ));
            }
        }
        for (kind, seen) in shown {
            if seen > SHOWN_PER_KIND {
                out.push_str(&format!("  ... {} more {kind}\n", seen - SHOWN_PER_KIND));
            }
        }
        out
    }
}

/// `p`th percentile (0-100) of sorted values, 0 for none.
pub fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}
