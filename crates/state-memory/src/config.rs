//! Configuration of [`crate::MemoryStateBackend`].

use std::time::Duration;

use state_core::Limits;

use crate::MemoryStateBackend;

/// How often expired entries are swept when nothing else is configured.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Latency is timed for one operation in this many by default (two clock reads cost about as
/// much as a hot-key lookup, so timing every call would halve the throughput).
pub const DEFAULT_LATENCY_SAMPLE_RATE: u32 = 16;

/// Builds a [`MemoryStateBackend`].
///
/// ```
/// use std::time::Duration;
/// use state_memory::MemoryStateBackend;
///
/// let backend = MemoryStateBackend::builder()
///     .ttl(Duration::from_secs(60))
///     .cleanup_interval(Duration::from_secs(10))
///     .max_entries(1_000_000)
///     .build();
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryConfig {
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) cleanup_interval: Duration,
    pub(crate) initial_capacity: usize,
    pub(crate) max_entries: Option<usize>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) limits: Limits,
    pub(crate) latency_sample_rate: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            default_ttl: None,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            initial_capacity: 0,
            max_entries: None,
            max_bytes: None,
            limits: Limits::default(),
            latency_sample_rate: DEFAULT_LATENCY_SAMPLE_RATE,
        }
    }
}

impl MemoryConfig {
    /// A TTL applied to every write that does not give its own (`put`, `batch_put`,
    /// `compare_and_swap`, `set_if_not_exists` without a TTL). It follows the TTL rule of
    /// [`state_core::Limits::check_ttl`] (1 ms to 100 years): outside it, those writes fail with
    /// `InvalidInput` (this builder cannot fail, so the check happens on write).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often the background task removes expired entries (default 60 s, at least 1 ms).
    /// Expired entries are invisible to every read whether or not the sweep has run; the sweep
    /// only returns their memory.
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Pre-allocates room for `n` entries.
    pub fn capacity(mut self, n: usize) -> Self {
        self.initial_capacity = n;
        self
    }

    /// Refuses writes of new keys with [`state_core::ErrorKind::CapacityExceeded`] once `n`
    /// entries are stored (expired entries are swept first). Nothing is evicted silently.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// Refuses writes that would take the stored keys and values over `n` bytes (plus a fixed
    /// per-entry overhead of [`crate::ENTRY_OVERHEAD`] bytes).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// Key and value size limits (defaults: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Times one operation in `n` for the latency figures of `stats()` (default 16; 1 times
    /// every operation). Counters always count every operation.
    pub fn latency_sample_rate(mut self, n: u32) -> Self {
        self.latency_sample_rate = n.max(1);
        self
    }

    /// Builds the backend. The sweeper task starts with the first expiring write, on the tokio
    /// runtime of that call; outside a runtime, expired entries are removed when touched.
    pub fn build(self) -> MemoryStateBackend {
        MemoryStateBackend::from_config(&self)
    }
}
