//! The sled-backed [`SledStateBackend`].

use std::fmt;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
};
use sled::{IVec, Transactional};
use state_core::{
    Capabilities, Entry, Limits, OpKind, ScanStream, StateBackend, StateError, StateFuture,
    StateResult, StateStats, StatsRecorder, Sweeper, prefix_upper_bound,
};

use crate::codec::{self, Stored, expiry_of, index_key, now_ms, split_index_key};
use crate::config::{SledConfig, validate_tree_name};
use crate::error::{join_error, map_sled};

/// Entries a scan page reads per blocking call.
const PAGE: usize = 512;
/// Keys `delete_prefix` and `clear` remove per blocking step (one sled transaction each); a
/// cancelled call stops between two steps.
const DELETE_PAGE: usize = 1_000;
/// Expiry-index entries one sweep step visits (one sled transaction each).
const SWEEP_BATCH: usize = 1_000;

/// Stops a paged operation (`delete_prefix`, `clear`, `purge_expired`) once its future is
/// dropped.
///
/// Each page commits while holding the lock; dropping the future takes the lock to set the
/// flag, so it waits for a page that is committing (one bounded page, ~1,000 keys) and no
/// page commits after the drop returns.
#[derive(Default)]
struct Cancel(Mutex<bool>);

impl Cancel {
    /// Runs `page` unless the operation was cancelled; the flag cannot be set meanwhile.
    fn unless_cancelled<R>(&self, page: impl FnOnce() -> R) -> Option<R> {
        let cancelled = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if *cancelled {
            return None;
        }
        Some(page())
    }

    fn cancel(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
}

/// Cancels on drop: held by the future of a paged operation.
struct CancelOnDrop(Arc<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// What one page of a paged deletion did.
struct DeletedPage {
    /// Live entries removed.
    removed: usize,
    /// The last key visited when the range may go on; `None` once it is done (or cancelled).
    last: Option<IVec>,
}

fn tx_error(err: TransactionError<StateError>) -> StateError {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => map_sled(err),
    }
}

fn corrupted<T>(err: StateError) -> ConflictableTransactionResult<T, StateError> {
    Err(ConflictableTransactionError::Abort(err))
}

/// Index upkeep inside a transaction that replaced `old` under `key` with a value expiring at
/// `new_at` (`None`: no expiry, or removed): drops `old`'s entry and adds the new one.
pub(crate) fn reindex(
    index: &sled::transaction::TransactionalTree,
    key: &[u8],
    old: Option<&[u8]>,
    new_at: Option<u64>,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let old_at = old.and_then(expiry_of);
    if let Some(at) = old_at
        && old_at != new_at
    {
        index.remove(index_key(at, key))?;
    }
    if let Some(at) = new_at {
        index.insert(index_key(at, key), &[][..])?;
    }
    Ok(())
}

pub(crate) struct Inner {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) index: sled::Tree,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) limits: Limits,
    sync_writes: bool,
    compression: bool,
    cleanup_interval: Duration,
    path: Option<PathBuf>,
    tree_name: String,
    /// The page cache bound the database was opened with (`None`: a shared database opened
    /// elsewhere, whose setting this backend does not know).
    cache_capacity: Option<u64>,
    stats: StatsRecorder,
    sweeper: Sweeper,
}

/// An embedded, persistent [`StateBackend`] on [sled](https://docs.rs/sled/0.34) 0.34.
///
/// - Point reads and writes run inline: they hit sled's page cache and its in-memory write
///   buffers, taking about as long as a hash-map lookup plus a copy. Anything that walks the
///   tree (`list_keys`, `count`, `clear`, `delete_prefix`, each `scan` page, the expiry sweep)
///   runs on tokio's blocking pool, and flushes run on sled's own thread pool, so the async
///   runtime never waits on them. No `block_in_place`: it works on current-thread runtimes.
/// - TTL is stored with the value (millisecond wall-clock expiry), checked on every read and
///   swept in the background through an expiry index tree.
/// - `batch_put`, `batch_delete` and [`SledStateBackend::transaction`] are atomic.
/// - `compare_and_swap`, `set_if_not_exists` and `get_and_delete` use sled's
///   compare-and-swap on the stored bytes.
///
/// Clones share the database; it is flushed and closed when the last clone is dropped.
///
/// ```no_run
/// use state_core::StateBackend;
/// use state_sled::SledStateBackend;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let backend = SledStateBackend::new("/var/lib/optimizer/state")?;
/// backend.put(b"checkpoint:offset", b"42").await?;
/// backend.flush().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SledStateBackend {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for SledStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStateBackend")
            .field("path", &self.inner.path)
            .field("tree", &self.inner.tree_name)
            .field("default_ttl", &self.inner.default_ttl)
            .field("sync_writes", &self.inner.sync_writes)
            .finish_non_exhaustive()
    }
}

impl SledStateBackend {
    /// Opens (or creates) the database in the folder `path` with default settings.
    ///
    /// Opening runs sled's recovery synchronously; for very large databases call it from
    /// `tokio::task::spawn_blocking`.
    pub fn new(path: impl Into<PathBuf>) -> StateResult<Self> {
        SledConfig::new(path).build()
    }

    /// Starts a [`SledConfig`] for the database in `path`.
    pub fn builder(path: impl Into<PathBuf>) -> SledConfig {
        SledConfig::new(path)
    }

    /// Uses the tree `name` of an already open database, so several backends (namespaces)
    /// share one database and its cache. The database's own settings apply; defaults for
    /// everything else.
    pub fn open_tree(db: sled::Db, name: &str) -> StateResult<Self> {
        let config = SledConfig::new("(shared database)").tree(name);
        Self::with_db(db, &config, None, None)
    }

    pub(crate) fn from_config(config: &SledConfig) -> StateResult<Self> {
        config.validate()?;
        let db = config
            .sled_config()
            .open()
            .map_err(|err| map_sled(err).with_operation("open"))?;
        Self::with_db(
            db,
            config,
            Some(config.path.clone()),
            Some(config.cache_capacity),
        )
    }

    fn with_db(
        db: sled::Db,
        config: &SledConfig,
        path: Option<PathBuf>,
        cache_capacity: Option<u64>,
    ) -> StateResult<Self> {
        validate_tree_name(&config.tree)?;
        let tree = db.open_tree(&config.tree).map_err(map_sled)?;
        let index = db
            .open_tree(format!("__expiry__{}", config.tree))
            .map_err(map_sled)?;
        let backend = Self {
            inner: Arc::new(Inner {
                db,
                tree,
                index,
                default_ttl: config.default_ttl,
                limits: config.limits,
                sync_writes: config.sync_writes,
                compression: config.compression,
                cleanup_interval: config.cleanup_interval,
                path,
                tree_name: config.tree.clone(),
                cache_capacity,
                stats: StatsRecorder::new(config.latency_sample_rate),
                sweeper: Sweeper::new(),
            }),
        };
        // Entries with a TTL may already be on disk from an earlier run.
        if !backend.inner.index.is_empty() {
            backend.ensure_sweeper();
        }
        Ok(backend)
    }

    /// The underlying sled database, for features this crate does not wrap.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Removes expired entries now (the sweeper does this every `cleanup_interval`); returns
    /// how many were removed.
    ///
    /// Works in steps of 1,000 index entries; dropping the future stops it between two steps.
    pub async fn purge_expired(&self) -> StateResult<usize> {
        let cancel = Arc::new(Cancel::default());
        let _stop = CancelOnDrop(cancel.clone());
        let mut removed = 0;
        loop {
            let cancel = cancel.clone();
            let step = self
                .blocking(move |inner| {
                    cancel
                        .unless_cancelled(|| inner.purge_expired(SWEEP_BATCH))
                        .unwrap_or(Ok((0, 0)))
                })
                .await?;
            removed += step.1;
            if step.0 < SWEEP_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Entries in the expiry index (one per stored value with a TTL, plus entries a crash
    /// left behind until the sweep discards them). For tests of the index's upkeep.
    #[doc(hidden)]
    pub fn expiry_index_len(&self) -> usize {
        self.inner.index.len()
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> StateResult<u64> {
        self.inner.db.size_on_disk().map_err(map_sled)
    }

    /// Runs `f` on a blocking thread. The thread is not stopped when the returned future is
    /// dropped: a long loop inside `f` must check a [`StopOnDrop`] between writes.
    pub(crate) async fn blocking<R, F>(&self, f: F) -> StateResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Inner) -> StateResult<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(join_error)?
    }

    /// Whether every write is flushed before it is acknowledged.
    pub fn sync_writes(&self) -> bool {
        self.inner.sync_writes
    }

    async fn durable(&self) -> StateResult<()> {
        if self.inner.sync_writes {
            self.inner.db.flush_async().await.map_err(map_sled)?;
        }
        Ok(())
    }

    pub(crate) fn ensure_sweeper(&self) {
        self.inner.sweeper.ensure_started(
            &self.inner,
            self.inner.cleanup_interval,
            |inner: Arc<Inner>| async move {
                // Drain everything that has expired, one bounded batch per blocking call, so
                // the sweep keeps up with any rate of expiring writes.
                loop {
                    let batch = inner.clone();
                    let swept =
                        tokio::task::spawn_blocking(move || batch.purge_expired(SWEEP_BATCH)).await;
                    match swept {
                        Ok(Ok((visited, removed))) => {
                            if removed > 0 {
                                tracing::trace!(removed, "sled backend swept expired entries");
                            }
                            if visited < SWEEP_BATCH {
                                break;
                            }
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(error = %err, "sled expiry sweep failed");
                            break;
                        }
                        Err(_) => break,
                    }
                }
            },
        );
    }

    /// The expiry of a write with `ttl` (or the default TTL): `InvalidInput` outside the TTL
    /// rule, never a wrap-around.
    fn expiry(&self, ttl: Option<Duration>) -> StateResult<Option<u64>> {
        let Some(ttl) = ttl.or(self.inner.default_ttl) else {
            return Ok(None);
        };
        let at = codec::expiry_after(ttl)?;
        self.ensure_sweeper();
        Ok(Some(at))
    }

    /// Deletes the keys under `prefix` (all keys when empty) one page of 1,000 per blocking
    /// step, each page one sled transaction; stops between pages once the future is dropped.
    async fn delete_range(&self, prefix: Vec<u8>) -> StateResult<usize> {
        let cancel = Arc::new(Cancel::default());
        let _stop = CancelOnDrop(cancel.clone());
        let prefix: Arc<[u8]> = prefix.into();
        let mut after: Option<IVec> = None;
        let mut removed = 0;
        loop {
            let (prefix, cancel) = (prefix.clone(), cancel.clone());
            let from = after.take();
            let page = self
                .blocking(move |inner| inner.delete_page(&prefix, from.as_ref(), &cancel))
                .await?;
            removed += page.removed;
            match page.last {
                Some(last) => after = Some(last),
                None => return Ok(removed),
            }
        }
    }

    /// Drops expiry-index entries whose value is gone (left by a crash between a write and
    /// its index upkeep), one page per blocking step; stops once the future is dropped.
    async fn prune_index(&self) -> StateResult<()> {
        let cancel = Arc::new(Cancel::default());
        let _stop = CancelOnDrop(cancel.clone());
        let mut after: Option<IVec> = None;
        loop {
            let cancel = cancel.clone();
            let from = after.take();
            let last = self
                .blocking(move |inner| {
                    cancel
                        .unless_cancelled(|| inner.prune_index_page(from.as_ref()))
                        .unwrap_or(Ok(None))
                })
                .await?;
            match last {
                Some(last) => after = Some(last),
                None => return Ok(()),
            }
        }
    }
}

impl Inner {
    pub(crate) fn read(&self, key: &[u8]) -> StateResult<Option<Stored>> {
        match self.tree.get(key).map_err(map_sled)? {
            Some(raw) => Stored::decode(raw).map(Some),
            None => Ok(None),
        }
    }

    /// The live value under `key`; an expired one is removed on the way (if unchanged).
    fn read_live(&self, key: &[u8]) -> StateResult<Option<Stored>> {
        let Some(stored) = self.read(key)? else {
            return Ok(None);
        };
        if stored.is_live(now_ms()) {
            return Ok(Some(stored));
        }
        if self
            .tree
            .compare_and_swap(key, Some(&stored.raw), None::<&[u8]>)
            .map_err(map_sled)?
            .is_ok()
        {
            self.unindex(key, &stored.raw)?;
        }
        Ok(None)
    }

    /// Keeps the expiry index at one entry per expiring value: after `old` was replaced or
    /// removed by a plain (non-transactional) write, drops its index entry, unless the value
    /// now stored under `key` carries the same expiry (a concurrent writer's, whose entry it
    /// is). Every write that adds an index entry runs in a sled transaction, and transactions
    /// exclude all other writes while they run, so this check-and-remove is exact.
    fn unindex(&self, key: &[u8], old: &[u8]) -> StateResult<()> {
        let Some(at) = expiry_of(old) else {
            return Ok(());
        };
        (&self.tree, &self.index)
            .transaction(|(tree, index)| {
                let current = tree.get(key)?;
                if current.as_deref().and_then(expiry_of) != Some(at) {
                    index.remove(index_key(at, key))?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Writes `value` under `key`. Without expiry it is one sled insert (plus index upkeep if
    /// it replaced an expiring value); with one, a transaction over the tree and the index
    /// writes the value, adds its index entry and drops the replaced value's entry together.
    fn write(&self, key: &[u8], value: &[u8], expires_at: Option<u64>) -> StateResult<()> {
        let Some(at) = expires_at else {
            let old = self
                .tree
                .insert(key, codec::encode(value, None))
                .map_err(map_sled)?;
            if let Some(old) = old {
                self.unindex(key, &old)?;
            }
            return Ok(());
        };
        let encoded = codec::encode(value, Some(at));
        (&self.tree, &self.index)
            .transaction(|(tree, index)| {
                let old = tree.insert(key, &encoded[..])?;
                reindex(index, key, old.as_deref(), Some(at))?;
                Ok(())
            })
            .map_err(tx_error)
    }

    /// Swaps the stored bytes for `new` when the live value equals `expected`; retries when a
    /// concurrent writer changed the raw bytes between the read and the swap.
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<(&[u8], Option<u64>)>,
    ) -> StateResult<bool> {
        if let Some((value, Some(at))) = new {
            // A write with an expiry: compare, write and index in one transaction.
            let encoded = codec::encode(value, Some(at));
            return (&self.tree, &self.index)
                .transaction(|(tree, index)| {
                    let raw = tree.get(key)?;
                    let now = now_ms();
                    let current = match &raw {
                        Some(raw) => match Stored::decode(raw.clone()) {
                            Ok(stored) => stored.is_live(now).then_some(stored),
                            Err(err) => return corrupted(err),
                        },
                        None => None,
                    };
                    if current.as_ref().map(Stored::payload) != expected {
                        return Ok(false);
                    }
                    tree.insert(key, &encoded[..])?;
                    reindex(index, key, raw.as_deref(), Some(at))?;
                    Ok(true)
                })
                .map_err(tx_error);
        }
        loop {
            let raw = self.tree.get(key).map_err(map_sled)?;
            let now = now_ms();
            let current = match &raw {
                Some(raw) => {
                    let stored = Stored::decode(raw.clone())?;
                    stored.is_live(now).then_some(stored)
                }
                None => None,
            };
            if current.as_ref().map(Stored::payload) != expected {
                return Ok(false);
            }
            let encoded = new.map(|(value, at)| codec::encode(value, at));
            if raw.is_none() && encoded.is_none() {
                return Ok(true);
            }
            let swapped = self
                .tree
                .compare_and_swap(key, raw.as_ref(), encoded)
                .map_err(map_sled)?;
            if swapped.is_ok() {
                if let Some(raw) = &raw {
                    self.unindex(key, raw)?;
                }
                return Ok(true);
            }
            // A concurrent writer changed the bytes between the read and the swap: read again.
        }
    }

    fn take_live(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        loop {
            let Some(raw) = self.tree.get(key).map_err(map_sled)? else {
                return Ok(None);
            };
            let stored = Stored::decode(raw.clone())?;
            if !stored.is_live(now_ms()) {
                return Ok(None);
            }
            if self
                .tree
                .compare_and_swap(key, Some(&raw), None::<&[u8]>)
                .map_err(map_sled)?
                .is_ok()
            {
                self.unindex(key, &raw)?;
                return Ok(Some(stored.into_bytes()));
            }
        }
    }

    fn prefix_range(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = sled::Result<(IVec, IVec)>> + use<> {
        match prefix_upper_bound(prefix) {
            Some(end) => self.tree.range(prefix.to_vec()..end),
            None => self.tree.range(prefix.to_vec()..),
        }
    }

    /// Visits up to `limit` expiry-index entries that are due, in one transaction: removes
    /// each value that carries that expiry and the index entry; returns (visited, removed).
    fn purge_expired(&self, limit: usize) -> StateResult<(usize, usize)> {
        let now = now_ms();
        let upper = now.saturating_add(1).to_be_bytes();
        let due = self
            .index
            .range(..&upper[..])
            .keys()
            .take(limit)
            .collect::<Result<Vec<IVec>, _>>()
            .map_err(map_sled)?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let removed = (&self.tree, &self.index)
            .transaction(|(tree, index)| {
                let mut removed = 0;
                for ikey in &due {
                    if let Some((at, key)) = split_index_key(ikey)
                        && at <= now
                        && tree.get(key)?.as_deref().and_then(expiry_of) == Some(at)
                    {
                        tree.remove(key)?;
                        removed += 1;
                    }
                    index.remove(ikey)?;
                }
                Ok(removed)
            })
            .map_err(tx_error)?;
        Ok((due.len(), removed))
    }

    /// Removes up to [`DELETE_PAGE`] keys under `prefix` after `after`, with their index
    /// entries, in one transaction, unless `cancel` was set first.
    fn delete_page(
        &self,
        prefix: &[u8],
        after: Option<&IVec>,
        cancel: &Cancel,
    ) -> StateResult<DeletedPage> {
        let start = match after {
            Some(last) => Bound::Excluded(last.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let end = prefix_upper_bound(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let keys = self
            .tree
            .range::<Vec<u8>, _>((start, end))
            .keys()
            .take(DELETE_PAGE)
            .collect::<Result<Vec<IVec>, _>>()
            .map_err(map_sled)?;
        let done = DeletedPage {
            removed: 0,
            last: None,
        };
        if keys.is_empty() {
            return Ok(done);
        }
        let committed = cancel.unless_cancelled(|| {
            let now = now_ms();
            (&self.tree, &self.index)
                .transaction(|(tree, index)| {
                    let mut removed = 0;
                    for key in &keys {
                        if let Some(old) = tree.remove(key)? {
                            reindex(index, key, Some(&old), None)?;
                            removed += usize::from(expiry_of(&old).is_none_or(|at| at > now));
                        }
                    }
                    Ok(removed)
                })
                .map_err(tx_error)
        });
        let Some(removed) = committed else {
            return Ok(done);
        };
        Ok(DeletedPage {
            removed: removed?,
            last: (keys.len() == DELETE_PAGE).then(|| keys[keys.len() - 1].clone()),
        })
    }

    /// Drops up to [`DELETE_PAGE`] index entries after `after` whose value no longer carries
    /// their expiry; returns the last entry visited while the index may go on.
    fn prune_index_page(&self, after: Option<&IVec>) -> StateResult<Option<IVec>> {
        let start = after.map_or(Bound::Unbounded, |last| Bound::Excluded(last.to_vec()));
        let ikeys = self
            .index
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .keys()
            .take(DELETE_PAGE)
            .collect::<Result<Vec<IVec>, _>>()
            .map_err(map_sled)?;
        if ikeys.is_empty() {
            return Ok(None);
        }
        (&self.tree, &self.index)
            .transaction(|(tree, index)| {
                for ikey in &ikeys {
                    let live = match split_index_key(ikey) {
                        Some((at, key)) => {
                            tree.get(key)?.as_deref().and_then(expiry_of) == Some(at)
                        }
                        None => false,
                    };
                    if !live {
                        index.remove(ikey)?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error)?;
        Ok((ikeys.len() == DELETE_PAGE).then(|| ikeys[ikeys.len() - 1].clone()))
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&IVec>,
    ) -> StateResult<(Vec<Entry>, Option<IVec>)> {
        let start = match after {
            Some(last) => Bound::Excluded(last.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let end = prefix_upper_bound(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let now = now_ms();
        let mut entries = Vec::new();
        let mut last = None;
        for item in self.tree.range::<Vec<u8>, _>((start, end)).take(PAGE) {
            let (key, raw) = item.map_err(map_sled)?;
            let stored = Stored::decode(raw)?;
            if stored.is_live(now) {
                entries.push(Entry {
                    key: Bytes::from_owner(key.clone()),
                    ttl: stored.ttl(now),
                    value: stored.into_bytes(),
                });
            }
            last = Some(key);
        }
        Ok((entries, last))
    }
}

impl SledStateBackend {
    fn get_now(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        match self.inner.read_live(key) {
            Ok(value) => {
                self.inner.stats.record_get(timer, value.is_some());
                Ok(value.map(Stored::into_bytes))
            }
            Err(err) => {
                self.inner.stats.record_error(timer);
                Err(err.with_operation("get"))
            }
        }
    }

    fn contains_now(&self, key: &[u8]) -> StateResult<bool> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .read(key)
            .map(|stored| stored.is_some_and(|s| s.is_live(now_ms())));
        match &result {
            Ok(found) => self.inner.stats.record_get(timer, *found),
            Err(_) => self.inner.stats.record_error(timer),
        }
        result
    }

    fn put_now(&self, key: &[u8], value: &[u8]) -> StateResult<()> {
        self.inner.limits.check_entry(key, value)?;
        let timer = self.inner.stats.start();
        let result = self
            .expiry(None)
            .and_then(|at| self.inner.write(key, value, at));
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result.map_err(|e| e.with_operation("put"))
    }

    fn delete_now(&self, key: &[u8]) -> StateResult<bool> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .tree
            .remove(key)
            .map_err(map_sled)
            .and_then(|old| match old {
                Some(raw) => {
                    self.inner.unindex(key, &raw)?;
                    Ok(Stored::decode(raw)?.is_live(now_ms()))
                }
                None => Ok(false),
            });
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        result.map_err(|e| e.with_operation("delete"))
    }

    /// Answers at once, or after a flush when `sync_writes` is on.
    fn then_durable<T: Send + 'static>(&self, result: StateResult<T>) -> StateFuture<'_, T> {
        match result {
            Ok(value) if self.inner.sync_writes => StateFuture::boxed(async move {
                self.durable().await?;
                Ok(value)
            }),
            other => StateFuture::ready(other),
        }
    }
}

#[async_trait]
impl StateBackend for SledStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::ready(self.get_now(key))
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        let written = self.put_now(key, value);
        self.then_durable(written)
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let removed = self.delete_now(key);
        self.then_durable(removed)
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.inner.limits.check_prefix(prefix)?;
        let prefix = prefix.to_vec();
        let timer = self.inner.stats.start();
        let result = self
            .blocking(move |inner| {
                let now = now_ms();
                let mut keys = Vec::new();
                for item in inner.prefix_range(&prefix) {
                    let (key, raw) = item.map_err(map_sled)?;
                    if Stored::decode(raw)?.is_live(now) {
                        keys.push(Bytes::from_owner(key));
                    }
                }
                Ok(keys)
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result
    }

    /// Removes the tree's keys 1,000 per blocking step (see `delete_prefix` for what a
    /// dropped future leaves), then index entries a crash left behind.
    async fn clear(&self) -> StateResult<()> {
        let timer = self.inner.stats.start();
        let result = match self.delete_range(Vec::new()).await {
            Ok(_) => self.prune_index().await,
            Err(err) => Err(err),
        };
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result?;
        self.durable().await
    }

    async fn count(&self) -> StateResult<usize> {
        let timer = self.inner.stats.start();
        let result = self
            .blocking(|inner| {
                let now = now_ms();
                let mut n = 0;
                for item in inner.tree.iter().values() {
                    n += usize::from(Stored::decode(item.map_err(map_sled)?)?.is_live(now));
                }
                Ok(n)
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::ready(self.contains_now(key))
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.ttl = true;
        caps.atomic = true;
        caps.atomic_batch = true;
        caps.native_batch = true;
        caps.transactions = true;
        caps.persistence = true;
        caps.memory_usage = true;
        caps.compression = cfg!(feature = "compression");
        caps.limits = self.inner.limits;
        caps.default_ttl = self.inner.default_ttl;
        caps
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.inner.limits.check_keys(keys)?;
        let timer = self.inner.stats.start();
        let now = now_ms();
        let mut out = Vec::with_capacity(keys.len());
        let mut hits = 0;
        for key in keys {
            let value = match self.inner.read(key) {
                Ok(v) => v.filter(|s| s.is_live(now)).map(Stored::into_bytes),
                Err(err) => {
                    self.inner.stats.record_error(timer);
                    return Err(err.with_operation("batch_get"));
                }
            };
            hits += u64::from(value.is_some());
            out.push(value);
        }
        self.inner
            .stats
            .record_batch_get(timer, hits, keys.len() as u64 - hits);
        Ok(out)
    }

    /// Applies every entry in one atomic sled batch.
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.inner.limits.check_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let timer = self.inner.stats.start();
        let expires_at = self.expiry(None)?;
        let encoded: Vec<Vec<u8>> = entries
            .iter()
            .map(|(_, value)| codec::encode(value, expires_at))
            .collect();
        let result = (&self.inner.tree, &self.inner.index)
            .transaction(|(tree, index)| {
                for ((key, _), value) in entries.iter().zip(&encoded) {
                    let old = tree.insert(*key, &value[..])?;
                    reindex(index, key, old.as_deref(), expires_at)?;
                }
                Ok(())
            })
            .map_err(tx_error);
        self.inner
            .stats
            .observe(timer, OpKind::Put, entries.len() as u64, &result);
        result.map_err(|e| e.with_operation("batch_put"))?;
        self.durable().await
    }

    /// Removes the keys in one sled transaction (all or nothing).
    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.inner.limits.check_keys(keys)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let timer = self.inner.stats.start();
        let now = now_ms();
        let result = (&self.inner.tree, &self.inner.index)
            .transaction(|(tree, index)| {
                let mut removed = 0;
                for key in keys {
                    if let Some(raw) = tree.remove(*key)? {
                        reindex(index, key, Some(&raw), None)?;
                        removed += usize::from(Stored::decode(raw).is_ok_and(|s| s.is_live(now)));
                    }
                }
                Ok(removed)
            })
            .map_err(tx_error);
        self.inner
            .stats
            .observe(timer, OpKind::Delete, keys.len() as u64, &result);
        let removed = result.map_err(|e| e.with_operation("batch_delete"))?;
        self.durable().await?;
        Ok(removed)
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.inner.limits.check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let result = self
            .expiry(Some(ttl))
            .and_then(|at| self.inner.write(key, value, at));
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result.map_err(|e| e.with_operation("put_with_ttl"))?;
        self.durable().await
    }

    /// One tree read: the value and its expiry header come from the same record.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let now = now_ms();
        let result = self.inner.read(key).map(|stored| {
            stored.filter(|s| s.is_live(now)).map(|s| {
                let ttl = s.ttl(now);
                (s.into_bytes(), ttl)
            })
        });
        match &result {
            Ok(found) => self.inner.stats.record_get(timer, found.is_some()),
            Err(_) => self.inner.stats.record_error(timer),
        }
        result.map_err(|e| e.with_operation("get_with_ttl"))
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.inner.limits.check_key(key)?;
        let now = now_ms();
        Ok(self
            .inner
            .read(key)?
            .filter(|s| s.is_live(now))
            .and_then(|s| s.ttl(now)))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.inner.limits.check_swap(key, new)?;
        let timer = self.inner.stats.start();
        let expires_at = if new.is_some() {
            self.expiry(None)?
        } else {
            None
        };
        let result = self
            .inner
            .compare_and_swap(key, expected, new.map(|v| (v, expires_at)));
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        let swapped = result.map_err(|e| e.with_operation("compare_and_swap"))?;
        if swapped {
            self.durable().await?;
        }
        Ok(swapped)
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
        let expires_at = self.expiry(ttl)?;
        let result = self
            .inner
            .compare_and_swap(key, None, Some((value, expires_at)));
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        let stored = result.map_err(|e| e.with_operation("set_if_not_exists"))?;
        if stored {
            self.durable().await?;
        }
        Ok(stored)
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.inner.limits.check_key(key)?;
        let timer = self.inner.stats.start();
        let result = self.inner.take_live(key);
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        let value = result.map_err(|e| e.with_operation("get_and_delete"))?;
        if value.is_some() {
            self.durable().await?;
        }
        Ok(value)
    }

    /// Removes the keys under `prefix` 1,000 per blocking step, each step one transaction
    /// (keys and their expiry-index entries together). Dropping the future stops it: steps
    /// committed before the drop stay done (a partial deletion), the drop waits for a step
    /// that is committing, and nothing is deleted after the drop returns.
    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.inner.limits.check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let result = self.delete_range(prefix.to_vec()).await;
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        let removed = result?;
        self.durable().await?;
        Ok(removed)
    }

    /// Pages through the key range `[prefix, upper bound)` in sled's key order, 512 entries
    /// per blocking call; memory stays bounded whatever the tree's size.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        if let Err(err) = self.inner.limits.check_prefix(prefix) {
            return Box::pin(stream::iter([Err(err)]));
        }
        let prefix = prefix.to_vec();
        // State: the last key read, or None before the first page; `done` ends the stream.
        let pages = stream::unfold(Some(None::<IVec>), move |state| {
            let prefix = prefix.clone();
            async move {
                let after = state?;
                let inner = self.inner.clone();
                let page =
                    tokio::task::spawn_blocking(move || inner.scan_page(&prefix, after.as_ref()))
                        .await
                        .map_err(join_error)
                        .and_then(|r| r);
                match page {
                    Ok((entries, Some(last))) => Some((Ok(entries), Some(Some(last)))),
                    Ok((entries, None)) => Some((Ok(entries), None)),
                    Err(err) => Some((Err(err), None)),
                }
            }
        });
        Box::pin(pages.flat_map(|page| match page {
            Ok(entries) => stream::iter(entries.into_iter().map(Ok)).left_stream(),
            Err(err) => stream::iter([Err(err)]).right_stream(),
        }))
    }

    /// What the state keeps resident: sled holds the database's pages in a page cache of at
    /// most `cache_capacity` bytes, so this is the smaller of the size on disk
    /// ([`SledStateBackend::size_on_disk`], the whole database: every tree) and that bound.
    /// `stats().details` reports both (`size_on_disk_bytes`, `cache_capacity_bytes`). For a
    /// backend on a database opened elsewhere ([`SledStateBackend::open_tree`]) the cache
    /// bound is unknown and the size on disk is returned.
    async fn memory_usage(&self) -> StateResult<u64> {
        let on_disk = self.size_on_disk()?;
        Ok(self
            .inner
            .cache_capacity
            .map_or(on_disk, |cap| on_disk.min(cap)))
    }

    async fn stats(&self) -> StateStats {
        let mut stats = self.inner.stats.snapshot();
        if let Ok(bytes) = self.inner.db.size_on_disk() {
            stats
                .details
                .insert("size_on_disk_bytes".into(), bytes as f64);
            if let Some(cap) = self.inner.cache_capacity {
                stats
                    .details
                    .insert("cache_capacity_bytes".into(), cap as f64);
            }
        }
        stats.details.insert(
            "compression".into(),
            f64::from(u8::from(self.inner.compression)),
        );
        stats
    }

    async fn health_check(&self) -> StateResult<bool> {
        self.inner
            .tree
            .get(b"\0state-health-probe")
            .map_err(map_sled)?;
        Ok(true)
    }

    async fn flush(&self) -> StateResult<()> {
        self.inner.db.flush_async().await.map_err(map_sled)?;
        Ok(())
    }
}
