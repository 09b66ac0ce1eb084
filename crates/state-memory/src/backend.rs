//! The DashMap-backed [`MemoryStateBackend`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use futures_util::stream;
use state_core::{
    Capabilities, Entry, ErrorKind, Limits, OpKind, ScanStream, StateBackend, StateError,
    StateFuture, StateResult, StateStats, StatsRecorder, Sweeper,
};

use crate::config::MemoryConfig;

/// Bytes counted per entry on top of its key and value, for `max_bytes` and `memory_usage`
/// (the map slot, the two `Bytes` handles, the expiry and the allocations' headers).
pub const ENTRY_OVERHEAD: usize = 96;

type Map = DashMap<Bytes, Slot, foldhash::fast::RandomState>;

#[derive(Clone)]
struct Slot {
    value: Bytes,
    expires: Option<Instant>,
}

impl Slot {
    #[inline]
    fn is_live(&self) -> bool {
        match self.expires {
            None => true,
            Some(at) => Instant::now() < at,
        }
    }

    #[inline]
    fn live_value(&self) -> Option<&[u8]> {
        self.is_live().then_some(&self.value[..])
    }

    fn ttl(&self) -> Option<Duration> {
        self.expires
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

fn cost(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + ENTRY_OVERHEAD
}

/// Entry and byte counters of a bounded backend.
struct Budget {
    max_entries: usize,
    max_bytes: usize,
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

impl Budget {
    /// Reserves room for `new_entries` more entries and `delta` more bytes; false when full.
    fn try_reserve(&self, new_entries: usize, delta: isize) -> bool {
        if new_entries > 0 {
            let before = self.entries.fetch_add(new_entries, Ordering::AcqRel);
            if before + new_entries > self.max_entries {
                self.entries.fetch_sub(new_entries, Ordering::AcqRel);
                return false;
            }
        }
        if delta > 0 {
            let delta = delta.unsigned_abs();
            let before = self.bytes.fetch_add(delta, Ordering::AcqRel);
            if before + delta > self.max_bytes {
                self.bytes.fetch_sub(delta, Ordering::AcqRel);
                if new_entries > 0 {
                    self.entries.fetch_sub(new_entries, Ordering::AcqRel);
                }
                return false;
            }
        } else {
            self.bytes.fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
        }
        true
    }

    fn release(&self, entries: usize, bytes: usize) {
        self.entries.fetch_sub(entries, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

struct Inner {
    map: Map,
    default_ttl: Option<Duration>,
    cleanup_interval: Duration,
    limits: Limits,
    budget: Option<Budget>,
    stats: StatsRecorder,
    sweeper: Sweeper,
}

/// An in-process [`StateBackend`] on a sharded concurrent hash map ([`DashMap`]).
///
/// - Reads return `Bytes` that share the stored buffer (no copy).
/// - TTLs are checked on every read, so an expired entry is invisible at once; a background
///   task removes expired entries every `cleanup_interval` to return their memory. It holds
///   only a weak reference and is aborted when the last clone of the backend is dropped.
/// - Statistics are kept in per-thread striped atomic counters: no lock on the hot path.
/// - With `max_entries` / `max_bytes`, a full backend refuses writes of new data with
///   [`ErrorKind::CapacityExceeded`] instead of evicting state behind the caller's back.
///
/// Clones share the same map.
///
/// ```
/// use std::time::Duration;
/// use state_core::StateBackend;
/// use state_memory::MemoryStateBackend;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let backend = MemoryStateBackend::new(Some(Duration::from_secs(3600)));
/// backend.put(b"user:1001", b"alice").await?;
/// assert!(backend.ttl(b"user:1001").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStateBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStateBackend")
            .field("entries", &self.inner.map.len())
            .field("default_ttl", &self.inner.default_ttl)
            .field("cleanup_interval", &self.inner.cleanup_interval)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStateBackend {
    fn default() -> Self {
        Self::new(None)
    }
}

impl MemoryStateBackend {
    /// A backend whose writes expire after `default_ttl` (when given).
    pub fn new(default_ttl: Option<Duration>) -> Self {
        Self::from_config(&MemoryConfig {
            default_ttl,
            ..MemoryConfig::default()
        })
    }

    /// A backend with room pre-allocated for `capacity` entries (not a bound; see
    /// [`MemoryConfig::max_entries`]).
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryConfig::default().capacity(capacity).build()
    }

    /// Starts a [`MemoryConfig`] builder.
    pub fn builder() -> MemoryConfig {
        MemoryConfig::default()
    }

    pub(crate) fn from_config(config: &MemoryConfig) -> Self {
        let budget = (config.max_entries.is_some() || config.max_bytes.is_some()).then(|| Budget {
            max_entries: config.max_entries.unwrap_or(usize::MAX),
            max_bytes: config.max_bytes.unwrap_or(usize::MAX),
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        });
        Self {
            inner: Arc::new(Inner {
                map: Map::with_capacity_and_hasher(
                    config.initial_capacity,
                    foldhash::fast::RandomState::default(),
                ),
                default_ttl: config.default_ttl,
                cleanup_interval: config.cleanup_interval,
                limits: config.limits,
                budget,
                stats: StatsRecorder::new(config.latency_sample_rate),
                sweeper: Sweeper::new(),
            }),
        }
    }

    /// Removes every expired entry now; returns how many were removed. The background sweeper
    /// calls this every `cleanup_interval`.
    pub fn purge_expired(&self) -> usize {
        self.inner.purge_expired()
    }

    /// Whether the background sweeper task is running.
    pub fn sweeper_running(&self) -> bool {
        self.inner.sweeper.is_running()
    }

    /// The expiry of a write with `ttl`, a checked addition: a TTL outside 1 ms..=[`MAX_TTL`]
    /// (the configured default TTL included) is `InvalidInput`, never a panic.
    ///
    /// [`MAX_TTL`]: state_core::MAX_TTL
    fn expiry(ttl: Option<Duration>) -> StateResult<Option<Instant>> {
        ttl.map(|ttl| Limits::deadline_after(Instant::now(), ttl))
            .transpose()
    }

    /// Starts the sweeper on the current tokio runtime the first time an expiring entry is
    /// written. Outside a runtime, expired entries are removed when touched or purged.
    fn ensure_sweeper(&self) {
        self.inner.sweeper.ensure_started(
            &self.inner,
            self.inner.cleanup_interval,
            |inner: Arc<Inner>| async move {
                let removed = inner.purge_expired();
                if removed > 0 {
                    tracing::trace!(removed, "memory backend swept expired entries");
                }
            },
        );
    }

    fn write(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> StateResult<()> {
        let ttl = ttl.or(self.inner.default_ttl);
        if ttl.is_some() {
            self.ensure_sweeper();
        }
        let expires = Self::expiry(ttl)?;
        self.inner
            .write(key, Bytes::copy_from_slice(value), expires)
    }
}

impl Inner {
    fn full_error() -> StateError {
        StateError::new(
            ErrorKind::CapacityExceeded,
            "the memory backend is full; the write was refused (raise max_entries/max_bytes or delete state)",
        )
    }

    /// Inserts or replaces `key`. Bounded backends reserve room first and sweep expired
    /// entries once before refusing.
    fn write(&self, key: &[u8], value: Bytes, expires: Option<Instant>) -> StateResult<()> {
        let Some(budget) = &self.budget else {
            if let Some(mut slot) = self.map.get_mut(key) {
                slot.value = value;
                slot.expires = expires;
            } else {
                self.map
                    .insert(Bytes::copy_from_slice(key), Slot { value, expires });
            }
            return Ok(());
        };
        for attempt in 0..2 {
            let admitted = match self.map.entry(Bytes::copy_from_slice(key)) {
                MapEntry::Occupied(mut occupied) => {
                    let delta = value.len() as isize - occupied.get().value.len() as isize;
                    let ok = budget.try_reserve(0, delta);
                    if ok {
                        *occupied.get_mut() = Slot {
                            value: value.clone(),
                            expires,
                        };
                    }
                    ok
                }
                MapEntry::Vacant(vacant) => {
                    let ok = budget.try_reserve(1, cost(key.len(), value.len()) as isize);
                    if ok {
                        vacant.insert(Slot {
                            value: value.clone(),
                            expires,
                        });
                    }
                    ok
                }
            };
            if admitted {
                return Ok(());
            }
            if attempt == 0 {
                self.purge_expired();
            }
        }
        Err(Self::full_error())
    }

    fn forget(&self, key_len: usize, slot: &Slot) {
        if let Some(budget) = &self.budget {
            budget.release(1, cost(key_len, slot.value.len()));
        }
    }

    /// Removes `key` when `keep_if` is false for its slot, under the shard lock.
    fn remove_if(&self, key: &[u8], remove: impl FnOnce(&Slot) -> bool) -> Option<Slot> {
        let (k, slot) = self.map.remove_if(key, |_, slot| remove(slot))?;
        self.forget(k.len(), &slot);
        Some(slot)
    }

    fn purge_expired(&self) -> usize {
        let mut removed = 0;
        self.map.retain(|key, slot| {
            if slot.is_live() {
                true
            } else {
                removed += 1;
                self.forget(key.len(), slot);
                false
            }
        });
        removed
    }

    /// Applies `new` when the live value equals `expected`, atomically under the shard lock.
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<(Bytes, Option<Instant>)>,
    ) -> StateResult<bool> {
        let Some((value, expires)) = new else {
            return Ok(match expected {
                // Delete when the live value matches.
                Some(expected) => self
                    .remove_if(key, |slot| slot.live_value() == Some(expected))
                    .is_some(),
                // "Absent → absent": holds when nothing live is there.
                None => self.map.get(key).is_none_or(|slot| !slot.is_live()),
            });
        };
        let new_bytes = value.len();
        match self.map.entry(Bytes::copy_from_slice(key)) {
            MapEntry::Occupied(mut occupied) => {
                if occupied.get().live_value() != expected {
                    return Ok(false);
                }
                if let Some(budget) = &self.budget {
                    let delta = new_bytes as isize - occupied.get().value.len() as isize;
                    if !budget.try_reserve(0, delta) {
                        return Err(Self::full_error());
                    }
                }
                *occupied.get_mut() = Slot { value, expires };
                Ok(true)
            }
            MapEntry::Vacant(vacant) => {
                if expected.is_some() {
                    return Ok(false);
                }
                if let Some(budget) = &self.budget
                    && !budget.try_reserve(1, cost(key.len(), new_bytes) as isize)
                {
                    return Err(Self::full_error());
                }
                vacant.insert(Slot { value, expires });
                Ok(true)
            }
        }
    }

    fn live_entries(&self, prefix: &[u8]) -> Vec<Entry> {
        self.map
            .iter()
            .filter(|e| e.key().starts_with(prefix) && e.value().is_live())
            .map(|e| Entry {
                key: e.key().clone(),
                value: e.value().value.clone(),
                ttl: e.value().ttl(),
            })
            .collect()
    }
}

impl MemoryStateBackend {
    fn get_now(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        let inner = &*self.inner;
        inner.limits.check_key(key)?;
        let timer = inner.stats.start();
        let value = match inner.map.get(key) {
            Some(slot) if slot.is_live() => Some(slot.value.clone()),
            Some(slot) => {
                drop(slot);
                inner.remove_if(key, |slot| !slot.is_live());
                None
            }
            None => None,
        };
        inner.stats.record_get(timer, value.is_some());
        Ok(value)
    }

    fn put_now(&self, key: &[u8], value: &[u8]) -> StateResult<()> {
        self.inner.limits.check_entry(key, value)?;
        let timer = self.inner.stats.start();
        let result = self.write(key, value, None);
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    fn delete_now(&self, key: &[u8]) -> StateResult<bool> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let removed = self
            .inner
            .remove_if(key, |_| true)
            .is_some_and(|slot| slot.is_live());
        self.inner.stats.record(timer, OpKind::Delete, 1);
        Ok(removed)
    }

    fn contains_now(&self, key: &[u8]) -> StateResult<bool> {
        let inner = &*self.inner;
        inner.limits.check_key(key)?;
        let timer = inner.stats.start();
        let found = inner.map.get(key).is_some_and(|slot| slot.is_live());
        inner.stats.record_get(timer, found);
        Ok(found)
    }
}

#[async_trait]
impl StateBackend for MemoryStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::ready(self.get_now(key))
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::ready(self.put_now(key, value))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::ready(self.delete_now(key))
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.inner.limits.check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let keys = self
            .inner
            .map
            .iter()
            .filter(|e| e.key().starts_with(prefix) && e.value().is_live())
            .map(|e| e.key().clone())
            .collect();
        self.inner.stats.record(timer, OpKind::Other, 1);
        Ok(keys)
    }

    async fn clear(&self) -> StateResult<()> {
        let timer = self.inner.stats.start();
        self.inner.map.retain(|key, slot| {
            self.inner.forget(key.len(), slot);
            false
        });
        self.inner.stats.record(timer, OpKind::Other, 1);
        Ok(())
    }

    async fn count(&self) -> StateResult<usize> {
        let timer = self.inner.stats.start();
        let n = self
            .inner
            .map
            .iter()
            .filter(|e| e.value().is_live())
            .count();
        self.inner.stats.record(timer, OpKind::Other, 1);
        Ok(n)
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::ready(self.contains_now(key))
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.ttl = true;
        caps.atomic = true;
        caps.native_batch = true;
        caps.memory_usage = true;
        caps.limits = self.inner.limits;
        caps.default_ttl = self.inner.default_ttl;
        caps
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        inner.limits.check_keys(keys)?;
        let timer = inner.stats.start();
        let values: Vec<Option<Bytes>> = keys
            .iter()
            .map(|key| {
                inner
                    .map
                    .get(*key)
                    .filter(|slot| slot.is_live())
                    .map(|slot| slot.value.clone())
            })
            .collect();
        let hits = values.iter().filter(|v| v.is_some()).count() as u64;
        inner
            .stats
            .record_batch_get(timer, hits, keys.len() as u64 - hits);
        Ok(values)
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.inner.limits.check_entries(entries)?;
        let timer = self.inner.stats.start();
        let mut result = Ok(());
        for (key, value) in entries {
            result = self.write(key, value, None);
            if result.is_err() {
                break;
            }
        }
        self.inner
            .stats
            .observe(timer, OpKind::Put, entries.len() as u64, &result);
        result
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.inner.limits.check_keys(keys)?;
        let timer = self.inner.stats.start();
        let removed = keys
            .iter()
            .filter(|key| {
                self.inner
                    .remove_if(key, |_| true)
                    .is_some_and(|slot| slot.is_live())
            })
            .count();
        self.inner
            .stats
            .record(timer, OpKind::Delete, keys.len() as u64);
        Ok(removed)
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.inner.limits.check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let result = self.write(key, value, Some(ttl));
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    /// One map lookup: the value and its expiry come from the same slot.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        let inner = &*self.inner;
        inner.limits.check_key(key)?;
        let timer = inner.stats.start();
        let found = inner
            .map
            .get(key)
            .filter(|slot| slot.is_live())
            .map(|slot| (slot.value.clone(), slot.ttl()));
        inner.stats.record_get(timer, found.is_some());
        Ok(found)
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.inner.limits.check_key(key)?;
        Ok(self
            .inner
            .map
            .get(key)
            .filter(|slot| slot.is_live())
            .and_then(|slot| slot.ttl()))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.inner.limits.check_swap(key, new)?;
        let timer = self.inner.stats.start();
        let ttl = self.inner.default_ttl;
        if new.is_some() && ttl.is_some() {
            self.ensure_sweeper();
        }
        let expires = if new.is_some() {
            Self::expiry(ttl)?
        } else {
            None
        };
        let new = new.map(|v| (Bytes::copy_from_slice(v), expires));
        let result = self.inner.compare_and_swap(key, expected, new);
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.inner.limits.check_entry(key, value)?;
        Limits::check_optional_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let ttl = ttl.or(self.inner.default_ttl);
        if ttl.is_some() {
            self.ensure_sweeper();
        }
        let new = Some((Bytes::copy_from_slice(value), Self::expiry(ttl)?));
        let result = self.inner.compare_and_swap(key, None, new);
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let value = self
            .inner
            .remove_if(key, Slot::is_live)
            .map(|slot| slot.value);
        self.inner.stats.record(timer, OpKind::Delete, 1);
        Ok(value)
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.inner.limits.check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let mut removed = 0;
        self.inner.map.retain(|key, slot| {
            if key.starts_with(prefix) {
                removed += usize::from(slot.is_live());
                self.inner.forget(key.len(), slot);
                false
            } else {
                true
            }
        });
        self.inner
            .stats
            .record(timer, OpKind::Delete, removed as u64);
        Ok(removed)
    }

    /// Streams a snapshot of the matching entries. The snapshot holds `Bytes` handles that
    /// share the stored buffers (no key or value is copied), taken one shard at a time.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        if let Err(err) = self.inner.limits.check_prefix(prefix) {
            return Box::pin(stream::iter([Err(err)]));
        }
        let timer = self.inner.stats.start();
        let entries = self.inner.live_entries(prefix);
        self.inner.stats.record(timer, OpKind::Other, 1);
        Box::pin(stream::iter(entries.into_iter().map(Ok)))
    }

    async fn stats(&self) -> StateStats {
        let mut stats = self.inner.stats.snapshot();
        stats
            .details
            .insert("entries".into(), self.inner.map.len() as f64);
        stats
    }

    async fn health_check(&self) -> StateResult<bool> {
        Ok(true)
    }

    /// Sums keys, values and [`ENTRY_OVERHEAD`] per entry (walks the map: O(entries)).
    async fn memory_usage(&self) -> StateResult<u64> {
        Ok(self
            .inner
            .map
            .iter()
            .map(|e| cost(e.key().len(), e.value().value.len()) as u64)
            .sum())
    }
}
