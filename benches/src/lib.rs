//! Shared machinery for the benches: driving raw clients and backends the same way, recording
//! what criterion measured, and printing raw-vs-ours ratios.
//!
//! Criterion's own report compares a benchmark with its previous run; the question here is
//! different (how close is our backend to the raw engine it wraps, in the same run), so every
//! routine also records its samples here and [`Ratios`] prints `ours / raw` throughput per
//! pair, with the target, at the end of each bench binary.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use std::time::{Duration, Instant};

pub use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Whether the binary runs as a benchmark (`cargo bench`), not in criterion's test mode
/// (`cargo test --benches`, `-- --test`), where each routine runs once and nothing is reported.
pub fn is_bench_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn samples() -> &'static Mutex<BTreeMap<String, Vec<f64>>> {
    static SAMPLES: OnceLock<Mutex<BTreeMap<String, Vec<f64>>>> = OnceLock::new();
    SAMPLES.get_or_init(Default::default)
}

/// Records one criterion sample (`ops` operations in `elapsed`) under `id`.
pub fn record(id: &str, ops: u64, elapsed: Duration) {
    if ops == 0 {
        return;
    }
    let ns_per_op = elapsed.as_nanos() as f64 / ops as f64;
    samples()
        .lock()
        .expect("samples lock")
        .entry(id.to_owned())
        .or_default()
        .push(ns_per_op);
}

/// Median nanoseconds per operation recorded under `id`.
pub fn median_ns(id: &str) -> Option<f64> {
    let map = samples().lock().expect("samples lock");
    let mut v = map.get(id)?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Runs `iters` operations split over `tasks` tokio tasks on `rt` and returns the wall time.
/// Raw clients and backends go through this same driver (a spawned task per worker, one
/// `block_on` per sample), so the comparison measures the backend, not the harness.
///
/// `worker(task, n, timed)` runs `n` operations and, when `timed`, returns their latencies.
pub fn drive<W, Fut>(rt: &tokio::runtime::Runtime, tasks: usize, iters: u64, worker: &W) -> Duration
where
    W: Fn(usize, u64, bool) -> Fut,
    Fut: Future<Output = Option<Histogram<u64>>> + Send + 'static,
{
    let per_task = iters.div_ceil(tasks as u64);
    let futures: Vec<Fut> = (0..tasks).map(|t| worker(t, per_task, false)).collect();
    rt.block_on(async move {
        let start = Instant::now();
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        for h in handles {
            h.await.expect("bench task");
        }
        start.elapsed()
    })
}

/// Per-operation latency of `ops` sequential operations in one spawned task: (p50, p99) µs.
pub fn latency<W, Fut>(rt: &tokio::runtime::Runtime, ops: u64, worker: &W) -> (f64, f64)
where
    W: Fn(usize, u64, bool) -> Fut,
    Fut: Future<Output = Option<Histogram<u64>>> + Send + 'static,
{
    let fut = worker(0, ops, true);
    let hist = rt
        .block_on(async move { tokio::spawn(fut).await.expect("latency task") })
        .expect("timed run returns a histogram");
    (
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

/// Everything a workload needs, shared by its tasks.
pub struct Fixture<R> {
    /// The raw engine or client.
    pub raw: R,
    /// Our backend, used only through the trait object.
    pub ours: Arc<dyn state_core::StateBackend>,
    /// The key set.
    pub keys: Vec<Vec<u8>>,
    /// The order keys are visited in.
    pub order: Vec<u32>,
    /// Bytes per written value.
    pub value_size: usize,
}

/// Builds a worker for [`drive`] and [`latency`]: `worker!(fixture, |f, key, value| body)`
/// runs `body` once per operation with `f: &Fixture`, the next `key: &[u8]` in the fixture's
/// order (each task starts at a different offset) and `value: &[u8]`, a buffer whose first
/// 8 bytes change every operation (sled skips writes of an identical value). The form
/// `|f, key, value, task|` also names the task's index (`0..tasks`).
#[macro_export]
macro_rules! worker {
    ($fixture:expr, |$f:ident, $key:ident, $value:ident| $body:expr) => {
        $crate::worker!($fixture, |$f, $key, $value, _task| $body)
    };
    ($fixture:expr, |$f:ident, $key:ident, $value:ident, $task:ident| $body:expr) => {{
        let fixture = $fixture.clone();
        move |task: usize, n: u64, timed: bool| {
            let $f = fixture.clone();
            let $task = task;
            async move {
                let mut hist = timed.then(|| $crate::Histogram::<u64>::new(3).expect("histogram"));
                let len = $f.order.len();
                let mut pos = task * len / 2 + task;
                let mut buf = vec![0u8; $f.value_size.max(8)];
                for i in 0..n {
                    let $key: &[u8] = &$f.keys[$f.order[pos % len] as usize];
                    pos += 1;
                    buf[..8].copy_from_slice(&i.to_le_bytes());
                    let $value: &[u8] = &buf[..$f.value_size];
                    let start = hist.as_ref().map(|_| std::time::Instant::now());
                    $body;
                    if let (Some(h), Some(s)) = (hist.as_mut(), start) {
                        h.record(s.elapsed().as_nanos() as u64).ok();
                    }
                }
                hist
            }
        }
    }};
}

/// Benches one raw-vs-ours pair in a criterion group named `group`, and, in bench mode, adds
/// its ratio (and, for single-task runs, per-operation latency) to `ratios`.
#[allow(clippy::too_many_arguments)]
pub fn pair<WR, FR, WO, FO>(
    c: &mut criterion::Criterion,
    ratios: &mut Ratios,
    rt: &tokio::runtime::Runtime,
    group: &str,
    tasks: usize,
    target: f64,
    raw: &WR,
    ours: &WO,
) where
    WR: Fn(usize, u64, bool) -> FR,
    FR: Future<Output = Option<Histogram<u64>>> + Send + 'static,
    WO: Fn(usize, u64, bool) -> FO,
    FO: Future<Output = Option<Histogram<u64>>> + Send + 'static,
{
    let raw_id = format!("{group}/raw");
    let ours_id = format!("{group}/ours");
    let mut g = c.benchmark_group(group);
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("raw", |b| {
        b.iter_custom(|iters| {
            let d = drive(rt, tasks, iters, raw);
            record(&raw_id, iters, d);
            d
        });
    });
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let d = drive(rt, tasks, iters, ours);
            record(&ours_id, iters, d);
            d
        });
    });
    g.finish();
    if is_bench_mode()
        && let Some(p) = ratios.add(group, &raw_id, &ours_id, target)
        && tasks == 1
    {
        // About one second of operations, at most 100k.
        let ops = (p.raw_ops as u64).clamp(1_000, 100_000);
        p.latency = Some((latency(rt, ops, raw), latency(rt, ops, ours)));
    }
}

/// A runtime with two worker threads (the machine's core count) for every bench.
pub fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    )
}

/// `n` distinct 16-byte keys (`prefix` then a zero-padded number).
pub fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut k = format!("{prefix}{i:0>width$}", width = 16 - prefix.len()).into_bytes();
            k.truncate(16);
            k
        })
        .collect()
}

/// A fixed random permutation of `0..n` (the access order of a "random" key set).
pub fn shuffled(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    order
}

/// One raw-vs-ours comparison line.
#[derive(Debug, Clone)]
pub struct Pair {
    /// What was measured.
    pub name: String,
    /// Raw throughput, operations per second.
    pub raw_ops: f64,
    /// Our throughput, operations per second.
    pub ours_ops: f64,
    /// `ours_ops / raw_ops`.
    pub ratio: f64,
    /// The ratio the design targets.
    pub target: f64,
    /// (p50, p99) µs of raw and ours, when measured.
    pub latency: Option<((f64, f64), (f64, f64))>,
}

/// Collects pairs and prints them as a table.
#[derive(Debug, Default)]
pub struct Ratios {
    pairs: Vec<Pair>,
}

impl Ratios {
    /// Adds the pair recorded under `raw_id` / `ours_id`; prints it at once.
    pub fn add(
        &mut self,
        name: &str,
        raw_id: &str,
        ours_id: &str,
        target: f64,
    ) -> Option<&mut Pair> {
        let raw = median_ns(raw_id)?;
        let ours = median_ns(ours_id)?;
        let pair = Pair {
            name: name.to_owned(),
            raw_ops: 1e9 / raw,
            ours_ops: 1e9 / ours,
            ratio: raw / ours,
            target,
            latency: None,
        };
        println!(
            "RATIO {:<44} raw {:>12.0} ops/s  ours {:>12.0} ops/s  ratio {:.2}x (target >= {:.2}x) {}",
            pair.name,
            pair.raw_ops,
            pair.ours_ops,
            pair.ratio,
            pair.target,
            if pair.ratio >= pair.target {
                "ok"
            } else {
                "BELOW TARGET"
            }
        );
        self.pairs.push(pair);
        self.pairs.last_mut()
    }

    /// Prints every pair as a Markdown table (pasted into the docs and closing notes).
    pub fn print_table(&self, title: &str) {
        if self.pairs.is_empty() {
            return;
        }
        println!("\n### {title}\n");
        println!(
            "| workload | raw ops/s | ours ops/s | ratio | target | raw p50/p99 µs | ours p50/p99 µs |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for p in &self.pairs {
            let lat = p.latency.map_or_else(
                || ("-".to_owned(), "-".to_owned()),
                |((r50, r99), (o50, o99))| {
                    (
                        format!("{r50:.2} / {r99:.2}"),
                        format!("{o50:.2} / {o99:.2}"),
                    )
                },
            );
            println!(
                "| {} | {:.0} | {:.0} | {:.2}x | {:.2}x | {} | {} |",
                p.name, p.raw_ops, p.ours_ops, p.ratio, p.target, lat.0, lat.1
            );
        }
    }
}

/// Criterion settings shared by the benches: short warm-up and measurement, since each bench
/// binary runs dozens of pairs on a 2-core machine.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

/// The workspace README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The Rust examples of `docs/backends.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/backends.md")]
struct BackendsDoctests;

/// The Rust examples of `docs/architecture.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/architecture.md")]
struct ArchitectureDoctests;
