//! The set-up scripts' checks must not fail on a working tool. Under `set -o pipefail`,
//! `cmd | grep -q x` fails when grep exits at its first match while `cmd` is still writing
//! (SIGPIPE): the first `./scripts/up.sh` on a fresh machine once refused a FerretDB binary
//! it had just built.

use std::path::PathBuf;
use std::process::Command;

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// Runs `snippet` in bash after sourcing `deps.sh` (which sets `-euo pipefail`).
fn bash_with_deps(snippet: &str) -> bool {
    let script = format!(
        "source '{}' && {snippet}",
        scripts_dir().join("deps.sh").display()
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .status()
        .expect("bash runs")
        .success()
}

#[test]
fn a_check_matches_output_that_goes_on_after_the_match() {
    // The needle comes first, then a megabyte more: grep -q would have left long before.
    let writer =
        "python3 -c 'import sys; print(\"version: v1.24.2\"); sys.stdout.write(\"x\" * 1048576)'";
    for _ in 0..5 {
        assert!(bash_with_deps(&format!(
            "output_contains 'version: v1.24.2' {writer}"
        )));
    }
    assert!(!bash_with_deps(&format!(
        "output_contains 'version: v9' {writer}"
    )));
    assert!(!bash_with_deps("output_contains anything false"));
}

#[test]
fn no_script_pipes_into_an_early_exiting_grep() {
    for entry in std::fs::read_dir(scripts_dir()).expect("scripts/ exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|ext| ext != "sh") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable script");
        for (number, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            let pipes_into_quiet_grep = code
                .split('|')
                .skip(1)
                .any(|stage| stage.trim_start().starts_with("grep -q"));
            assert!(
                !pipes_into_quiet_grep,
                "{}:{}: `| grep -q` fails under pipefail when the writer outlives grep; use output_contains",
                path.display(),
                number + 1
            );
        }
    }
}
