//! Progress on stderr: indicatif bars on a terminal, plain lines elsewhere (a CI log, a
//! pipe, `--quiet`), so a log file never fills with redraw escapes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::Counts;

/// How often plain lines report counts: often enough to see a job move in a CI log, rarely
/// enough that a million-record action does not write a million lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bars,
    Lines,
}

impl Style {
    /// Bars only when a person is looking at stderr and did not ask for quiet.
    pub fn detect(quiet: Quiet) -> Self {
        if quiet == Quiet::No && std::io::stderr().is_terminal() {
            Self::Bars
        } else {
            Self::Lines
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    Yes,
    No,
}

/// Counts bytes of an upload as the body stream hands them to the connection.
#[derive(Clone)]
pub struct UploadMeter {
    bar: Option<ProgressBar>,
}

impl UploadMeter {
    pub fn add(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}

pub struct Progress {
    style: Style,
    upload: Option<(ProgressBar, Instant)>,
    processing: Option<ProgressBar>,
    last_line: Option<Instant>,
    last_status: String,
}

impl Progress {
    pub fn new(style: Style) -> Self {
        Self {
            style,
            upload: None,
            processing: None,
            last_line: None,
            last_status: String::new(),
        }
    }

    pub fn upload_started(&mut self, label: &str, bytes: u64) -> UploadMeter {
        match self.style {
            Style::Bars => {
                let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("uploading {label}"));
                self.upload = Some((bar.clone(), Instant::now()));
                UploadMeter { bar: Some(bar) }
            }
            Style::Lines => {
                eprintln!("uploading {label} ({bytes} bytes)");
                self.upload = Some((ProgressBar::hidden(), Instant::now()));
                UploadMeter { bar: None }
            }
        }
    }

    pub fn upload_finished(&mut self, action_id: &str) {
        if let Some((bar, started)) = self.upload.take() {
            bar.finish_and_clear();
            eprintln!(
                "uploaded in {:.1} s: action {action_id} accepted",
                started.elapsed().as_secs_f64()
            );
        }
    }

    pub fn upload_failed(&mut self) {
        if let Some((bar, _)) = self.upload.take() {
            bar.abandon();
        }
    }

    /// The counts of the action, from any message that carries them.
    pub fn counts(&mut self, counts: &Counts) {
        if counts.status != self.last_status && !counts.status.is_empty() {
            self.status(&counts.action_id, &counts.status);
        }
        match self.style {
            Style::Bars => {
                let bar = self.processing_bar(counts.total_records);
                bar.set_length(counts.total_records);
                bar.set_position(counts.processed_records);
                bar.set_message(summary(counts));
            }
            Style::Lines => {
                let due = self
                    .last_line
                    .is_none_or(|last| last.elapsed() >= LINE_EVERY);
                if due || counts.processed_records == counts.total_records {
                    self.last_line = Some(Instant::now());
                    eprintln!("{} {}", head(counts), summary(counts));
                }
            }
        }
    }

    /// A change of status (`started`, `paused`, …) as its own line, above the bar.
    pub fn status(&mut self, action_id: &str, status: &str) {
        if status == self.last_status {
            return;
        }
        self.last_status = status.to_owned();
        let line = format!("action {action_id}: {status}");
        match &self.processing {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn note(&self, line: &str) {
        match &self.processing {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.processing.take() {
            bar.finish();
        }
    }

    /// Takes the bars off the screen before a message that must be read on its own (an
    /// abandoned bar would be redrawn once more under the terminal's `^C`).
    pub fn clear(&mut self) {
        if let Some(bar) = self.processing.take() {
            bar.finish_and_clear();
        }
        self.upload_failed();
    }

    fn processing_bar(&mut self, total: u64) -> &ProgressBar {
        self.processing.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "processing [{elapsed_precise}] [{bar:30.green/blue}] {pos}/{len} ({percent}%) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        })
    }
}

fn head(counts: &Counts) -> String {
    let percent = if counts.total_records == 0 {
        100.0
    } else {
        counts.processed_records as f64 * 100.0 / counts.total_records as f64
    };
    format!(
        "{} {} {}/{} ({percent:.0}%)",
        counts.action_id, counts.status, counts.processed_records, counts.total_records
    )
}

/// Counts, rate and time left, as both styles show them.
pub fn summary(counts: &Counts) -> String {
    let mut text = format!(
        "ok {} · failed {} · skipped {}",
        counts.succeeded, counts.failed, counts.skipped
    );
    if counts.unprocessed > 0 {
        text.push_str(&format!(" · unprocessed {}", counts.unprocessed));
    }
    if let Some(rate) = counts.records_per_second.filter(|rate| *rate > 0.0) {
        text.push_str(&format!(" · {rate:.0} rec/s"));
        let left = counts
            .total_records
            .saturating_sub(counts.processed_records);
        if left > 0 && counts.status == "running" {
            text.push_str(&format!(" · ETA {}", eta(left as f64 / rate)));
        }
    }
    text
}

fn eta(seconds: f64) -> String {
    // A rate near zero would make this astronomically large; past a day the estimate says
    // nothing useful.
    if !seconds.is_finite() || seconds > 86_400.0 {
        return "> 1 d".into();
    }
    let seconds = seconds.ceil() as u64;
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_counts_rate_and_time_left() {
        let counts = Counts {
            action_id: "A".into(),
            status: "running".into(),
            total_records: 1_000,
            processed_records: 400,
            succeeded: 390,
            failed: 10,
            records_per_second: Some(100.0),
            ..Counts::default()
        };
        assert_eq!(
            summary(&counts),
            "ok 390 · failed 10 · skipped 0 · 100 rec/s · ETA 6s"
        );
        assert_eq!(head(&counts), "A running 400/1000 (40%)");
    }

    #[test]
    fn no_time_left_once_everything_is_processed_or_without_a_rate() {
        let counts = Counts {
            status: "completed".into(),
            total_records: 10,
            processed_records: 10,
            succeeded: 10,
            ..Counts::default()
        };
        assert_eq!(summary(&counts), "ok 10 · failed 0 · skipped 0");
    }

    #[test]
    fn eta_reads_in_the_largest_useful_units() {
        assert_eq!(eta(5.2), "6s");
        assert_eq!(eta(125.0), "2m05s");
        assert_eq!(eta(7_300.0), "2h01m");
        assert_eq!(eta(f64::INFINITY), "> 1 d");
    }
}
