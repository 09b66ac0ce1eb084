//! [`TieredStateBackend`]: shared cache tiers (Redis, ...) in front of a durable backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use state_core::{
    Capabilities, ErrorKind, ScanStream, StateBackend, StateError, StateFuture, StateResult,
    StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};

/// Tier entries carry one header byte: a value, or a tombstone left by a deletion (it keeps a
/// concurrent promotion from bringing the deleted value back until it expires).
const VALUE: u8 = 0;
const TOMBSTONE: u8 = 1;

fn encode(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(VALUE);
            out.extend_from_slice(v);
            out
        }
        None => vec![TOMBSTONE],
    }
}

/// What a cache tier holds under a key.
enum Stored {
    Value(Bytes),
    Tombstone,
    /// Not written by a tiered backend: ignored.
    Foreign,
}

fn decode(stored: &[u8]) -> Stored {
    match stored.split_first() {
        Some((&VALUE, rest)) => Stored::Value(Bytes::copy_from_slice(rest)),
        Some((&TOMBSTONE, [])) => Stored::Tombstone,
        _ => Stored::Foreign,
    }
}

/// Stripes of per-key write locks (one process's writes of a key reach the tiers in order).
const LOCK_STRIPES: usize = 1024;

/// Most tombstones in flight in the background at once.
const MAX_BACKGROUND_TOMBSTONES: usize = 1024;

fn stripe(key: &[u8]) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::with_seed(7).hash_one(key) as usize) % LOCK_STRIPES
}

/// One cache tier: a backend and how long entries may live in it.
struct CacheTier {
    name: String,
    backend: Arc<dyn StateBackend>,
    ttl: Duration,
    /// Milliseconds since `born` until which the tier is bypassed after a failure.
    quarantined_until_ms: AtomicU64,
    hits: AtomicU64,
    failures: AtomicU64,
}

/// Builds a [`TieredStateBackend`]; see [`TieredStateBackend::builder`].
#[must_use]
pub struct TieredBuilder {
    tiers: Vec<(String, Arc<dyn StateBackend>, Duration)>,
}

impl fmt::Debug for TieredBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredBuilder")
            .field(
                "tiers",
                &self
                    .tiers
                    .iter()
                    .map(|(n, _, t)| (n, t))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TieredBuilder {
    /// Adds a cache tier below the ones already added (the first is the fastest). Every
    /// entry it holds expires after at most `ttl`: cascading TTLs, shorter near the top.
    pub fn cache_tier(
        mut self,
        name: impl Into<String>,
        backend: Arc<dyn StateBackend>,
        ttl: Duration,
    ) -> Self {
        self.tiers.push((name.into(), backend, ttl));
        self
    }

    /// Sets the durable tier (the system of record) and builds. Fails when a cache tier has
    /// a zero TTL or does not support TTLs.
    pub fn durable(self, backend: Arc<dyn StateBackend>) -> StateResult<TieredStateBackend> {
        let mut tiers = Vec::new();
        for (name, tier, ttl) in self.tiers {
            if ttl.is_zero() {
                return Err(StateError::config(format!(
                    "cache tier {name}: the TTL must be greater than zero"
                )));
            }
            if !tier.capabilities().ttl {
                return Err(StateError::config(format!(
                    "cache tier {name}: the backend does not support TTLs, so its entries could outlive the durable tier's"
                )));
            }
            tiers.push(CacheTier {
                name,
                backend: tier,
                ttl,
                quarantined_until_ms: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            });
        }
        Ok(TieredStateBackend {
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            bulk_gen: AtomicU64::new(0),
            repairs: Arc::new(AtomicUsize::new(0)),
            bulk: tokio::sync::RwLock::new(()),
            background: Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_TOMBSTONES)),
            skipped_tombstones: AtomicU64::new(0),
            caps: backend.capabilities(),
            durable: backend,
            tiers,
            born: Instant::now(),
            gets: AtomicU64::new(0),
            durable_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }
}

/// Cache tiers (for example Redis) in front of a durable backend (for example PostgreSQL),
/// the seed's L2/L3 layout; put a [`crate::CachedStateBackend`] on top for the in-process
/// L1.
///
/// - **Reads** go down the tiers and stop at the first that has the key; the value is then
///   promoted into the tiers above with `set_if_not_exists` and a TTL of at most the
///   tier's own and the key's remaining TTL (so a promotion never overwrites a newer write,
///   and a copy never outlives the key).
/// - **Writes** go to the durable tier first, then to every cache tier (write-through, TTL
///   capped by the tier's); deletes and atomic operations run on the durable tier and then
///   update or remove the cache tiers' copies.
/// - **Graceful degradation**: a cache tier that fails is skipped, counted in `stats()`,
///   and bypassed for one tier TTL after its last failure, long enough for any copy it may
///   still hold from before the failure to expire. It never answers with a value the durable
///   tier has replaced. The durable tier's errors are returned.
/// - `list_keys`, `count`, `scan`, `checkpoint` and `ttl` read the durable tier.
/// - **Bulk writes** (`clear`, `delete_prefix`, `restore`) clean every cache tier after the
///   durable write (also after a failed one); a promotion whose durable read began before a
///   bulk write finished promotes nothing (a generation counter and a read-write lock order
///   them within the process).
/// - **Cancellation**: a write whose caller is dropped after the durable tier may have
///   applied it still leaves no cache tier with the value it replaced: the keys get
///   tombstones from a spawned task (a bulk write's tiers are cleaned the same way), and
///   until that repair has finished this instance reads the durable tier only, so no read
///   after the drop answers from a tier the durable tier has moved past.
/// - **Batches** take the per-key locks of all their keys (in one global order), so a batch
///   and a single write of a key reach the tiers in the order they reached the durable tier.
/// - A **bypassed** (quarantined) tier still gets tombstones for written keys, in the
///   background and best effort (at most 1,024 in flight; skipped ones are counted in
///   `stats().details["skipped_background_tombstones"]`), so other instances that still use
///   it do not serve a replaced value.
///
/// Two processes writing one key at the same moment may leave a cache tier holding the
/// earlier write until the tier TTL (the tiers are separate servers with no shared order);
/// keep tier TTLs short where that matters.
pub struct TieredStateBackend {
    durable: Arc<dyn StateBackend>,
    locks: Box<[tokio::sync::Mutex<()>]>,
    /// Bumped before and after every write of unknown keys (`clear`, `delete_prefix`,
    /// `restore`): a promotion whose durable read began before such a write was finished
    /// promotes nothing.
    bulk_gen: AtomicU64,
    /// Held shared by promotions, exclusively while a bulk write clears the tiers, so no
    /// promotion can land between the durable write and the tier clear.
    bulk: tokio::sync::RwLock<()>,
    /// Tier repairs in flight after a cancelled write (tombstones, a bulk write's tier
    /// cleanup, on spawned tasks): while any is, reads skip the cache tiers, which may still
    /// hold what the durable tier replaced.
    repairs: Arc<AtomicUsize>,
    /// Bounds the tombstones sent in the background (to quarantined tiers, after a
    /// cancelled write).
    background: Arc<tokio::sync::Semaphore>,
    /// Background tombstones skipped because too many were in flight.
    skipped_tombstones: AtomicU64,
    caps: Capabilities,
    tiers: Vec<CacheTier>,
    born: Instant,
    gets: AtomicU64,
    durable_hits: AtomicU64,
    misses: AtomicU64,
}

impl fmt::Debug for TieredStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStateBackend")
            .field(
                "cache_tiers",
                &self
                    .tiers
                    .iter()
                    .map(|t| (&t.name, t.ttl))
                    .collect::<Vec<_>>(),
            )
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl TieredStateBackend {
    /// Starts a builder: add cache tiers fastest first, then the durable tier.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use state_postgres::PostgresStateBackend;
    /// use state_redis::{RedisConfig, RedisStateBackend};
    /// use state_tiered::{CachedStateBackend, TieredStateBackend};
    ///
    /// # async fn demo() -> state_core::StateResult<()> {
    /// let redis = Arc::new(RedisStateBackend::new(RedisConfig::builder().build()?).await?);
    /// let postgres = Arc::new(PostgresStateBackend::new("postgres://localhost/db", "state").await?);
    /// let shared = TieredStateBackend::builder()
    ///     .cache_tier("redis", redis.clone(), Duration::from_secs(300))   // L2
    ///     .durable(postgres)?;                                              // L3
    /// let state = CachedStateBackend::builder(Arc::new(shared))           // L1
    ///     .max_items(10_000)
    ///     .ttl(Duration::from_secs(60))
    ///     .invalidation(redis)
    ///     .build()
    ///     .await?;
    /// # let _ = state; Ok(()) }
    /// ```
    pub fn builder() -> TieredBuilder {
        TieredBuilder { tiers: Vec::new() }
    }

    /// Whether a cancelled write's tier repair is still running (reads then skip the tiers).
    fn repairing(&self) -> bool {
        self.repairs.load(Ordering::Acquire) > 0
    }

    /// Counts one tier repair until the returned ticket is dropped.
    fn repair_ticket(&self) -> RepairTicket {
        self.repairs.fetch_add(1, Ordering::AcqRel);
        RepairTicket(Arc::clone(&self.repairs))
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn usable(&self, tier: &CacheTier) -> bool {
        tier.quarantined_until_ms.load(Ordering::Acquire) <= self.now_ms()
    }

    /// Records a cache tier failure: counted, and the tier is bypassed for one TTL.
    fn failed(&self, tier: &CacheTier, err: &StateError) {
        tier.failures.fetch_add(1, Ordering::Relaxed);
        let until = self.now_ms() + tier.ttl.as_millis() as u64;
        tier.quarantined_until_ms.fetch_max(until, Ordering::AcqRel);
        tracing::warn!(tier = %tier.name, error = %err, "state-tiered: cache tier failed; bypassing it for its TTL");
    }

    fn tier_ttl(tier: &CacheTier, key_ttl: Option<Duration>) -> Duration {
        key_ttl.map_or(tier.ttl, |t| t.min(tier.ttl))
    }

    /// Copies a value found below into the usable tiers above `found_at`, never replacing
    /// a newer write or a deletion's tombstone (`set_if_not_exists`).
    async fn promote(
        &self,
        key: &[u8],
        value: &[u8],
        key_ttl: Option<Duration>,
        found_at: usize,
        read_gen: u64,
    ) {
        if found_at == 0 {
            return;
        }
        let _no_bulk_write = self.bulk.read().await;
        if self.bulk_gen.load(Ordering::Acquire) != read_gen {
            // A clear, prefix delete or restore ran since the value was read: it may be
            // gone or replaced.
            return;
        }
        let stored = encode(Some(value));
        for tier in self.tiers[..found_at].iter().filter(|t| self.usable(t)) {
            let ttl = Self::tier_ttl(tier, key_ttl);
            if ttl.as_millis() == 0 {
                continue;
            }
            match tier
                .backend
                .set_if_not_exists(key, &stored, Some(ttl))
                .await
            {
                Ok(_) => {}
                // Too large for this tier: it simply does not hold the key.
                Err(err) if err.kind() == ErrorKind::InvalidInput => {}
                Err(err) => self.failed(tier, &err),
            }
        }
    }

    async fn lookup(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let read_gen = self.bulk_gen.load(Ordering::Acquire);
        let repairing = self.repairing();
        let mut promote_to = if repairing { 0 } else { self.tiers.len() };
        for (i, tier) in self.tiers.iter().enumerate() {
            if repairing || !self.usable(tier) {
                continue;
            }
            match tier.backend.get_with_ttl(key).await {
                Ok(Some((stored, ttl))) => match decode(&stored) {
                    Stored::Value(value) => {
                        tier.hits.fetch_add(1, Ordering::Relaxed);
                        self.promote(key, &value, ttl, i, read_gen).await;
                        return Ok(Some((value, ttl)));
                    }
                    // A recent deletion: ask the durable tier, promote nowhere below here.
                    Stored::Tombstone => {
                        promote_to = promote_to.min(i);
                        break;
                    }
                    Stored::Foreign => {}
                },
                Ok(None) => {}
                Err(err) => self.failed(tier, &err),
            }
        }
        if let Some((value, ttl)) = self.durable.get_with_ttl(key).await? {
            self.durable_hits.fetch_add(1, Ordering::Relaxed);
            self.promote(key, &value, ttl, promote_to, read_gen).await;
            Ok(Some((value, ttl)))
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }

    /// After a durable write: write `value` (with `key_ttl`) through every usable tier, or a
    /// tombstone (`None`: the key was deleted) so no concurrent promotion can bring the old
    /// value back.
    async fn sync_tiers(&self, key: &[u8], value: Option<&[u8]>, key_ttl: Option<Duration>) {
        let stored = encode(value);
        for tier in &self.tiers {
            if !self.usable(tier) {
                // Bypassed here, but other instances may still read it: try to tombstone
                // the key there, in the background (the tier may be slow or down).
                self.tombstone_in_background(tier, key);
                continue;
            }
            let ttl = if value.is_some() {
                Self::tier_ttl(tier, key_ttl)
            } else {
                tier.ttl
            };
            let mut result = tier.backend.put_with_ttl(key, &stored, ttl).await;
            if let Err(err) = &result
                && err.kind() == ErrorKind::InvalidInput
            {
                // Too large for this tier: a tombstone keeps it from serving an older copy.
                result = tier
                    .backend
                    .put_with_ttl(key, &encode(None), tier.ttl)
                    .await;
            }
            if let Err(err) = result {
                // It may still hold the old value: best effort removal, then bypass it.
                let _ = tier.backend.delete(key).await;
                self.failed(tier, &err);
            }
        }
    }

    /// Sends a tombstone for `key` to `tier` on a spawned task, best effort (bounded; skipped
    /// and counted when too many are in flight, or outside a tokio runtime).
    fn tombstone_in_background(&self, tier: &CacheTier, key: &[u8]) {
        let (Ok(handle), Ok(permit)) = (
            tokio::runtime::Handle::try_current(),
            Arc::clone(&self.background).try_acquire_owned(),
        ) else {
            self.skipped_tombstones.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let backend = Arc::clone(&tier.backend);
        let ttl = tier.ttl;
        let key = key.to_vec();
        handle.spawn(async move {
            let _ = backend.put_with_ttl(&key, &encode(None), ttl).await;
            drop(permit);
        });
    }

    /// Runs a write of unknown keys (`clear`, `delete_prefix`, `restore`) on the durable
    /// tier, then `on_tier` on every cache tier (quarantined ones too, best effort), with no
    /// promotion of a value read before the write landing in between. The tiers are cleaned
    /// also when the durable write failed (it may have applied in part), and, when the
    /// caller is cancelled, by a spawned task.
    async fn bulk_write<T>(
        &self,
        op: impl Future<Output = StateResult<T>>,
        cleanup: TierCleanup,
    ) -> StateResult<T> {
        self.bulk_gen.fetch_add(1, Ordering::AcqRel);
        let mut on_cancel = BulkCleanup {
            backend: self,
            cleanup: Some(cleanup.clone()),
        };
        let result = op.await;
        {
            let _exclusive = self.bulk.write().await;
            let results = join_all(self.tiers.iter().map(|t| {
                let cleanup = &cleanup;
                async move { (t, cleanup.run(&*t.backend).await) }
            }))
            .await;
            for (tier, outcome) in results {
                if let Err(err) = outcome
                    && self.usable(tier)
                {
                    self.failed(tier, &err);
                }
            }
            self.bulk_gen.fetch_add(1, Ordering::AcqRel);
        }
        on_cancel.cleanup = None;
        result
    }

    /// A durable write whose outcome is unknown (it failed or timed out, and may have
    /// applied): no cache tier may keep the old value.
    async fn unknown_outcome(&self, key: &[u8]) {
        self.sync_tiers(key, None, None).await;
    }

    /// Runs a write of `key` on the durable tier and then the tier sync, holding the key's
    /// stripe lock so two writes of one key from this process reach every tier in the same
    /// order.
    async fn write_one<'v, T>(
        &self,
        key: &[u8],
        op: impl Future<Output = StateResult<T>>,
        then: impl FnOnce(&T) -> Option<(Option<&'v [u8]>, Option<Duration>)>,
    ) -> StateResult<T> {
        let _order = self.locks[stripe(key)].lock().await;
        let mut cancelled = TombstoneOnDrop {
            backend: self,
            keys: vec![key],
            armed: true,
        };
        let result = match op.await {
            Ok(done) => {
                if let Some((value, ttl)) = then(&done) {
                    self.sync_tiers(key, value, ttl).await;
                }
                Ok(done)
            }
            Err(err) => {
                if !err.is_unsupported() && err.kind() != ErrorKind::InvalidInput {
                    self.unknown_outcome(key).await;
                }
                Err(err)
            }
        };
        cancelled.armed = false;
        result
    }

    /// Locks the stripes of `keys` in ascending order (no deadlock with single-key writes
    /// or other batches), so a batch and a single write of one key reach the tiers in the
    /// order they reached the durable tier.
    async fn lock_keys(
        &self,
        keys: impl Iterator<Item = &[u8]>,
    ) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.locks[s].lock().await);
        }
        guards
    }

    /// Cache-tier hits and failures, by tier name.
    pub fn tier_counts(&self) -> Vec<(String, u64, u64)> {
        self.tiers
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.hits.load(Ordering::Relaxed),
                    t.failures.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[async_trait]
impl StateBackend for TieredStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            self.caps.limits.check_key(key)?;
            Ok(self.lookup(key).await?.map(|(v, _)| v))
        })
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            let ttl = self.caps.default_ttl;
            self.write_one(key, self.durable.put(key, value), |()| {
                Some((Some(value), ttl))
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.write_one(key, self.durable.delete(key), |_| Some((None, None)))
                .await
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.durable.list_keys(prefix).await
    }

    async fn clear(&self) -> StateResult<()> {
        self.bulk_write(self.durable.clear(), TierCleanup::Clear)
            .await
    }

    async fn count(&self) -> StateResult<usize> {
        self.durable.count().await
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.caps.limits.check_key(key)?;
            Ok(self.lookup(key).await?.is_some())
        })
    }

    /// The durable tier's pool.
    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        self.durable.pool_stats()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.caps;
        caps.shared = caps.shared || self.tiers.iter().any(|t| t.backend.capabilities().shared);
        caps
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.caps.limits.check_keys(keys)?;
        let mut out: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut missing: Vec<usize> = (0..keys.len()).collect();
        let repairing = self.repairing();
        for tier in &self.tiers {
            if repairing || missing.is_empty() || !self.usable(tier) {
                continue;
            }
            let asked: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
            match tier.backend.batch_get(&asked).await {
                Ok(values) => {
                    let mut still = Vec::new();
                    for (&i, v) in missing.iter().zip(values) {
                        // Tombstones and foreign entries fall through to the tiers below.
                        match v.as_deref().map(decode) {
                            Some(Stored::Value(v)) => {
                                tier.hits.fetch_add(1, Ordering::Relaxed);
                                out[i] = Some(v);
                            }
                            _ => still.push(i),
                        }
                    }
                    missing = still;
                }
                Err(err) => self.failed(tier, &err),
            }
        }
        if !missing.is_empty() {
            let asked: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
            let values = self.durable.batch_get(&asked).await?;
            for (&i, v) in missing.iter().zip(values) {
                out[i] = v;
            }
        }
        self.gets.fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        let _order = self.lock_keys(entries.iter().map(|(k, _)| *k)).await;
        let mut cancelled = TombstoneOnDrop {
            backend: self,
            keys: entries.iter().map(|(k, _)| *k).collect(),
            armed: true,
        };
        let result = self.durable.batch_put(entries).await;
        match &result {
            Ok(()) => {
                // Last value of duplicate keys wins, as in the durable tier.
                let mut last: std::collections::HashMap<&[u8], &[u8]> =
                    std::collections::HashMap::with_capacity(entries.len());
                for (k, v) in entries {
                    last.insert(k, v);
                }
                join_all(
                    last.into_iter()
                        .map(|(k, v)| self.sync_tiers(k, Some(v), self.caps.default_ttl)),
                )
                .await;
            }
            Err(err) if err.kind() != ErrorKind::InvalidInput => {
                join_all(entries.iter().map(|(k, _)| self.unknown_outcome(k))).await;
            }
            Err(_) => {}
        }
        cancelled.armed = false;
        result
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        let _order = self.lock_keys(keys.iter().copied()).await;
        let mut cancelled = TombstoneOnDrop {
            backend: self,
            keys: keys.to_vec(),
            armed: true,
        };
        let result = self.durable.batch_delete(keys).await;
        if result
            .as_ref()
            .err()
            .is_none_or(|e| e.kind() != ErrorKind::InvalidInput)
        {
            join_all(keys.iter().map(|k| self.sync_tiers(k, None, None))).await;
        }
        cancelled.armed = false;
        result
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.write_one(key, self.durable.put_with_ttl(key, value, ttl), |()| {
            Some((Some(value), Some(ttl)))
        })
        .await
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.durable.ttl(key).await
    }

    /// The durable tier's answer: a cache tier's copy carries the tier's lifetime, not the
    /// key's TTL.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.durable.get_with_ttl(key).await
    }

    /// Down the tiers; the lifetime is the remaining TTL of the copy found (a cache tier's is
    /// capped by the tier TTL and the key's own), so an L1 copy never outlives either.
    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.caps.limits.check_key(key)?;
        self.lookup(key).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        let ttl = self.caps.default_ttl;
        self.write_one(
            key,
            self.durable.compare_and_swap(key, expected, new),
            |swapped| swapped.then_some((new, ttl)),
        )
        .await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        let ttl = ttl.or(self.caps.default_ttl);
        self.write_one(
            key,
            self.durable.set_if_not_exists(key, value, ttl),
            |stored| stored.then_some((Some(value), ttl)),
        )
        .await
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.write_one(key, self.durable.get_and_delete(key), |_| {
            Some((None, None))
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.caps.limits.check_prefix(prefix)?;
        self.bulk_write(
            self.durable.delete_prefix(prefix),
            TierCleanup::DeletePrefix(Bytes::copy_from_slice(prefix)),
        )
        .await
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        self.durable.scan(prefix)
    }

    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<state_core::checkpoint::CheckpointSummary> {
        self.durable.checkpoint(writer).await
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<state_core::checkpoint::RestoreSummary> {
        // Restored keys are unknown here: every cache tier starts over, also when the
        // restore failed part-way (some entries may have been written).
        self.bulk_write(self.durable.restore(reader), TierCleanup::Clear)
            .await
    }

    /// `gets`, `hits` (found in any tier), `misses`; `details`: `<tier>_hits`,
    /// `<tier>_failures`, `<tier>_bypassed` (1 while quarantined), `durable_hits`; the durable
    /// tier's stats in `inner`.
    async fn stats(&self) -> StateStats {
        let durable = self.durable.stats().await;
        let mut stats = StateStats::default();
        let tier_hits: u64 = self
            .tiers
            .iter()
            .map(|t| t.hits.load(Ordering::Relaxed))
            .sum();
        let durable_hits = self.durable_hits.load(Ordering::Relaxed);
        stats.hits = tier_hits + durable_hits;
        stats.misses = self.misses.load(Ordering::Relaxed);
        stats.gets = self
            .gets
            .load(Ordering::Relaxed)
            .max(stats.hits + stats.misses);
        stats.puts = durable.puts;
        stats.deletes = durable.deletes;
        stats.other_ops = durable.other_ops;
        stats.errors = durable.errors;
        stats.uptime = self.born.elapsed();
        for t in &self.tiers {
            stats.details.insert(
                format!("{}_hits", t.name),
                t.hits.load(Ordering::Relaxed) as f64,
            );
            stats.details.insert(
                format!("{}_failures", t.name),
                t.failures.load(Ordering::Relaxed) as f64,
            );
            stats.details.insert(
                format!("{}_bypassed", t.name),
                f64::from(u8::from(!self.usable(t))),
            );
        }
        stats
            .details
            .insert("durable_hits".into(), durable_hits as f64);
        stats.details.insert(
            "skipped_background_tombstones".into(),
            self.skipped_tombstones.load(Ordering::Relaxed) as f64,
        );
        stats.inner = Some(Box::new(durable));
        stats
    }

    async fn health_check(&self) -> StateResult<bool> {
        self.durable.health_check().await
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        self.durable.memory_usage().await
    }

    async fn flush(&self) -> StateResult<()> {
        self.durable.flush().await
    }
}

/// Armed while a write's durable part may have run and its tier sync has not finished: if
/// the caller's future is dropped in between, every tier gets a tombstone for the keys in
/// the background, so no tier keeps a value the durable tier replaced.
struct TombstoneOnDrop<'a> {
    backend: &'a TieredStateBackend,
    keys: Vec<&'a [u8]>,
    armed: bool,
}

impl Drop for TombstoneOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let tiers: Vec<(Arc<dyn StateBackend>, Duration)> = self
            .backend
            .tiers
            .iter()
            .map(|t| (Arc::clone(&t.backend), t.ttl))
            .collect();
        let keys: Vec<Vec<u8>> = self.keys.iter().map(|k| k.to_vec()).collect();
        self.backend.repair_in_background(async move {
            for (tier, ttl) in &tiers {
                for key in &keys {
                    let tombstone = encode(None);
                    until_done_or_expired(*ttl, || tier.put_with_ttl(key, &tombstone, *ttl)).await;
                }
            }
        });
    }
}

/// One tier repair in flight; see `TieredStateBackend::repairs`.
struct RepairTicket(Arc<AtomicUsize>);

impl Drop for RepairTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TieredStateBackend {
    /// Runs `repair` on a spawned task, counted in `repairs` until it finishes. Outside a
    /// tokio runtime it cannot run: the count stays raised and this instance reads the
    /// durable tier only from then on (never a stale tier).
    fn repair_in_background(&self, repair: impl Future<Output = ()> + Send + 'static) {
        let ticket = self.repair_ticket();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    repair.await;
                    drop(ticket);
                });
            }
            Err(_) => std::mem::forget(ticket),
        }
    }
}

/// How long a failed tier repair waits before it is tried again.
const REPAIR_AGAIN_AFTER: Duration = Duration::from_millis(50);

/// Runs a tier repair until it succeeds, or until the tier's `ttl` has passed (by then every
/// entry the repair was to remove or overwrite has expired: tiers are written with at most
/// their TTL). Ignoring a failure instead would end the repair (reads use the tiers again)
/// with the stale entry still there: a tier that fails only here is not bypassed.
async fn until_done_or_expired<F, Fut, T>(ttl: Duration, mut repair: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StateResult<T>>,
{
    let deadline = tokio::time::Instant::now() + ttl;
    loop {
        if tokio::time::timeout_at(deadline, repair())
            .await
            .is_ok_and(|outcome| outcome.is_ok())
        {
            return;
        }
        if tokio::time::Instant::now() + REPAIR_AGAIN_AFTER >= deadline {
            return;
        }
        tokio::time::sleep(REPAIR_AGAIN_AFTER).await;
    }
}

/// What a bulk write does to every cache tier.
#[derive(Clone)]
enum TierCleanup {
    Clear,
    DeletePrefix(Bytes),
}

impl TierCleanup {
    async fn run(&self, tier: &dyn StateBackend) -> StateResult<()> {
        match self {
            Self::Clear => tier.clear().await,
            Self::DeletePrefix(prefix) => tier.delete_prefix(prefix).await.map(|_| ()),
        }
    }
}

/// Armed while a bulk write (`clear`, `delete_prefix`, `restore`) may have changed the
/// durable tier and the tiers are not cleaned yet: if the caller's future is dropped, a
/// spawned task cleans them.
struct BulkCleanup<'a> {
    backend: &'a TieredStateBackend,
    cleanup: Option<TierCleanup>,
}

impl Drop for BulkCleanup<'_> {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let tiers: Vec<(Arc<dyn StateBackend>, Duration)> = self
            .backend
            .tiers
            .iter()
            .map(|t| (Arc::clone(&t.backend), t.ttl))
            .collect();
        self.backend.repair_in_background(async move {
            join_all(
                tiers
                    .iter()
                    .map(|(tier, ttl)| until_done_or_expired(*ttl, || cleanup.run(&**tier))),
            )
            .await;
        });
    }
}
