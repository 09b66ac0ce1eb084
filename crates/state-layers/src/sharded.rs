//! [`Sharded`]: keys spread over N backends by a stable hash, with online resharding.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_lock::RwLock;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, FuturesUnordered};
use state_core::checkpoint::{self, CheckpointSummary, RestoreSummary};
use state_core::{
    Capabilities, Entry, Limits, ScanStream, StateBackend, StateError, StateFuture, StateResult,
    StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use crate::hash::{jump_consistent_hash, key_hash};
use crate::util::owned_stream;

/// Stripes of the per-key locks taken while a reshard moves keys.
const STRIPES: usize = 512;
/// Keys moved concurrently by a reshard.
const MOVE_CONCURRENCY: usize = 64;
/// Keys read per batch by a scan during a reshard.
const SCAN_CHUNK: usize = 256;

type Shards = Arc<[Arc<dyn StateBackend>]>;

#[derive(Debug)]
enum Routing {
    Stable(Shards),
    /// A reshard is moving keys from the first layout to the second.
    Migrating {
        from: Shards,
        to: Shards,
    },
}

/// Where a write goes while a reshard runs; holds the key's stripe lock until dropped.
struct Placement<'s> {
    dst: &'s Arc<dyn StateBackend>,
    delete_from: Option<&'s Arc<dyn StateBackend>>,
    _guard: Option<tokio::sync::MutexGuard<'s, ()>>,
}

impl Placement<'_> {
    /// Deletes the old copy after the write landed on the new shard.
    async fn finish(self, key: &[u8]) -> StateResult<()> {
        if let Some(src) = self.delete_from {
            src.delete(key).await?;
        }
        Ok(())
    }
}

/// Runs `$call` (with `$d` bound to the key's new shard) as a write during a reshard.
macro_rules! m_write {
    ($self:ident, $from:expr, $to:expr, $key:expr, $move_first:expr, |$d:ident| $call:expr) => {{
        let placement = $self.m_prepare($from, $to, $key, $move_first).await?;
        let $d = placement.dst;
        let out = $call.await?;
        placement.finish($key).await?;
        Ok::<_, StateError>(out)
    }};
}

/// Progress of [`Sharded::reshard`], reported as keys are examined.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReshardProgress {
    /// Old shards whose keys have all been examined.
    pub shards_done: usize,
    /// Distinct old shards to examine.
    pub shards_total: usize,
    /// Keys examined so far.
    pub keys_scanned: u64,
    /// Keys moved to a different shard so far.
    pub keys_moved: u64,
}

/// What [`Sharded::reshard`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReshardReport {
    /// Keys examined.
    pub keys_scanned: u64,
    /// Keys moved to a different shard.
    pub keys_moved: u64,
    /// Wall time of the whole reshard.
    pub elapsed: Duration,
}

/// Spreads keys over N inner backends (N Redis servers, N PostgreSQL databases) by a stable
/// hash, so one logical store grows past one server.
///
/// **Placement** is `jump_consistent_hash(SipHash-2-4(key), N)` (see [`crate::shard_for`] for
/// the exact, reproducible definition): the same on every process, platform and version.
/// Adding an (N+1)-th shard moves about 1/(N+1) of the keys, all to the new shard.
///
/// **Operations.** Point operations and the atomic ones go to the key's shard, so
/// `set_if_not_exists` and `compare_and_swap` stay atomic. Batches are split per shard and
/// run concurrently, answers reassembled in order. `list_keys`, `count`, `clear`,
/// `delete_prefix`, `health_check`, `memory_usage` and `flush` fan out to every shard
/// concurrently and merge; `scan` merges the shards' streams; `checkpoint` writes one
/// portable checkpoint of all shards, and `restore` routes each entry to its shard. A batch
/// spanning shards is not atomic (`atomic_batch` is declared only with one shard).
///
/// **Capabilities** are what every shard supports; limits are the smallest of the shards'.
///
/// **Resharding** ([`Sharded::reshard`]) moves keys to a new list of shards while the store
/// keeps serving; see there for the guarantees.
///
/// ```
/// use std::sync::Arc;
/// use state_core::StateBackend;
/// use state_layers::Sharded;
/// use state_memory::MemoryStateBackend;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let shards: Vec<Arc<dyn StateBackend>> = (0..3)
///     .map(|_| Arc::new(MemoryStateBackend::new(None)) as Arc<dyn StateBackend>)
///     .collect();
/// let sharded = Sharded::new(shards).unwrap();
/// sharded.put(b"user:1", b"alice").await.unwrap();
/// assert_eq!(sharded.count().await.unwrap(), 1);
/// # });
/// ```
#[derive(Debug)]
pub struct Sharded {
    routing: RwLock<Routing>,
    caps: std::sync::RwLock<Capabilities>,
    locks: Box<[Mutex<()>]>,
    resharding: Mutex<()>,
}

fn intersect(shards: &[Arc<dyn StateBackend>]) -> Capabilities {
    let mut caps = shards[0].capabilities();
    for shard in &shards[1..] {
        let c = shard.capabilities();
        caps.ttl &= c.ttl;
        caps.atomic &= c.atomic;
        caps.atomic_batch &= c.atomic_batch;
        caps.native_batch &= c.native_batch;
        caps.transactions &= c.transactions;
        caps.persistence &= c.persistence;
        caps.shared &= c.shared;
        caps.compression &= c.compression;
        caps.sql &= c.sql;
        caps.pub_sub &= c.pub_sub;
        caps.memory_usage &= c.memory_usage;
        caps.limits = Limits {
            max_key_size: caps.limits.max_key_size.min(c.limits.max_key_size),
            max_value_size: caps.limits.max_value_size.min(c.limits.max_value_size),
        };
        caps.default_ttl = match (caps.default_ttl, c.default_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if shards.len() > 1 {
        caps.atomic_batch = false;
        caps.transactions = false;
        caps.clustering = true;
    }
    caps
}

fn intersect_layouts(a: &[Arc<dyn StateBackend>], b: &[Arc<dyn StateBackend>]) -> Capabilities {
    let all: Vec<Arc<dyn StateBackend>> = a.iter().chain(b).cloned().collect();
    let mut caps = intersect(&all);
    caps.clustering = a.len() > 1 || b.len() > 1;
    caps
}

fn same(a: &Arc<dyn StateBackend>, b: &Arc<dyn StateBackend>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// The distinct backends of one or two layouts, in order of first appearance.
fn distinct<'s>(layouts: &[&'s [Arc<dyn StateBackend>]]) -> Vec<&'s Arc<dyn StateBackend>> {
    let mut out: Vec<&Arc<dyn StateBackend>> = Vec::new();
    for layout in layouts {
        for shard in *layout {
            if !out.iter().any(|s| same(s, shard)) {
                out.push(shard);
            }
        }
    }
    out
}

#[inline]
fn pick<'s>(shards: &'s [Arc<dyn StateBackend>], key: &[u8]) -> &'s Arc<dyn StateBackend> {
    &shards[jump_consistent_hash(key_hash(key), shards.len())]
}

fn ttl_floor(ttl: Duration) -> Duration {
    ttl.max(Duration::from_millis(1))
}

impl Sharded {
    /// Spreads keys over `shards`, in this order (the order is part of the placement: keep it
    /// stable, add new shards at the end).
    ///
    /// # Errors
    ///
    /// [`state_core::ErrorKind::ConfigInvalid`] when `shards` is empty or lists one backend
    /// twice.
    pub fn new(shards: Vec<Arc<dyn StateBackend>>) -> StateResult<Self> {
        let shards = Self::validate(shards)?;
        let caps = intersect(&shards);
        Ok(Self {
            routing: RwLock::new(Routing::Stable(shards)),
            caps: std::sync::RwLock::new(caps),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            resharding: Mutex::new(()),
        })
    }

    fn validate(shards: Vec<Arc<dyn StateBackend>>) -> StateResult<Shards> {
        if shards.is_empty() {
            return Err(StateError::config("Sharded needs at least one shard"));
        }
        if distinct(&[&shards]).len() != shards.len() {
            return Err(StateError::config("Sharded lists the same backend twice"));
        }
        Ok(shards.into())
    }

    /// The current shards (the target layout while a reshard runs).
    pub async fn shards(&self) -> Vec<Arc<dyn StateBackend>> {
        match &*self.routing.read().await {
            Routing::Stable(s) | Routing::Migrating { to: s, .. } => s.to_vec(),
        }
    }

    /// Whether a reshard is moving keys (or stopped half-way with an error).
    pub async fn is_resharding(&self) -> bool {
        matches!(&*self.routing.read().await, Routing::Migrating { .. })
    }

    fn limits(&self) -> Limits {
        self.caps.read().expect("capabilities lock").limits
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        // The high bits: the low ones also pick the shard.
        &self.locks[(key_hash(key) >> 40) as usize % STRIPES]
    }

    /// Moves `keys` from `src` to `dst` under the key's stripe lock when `src` holds it.
    async fn move_locked(
        &self,
        src: &Arc<dyn StateBackend>,
        dst: &Arc<dyn StateBackend>,
        key: &[u8],
    ) -> StateResult<bool> {
        let _guard = self.stripe(key).lock().await;
        Self::move_key(src, dst, key).await
    }

    /// Moves one key; the caller holds its stripe lock.
    async fn move_key(
        src: &Arc<dyn StateBackend>,
        dst: &Arc<dyn StateBackend>,
        key: &[u8],
    ) -> StateResult<bool> {
        let Some((value, ttl)) = src.get_with_ttl(key).await? else {
            return Ok(false);
        };
        match ttl {
            Some(ttl) => dst.put_with_ttl(key, &value, ttl_floor(ttl)).await?,
            None => dst.put(key, &value).await?,
        }
        src.delete(key).await?;
        Ok(true)
    }

    /// Moves every key to its place under `new_shards`, while the store keeps serving reads
    /// and writes, and calls `progress` as it goes (every 1,000 keys and after each shard).
    ///
    /// Usually `new_shards` is the current list with shards added at the end (jump hashing
    /// then moves only the ~1/N keys that belong to the new shards), but any list works.
    ///
    /// **Guarantees while it runs**, for the operations of *this* `Sharded` value: a read
    /// looks in the key's old place first and then in the new one; a write goes to the new
    /// place and removes the old copy; atomic operations first move the key, under a
    /// per-key lock the mover also takes, then run on the new shard. So no acknowledged write
    /// is lost, none is overwritten by a stale copy, and deleted keys do not come back. Other
    /// processes writing to the same shards through their own `Sharded` must stop writing (or
    /// reshard through the same instance) for those guarantees to hold. A `scan` (and so a
    /// `checkpoint`) that overlaps a reshard may miss or repeat keys that move under it.
    ///
    /// Keys are listed per old shard (`list_keys`), so memory grows with the largest shard's
    /// key count. TTLs move with their remaining time.
    ///
    /// # Errors
    ///
    /// `ConfigInvalid` for an empty list, a duplicate, or a call while an earlier reshard to
    /// a different layout is unfinished; otherwise the first error of a shard. After an error
    /// the store stays in the resharding state (still correct, a little slower); call
    /// `reshard` again with the same list to finish.
    pub async fn reshard(
        &self,
        new_shards: Vec<Arc<dyn StateBackend>>,
        mut progress: impl FnMut(ReshardProgress) + Send,
    ) -> StateResult<ReshardReport> {
        let started = Instant::now();
        let _one_at_a_time = self.resharding.lock().await;
        let to = Self::validate(new_shards)?;
        let from = {
            let mut routing = self.routing.write().await;
            let from = match &*routing {
                Routing::Stable(from) => from.clone(),
                Routing::Migrating { from, to: target } => {
                    let same_target = target.len() == to.len()
                        && target.iter().zip(to.iter()).all(|(a, b)| same(a, b));
                    if !same_target {
                        return Err(StateError::config(
                            "an unfinished reshard targets another layout; finish it first",
                        ));
                    }
                    from.clone()
                }
            };
            *self.caps.write().expect("capabilities lock") = intersect_layouts(&from, &to);
            *routing = Routing::Migrating {
                from: from.clone(),
                to: to.clone(),
            };
            from
        };
        let sources = distinct(&[&from]);
        let mut report = ReshardProgress {
            shards_total: sources.len(),
            ..ReshardProgress::default()
        };
        progress(report);
        for source in sources {
            let keys = source.list_keys(b"").await?;
            for chunk in keys.chunks(1000) {
                let mut moves: FuturesUnordered<_> = FuturesUnordered::new();
                let mut moved = 0u64;
                for key in chunk {
                    let dst = pick(&to, key);
                    if same(pick(&from, key), source) && !same(dst, source) {
                        moves.push(self.move_locked(source, dst, key));
                        if moves.len() >= MOVE_CONCURRENCY
                            && let Some(done) = moves.next().await
                        {
                            moved += u64::from(done?);
                        }
                    }
                }
                while let Some(done) = moves.next().await {
                    moved += u64::from(done?);
                }
                report.keys_scanned += chunk.len() as u64;
                report.keys_moved += moved;
                progress(report);
            }
            report.shards_done += 1;
            progress(report);
        }
        {
            let mut routing = self.routing.write().await;
            *self.caps.write().expect("capabilities lock") = intersect(&to);
            *routing = Routing::Stable(to);
        }
        tracing::info!(
            keys_scanned = report.keys_scanned,
            keys_moved = report.keys_moved,
            "state reshard finished"
        );
        Ok(ReshardReport {
            keys_scanned: report.keys_scanned,
            keys_moved: report.keys_moved,
            elapsed: started.elapsed(),
        })
    }

    // --- while migrating -------------------------------------------------------------

    async fn m_get_with_ttl(
        from: &[Arc<dyn StateBackend>],
        to: &[Arc<dyn StateBackend>],
        key: &[u8],
    ) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        let (src, dst) = (pick(from, key), pick(to, key));
        // Old place first: a mover writes the new place before it deletes the old one, so a
        // miss here means the new place already has the key (or nothing does).
        if let Some(hit) = src.get_with_ttl(key).await? {
            return Ok(Some(hit));
        }
        if same(src, dst) {
            return Ok(None);
        }
        dst.get_with_ttl(key).await
    }

    async fn m_get(
        from: &[Arc<dyn StateBackend>],
        to: &[Arc<dyn StateBackend>],
        key: &[u8],
    ) -> StateResult<Option<Bytes>> {
        let (src, dst) = (pick(from, key), pick(to, key));
        if let Some(hit) = src.get(key).await? {
            return Ok(Some(hit));
        }
        if same(src, dst) {
            return Ok(None);
        }
        dst.get(key).await
    }

    /// Prepares a write on the key's new shard: takes its stripe lock (when the key moves)
    /// and, when `move_first` (atomic operations read the current value), moves the key
    /// there. [`Placement::finish`] then deletes any old copy.
    async fn m_prepare<'s>(
        &'s self,
        from: &'s [Arc<dyn StateBackend>],
        to: &'s [Arc<dyn StateBackend>],
        key: &[u8],
        move_first: bool,
    ) -> StateResult<Placement<'s>> {
        let (src, dst) = (pick(from, key), pick(to, key));
        if same(src, dst) {
            return Ok(Placement {
                dst,
                delete_from: None,
                _guard: None,
            });
        }
        let guard = self.stripe(key).lock().await;
        if move_first {
            Self::move_key(src, dst, key).await?;
        }
        Ok(Placement {
            dst,
            delete_from: (!move_first).then_some(src),
            _guard: Some(guard),
        })
    }

    async fn m_list_keys(
        from: &[Arc<dyn StateBackend>],
        to: &[Arc<dyn StateBackend>],
        prefix: &[u8],
    ) -> StateResult<Vec<Bytes>> {
        let lists = futures_util::future::try_join_all(
            distinct(&[from, to])
                .into_iter()
                .map(|s| s.list_keys(prefix)),
        )
        .await?;
        let mut seen = HashSet::new();
        Ok(lists
            .into_iter()
            .flatten()
            .filter(|k| seen.insert(k.clone()))
            .collect())
    }

    // --- stable ------------------------------------------------------------------------

    /// Positions of `keys` per shard.
    fn group<'k>(
        shards: &[Arc<dyn StateBackend>],
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<Vec<usize>> {
        let mut groups = vec![Vec::new(); shards.len()];
        for (i, key) in keys.enumerate() {
            groups[jump_consistent_hash(key_hash(key), shards.len())].push(i);
        }
        groups
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl StateBackend for Sharded {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            match &*self.routing.read().await {
                Routing::Stable(s) => pick(s, key).get(key).await,
                Routing::Migrating { from, to } => Self::m_get(from, to, key).await,
            }
        })
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            match &*self.routing.read().await {
                Routing::Stable(s) => pick(s, key).put(key, value).await,
                Routing::Migrating { from, to } => {
                    self.limits().check_entry(key, value)?;
                    m_write!(self, from, to, key, false, |d| d.put(key, value))
                }
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            match &*self.routing.read().await {
                Routing::Stable(s) => pick(s, key).delete(key).await,
                Routing::Migrating { from, to } => {
                    self.limits().check_key(key)?;
                    m_write!(self, from, to, key, true, |d| d.delete(key))
                }
            }
        })
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            match &*self.routing.read().await {
                Routing::Stable(s) => pick(s, key).contains(key).await,
                Routing::Migrating { from, to } => {
                    let (src, dst) = (pick(from, key), pick(to, key));
                    Ok(src.contains(key).await? || (!same(src, dst) && dst.contains(key).await?))
                }
            }
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.limits().check_prefix(prefix)?;
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let lists =
                    futures_util::future::try_join_all(s.iter().map(|s| s.list_keys(prefix)))
                        .await?;
                Ok(lists.into_iter().flatten().collect())
            }
            Routing::Migrating { from, to } => Self::m_list_keys(from, to, prefix).await,
        }
    }

    async fn clear(&self) -> StateResult<()> {
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                futures_util::future::try_join_all(s.iter().map(|s| s.clear())).await?;
            }
            Routing::Migrating { from, to } => {
                // Every stripe lock, in order: no move is between reading a key on its old
                // shard and writing it on the new one while the shards are cleared (a move
                // in flight would otherwise bring its key back afterwards).
                let mut no_moves = Vec::with_capacity(self.locks.len());
                for stripe in &*self.locks {
                    no_moves.push(stripe.lock().await);
                }
                futures_util::future::try_join_all(
                    distinct(&[from, to]).into_iter().map(|s| s.clear()),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn count(&self) -> StateResult<usize> {
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let counts =
                    futures_util::future::try_join_all(s.iter().map(|s| s.count())).await?;
                Ok(counts.into_iter().sum())
            }
            Routing::Migrating { from, to } => Ok(Self::m_list_keys(from, to, b"").await?.len()),
        }
    }

    /// The shards' pools summed (both layouts while a reshard runs); `None` when no shard
    /// has a pool, or for the instant a reshard switches layouts.
    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        let routing = self.routing.try_read()?;
        let shards: Vec<&Arc<dyn StateBackend>> = match &*routing {
            Routing::Stable(shards) => shards.iter().collect(),
            Routing::Migrating { from, to } => from.iter().chain(to.iter()).collect(),
        };
        shards
            .into_iter()
            .filter_map(|shard| shard.pool_stats())
            .reduce(|a, b| state_core::PoolStats {
                active_connections: a.active_connections + b.active_connections,
                idle_connections: a.idle_connections + b.idle_connections,
                max_connections: a.max_connections + b.max_connections,
                waiting: a.waiting + b.waiting,
            })
    }

    fn capabilities(&self) -> Capabilities {
        *self.caps.read().expect("capabilities lock")
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.limits().check_keys(keys)?;
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let groups = Self::group(s, keys.iter().copied());
                let answers = futures_util::future::try_join_all(
                    groups
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| !g.is_empty())
                        .map(|(shard, positions)| async move {
                            let sub: Vec<&[u8]> = positions.iter().map(|&i| keys[i]).collect();
                            Ok::<_, StateError>((positions, s[shard].batch_get(&sub).await?))
                        }),
                )
                .await?;
                let mut out = vec![None; keys.len()];
                for (positions, values) in answers {
                    for (&i, value) in positions.iter().zip(values) {
                        out[i] = value;
                    }
                }
                Ok(out)
            }
            Routing::Migrating { from, to } => {
                futures_util::future::try_join_all(keys.iter().map(|k| Self::m_get(from, to, k)))
                    .await
            }
        }
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        // Every shard's limits before any write: one bad entry writes nothing anywhere.
        self.limits().check_entries(entries)?;
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let groups = Self::group(s, entries.iter().map(|(k, _)| *k));
                futures_util::future::try_join_all(
                    groups
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| !g.is_empty())
                        .map(|(shard, positions)| async move {
                            let sub: Vec<(&[u8], &[u8])> =
                                positions.iter().map(|&i| entries[i]).collect();
                            s[shard].batch_put(&sub).await
                        }),
                )
                .await?;
                Ok(())
            }
            Routing::Migrating { from, to } => {
                // In order, so the last duplicate wins.
                for (key, value) in entries {
                    m_write!(self, from, to, key, false, |d| d.put(key, value))?;
                }
                Ok(())
            }
        }
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.limits().check_keys(keys)?;
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let groups = Self::group(s, keys.iter().copied());
                let counts = futures_util::future::try_join_all(
                    groups
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| !g.is_empty())
                        .map(|(shard, positions)| async move {
                            let sub: Vec<&[u8]> = positions.iter().map(|&i| keys[i]).collect();
                            s[shard].batch_delete(&sub).await
                        }),
                )
                .await?;
                Ok(counts.into_iter().sum())
            }
            Routing::Migrating { from, to } => {
                let mut removed = 0;
                for key in keys {
                    removed += usize::from(m_write!(self, from, to, key, true, |d| d.delete(key))?);
                }
                Ok(removed)
            }
        }
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).put_with_ttl(key, value, ttl).await,
            Routing::Migrating { from, to } => {
                self.limits().check_entry(key, value)?;
                Limits::check_ttl(ttl)?;
                m_write!(self, from, to, key, false, |d| d
                    .put_with_ttl(key, value, ttl))
            }
        }
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).ttl(key).await,
            Routing::Migrating { from, to } => Ok(Self::m_get_with_ttl(from, to, key)
                .await?
                .and_then(|(_, ttl)| ttl)),
        }
    }

    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).get_with_ttl(key).await,
            Routing::Migrating { from, to } => Self::m_get_with_ttl(from, to, key).await,
        }
    }

    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).get_for_cache(key).await,
            Routing::Migrating { from, to } => Self::m_get_with_ttl(from, to, key).await,
        }
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).compare_and_swap(key, expected, new).await,
            Routing::Migrating { from, to } => {
                self.limits().check_swap(key, new)?;
                m_write!(self, from, to, key, true, |d| d
                    .compare_and_swap(key, expected, new))
            }
        }
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).set_if_not_exists(key, value, ttl).await,
            Routing::Migrating { from, to } => {
                self.limits().check_entry(key, value)?;
                Limits::check_optional_ttl(ttl)?;
                m_write!(self, from, to, key, true, |d| d
                    .set_if_not_exists(key, value, ttl))
            }
        }
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        match &*self.routing.read().await {
            Routing::Stable(s) => pick(s, key).get_and_delete(key).await,
            Routing::Migrating { from, to } => {
                self.limits().check_key(key)?;
                m_write!(self, from, to, key, true, |d| d.get_and_delete(key))
            }
        }
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.limits().check_prefix(prefix)?;
        match &*self.routing.read().await {
            Routing::Stable(s) => {
                let counts =
                    futures_util::future::try_join_all(s.iter().map(|s| s.delete_prefix(prefix)))
                        .await?;
                Ok(counts.into_iter().sum())
            }
            Routing::Migrating { from, to } => {
                let keys = Self::m_list_keys(from, to, prefix).await?;
                let mut removed = 0;
                for key in &keys {
                    removed += usize::from(m_write!(self, from, to, key, true, |d| d.delete(key))?);
                }
                Ok(removed)
            }
        }
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        owned_stream(move |tx| async move {
            if let Err(err) = self.limits().check_prefix(prefix) {
                let _ = tx.send(Err(err)).await;
                return;
            }
            // A snapshot of the layout: the routing lock is not held while the consumer reads.
            let (from, to) = match &*self.routing.read().await {
                Routing::Stable(s) => (s.clone(), None),
                Routing::Migrating { from, to } => (from.clone(), Some(to.clone())),
            };
            match to {
                None => {
                    let mut merged = stream::select_all(from.iter().map(|s| s.scan(prefix)));
                    while let Some(item) = merged.next().await {
                        let stop = item.is_err();
                        if tx.send(item).await.is_err() || stop {
                            return;
                        }
                    }
                }
                Some(to) => {
                    let keys = match Self::m_list_keys(&from, &to, prefix).await {
                        Ok(keys) => keys,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    for chunk in keys.chunks(SCAN_CHUNK) {
                        let found = futures_util::future::try_join_all(
                            chunk.iter().map(|k| Self::m_get_with_ttl(&from, &to, k)),
                        )
                        .await;
                        let found = match found {
                            Ok(found) => found,
                            Err(err) => {
                                let _ = tx.send(Err(err)).await;
                                return;
                            }
                        };
                        for (key, hit) in chunk.iter().zip(found) {
                            if let Some((value, ttl)) = hit {
                                let entry = Entry {
                                    key: key.clone(),
                                    value,
                                    ttl,
                                };
                                if tx.send(Ok(entry)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        // One portable checkpoint of every shard, through the merged scan.
        checkpoint::write_from_scan(self, writer).await
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        // Each entry goes to its shard through batch_put / put_with_ttl.
        checkpoint::restore_into(self, reader).await
    }

    async fn stats(&self) -> StateStats {
        let shards: Vec<Arc<dyn StateBackend>> = match &*self.routing.read().await {
            Routing::Stable(s) => s.to_vec(),
            Routing::Migrating { from, to } => distinct(&[from, to]).into_iter().cloned().collect(),
        };
        let all = futures_util::future::join_all(shards.iter().map(|s| s.stats())).await;
        let mut total = StateStats::default();
        let mut latency_weighted = 0.0;
        for (i, s) in all.iter().enumerate() {
            total.gets += s.gets;
            total.hits += s.hits;
            total.misses += s.misses;
            total.puts += s.puts;
            total.deletes += s.deletes;
            total.other_ops += s.other_ops;
            total.errors += s.errors;
            total.latency_samples += s.latency_samples;
            latency_weighted += s.avg_latency_us * s.latency_samples as f64;
            // Percentiles do not add up: report the worst shard's.
            total.p50_latency_us = total.p50_latency_us.max(s.p50_latency_us);
            total.p99_latency_us = total.p99_latency_us.max(s.p99_latency_us);
            total.uptime = total.uptime.max(s.uptime);
            total
                .details
                .insert(format!("shard.{i}.ops"), s.total_ops() as f64);
        }
        if total.latency_samples > 0 {
            total.avg_latency_us = latency_weighted / total.latency_samples as f64;
        }
        total.details.insert("shards".into(), all.len() as f64);
        total
    }

    async fn health_check(&self) -> StateResult<bool> {
        let shards = self.shards().await;
        let healthy =
            futures_util::future::try_join_all(shards.iter().map(|s| s.health_check())).await?;
        Ok(healthy.into_iter().all(|h| h))
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        let shards = self.shards().await;
        let used =
            futures_util::future::try_join_all(shards.iter().map(|s| s.memory_usage())).await?;
        Ok(used.into_iter().sum())
    }

    async fn flush(&self) -> StateResult<()> {
        let shards = self.shards().await;
        futures_util::future::try_join_all(shards.iter().map(|s| s.flush())).await?;
        Ok(())
    }
}
