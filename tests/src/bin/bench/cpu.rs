//! Where the CPU went: seconds of CPU per command name, from `/proc`, so that a run can say
//! which process was the bottleneck on a machine everything shares.

use std::collections::BTreeMap;

/// CPU seconds (user + system) used so far by every live process, summed by command name.
pub fn by_command() -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let command = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the command: state is field 0, utime field 11, stime field 12.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *totals.entry(command).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    totals
}

/// What each command used between two readings, largest first.
pub fn used(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(command, seconds)| {
            (
                command.clone(),
                seconds - before.get(command).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, seconds)| *seconds >= 0.05)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}
