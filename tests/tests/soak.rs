//! The short chaos soak as a test: `soak --minutes 2` (two minutes of mixed and hostile
//! traffic under random SIGKILLs of every process and server, then the full check of every
//! action, log line and contact; see tests/src/bin/soak). Ignored by default: it holds the
//! machine for several minutes. Run it with
//! `cargo test -p bulk-tests --test soak -- --ignored --nocapture`.

use std::process::Command;

#[test]
#[ignore = "several minutes of chaos; run by hand or nightly (docs/benchmarks.md, Chaos soak)"]
fn a_two_minute_chaos_soak_finds_no_violation() {
    let status = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args(["--minutes", "2", "--settle-minutes", "5"])
        .status()
        .expect("the soak binary runs");
    assert!(
        status.success(),
        "the soak found violations or could not run ({status}); its table is above"
    );
}
