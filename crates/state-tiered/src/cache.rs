//! [`CachedStateBackend`]: a moka L1 cache over any backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use moka::Expiry;
use moka::future::Cache;
use state_core::{
    Capabilities, ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats,
    StatsRecorder,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::coherence::{Coherence, InvalidationBus};
use crate::versions::{Stamp, Versions};

/// Bytes an L1 entry costs beyond its key and value (moka's bookkeeping, our slot), for the
/// `max_bytes` weigher.
const ENTRY_OVERHEAD: usize = 160;

/// What writes do to the L1 copy of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WritePolicy {
    /// Write the inner backend, then cache the written value (when no other write of the
    /// key overlapped; otherwise just invalidate). Reads after a write hit L1.
    #[default]
    WriteThrough,
    /// Write the inner backend, then drop the L1 copy; the next read loads it. For
    /// write-heavy keys that are rarely read back.
    WriteAround,
}

/// One cached answer: a value, or a remembered miss (negative caching).
#[derive(Clone)]
pub(crate) struct Slot {
    value: Option<Bytes>,
    stamp: Stamp,
    /// How long the slot may live: the smallest of the cache TTL, the key's own remaining
    /// TTL in the inner backend, and the degraded TTL while invalidations may be missed.
    lifetime: Option<Duration>,
}

struct SlotExpiry;

impl Expiry<Bytes, Slot> for SlotExpiry {
    fn expire_after_create(&self, _key: &Bytes, slot: &Slot, _at: Instant) -> Option<Duration> {
        slot.lifetime
    }

    fn expire_after_update(
        &self,
        _key: &Bytes,
        slot: &Slot,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        slot.lifetime
    }
}

/// What a write left under its key, for write-through.
#[derive(Clone, Copy)]
enum Written<'a> {
    /// This value.
    Value(&'a [u8]),
    /// Nothing (a delete).
    Deleted,
    /// Unknown (an atomic operation that may or may not have applied).
    Unknown,
}

/// Why a load put nothing in L1: a write overlapped it (every waiter then reads the inner
/// backend again), or it failed.
#[derive(Debug)]
enum LoadError {
    Uncacheable,
    Failed(StateError),
}

/// Settings for [`CachedStateBackend`]; see [`CachedStateBackend::builder`].
#[derive(Clone)]
#[must_use]
pub struct CacheBuilder {
    inner: Arc<dyn StateBackend>,
    max_items: Option<u64>,
    max_bytes: Option<u64>,
    ttl: Option<Duration>,
    time_to_idle: Option<Duration>,
    write_policy: WritePolicy,
    negative_ttl: Option<Duration>,
    bus: Option<Arc<dyn InvalidationBus>>,
    degraded_ttl: Duration,
    heartbeat: Duration,
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("inner", &self.inner)
            .field("max_items", &self.max_items)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .field("write_policy", &self.write_policy)
            .finish_non_exhaustive()
    }
}

impl CacheBuilder {
    /// Bounds the cache by entry count (least recently and least frequently used entries
    /// are evicted first: moka's TinyLFU).
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = Some(n);
        self
    }

    /// Bounds the cache by bytes (key + value + ~160 bytes per entry) instead of count.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// How long an entry may stay cached after it was loaded or written (never longer than
    /// the key's own TTL in the inner backend).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Drops entries not read for this long.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// What writes do to cached copies; see [`WritePolicy`].
    pub fn write_policy(mut self, policy: WritePolicy) -> Self {
        self.write_policy = policy;
        self
    }

    /// Also caches misses (keys the inner backend does not have) for `ttl`. Off by default:
    /// a key written by another process without an invalidation bus would stay invisible
    /// for that long.
    pub fn negative_caching(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Keeps this cache coherent with other instances: every local write is announced on
    /// `bus`, and every write announced by another instance invalidates the local copy.
    /// Without a bus, other instances' writes are seen when the cached copy expires (`ttl`).
    pub fn invalidation(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Entry lifetime while the invalidation channel is down (messages may be lost; default
    /// 1 s), and how often the channel is probed (default 1 s).
    ///
    /// **Bound on stale reads when the bus hangs or dies:** each instance publishes a
    /// heartbeat every `heartbeat` and a watchdog (a task of its own that never waits on the
    /// bus) checks every half heartbeat that it heard its own within the last three. So a
    /// hung or dead bus is noticed within 3.5 heartbeats; the cache then forgets every copy
    /// and keeps new ones at most `ttl`. Another instance's write is therefore served stale
    /// for at most about 3.5 × `heartbeat` after the bus failed, and copies cached while
    /// degraded live at most `ttl` (with the defaults: 3.5 s and 1 s). Measured in
    /// `tests/cached.rs` (`hung_or_dead_bus_bounds_stale_reads_*`).
    pub fn degraded(mut self, ttl: Duration, heartbeat: Duration) -> Self {
        self.degraded_ttl = ttl;
        self.heartbeat = heartbeat;
        self
    }

    /// Builds the cache; with an invalidation bus, subscribes first (and fails if it cannot).
    pub async fn build(self) -> StateResult<CachedStateBackend> {
        if self.max_items == Some(0) || self.max_bytes == Some(0) {
            return Err(StateError::config("cache size must be at least 1"));
        }
        for d in [self.ttl, self.time_to_idle, self.negative_ttl]
            .into_iter()
            .flatten()
            .chain([self.degraded_ttl, self.heartbeat])
        {
            if d.is_zero() {
                return Err(StateError::config(
                    "cache durations must be greater than zero",
                ));
            }
        }
        let stats = Arc::new(CacheCounters::default());
        let evictions = Arc::clone(&stats);
        let mut builder =
            Cache::builder()
                .expire_after(SlotExpiry)
                .eviction_listener(move |_k, _v, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        evictions.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                });
        if let Some(bytes) = self.max_bytes {
            builder = builder.max_capacity(bytes).weigher(|k: &Bytes, v: &Slot| {
                let size = k.len() + v.value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD;
                u32::try_from(size).unwrap_or(u32::MAX)
            });
        } else {
            builder = builder.max_capacity(self.max_items.unwrap_or(10_000));
        }
        if let Some(tti) = self.time_to_idle {
            builder = builder.time_to_idle(tti);
        }
        let shared = Arc::new(Shared {
            l1: builder.build(),
            versions: Versions::new(),
            degraded: AtomicBool::new(false),
        });
        let coherence = match &self.bus {
            Some(bus) => {
                Some(Coherence::start(Arc::clone(bus), Arc::clone(&shared), self.heartbeat).await?)
            }
            None => None,
        };
        Ok(CachedStateBackend {
            caps: self.inner.capabilities(),
            inner: self.inner,
            shared,
            stats,
            coherence,
            ttl: self.ttl,
            write_policy: self.write_policy,
            negative_ttl: self.negative_ttl,
            degraded_ttl: self.degraded_ttl,
        })
    }
}

/// State shared with the coherence task.
pub(crate) struct Shared {
    pub(crate) l1: Cache<Bytes, Slot>,
    pub(crate) versions: Versions,
    /// Set while invalidation messages may be lost: new entries get the short degraded TTL.
    pub(crate) degraded: AtomicBool,
}

impl Shared {
    /// Applies another instance's write of `key`.
    pub(crate) async fn invalidate_remote(&self, key: &[u8]) {
        self.versions.remote_write(key);
        self.l1.invalidate(key).await;
    }

    /// Forgets everything (another instance cleared, or messages were lost).
    pub(crate) fn invalidate_all(&self) {
        self.versions.bump_generation();
        self.l1.invalidate_all();
    }
}

struct CacheCounters {
    /// L1 hits and misses, in per-thread stripes (no shared cache line on the hit path);
    /// latency sampled one call in 64.
    ops: StatsRecorder,
    loads: AtomicU64,
    evictions: AtomicU64,
}

impl Default for CacheCounters {
    fn default() -> Self {
        Self {
            ops: StatsRecorder::new(64),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }
}

/// A moka L1 cache in front of any [`StateBackend`]: the seed's `CachedStateBackend`.
///
/// - Reads are served from L1 when cached and current, else loaded from the inner backend
///   (`get_with_ttl`, one call) with at most one load per key at a time: concurrent misses
///   of one key wait for the same load.
/// - An L1 copy never outlives the inner key's TTL, nor the cache `ttl`.
/// - Writes go to the inner backend first; then the L1 copy is replaced
///   ([`WritePolicy::WriteThrough`]) or dropped ([`WritePolicy::WriteAround`]). Atomic
///   operations, TTL writes, batches and prefix deletes run on the inner backend and
///   invalidate. Per-stripe write versions guarantee that a value loaded or written while
///   another write of the same key was in flight is never served from L1 afterwards.
/// - `clear` clears L1 and the inner backend's own namespace only.
/// - With an [`InvalidationBus`] (Redis pub/sub or PostgreSQL `LISTEN`/`NOTIFY`), every
///   local write invalidates the other instances' copies; see the crate docs for the
///   measured staleness bound and what happens when the bus is down.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use state_core::StateBackend;
/// use state_memory::MemoryStateBackend;
/// use state_tiered::CachedStateBackend;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let slow = Arc::new(MemoryStateBackend::new(None));
/// let cached = CachedStateBackend::new(slow, 1000, Some(Duration::from_secs(60)));
/// cached.put(b"user:1", b"alice").await?;
/// assert!(cached.get(b"user:1").await?.is_some()); // an L1 hit
/// println!("hit rate {:.2}", cached.stats().await.hit_rate());
/// # Ok(()) }
/// ```
pub struct CachedStateBackend {
    inner: Arc<dyn StateBackend>,
    /// The inner backend's capabilities (fixed for its life): limits, TTL support, the TTL a
    /// plain put applies.
    caps: Capabilities,
    shared: Arc<Shared>,
    stats: Arc<CacheCounters>,
    coherence: Option<Coherence>,
    ttl: Option<Duration>,
    write_policy: WritePolicy,
    negative_ttl: Option<Duration>,
    degraded_ttl: Duration,
}

impl fmt::Debug for CachedStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStateBackend")
            .field("inner", &self.inner)
            .field("entries", &self.shared.l1.entry_count())
            .field("ttl", &self.ttl)
            .field("write_policy", &self.write_policy)
            .field("coherent", &self.coherence.is_some())
            .finish_non_exhaustive()
    }
}

impl CachedStateBackend {
    /// The seed's constructor: at most `max_items` entries, each cached for at most `ttl`,
    /// write-through, no invalidation bus (other instances' writes are seen when the copy
    /// expires).
    pub fn new(inner: Arc<dyn StateBackend>, max_items: u64, ttl: Option<Duration>) -> Self {
        let mut builder = Self::builder(inner).max_items(max_items.max(1));
        if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
            builder = builder.ttl(ttl);
        }
        let stats = Arc::new(CacheCounters::default());
        let evictions = Arc::clone(&stats);
        let l1 = Cache::builder()
            .max_capacity(builder.max_items.unwrap_or(1))
            .expire_after(SlotExpiry)
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            caps: builder.inner.capabilities(),
            inner: builder.inner,
            shared: Arc::new(Shared {
                l1,
                versions: Versions::new(),
                degraded: AtomicBool::new(false),
            }),
            stats,
            coherence: None,
            ttl: builder.ttl,
            write_policy: WritePolicy::WriteThrough,
            negative_ttl: None,
            degraded_ttl: builder.degraded_ttl,
        }
    }

    /// A builder with the defaults: 10,000 entries, no TTL, write-through, no negative
    /// caching, no invalidation bus.
    pub fn builder(inner: Arc<dyn StateBackend>) -> CacheBuilder {
        CacheBuilder {
            inner,
            max_items: None,
            max_bytes: None,
            ttl: None,
            time_to_idle: None,
            write_policy: WritePolicy::WriteThrough,
            negative_ttl: None,
            bus: None,
            degraded_ttl: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    /// Entries in L1 now (approximate until moka's pending maintenance runs).
    pub fn cached_entries(&self) -> u64 {
        self.shared.l1.entry_count()
    }

    /// Drops every L1 entry (the inner backend is untouched).
    pub fn invalidate_all(&self) {
        self.shared.invalidate_all();
    }

    /// Whether the invalidation bus is connected (always `true` without a bus).
    pub fn is_coherent(&self) -> bool {
        !self.shared.degraded.load(Ordering::Acquire)
    }

    fn lifetime(&self, key_ttl: Option<Duration>, negative: bool) -> Option<Duration> {
        let base = if negative {
            self.negative_ttl
        } else {
            self.ttl
        };
        let degraded = self
            .shared
            .degraded
            .load(Ordering::Acquire)
            .then_some(self.degraded_ttl);
        [base, key_ttl, degraded].into_iter().flatten().min()
    }

    fn slot(&self, value: Option<Bytes>, stamp: Stamp, key_ttl: Option<Duration>) -> Slot {
        let lifetime = self.lifetime(key_ttl, value.is_none());
        Slot {
            value,
            stamp,
            lifetime,
        }
    }

    /// A current L1 slot for `key` (moka checks the entry's expiry on every read).
    async fn cached(&self, key: &[u8]) -> Option<Slot> {
        let slot = self.shared.l1.get(key).await?;
        self.shared
            .versions
            .is_current(key, slot.stamp)
            .then_some(slot)
    }

    /// The hit path without a boxed future: moka's lookup completes without waiting on
    /// anything in the common case; when it would wait, the slow path runs instead.
    fn hit_now(&self, key: &[u8]) -> Option<Slot> {
        let timer = self.stats.ops.start();
        let slot = self.shared.l1.get(key).now_or_never()??;
        if !self.shared.versions.is_current(key, slot.stamp) {
            return None;
        }
        self.stats.ops.record_get(timer, true);
        Some(slot)
    }

    /// Reads through L1; concurrent misses of one key share one inner load.
    async fn read(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        let timer = self.stats.ops.start();
        if let Some(slot) = self.cached(key).await {
            self.stats.ops.record_get(timer, true);
            return Ok(slot.value);
        }
        self.stats.ops.record_get(timer, false);
        let owned = Bytes::copy_from_slice(key);
        // A stale slot is replaced by the load below; drop it first so try_get_with loads.
        self.shared.l1.invalidate(key).await;
        let load = async {
            self.stats.loads.fetch_add(1, Ordering::Relaxed);
            let stamp = self.shared.versions.fill_stamp(key);
            let asked = Instant::now();
            let loaded = self
                .inner
                .get_for_cache(key)
                .await
                .map_err(LoadError::Failed)?
                // The TTL was read at some point during the round trip: count it from when
                // the request left, so the copy cannot outlive the key.
                .map(|(v, ttl)| (v, ttl.map(|t| t.saturating_sub(asked.elapsed()))));
            let cacheable = stamp.filter(|s| self.shared.versions.is_current(key, *s));
            match (loaded, cacheable) {
                (Some((value, key_ttl)), Some(stamp)) => Ok(self.slot(Some(value), stamp, key_ttl)),
                (None, Some(stamp)) if self.negative_ttl.is_some() => {
                    Ok(self.slot(None, stamp, None))
                }
                _ => Err(LoadError::Uncacheable),
            }
        };
        match self.shared.l1.try_get_with(owned, load).await {
            // A shared load (ours or one we joined) is trusted only while its stamp is
            // current: then no write of the key started after the load began, so any write
            // this caller finished before asking is included.
            Ok(slot) if self.shared.versions.is_current(key, slot.stamp) => Ok(slot.value),
            Err(err) => match &*err {
                LoadError::Failed(e) => Err(clone_error(e)),
                // The load overlapped a write, possibly one this caller already finished.
                LoadError::Uncacheable => self.reread(key).await,
            },
            Ok(_) => self.reread(key).await,
        }
    }

    /// Reads the inner backend directly, without caching (after a load raced a write).
    async fn reread(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        Ok(self.inner.get_for_cache(key).await?.map(|(v, _)| v))
    }

    /// Runs a write of `key` on the inner backend, then updates L1: caches `written` (with
    /// `key_ttl`) under write-through when no other write overlapped, else drops the copy.
    async fn write<T>(
        &self,
        key: &[u8],
        written: Written<'_>,
        key_ttl: Option<Duration>,
        op: impl Future<Output = StateResult<T>>,
    ) -> StateResult<T> {
        // Invalid keys never reach the versions or the bus (one bad request must not
        // announce anything).
        self.caps.limits.check_key(key)?;
        let pending = Pending::begin(self, key);
        // The key's TTL runs from when the server applied the write, somewhere during the
        // round trip: count the copy's lifetime from when the request left, so an L1 copy
        // never outlives the key by the write's latency.
        let sent = Instant::now();
        let result = op.await;
        let key_ttl = key_ttl.map(|t| t.saturating_sub(sent.elapsed()));
        let stamp = pending.finish();
        self.shared.l1.invalidate(key).await;
        let value = match written {
            Written::Value(v) => Some(Some(v)),
            Written::Deleted => Some(None),
            Written::Unknown => None,
        };
        if let (Ok(_), Some(stamp), Some(value), WritePolicy::WriteThrough) =
            (&result, stamp, value, self.write_policy)
        {
            let slot = self.slot(value.map(Bytes::copy_from_slice), stamp, key_ttl);
            let expired = key_ttl.is_some_and(|t| t.is_zero());
            if !expired && (slot.value.is_some() || self.negative_ttl.is_some()) {
                self.shared
                    .l1
                    .insert(Bytes::copy_from_slice(key), slot)
                    .await;
            }
        }
        result
    }

    /// A write whose effect on L1 is unknown (atomic operations): invalidate only.
    async fn write_invalidate<T>(
        &self,
        key: &[u8],
        op: impl Future<Output = StateResult<T>>,
    ) -> StateResult<T> {
        self.write(key, Written::Unknown, None, op).await
    }

    /// A write of many keys: every key's copy is dropped.
    async fn write_many<T>(
        &self,
        keys: &[&[u8]],
        op: impl Future<Output = StateResult<T>>,
    ) -> StateResult<T> {
        self.caps.limits.check_keys(keys)?;
        let pending: Vec<Pending<'_>> = keys.iter().map(|k| Pending::begin(self, k)).collect();
        let result = op.await;
        for (key, p) in keys.iter().zip(pending) {
            p.finish();
            self.shared.l1.invalidate(*key).await;
        }
        result
    }

    /// A write of unknown keys (prefix deletes, clear, restore): forget all of L1.
    fn forget_all(&self) {
        self.shared.invalidate_all();
        if let Some(c) = &self.coherence {
            c.announce_all();
        }
    }
}

/// A local write between its start and its end. Finishing it (or dropping it, when the
/// write's future is cancelled and its outcome unknown) ends the write in the versions and
/// announces the key to other instances, so a cancelled write never leaves its stripe "in
/// flight" forever nor goes unannounced.
struct Pending<'c> {
    cache: &'c CachedStateBackend,
    key: &'c [u8],
    ticket: Option<crate::versions::WriteTicket>,
}

impl<'c> Pending<'c> {
    fn begin(cache: &'c CachedStateBackend, key: &'c [u8]) -> Self {
        Self {
            cache,
            key,
            ticket: Some(cache.shared.versions.begin_write(key)),
        }
    }

    /// Ends the write; returns the stamp its value may be cached under (write-through).
    fn finish(mut self) -> Option<Stamp> {
        self.end()
    }

    fn end(&mut self) -> Option<Stamp> {
        let ticket = self.ticket.take()?;
        let stamp = self.cache.shared.versions.end_write(ticket);
        if let Some(c) = &self.cache.coherence {
            c.announce(self.key);
        }
        stamp
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// `StateError` is not `Clone`; a shared load failure is re-created with the same kind,
/// message and retryability for each waiter.
fn clone_error(e: &StateError) -> StateError {
    let mut copy =
        StateError::new(e.kind(), e.message().to_owned()).with_retryable(e.is_retryable());
    if let Some(op) = e.operation() {
        copy = copy.with_operation(op);
    }
    copy
}

#[async_trait]
impl StateBackend for CachedStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        if let Err(err) = self.caps.limits.check_key(key) {
            return StateFuture::ready(Err(err));
        }
        if let Some(slot) = self.hit_now(key) {
            return StateFuture::ready(Ok(slot.value));
        }
        StateFuture::boxed(self.read(key))
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            // A plain put applies the inner backend's default TTL, if it has one.
            let ttl = self.caps.default_ttl;
            self.write(key, Written::Value(value), ttl, self.inner.put(key, value))
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.write(key, Written::Deleted, None, self.inner.delete(key))
                .await
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.inner.list_keys(prefix).await
    }

    async fn clear(&self) -> StateResult<()> {
        let _forget = ForgetAllOnDrop(self);
        self.inner.clear().await
    }

    async fn count(&self) -> StateResult<usize> {
        self.inner.count().await
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.caps.limits.check_key(key)?;
            Ok(self.read(key).await?.is_some())
        })
    }

    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        self.inner.pool_stats()
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.caps.limits.check_keys(keys)?;
        let timer = self.stats.ops.start();
        let mut out = vec![None; keys.len()];
        let mut missing: Vec<usize> = Vec::new();
        let mut hits = 0u64;
        for (i, key) in keys.iter().enumerate() {
            match self.cached(key).await {
                Some(slot) => {
                    hits += 1;
                    out[i] = slot.value;
                }
                None => missing.push(i),
            }
        }
        self.stats
            .ops
            .record_batch_get(timer, hits, missing.len() as u64);
        if missing.is_empty() {
            return Ok(out);
        }
        // One inner batch for the misses; stamps taken first so values read while a write
        // was in flight are returned but not cached.
        let stamps: Vec<Option<Stamp>> = missing
            .iter()
            .map(|&i| self.shared.versions.fill_stamp(keys[i]))
            .collect();
        let asked: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
        let values = self.inner.batch_get(&asked).await?;
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        for ((&i, value), stamp) in missing.iter().zip(values).zip(stamps) {
            let key = keys[i];
            // Batch reads carry no TTL: cache only when the inner backend has no TTLs for
            // the copy to outlive (otherwise the next single read caches it with its TTL).
            let cacheable = stamp.filter(|s| self.shared.versions.is_current(key, *s));
            if let (Some(stamp), Some(v)) = (cacheable, &value)
                && !self.caps.ttl
            {
                let slot = self.slot(Some(v.clone()), stamp, None);
                self.shared
                    .l1
                    .insert(Bytes::copy_from_slice(key), slot)
                    .await;
            }
            out[i] = value;
        }
        Ok(out)
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
        self.write_many(&keys, self.inner.batch_put(entries)).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.write_many(keys, self.inner.batch_delete(keys)).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.write(
            key,
            Written::Value(value),
            Some(ttl),
            self.inner.put_with_ttl(key, value, ttl),
        )
        .await
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.inner.ttl(key).await
    }

    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.inner.get_with_ttl(key).await
    }

    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.inner.get_for_cache(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.write_invalidate(key, self.inner.compare_and_swap(key, expected, new))
            .await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.write_invalidate(key, self.inner.set_if_not_exists(key, value, ttl))
            .await
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.write_invalidate(key, self.inner.get_and_delete(key))
            .await
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        let _forget = ForgetAllOnDrop(self);
        self.inner.delete_prefix(prefix).await
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        self.inner.scan(prefix)
    }

    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<state_core::checkpoint::CheckpointSummary> {
        self.inner.checkpoint(writer).await
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<state_core::checkpoint::RestoreSummary> {
        let _forget = ForgetAllOnDrop(self);
        self.inner.restore(reader).await
    }

    /// L1 figures (`hits`, `misses`, `hit_rate()` are L1's; `details`: `l1_entries`,
    /// `l1_loads`, `l1_evictions`, `coherent`, and the bus counters), with the inner
    /// backend's own stats in `inner`.
    async fn stats(&self) -> StateStats {
        let inner = self.inner.stats().await;
        let l1 = self.stats.ops.snapshot();
        let mut stats = StateStats::default();
        stats.gets = l1.hits + l1.misses;
        stats.hits = l1.hits;
        stats.misses = l1.misses;
        stats.avg_latency_us = l1.avg_latency_us;
        stats.p50_latency_us = l1.p50_latency_us;
        stats.p99_latency_us = l1.p99_latency_us;
        stats.latency_samples = l1.latency_samples;
        stats.puts = inner.puts;
        stats.deletes = inner.deletes;
        stats.other_ops = inner.other_ops;
        stats.errors = inner.errors;
        stats.uptime = inner.uptime;
        let d = &mut stats.details;
        d.insert("l1_entries".into(), self.shared.l1.entry_count() as f64);
        d.insert(
            "l1_loads".into(),
            self.stats.loads.load(Ordering::Relaxed) as f64,
        );
        d.insert(
            "l1_evictions".into(),
            self.stats.evictions.load(Ordering::Relaxed) as f64,
        );
        d.insert("coherent".into(), f64::from(u8::from(self.is_coherent())));
        if let Some(c) = &self.coherence {
            c.report(d);
        }
        stats.inner = Some(Box::new(inner));
        stats
    }

    async fn health_check(&self) -> StateResult<bool> {
        self.inner.health_check().await
    }

    /// L1's bytes (keys, values and a fixed per-entry overhead, walking the cache: O(entries))
    /// plus the inner backend's `memory_usage`; an inner backend that cannot say
    /// (`Unsupported`) counts as 0, so the answer is then L1 alone.
    async fn memory_usage(&self) -> StateResult<u64> {
        let l1: u64 = self
            .shared
            .l1
            .iter()
            .map(|(key, slot)| {
                (key.len() + slot.value.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD) as u64
            })
            .sum();
        let inner = match self.inner.memory_usage().await {
            Ok(bytes) => bytes,
            Err(err) if err.is_unsupported() => 0,
            Err(err) => return Err(err),
        };
        Ok(l1 + inner)
    }

    async fn flush(&self) -> StateResult<()> {
        self.inner.flush().await
    }
}

/// Forgets all of L1 when dropped: after a write of unknown keys (`clear`, `delete_prefix`,
/// `restore`) finished, failed, or was cancelled part-way (its future dropped), so no copy
/// of a key it removed or replaced survives it.
struct ForgetAllOnDrop<'a>(&'a CachedStateBackend);

impl Drop for ForgetAllOnDrop<'_> {
    fn drop(&mut self) {
        self.0.forget_all();
    }
}
