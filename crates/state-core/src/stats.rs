//! Operation statistics: counters and latency percentiles kept without a global lock.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use histogram::{AtomicHistogram, Histogram};

use crate::StateResult;

/// A snapshot of a backend's statistics, as returned by [`crate::StateBackend::stats`].
///
/// ```
/// use state_core::StateStats;
///
/// let mut stats = StateStats::default();
/// stats.hits = 3;
/// stats.misses = 1;
/// assert_eq!(stats.hit_rate(), 0.75);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateStats {
    /// Point reads (`get`, `contains`, and each key of a batch read).
    pub gets: u64,
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing (or an expired value).
    pub misses: u64,
    /// Writes (`put`, `put_with_ttl`, atomic writes, and each entry of a batch write).
    pub puts: u64,
    /// Deletes (`delete`, `get_and_delete`, and each key of a batch delete).
    pub deletes: u64,
    /// Every other operation (listing, counting, clearing, scans).
    pub other_ops: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Mean latency of the sampled operations, in microseconds.
    pub avg_latency_us: f64,
    /// Median latency of the sampled operations, in microseconds.
    pub p50_latency_us: f64,
    /// 99th percentile latency of the sampled operations, in microseconds.
    pub p99_latency_us: f64,
    /// How many operations were timed (backends may time one operation in N).
    pub latency_samples: u64,
    /// Time since the statistics started.
    pub uptime: Duration,
    /// Backend-specific figures (table size, dead tuples, evictions, ...), by name.
    pub details: BTreeMap<String, f64>,
    /// Statistics of the wrapped backend, for caches and other layers.
    pub inner: Option<Box<StateStats>>,
}

impl StateStats {
    /// Fraction of reads that found a value, in `0.0..=1.0` (0 when nothing was read).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// All operations counted.
    pub fn total_ops(&self) -> u64 {
        self.gets + self.puts + self.deletes + self.other_ops
    }

    /// Mean operations per second since the statistics started.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.uptime.as_secs_f64();
        if secs > 0.0 {
            self.total_ops() as f64 / secs
        } else {
            0.0
        }
    }
}

/// The kind of operation a [`StatsRecorder`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A point read.
    Get,
    /// A write.
    Put,
    /// A delete.
    Delete,
    /// Anything else.
    Other,
}

/// Counter stripes owned by one thread each: written without locked instructions.
const OWNED_STRIPES: usize = 32;
/// Counter stripes shared by the threads past the first `OWNED_STRIPES`: atomic adds.
const SHARED_STRIPES: usize = 8;
/// Latency histograms (sampled, so atomic adds cost little).
const HISTOGRAMS: usize = 8;
const GROUPING_POWER: u8 = 4;
const MAX_VALUE_POWER: u8 = 40;

#[repr(align(128))]
#[derive(Default, Debug)]
struct Counters {
    gets: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_samples: AtomicU64,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// (this thread's index in the process, sampling tick).
    static LOCAL: Cell<(usize, u32)> = const { Cell::new((usize::MAX, 0)) };
}

/// A started operation: the counters it lands on and, when sampled, when it began.
#[derive(Debug, Clone, Copy)]
#[must_use = "pass the timer back to StatsRecorder::record"]
pub struct OpTimer<'a> {
    counters: &'a Counters,
    exclusive: bool,
    histogram: usize,
    started: Option<Instant>,
}

/// Adds `n` to a counter. The first [`OWNED_STRIPES`] threads of the process each own a
/// stripe and are its only writer, so a plain load and store suffice: no locked instruction,
/// which on x86 would also stop the CPU from overlapping the caller's memory accesses.
#[inline]
fn bump(counter: &AtomicU64, n: u64, exclusive: bool) {
    if exclusive {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        counter.fetch_add(n, Relaxed);
    }
}

/// Lock-free operation statistics for backend implementors.
///
/// Counters live in cache-line-padded stripes: each of the process's first 32 threads owns
/// one and updates it without atomic read-modify-write instructions; later threads share 8
/// stripes with atomic adds. Tasks on different threads never contend on one counter. Latency
/// goes into atomic log-linear histograms (about 6% relative error). Timing every operation
/// costs two clock reads, which matters for an in-memory backend, so latency can be sampled
/// one operation in `sample_every`.
///
/// ```
/// use state_core::{OpKind, StatsRecorder};
///
/// let stats = StatsRecorder::new(1);
/// let timer = stats.start();
/// // ... do the read ...
/// stats.record_get(timer, true);
/// let snapshot = stats.snapshot();
/// assert_eq!((snapshot.gets, snapshot.hits), (1, 1));
/// assert_eq!(snapshot.latency_samples, 1);
/// ```
pub struct StatsRecorder {
    counters: Box<[Counters]>,
    histograms: Box<[AtomicHistogram]>,
    sample_mask: u32,
    started: Instant,
}

impl std::fmt::Debug for StatsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsRecorder")
            .field("sample_every", &(self.sample_mask + 1))
            .finish_non_exhaustive()
    }
}

impl Default for StatsRecorder {
    fn default() -> Self {
        Self::new(1)
    }
}

impl StatsRecorder {
    /// A recorder timing one operation in `sample_every` (rounded up to a power of two;
    /// 1 times every operation).
    pub fn new(sample_every: u32) -> Self {
        let sample_every = sample_every.max(1).next_power_of_two();
        Self {
            counters: (0..OWNED_STRIPES + SHARED_STRIPES)
                .map(|_| Counters::default())
                .collect(),
            histograms: (0..HISTOGRAMS)
                .map(|_| {
                    AtomicHistogram::new(GROUPING_POWER, MAX_VALUE_POWER)
                        .expect("valid histogram parameters")
                })
                .collect(),
            sample_mask: sample_every - 1,
            started: Instant::now(),
        }
    }

    /// Starts timing an operation.
    #[inline]
    pub fn start(&self) -> OpTimer<'_> {
        let (thread, sampled) = LOCAL.with(|local| {
            let (mut thread, tick) = local.get();
            if thread == usize::MAX {
                thread = NEXT_THREAD.fetch_add(1, Relaxed);
            }
            local.set((thread, tick.wrapping_add(1)));
            (thread, tick & self.sample_mask == 0)
        });
        let (index, exclusive) = if thread < OWNED_STRIPES {
            (thread, true)
        } else {
            (OWNED_STRIPES + thread % SHARED_STRIPES, false)
        };
        OpTimer {
            counters: &self.counters[index],
            exclusive,
            histogram: thread % HISTOGRAMS,
            started: sampled.then(Instant::now),
        }
    }

    #[inline]
    fn finish<'a>(&self, timer: OpTimer<'a>) -> (&'a Counters, bool) {
        if let Some(started) = timer.started {
            self.record_latency(&timer, started);
        }
        (timer.counters, timer.exclusive)
    }

    #[cold]
    fn record_latency(&self, timer: &OpTimer<'_>, started: Instant) {
        let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        bump(&timer.counters.latency_sum_ns, nanos, timer.exclusive);
        bump(&timer.counters.latency_samples, 1, timer.exclusive);
        // Values past the histogram's range (~18 min) are clamped into its last bucket.
        let _ = self.histograms[timer.histogram].increment(nanos.min((1 << MAX_VALUE_POWER) - 1));
    }

    /// Records a point read and whether it found a value.
    #[inline]
    pub fn record_get(&self, timer: OpTimer<'_>, hit: bool) {
        let (c, exclusive) = self.finish(timer);
        bump(if hit { &c.hits } else { &c.misses }, 1, exclusive);
    }

    /// Records a batch read of `hits + misses` keys.
    #[inline]
    pub fn record_batch_get(&self, timer: OpTimer<'_>, hits: u64, misses: u64) {
        let (c, exclusive) = self.finish(timer);
        bump(&c.hits, hits, exclusive);
        bump(&c.misses, misses, exclusive);
    }

    /// Records `n` operations of `kind` finished as one call (a batch counts each entry).
    /// Reads recorded here count as reads without a hit or miss.
    #[inline]
    pub fn record(&self, timer: OpTimer<'_>, kind: OpKind, n: u64) {
        let (c, exclusive) = self.finish(timer);
        let counter = match kind {
            OpKind::Get => &c.gets,
            OpKind::Put => &c.puts,
            OpKind::Delete => &c.deletes,
            OpKind::Other => &c.other,
        };
        bump(counter, n, exclusive);
    }

    /// Records a failed operation.
    #[inline]
    pub fn record_error(&self, timer: OpTimer<'_>) {
        let (c, exclusive) = self.finish(timer);
        bump(&c.errors, 1, exclusive);
    }

    /// Records the outcome of a call: an error counts as an error, success as `n` ops of `kind`.
    #[inline]
    pub fn observe<T>(&self, timer: OpTimer<'_>, kind: OpKind, n: u64, result: &StateResult<T>) {
        match result {
            Ok(_) => self.record(timer, kind, n),
            Err(_) => self.record_error(timer),
        }
    }

    /// Adds up the stripes into a [`StateStats`].
    pub fn snapshot(&self) -> StateStats {
        let mut stats = StateStats {
            uptime: self.started.elapsed(),
            ..StateStats::default()
        };
        let mut latency_sum = 0u64;
        let mut merged: Option<Histogram> = None;
        for c in &*self.counters {
            let (hits, misses) = (c.hits.load(Relaxed), c.misses.load(Relaxed));
            stats.gets += c.gets.load(Relaxed) + hits + misses;
            stats.hits += hits;
            stats.misses += misses;
            stats.puts += c.puts.load(Relaxed);
            stats.deletes += c.deletes.load(Relaxed);
            stats.other_ops += c.other.load(Relaxed);
            stats.errors += c.errors.load(Relaxed);
            latency_sum += c.latency_sum_ns.load(Relaxed);
            stats.latency_samples += c.latency_samples.load(Relaxed);
        }
        for histogram in &*self.histograms {
            let loaded = histogram.load();
            merged = Some(match merged {
                None => loaded,
                Some(acc) => acc.wrapping_add(&loaded).unwrap_or(acc),
            });
        }
        if stats.latency_samples > 0 {
            stats.avg_latency_us = latency_sum as f64 / stats.latency_samples as f64 / 1000.0;
            if let Some(hist) = merged {
                stats.p50_latency_us = percentile_us(&hist, 0.5);
                stats.p99_latency_us = percentile_us(&hist, 0.99);
            }
        }
        stats
    }
}

fn percentile_us(hist: &Histogram, q: f64) -> f64 {
    hist.quantile(q)
        .ok()
        .flatten()
        .and_then(|result| result.entries().values().next().cloned())
        .map_or(0.0, |bucket| {
            (bucket.start() + bucket.end()) as f64 / 2.0 / 1000.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_recorded_latencies() {
        let stats = StatsRecorder::new(1);
        for _ in 0..100 {
            let timer = stats.start();
            stats.record(timer, OpKind::Put, 1);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.puts, 100);
        assert_eq!(snap.latency_samples, 100);
        assert!(snap.p99_latency_us >= snap.p50_latency_us);
    }

    #[test]
    fn sampling_times_one_in_n() {
        let stats = StatsRecorder::new(16);
        for _ in 0..160 {
            let timer = stats.start();
            stats.record_get(timer, false);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.gets, 160);
        assert_eq!(snap.misses, 160);
        assert_eq!(snap.latency_samples, 10);
        assert!(snap.hit_rate().abs() < f64::EPSILON);
    }

    #[test]
    fn threads_count_into_one_snapshot() {
        let stats = std::sync::Arc::new(StatsRecorder::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let timer = stats.start();
                        stats.record_get(timer, i % 2 == 0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let snap = stats.snapshot();
        assert_eq!(snap.gets, 4000);
        assert!((snap.hit_rate() - 0.5).abs() < f64::EPSILON);
    }
}
