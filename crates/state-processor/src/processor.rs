//! The stream processor: dedup, tumbling-window counts, progress, checkpoints and resume.
//!
//! Everything after [`open_backend`] works on an `Arc<dyn StateBackend>`: switching between
//! sled and the in-memory backend changes only the constructor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use state_core::checkpoint::CheckpointSummary;
use state_core::{StateBackend, StateBackendExt as _, StateResult, StateStats};
use state_memory::MemoryStateBackend;
use state_sled::SledStateBackend;

use crate::generator::{Event, Generator, StreamSpec};
use crate::report::group;
use crate::window::{
    WindowSummary, count_key, count_prefix, decode_count, dedup_key, encode_count,
    parse_any_count_key, summary_key, window_of,
};

/// The state key of the progress record.
const PROGRESS_KEY: &[u8] = b"progress";

/// Largest `--batch-size`: a batch's events are generated, held and written at once.
const MAX_BATCH_SIZE: u64 = 1_000_000;

/// Which backend holds the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendKind {
    /// sled in `<data>/sled`: persistent, resumable.
    Sled,
    /// In-process memory: gone when the process exits (no resume).
    Memory,
}

impl BackendKind {
    /// The name shown in the report.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Memory => "memory",
        }
    }
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Folder holding the sled database and the checkpoint file.
    pub(crate) data: PathBuf,
    /// Which backend to use.
    pub(crate) backend: BackendKind,
    /// Source events this run processes.
    pub(crate) events: u64,
    /// The stream to process.
    pub(crate) stream: StreamSpec,
    /// Tumbling window size, event-time milliseconds.
    pub(crate) window_ms: u64,
    /// Wall-clock lifetime of a dedup marker: the dedup horizon.
    pub(crate) dedup_ttl: Duration,
    /// Checkpoint every this many source events (and at the end).
    pub(crate) checkpoint_every: u64,
    /// Source events per batch (one `batch_put` of counts and progress each).
    pub(crate) batch_size: u64,
    /// Delete the data folder before starting.
    pub(crate) reset: bool,
    /// Draw a progress bar.
    pub(crate) show_progress: bool,
    /// Print how the run starts and a line per closed window.
    pub(crate) verbose: bool,
}

/// Totals kept across runs in the progress record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Events counted into a window.
    pub(crate) counted: u64,
    /// Redelivered events dropped by the dedup stage.
    pub(crate) duplicates: u64,
    /// Events dropped because their window had already closed.
    pub(crate) late: u64,
    /// Windows closed.
    pub(crate) windows_closed: u64,
}

impl Totals {
    /// The difference `self - earlier`, field by field.
    const fn since(self, earlier: Self) -> Self {
        Self {
            counted: self.counted - earlier.counted,
            duplicates: self.duplicates - earlier.duplicates,
            late: self.late - earlier.late,
            windows_closed: self.windows_closed - earlier.windows_closed,
        }
    }
}

/// The processor's position, stored under `progress` with `put_typed`.
///
/// It is written in the same `batch_put` as the counts of the batch it ends, so the stored
/// offset and the stored counts always agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The stream this state belongs to.
    pub(crate) stream: StreamSpec,
    /// The window size this state was counted with.
    pub(crate) window_ms: u64,
    /// Source events consumed: the next event to process.
    pub(crate) offset: u64,
    /// The newest window an event was counted in (the event-time watermark's window).
    pub(crate) current_window: u64,
    /// The oldest window not yet closed; windows before it are summarized and deleted.
    pub(crate) next_to_close: u64,
    /// Running totals over every run on this state.
    pub(crate) totals: Totals,
}

impl Progress {
    /// The progress of a stream nobody has processed yet.
    const fn fresh(stream: StreamSpec, window_ms: u64) -> Self {
        Self {
            stream,
            window_ms,
            offset: 0,
            current_window: 0,
            next_to_close: 0,
            totals: Totals {
                counted: 0,
                duplicates: 0,
                late: 0,
                windows_closed: 0,
            },
        }
    }
}

/// Where a run's state came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// No earlier state.
    Fresh,
    /// The checkpoint held no progress record (nothing was processed): started over.
    FreshOverEmptyCheckpoint,
    /// The backend is not persistent, so there is nothing to resume.
    NotPersistent,
    /// The backend already held progress from an earlier run.
    Resumed {
        /// The stored offset.
        offset: u64,
        /// The stored current window.
        window: u64,
    },
    /// The database was missing; state came from the checkpoint file.
    Restored {
        /// The checkpoint's offset.
        offset: u64,
        /// The checkpoint's current window.
        window: u64,
        /// Entries restored.
        entries: u64,
        /// Time the restore took.
        took: Duration,
    },
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fresh => f.write_str("starting fresh (no earlier state)"),
            Self::FreshOverEmptyCheckpoint => f.write_str(
                "starting fresh: the database was missing and the checkpoint holds no progress",
            ),
            Self::NotPersistent => f.write_str(
                "starting fresh: the memory backend keeps no state between runs (no resume)",
            ),
            Self::Resumed { offset, window } => write!(
                f,
                "resuming from offset {} (window {window})",
                group(*offset)
            ),
            Self::Restored {
                offset,
                window,
                entries,
                took,
            } => write!(
                f,
                "resuming from offset {} (window {window}), restored from the checkpoint \
                 ({} entries in {took:.2?}) because the database was missing",
                group(*offset),
                group(*entries),
            ),
        }
    }
}

/// One checkpoint write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointInfo {
    /// Offset the checkpoint was taken at.
    pub(crate) offset: u64,
    /// Entries and bytes written.
    pub(crate) summary: CheckpointSummary,
    /// Time spent in `flush` before the checkpoint.
    pub(crate) flush: Duration,
    /// Time spent writing the checkpoint file.
    pub(crate) write: Duration,
}

/// What a run did.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// The backend used.
    pub(crate) backend: BackendKind,
    /// Where the state came from.
    pub(crate) start: Start,
    /// Offset of the first event this run processed.
    pub(crate) start_offset: u64,
    /// Offset after the last event this run processed.
    pub(crate) end_offset: u64,
    /// Redeliveries the source produced in this run (ground truth).
    pub(crate) redeliveries: u64,
    /// This run's share of the totals.
    pub(crate) run: Totals,
    /// Totals over every run on this state.
    pub(crate) all_runs: Totals,
    /// Summaries of the windows this run closed, oldest first.
    pub(crate) closed: Vec<WindowSummary>,
    /// Wall-clock time of the processing loop (checkpoints included).
    pub(crate) elapsed: Duration,
    /// Per-batch processing latency in microseconds (checkpoints excluded).
    pub(crate) batch_latency_us: Histogram<u64>,
    /// Every checkpoint written, in order.
    pub(crate) checkpoints: Vec<CheckpointInfo>,
    /// Where checkpoints go.
    pub(crate) checkpoint_path: PathBuf,
    /// The backend's own statistics at the end of the run.
    pub(crate) backend_stats: StateStats,
}

impl Report {
    /// Source events processed by this run.
    pub(crate) const fn events(&self) -> u64 {
        self.end_offset - self.start_offset
    }

    /// Source events per second over the whole processing loop.
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events() as f64 / secs
        } else {
            0.0
        }
    }
}

/// The sled database folder inside the data folder.
pub(crate) fn sled_dir(data: &Path) -> PathBuf {
    data.join("sled")
}

/// The checkpoint file a backend writes inside the data folder (the in-memory backend gets
/// its own, so a demo run never replaces the sled state's checkpoint).
pub(crate) fn checkpoint_path(data: &Path, backend: BackendKind) -> PathBuf {
    match backend {
        BackendKind::Sled => data.join("checkpoint.ckpt"),
        BackendKind::Memory => data.join("checkpoint-memory.ckpt"),
    }
}

/// Builds the backend: the only code that names a concrete backend type.
pub(crate) fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn StateBackend>> {
    Ok(match config.backend {
        BackendKind::Sled => {
            let dir = sled_dir(&config.data);
            let backend = SledStateBackend::builder(&dir)
                .cache_capacity(256 << 20)
                .flush_every(Some(Duration::from_millis(500)))
                .build()
                .with_context(|| format!("opening the sled database in {}", dir.display()))?;
            Arc::new(backend)
        }
        BackendKind::Memory => Arc::new(MemoryStateBackend::new(None)),
    })
}

/// Runs the processor as `config` says: prepares the data folder, opens the backend, resumes
/// or starts fresh, processes `config.events` events and checkpoints.
pub(crate) async fn run(config: &Config) -> anyhow::Result<Report> {
    if config.window_ms == 0 || config.batch_size == 0 || config.checkpoint_every == 0 {
        bail!("--window-ms, --batch-size and --checkpoint-every must be at least 1");
    }
    if config.batch_size > MAX_BATCH_SIZE {
        bail!(
            "--batch-size {} is too large: a batch is held in memory and written at once; \
             use at most {}",
            config.batch_size,
            group(MAX_BATCH_SIZE)
        );
    }
    if !(0.0..1.0).contains(&config.stream.dup_rate) {
        bail!("--dup-rate must be in [0, 1)");
    }
    if config.stream.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if config.reset && config.data.exists() {
        reset(&config.data)?;
    }
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating {}", config.data.display()))?;
    let backend = open_backend(config)?;
    let checkpoint = checkpoint_path(&config.data, config.backend);
    let (progress, start) = recover(&backend, config, &checkpoint).await?;
    let mut processor = Processor::new(backend, config, progress, checkpoint);
    let report = processor.process(start).await;
    // Close the database (sled flushes on drop) even when processing failed.
    drop(processor);
    report
}

/// Deletes the data folder, after checking it holds only what this program writes there (a
/// mistyped `--data --reset` must not wipe an unrelated folder).
fn reset(data: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data).with_context(|| format!("reading {}", data.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let ours = name == "sled"
            || name == "checkpoint.ckpt"
            || name == "checkpoint-memory.ckpt"
            || (name.starts_with(".checkpoint") && name.ends_with(".tmp"));
        if !ours {
            bail!(
                "refusing to --reset {}: it holds {name:?}, which state-processor did not write",
                data.display()
            );
        }
    }
    std::fs::remove_dir_all(data).with_context(|| format!("deleting {}", data.display()))
}

/// Finds the state to continue from: the backend's progress record, else the checkpoint file
/// (persistent backends only), else a fresh start.
async fn recover(
    backend: &Arc<dyn StateBackend>,
    config: &Config,
    checkpoint: &Path,
) -> anyhow::Result<(Progress, Start)> {
    let fresh = Progress::fresh(config.stream, config.window_ms);
    if !backend.capabilities().persistence {
        return Ok((fresh, Start::NotPersistent));
    }
    if let Some(progress) = backend.get_typed::<Progress>(PROGRESS_KEY).await? {
        check_compatible(&progress, config)?;
        let start = Start::Resumed {
            offset: progress.offset,
            window: progress.current_window,
        };
        return Ok((progress, start));
    }
    if !checkpoint.exists() {
        return Ok((fresh, Start::Fresh));
    }
    // No progress in the database (it was deleted or lost): rebuild it from the checkpoint.
    let started = Instant::now();
    backend.clear().await?;
    let restored = backend
        .restore_from_file(checkpoint)
        .await
        .with_context(|| format!("restoring {}", checkpoint.display()))?;
    let Some(progress) = backend.get_typed::<Progress>(PROGRESS_KEY).await? else {
        // A checkpoint without progress (older versions wrote one for `--events 0`) holds
        // no position to resume from: start over rather than refuse every later run.
        backend.clear().await?;
        return Ok((fresh, Start::FreshOverEmptyCheckpoint));
    };
    check_compatible(&progress, config)?;
    let start = Start::Restored {
        offset: progress.offset,
        window: progress.current_window,
        entries: restored.entries,
        took: started.elapsed(),
    };
    Ok((progress, start))
}

/// Refuses to continue state built from a different stream or window size.
fn check_compatible(progress: &Progress, config: &Config) -> anyhow::Result<()> {
    if !progress.stream.same_stream(&config.stream) || progress.window_ms != config.window_ms {
        bail!(
            "the state in {} was built with seed {}, {} keys, dup rate {}, {} ms windows; \
             this run asks for seed {}, {} keys, dup rate {}, {} ms windows \
             (use the same options, or --reset to start over)",
            config.data.display(),
            progress.stream.seed,
            progress.stream.keys,
            progress.stream.dup_rate,
            progress.window_ms,
            config.stream.seed,
            config.stream.keys,
            config.stream.dup_rate,
            config.window_ms,
        );
    }
    Ok(())
}

/// The running processor.
struct Processor<'c> {
    /// The state.
    backend: Arc<dyn StateBackend>,
    /// The run's settings.
    config: &'c Config,
    /// The event source.
    generator: Generator,
    /// The position, as last written to the backend.
    progress: Progress,
    /// Where checkpoints go.
    checkpoint_path: PathBuf,
    /// Windows closed by this run.
    closed: Vec<WindowSummary>,
    /// Checkpoints written by this run.
    checkpoints: Vec<CheckpointInfo>,
    /// The keys counted so far in each open window.
    open_keys: BTreeMap<u64, HashSet<u32>>,
    /// Where window lines are printed (above the bar when there is one).
    bar: Option<ProgressBar>,
}

/// The dedup check of one delivery: claims `dedup:<id>` for `dedup_ttl`, storing the
/// delivery's offset in the marker. Returns whether this delivery is the first of its id.
///
/// Finding its own offset in an existing marker means the delivery is being replayed: its
/// batch claimed the id but crashed before committing, so the event is still this delivery's
/// to count. Any other offset is an earlier delivery of the same id.
async fn claim(backend: &dyn StateBackend, event: &Event, ttl: Duration) -> StateResult<bool> {
    let key = dedup_key(event.id);
    let offset = event.offset.to_le_bytes();
    Ok(backend.set_if_not_exists(&key, &offset, Some(ttl)).await?
        || backend.get(&key).await?.is_some_and(|v| v == offset[..]))
}

impl<'c> Processor<'c> {
    /// A processor continuing from `progress`.
    fn new(
        backend: Arc<dyn StateBackend>,
        config: &'c Config,
        progress: Progress,
        checkpoint_path: PathBuf,
    ) -> Self {
        Self {
            backend,
            config,
            generator: Generator::new(config.stream),
            progress,
            checkpoint_path,
            closed: Vec::new(),
            checkpoints: Vec::new(),
            open_keys: BTreeMap::new(),
            bar: None,
        }
    }

    /// Prints `line` when the run is verbose, above the progress bar if there is one.
    fn say(&self, line: String) {
        if self.config.verbose {
            // A hidden bar (output not a terminal) drops what it is asked to print.
            match &self.bar {
                Some(bar) if !bar.is_hidden() => bar.println(line),
                _ => println!("{line}"),
            }
        }
    }

    /// The processing loop.
    async fn process(&mut self, start: Start) -> anyhow::Result<Report> {
        let config = self.config;
        self.say(start.to_string());
        let start_offset = self.progress.offset;
        let Some(end_offset) = start_offset.checked_add(config.events) else {
            bail!(
                "--events {} is too large: the state is at offset {} and the offsets would \
                 overflow; use at most {}",
                config.events,
                group(start_offset),
                group(u64::MAX - start_offset)
            );
        };
        let start_totals = self.progress.totals;
        if config.show_progress {
            let bar = ProgressBar::new(config.events);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{elapsed_precise}] {wide_bar:.cyan/blue} \
                     {human_pos}/{human_len} events ({rate} events/s, eta {eta})",
                )?
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&group(state.per_sec() as u64));
                    },
                )
                .progress_chars("=> "),
            );
            self.bar = Some(bar);
        }
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut redeliveries = 0;
        let started = Instant::now();

        self.load_open_keys().await?;
        // A crash between committing a batch and closing its windows leaves them to close now.
        self.close_windows().await?;
        while self.progress.offset < end_offset {
            let batch_started = Instant::now();
            let from = self.progress.offset;
            let to = end_offset.min(from.saturating_add(config.batch_size));
            redeliveries += self.process_batch(from, to).await?;
            self.close_windows().await?;
            latency.saturating_record(batch_started.elapsed().as_micros() as u64);
            if let Some(bar) = &self.bar {
                bar.inc(to - from);
            }
            if to / config.checkpoint_every != from / config.checkpoint_every {
                self.checkpoint().await?;
            }
        }
        if self
            .checkpoints
            .last()
            .is_none_or(|c| c.offset != end_offset)
        {
            self.checkpoint().await?;
        }
        let elapsed = started.elapsed();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(Report {
            backend: config.backend,
            start,
            start_offset,
            end_offset,
            redeliveries,
            run: self.progress.totals.since(start_totals),
            all_runs: self.progress.totals,
            closed: std::mem::take(&mut self.closed),
            elapsed,
            batch_latency_us: latency,
            checkpoints: self.checkpoints.clone(),
            checkpoint_path: self.checkpoint_path.clone(),
            backend_stats: self.backend.stats().await,
        })
    }

    /// Processes source events `from..to`: dedups them, adds them to their windows' counts
    /// and commits counts and progress in one `batch_put`. Returns the redeliveries seen.
    async fn process_batch(&mut self, from: u64, to: u64) -> anyhow::Result<u64> {
        let events: Vec<Event> = (from..to).map(|n| self.generator.event(n)).collect();
        let firsts = self.claim_all(&events).await?;
        let mut deltas: HashMap<(u64, u32), u64> = HashMap::new();
        let mut totals = self.progress.totals;
        let mut current_window = self.progress.current_window;
        let mut redeliveries = 0;
        for (event, first) in events.iter().zip(firsts) {
            redeliveries += u64::from(event.redelivery);
            if !first {
                totals.duplicates += 1;
                continue;
            }
            let window = window_of(event.ts_ms, self.config.window_ms);
            if window < self.progress.next_to_close {
                // Only possible once the dedup marker of the original has expired.
                totals.late += 1;
                continue;
            }
            *deltas.entry((window, event.key)).or_default() += 1;
            totals.counted += 1;
            current_window = current_window.max(window);
        }

        // Read-modify-write the touched counts, then commit them with the progress.
        let deltas: Vec<((u64, u32), u64)> = deltas.into_iter().collect();
        let keys: Vec<Vec<u8>> = deltas.iter().map(|&((w, k), _)| count_key(w, k)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let stored = self.backend.batch_get(&refs).await?;
        let mut values = Vec::with_capacity(keys.len());
        for ((_, delta), old) in deltas.iter().zip(stored) {
            let old = old.as_deref().map(decode_count).transpose()?.unwrap_or(0);
            values.push(encode_count(old + delta));
        }
        let progress = Progress {
            offset: to,
            current_window,
            totals,
            ..self.progress.clone()
        };
        let encoded = state_core::encode(&progress)?;
        let mut entries: Vec<(&[u8], &[u8])> = refs
            .iter()
            .zip(&values)
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        entries.push((PROGRESS_KEY, &encoded));
        self.backend.batch_put(&entries).await?;
        self.progress = progress;
        for ((window, key), _) in deltas {
            self.open_keys.entry(window).or_default().insert(key);
        }
        Ok(redeliveries)
    }

    /// Runs the dedup stage on `events`, in order: whether each is the first delivery of its
    /// id. `set_if_not_exists` is one call per key; running the claims of a batch on several
    /// tasks did not help (sled serializes on its tree, and the memory backend is faster
    /// inline), so they run one after the other.
    async fn claim_all(&self, events: &[Event]) -> anyhow::Result<Vec<bool>> {
        let mut firsts = Vec::with_capacity(events.len());
        for event in events {
            firsts.push(claim(self.backend.as_ref(), event, self.config.dedup_ttl).await?);
        }
        Ok(firsts)
    }

    /// Finds the count keys of the windows still open (after a resume or restore), so closing
    /// a window reads exactly its keys instead of scanning for them.
    async fn load_open_keys(&mut self) -> anyhow::Result<()> {
        let mut scan = self.backend.scan(b"count:");
        while let Some(entry) = scan.next().await {
            let entry = entry?;
            let (window, key) = parse_any_count_key(&entry.key)
                .with_context(|| format!("bad count key {:?}", entry.key))?;
            self.open_keys.entry(window).or_default().insert(key);
        }
        Ok(())
    }

    /// Closes every window before the current one: reads its counts, stores the summary
    /// under `window:<n>`, deletes the counts with `delete_prefix` and records the progress.
    async fn close_windows(&mut self) -> anyhow::Result<()> {
        while self.progress.next_to_close < self.progress.current_window {
            let window = self.progress.next_to_close;
            let summary_key = summary_key(window);
            let prefix = count_prefix(window);
            let keys = self.open_keys.remove(&window).unwrap_or_default();
            // Idempotent: a summary already stored (crash after storing it) is not recomputed
            // from counts that may already be gone.
            let existing: Option<WindowSummary> = self.backend.get_typed(&summary_key).await?;
            let summary = if let Some(summary) = existing {
                summary
            } else {
                let keys: Vec<u32> = keys.into_iter().collect();
                let encoded: Vec<Vec<u8>> = keys.iter().map(|&k| count_key(window, k)).collect();
                let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                let mut counts = Vec::with_capacity(keys.len());
                for (key, value) in keys.iter().zip(self.backend.batch_get(&refs).await?) {
                    if let Some(value) = value {
                        counts.push((*key, decode_count(&value)?));
                    }
                }
                let summary = WindowSummary::from_counts(window, self.config.window_ms, &counts);
                self.backend.put_typed(&summary_key, &summary).await?;
                summary
            };
            self.backend.delete_prefix(prefix.as_bytes()).await?;
            self.progress.next_to_close += 1;
            self.progress.totals.windows_closed += 1;
            self.backend.put_typed(PROGRESS_KEY, &self.progress).await?;
            self.say(format!("closed {summary}"));
            self.closed.push(summary);
        }
        Ok(())
    }

    /// Flushes the backend and writes the whole state to the checkpoint file. Called only
    /// between batches, after the batch's counts and progress are written, so the checkpoint
    /// holds a consistent state.
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        // Every checkpoint carries a progress record, also one written before any batch
        // (`--events 0`), so a restore from it always knows where it stands.
        if self.progress.offset == 0 {
            self.backend.put_typed(PROGRESS_KEY, &self.progress).await?;
        }
        self.backend.flush().await?;
        let flush = started.elapsed();
        let started = Instant::now();
        let summary = self
            .backend
            .checkpoint_to_file(&self.checkpoint_path)
            .await
            .with_context(|| format!("writing {}", self.checkpoint_path.display()))?;
        self.checkpoints.push(CheckpointInfo {
            offset: self.progress.offset,
            summary,
            flush,
            write: started.elapsed(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(data: &Path, events: u64) -> Config {
        Config {
            data: data.to_path_buf(),
            backend: BackendKind::Sled,
            events,
            stream: StreamSpec {
                seed: 42,
                keys: 1_000,
                dup_rate: 0.05,
            },
            window_ms: 5_000,
            dedup_ttl: Duration::from_secs(300),
            checkpoint_every: 15_000,
            batch_size: 1_000,
            reset: false,
            show_progress: false,
            verbose: false,
        }
    }

    /// Counts of the still-open windows, read back from a data folder.
    async fn open_counts(data: &Path) -> Vec<(Vec<u8>, u64)> {
        let backend: Arc<dyn StateBackend> =
            Arc::new(SledStateBackend::new(sled_dir(data)).unwrap());
        let mut counts = Vec::new();
        let mut scan = backend.scan(b"count:");
        while let Some(entry) = scan.next().await {
            let entry = entry.unwrap();
            counts.push((entry.key.to_vec(), decode_count(&entry.value).unwrap()));
        }
        counts.sort();
        counts
    }

    /// `--events 0` on a fresh folder leaves a folder later runs can use, from the database
    /// or from the checkpoint alone (issue 12 point 7: every later run failed with "holds
    /// no progress record").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zero_events_never_wedge_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let nothing = run(&config(dir.path(), 0)).await.unwrap();
        assert_eq!((nothing.start_offset, nothing.end_offset), (0, 0));
        let next = run(&config(dir.path(), 2_000)).await.unwrap();
        assert_eq!((next.start_offset, next.end_offset), (0, 2_000));
        // Only the checkpoint of a zero-event run left (the database lost).
        let dir = tempfile::tempdir().unwrap();
        run(&config(dir.path(), 0)).await.unwrap();
        std::fs::remove_dir_all(sled_dir(dir.path())).unwrap();
        let next = run(&config(dir.path(), 2_000)).await.unwrap();
        assert!(
            matches!(next.start, Start::Restored { offset: 0, .. }),
            "{:?}",
            next.start
        );
        assert_eq!(next.end_offset, 2_000);
        // A checkpoint with no progress record at all (written by older versions).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let empty = state_memory::MemoryStateBackend::new(None);
        empty
            .checkpoint_to_file(checkpoint_path(dir.path(), BackendKind::Sled))
            .await
            .unwrap();
        let next = run(&config(dir.path(), 1_000)).await.unwrap();
        assert_eq!(next.start, Start::FreshOverEmptyCheckpoint);
        assert_eq!(next.end_offset, 1_000);
    }

    /// Arguments that would overflow the offsets or hold a huge batch are refused with a
    /// message naming them (issue 12 point 7: they overflowed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overflowing_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        run(&config(dir.path(), 1_000)).await.unwrap();
        let err = run(&config(dir.path(), u64::MAX)).await.unwrap_err();
        assert!(err.to_string().contains("--events"), "{err}");
        let mut huge_batch = config(dir.path(), 1_000);
        huge_batch.batch_size = u64::MAX;
        let err = run(&huge_batch).await.unwrap_err();
        assert!(err.to_string().contains("--batch-size"), "{err}");
        // The folder still works.
        let next = run(&config(dir.path(), 1_000)).await.unwrap();
        assert_eq!((next.start_offset, next.end_offset), (1_000, 2_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumed_runs_count_like_one_run() {
        let once = tempfile::tempdir().unwrap();
        let single = run(&config(once.path(), 40_000)).await.unwrap();
        assert_eq!(single.start, Start::Fresh);
        assert_eq!((single.start_offset, single.end_offset), (0, 40_000));
        assert!(single.run.duplicates > 1_000, "{:?}", single.run);
        assert_eq!(single.run.duplicates, single.redeliveries);
        assert_eq!(single.run.late, 0);

        // Resume from the database.
        let twice = tempfile::tempdir().unwrap();
        let first = run(&config(twice.path(), 20_000)).await.unwrap();
        let second = run(&config(twice.path(), 20_000)).await.unwrap();
        assert_eq!(first.start, Start::Fresh);
        assert_eq!(
            second.start,
            Start::Resumed {
                offset: 20_000,
                window: 3
            }
        );
        assert_eq!((second.start_offset, second.end_offset), (20_000, 40_000));
        assert_eq!(first.run.counted + second.run.counted, single.run.counted);
        assert_eq!(second.all_runs, single.all_runs);
        let closed: Vec<_> = first.closed.iter().chain(&second.closed).cloned().collect();
        assert_eq!(closed, single.closed);
        assert_eq!(
            open_counts(twice.path()).await,
            open_counts(once.path()).await
        );

        // Restore from the checkpoint when the database is gone.
        let restored = tempfile::tempdir().unwrap();
        let first = run(&config(restored.path(), 20_000)).await.unwrap();
        std::fs::remove_dir_all(sled_dir(restored.path())).unwrap();
        let second = run(&config(restored.path(), 20_000)).await.unwrap();
        assert!(
            matches!(second.start, Start::Restored { offset: 20_000, .. }),
            "{:?}",
            second.start
        );
        assert_eq!(first.run.counted + second.run.counted, single.run.counted);
        assert_eq!(second.all_runs, single.all_runs);
        assert_eq!(
            open_counts(restored.path()).await,
            open_counts(once.path()).await
        );

        // A different stream is refused rather than mixed in.
        let mut other = config(twice.path(), 1_000);
        other.stream.seed = 7;
        assert!(run(&other).await.is_err());
    }

    #[tokio::test]
    async fn reset_starts_over_but_spares_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut config = config(&data, 2_000);
        run(&config).await.unwrap();
        config.reset = true;
        let again = run(&config).await.unwrap();
        assert_eq!((again.start.clone(), again.start_offset), (Start::Fresh, 0));
        std::fs::write(data.join("notes.txt"), b"keep me").unwrap();
        assert!(run(&config).await.is_err());
        assert!(data.join("notes.txt").exists());
    }

    #[tokio::test]
    async fn memory_backend_processes_without_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 10_000);
        config.backend = BackendKind::Memory;
        let first = run(&config).await.unwrap();
        let second = run(&config).await.unwrap();
        assert_eq!(first.start, Start::NotPersistent);
        assert_eq!(second.start_offset, 0);
        assert_eq!(first.all_runs, second.all_runs);
        assert_eq!(first.run.duplicates, first.redeliveries);
        assert!(checkpoint_path(dir.path(), BackendKind::Memory).exists());
    }
}
