//! `state-processor`: a small exactly-once stream processor over any `StateBackend`.
//!
//! It generates a deterministic stream of user events with at-least-once redeliveries, drops
//! the duplicates with `set_if_not_exists` + TTL, counts events per user in tumbling
//! event-time windows, summarizes and deletes each window when it closes, stores its offset
//! with the counts, checkpoints the whole state to a portable file and resumes where it
//! stopped (from the database, or from the checkpoint when the database is gone).
//!
//! ```text
//! cargo run --release -p state-processor -- --data ./data
//! ```

mod generator;
mod processor;
mod report;
mod window;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::generator::StreamSpec;
use crate::processor::{BackendKind, Config};

/// Runs a deduplicating, windowed counting stream processor on a state backend, resuming
/// from where the previous run on the same data folder stopped.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Data folder: the sled database goes in `<data>/sled`, the checkpoint in
    /// `<data>/checkpoint.ckpt`.
    #[arg(long, default_value = "./data")]
    data: PathBuf,
    /// State backend. `memory` keeps nothing between runs (no resume).
    #[arg(long, value_enum, default_value_t = BackendKind::Sled)]
    backend: BackendKind,
    /// Source events this run processes.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Distinct keys (users) in the stream; their popularity is Zipf-like.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of source events that re-deliver an earlier event (at-least-once delivery).
    #[arg(long, default_value_t = 0.05)]
    dup_rate: f64,
    /// Tumbling window size in event-time milliseconds (the stream has one event per ms).
    #[arg(long, default_value_t = 10_000)]
    window_ms: u64,
    /// Wall-clock lifetime of a dedup marker in milliseconds [default: 3 windows].
    #[arg(long)]
    dedup_ttl_ms: Option<u64>,
    /// Write a checkpoint every this many source events (and at the end of the run).
    #[arg(long, default_value_t = 200_000)]
    checkpoint_every: u64,
    /// Source events per batch (one atomic write of counts and progress per batch).
    #[arg(long, default_value_t = 1_000)]
    batch_size: u64,
    /// Delete the data folder first.
    #[arg(long)]
    reset: bool,
    /// No progress bar and no per-window lines; only the final report.
    #[arg(long, short)]
    quiet: bool,
}

impl Args {
    /// The processor configuration these arguments describe.
    fn config(&self) -> Config {
        Config {
            data: self.data.clone(),
            backend: self.backend,
            events: self.events,
            stream: StreamSpec {
                seed: self.seed,
                keys: self.keys,
                dup_rate: self.dup_rate,
            },
            window_ms: self.window_ms,
            dedup_ttl: Duration::from_millis(
                self.dedup_ttl_ms
                    .unwrap_or(self.window_ms.saturating_mul(3))
                    .max(1),
            ),
            checkpoint_every: self.checkpoint_every,
            batch_size: self.batch_size,
            reset: self.reset,
            show_progress: !self.quiet,
            verbose: !self.quiet,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the processor and prints its report.
async fn run(args: &Args) -> anyhow::Result<()> {
    let config = args.config();
    if !args.quiet {
        println!(
            "state-processor: {} backend, data in {}; stream seed {}, {} keys, {:.1}% \
             redeliveries, {} ms windows, batches of {}",
            config.backend.name(),
            config.data.display(),
            config.stream.seed,
            report::group(u64::from(config.stream.keys)),
            config.stream.dup_rate * 100.0,
            report::group(config.window_ms),
            report::group(config.batch_size),
        );
    }
    let report = processor::run(&config).await?;
    println!("\nstate-processor report");
    print!("{}", report::render(&report, &config));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_defaults_match_the_readme() {
        Args::command().debug_assert();
        let args = Args::parse_from(["state-processor", "--data", "./data"]);
        let config = args.config();
        assert_eq!(config.events, 1_000_000);
        assert_eq!(config.stream.seed, 42);
        assert_eq!(config.stream.keys, 10_000);
        assert_eq!(config.window_ms, 10_000);
        assert_eq!(config.dedup_ttl, Duration::from_secs(30));
        assert_eq!(config.checkpoint_every, 200_000);
        assert_eq!(config.backend, BackendKind::Sled);
    }
}
