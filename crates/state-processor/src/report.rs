//! The end-of-run report.

use std::fmt::Write as _;
use std::time::Duration;

use crate::processor::{Config, Report};

/// `1234567` as `"1,234,567"`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count in B, KiB or MiB.
fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A latency given in microseconds, in µs or ms.
fn micros(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// A duration in ms or s.
fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1_000.0)
    }
}

/// The report as text: one `label  value` line per figure.
pub(crate) fn render(report: &Report, config: &Config) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<20} {value}");
    };
    let run = &report.run;
    let all = &report.all_runs;
    let events = report.events();

    line("backend", report.backend.name().to_owned());
    line("start", report.start.to_string());
    line(
        "events processed",
        format!(
            "{} (offsets {}..{})",
            group(events),
            group(report.start_offset),
            group(report.end_offset)
        ),
    );
    line(
        "duplicates dropped",
        format!(
            "{} (the source re-delivered {}; dedup TTL {:?})",
            group(run.duplicates),
            group(report.redeliveries),
            config.dedup_ttl
        ),
    );
    if run.late > 0 {
        line(
            "late events dropped",
            format!(
                "{} (re-deliveries whose dedup marker had expired, for windows already closed)",
                group(run.late)
            ),
        );
    }
    let recounted = report
        .redeliveries
        .saturating_sub(run.duplicates + run.late);
    if recounted > 0 {
        line(
            "re-counted",
            format!(
                "{} re-deliveries got past dedup (their marker had expired: the original was \
                 processed more than the dedup TTL ago, e.g. before a pause between runs)",
                group(recounted)
            ),
        );
    }
    line("events counted", group(run.counted));
    let last = report.closed.last();
    line(
        "windows closed",
        format!(
            "{}{}",
            group(run.windows_closed),
            last.map_or_else(String::new, |w| format!(
                " (last: window {}, {} events, top user:{})",
                w.window,
                group(w.total),
                w.top.first().map_or(0, |t| t.0)
            ))
        ),
    );
    line(
        "throughput",
        format!(
            "{} events/s ({} for {} events)",
            group(report.throughput() as u64),
            duration(report.elapsed),
            group(events)
        ),
    );
    let hist = &report.batch_latency_us;
    if !hist.is_empty() {
        line(
            "batch latency",
            format!(
                "p50 {}, p99 {}, max {} per batch of {} events ({} per event at p50; {} batches, checkpoints excluded)",
                micros(hist.value_at_quantile(0.5) as f64),
                micros(hist.value_at_quantile(0.99) as f64),
                micros(hist.max() as f64),
                group(config.batch_size),
                micros(hist.value_at_quantile(0.5) as f64 / config.batch_size as f64),
                group(hist.len()),
            ),
        );
    }
    if let Some(last) = report.checkpoints.last() {
        let total: Duration = report.checkpoints.iter().map(|c| c.flush + c.write).sum();
        line(
            "checkpoint",
            format!(
                "{} at offset {}: {} entries, written in {} (flush before it {})",
                report.checkpoint_path.display(),
                group(last.offset),
                group(last.summary.entries),
                duration(last.write),
                duration(last.flush),
            ),
        );
        line(
            "checkpoint size",
            format!(
                "{} (checkpoints written this run: {}, taking {} in total)",
                bytes(last.summary.bytes),
                report.checkpoints.len(),
                duration(total)
            ),
        );
    }
    line(
        "all runs on state",
        format!(
            "{} events, {} counted, {} duplicates, {} late, {} windows closed",
            group(report.end_offset),
            group(all.counted),
            group(all.duplicates),
            group(all.late),
            group(all.windows_closed)
        ),
    );

    let stats = &report.backend_stats;
    line(
        "backend ops",
        format!(
            "{} gets ({} hits, {} misses, hit rate {:.1}%), {} puts, {} deletes, {} other, {} errors",
            group(stats.gets),
            group(stats.hits),
            group(stats.misses),
            stats.hit_rate() * 100.0,
            group(stats.puts),
            group(stats.deletes),
            group(stats.other_ops),
            group(stats.errors)
        ),
    );
    line(
        "backend latency",
        format!(
            "avg {}, p50 {}, p99 {} ({} sampled ops)",
            micros(stats.avg_latency_us),
            micros(stats.p50_latency_us),
            micros(stats.p99_latency_us),
            group(stats.latency_samples)
        ),
    );
    if let Some(size) = stats.details.get("size_on_disk_bytes") {
        line("backend on disk", bytes(*size as u64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(bytes(2_048), "2.0 KiB");
        assert_eq!(micros(1_500.0), "1.50 ms");
    }
}
