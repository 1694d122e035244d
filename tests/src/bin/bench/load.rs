//! Latency under concurrent load, measured by `wrk` (Debian's package): one `wrk` posting
//! 10,000-record JSON actions while another reads an action's view.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, Default)]
pub struct Latency {
    pub requests: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
}

pub struct Load<'a> {
    pub url: String,
    pub api_key: &'a str,
    pub connections: u32,
    pub duration: Duration,
    /// `None`: GET. `Some(file)`: POST this JSON file.
    pub post_body: Option<&'a Path>,
    pub scratch: &'a Path,
}

impl Load<'_> {
    pub async fn run(&self) -> Result<Latency> {
        let mut command = tokio::process::Command::new("wrk");
        command.args([
            "--threads",
            "1",
            "--connections",
            &self.connections.to_string(),
            "--duration",
            &format!("{}s", self.duration.as_secs().max(1)),
            "--timeout",
            "30s",
            "--latency",
            "--header",
            &format!("Authorization: Bearer {}", self.api_key),
        ]);
        if let Some(body) = self.post_body {
            let script = self.scratch.join("post.lua");
            std::fs::write(
                &script,
                format!(
                    "wrk.method = \"POST\"\n\
                     wrk.headers[\"Content-Type\"] = \"application/json\"\n\
                     local file = io.open(\"{}\", \"rb\")\n\
                     wrk.body = file:read(\"*a\")\n\
                     file:close()\n",
                    body.display()
                ),
            )?;
            command.arg("--script").arg(&script);
        }
        command.arg(&self.url);
        let output = command
            .output()
            .await
            .context("running wrk (apt-get install wrk, or scripts/bench.sh)")?;
        let report = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed: {report}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse(&report).with_context(|| format!("reading wrk's report:\n{report}"))
    }
}

fn parse(report: &str) -> Option<Latency> {
    let mut latency = Latency::default();
    let mut in_distribution = false;
    for line in report.lines().map(str::trim) {
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["50%", value] => latency.p50_ms = millis(value)?,
                ["99%", value] => {
                    latency.p99_ms = millis(value)?;
                    in_distribution = false;
                }
                _ => {}
            }
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            latency.per_second = rest.trim().parse().ok()?;
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            latency.non_2xx = rest.trim().parse().ok()?;
        }
        if line.contains(" requests in ") {
            latency.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    Some(latency)
}

fn millis(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let report = "Running 10s test @ http://x\n  1 threads and 4 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n     90%    3.10ms\n     99%   1.50s\n  1234 requests in 10.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:    123.40\n";
        let latency = parse(report).unwrap();
        assert_eq!(latency.requests, 1234);
        assert!((latency.p50_ms - 0.812).abs() < 1e-9);
        assert!((latency.p99_ms - 1500.0).abs() < 1e-9);
        assert_eq!(latency.non_2xx, 3);
        assert!((latency.per_second - 123.4).abs() < 1e-9);
    }
}
