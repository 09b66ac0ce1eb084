//! The [`StateBackend`] trait.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::checkpoint::{self, CheckpointSummary, RestoreSummary};
use crate::{Capabilities, StateError, StateFuture, StateResult, StateStats};

/// One stored entry, as yielded by [`StateBackend::scan`] and carried by checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without any namespace prefix the backend adds.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Time left before the entry expires, or `None` when it does not expire.
    pub ttl: Option<Duration>,
}

/// A stream of entries under a prefix; see [`StateBackend::scan`].
pub type ScanStream<'a> = Pin<Box<dyn Stream<Item = StateResult<Entry>> + Send + 'a>>;

/// How many keys the provided methods handle per inner call.
pub(crate) const DEFAULT_CHUNK: usize = 256;

/// An async key-value state store.
///
/// Seven methods are required: the seed's `get`, `put`, `delete`, `list_keys`, `clear`,
/// `count` and `contains`. Everything else is provided with a correct, if slow, generic default
/// built on those seven, or returns [`crate::ErrorKind::Unsupported`] where no correct default
/// exists (TTL and atomic operations cannot be built from plain reads and writes). Backends
/// override what their engine does natively and declare it in [`StateBackend::capabilities`].
/// Wrappers (caches, layers) must override every method, so they never fall back to a default
/// that bypasses the wrapped backend's native path.
///
/// # Contract
///
/// Every backend honours these rules, and the `state-testkit` conformance suite proves them:
///
/// - Keys and values are arbitrary bytes (zero bytes, non-UTF-8, an empty value). An empty key,
///   or a key or value over [`crate::Limits`], is [`crate::ErrorKind::InvalidInput`]: never a
///   panic, never truncated.
/// - `get` after `put` returns exactly what was written. `batch_get` answers in the order
///   asked, duplicates included, with `None` for missing keys.
/// - An expired key is invisible at once to every read (`get`, `contains`, `list_keys`,
///   `count`, `scan`), before any background cleanup. A plain `put` clears a previous TTL unless
///   the backend was configured with a default TTL, which it then applies. `ttl()` is `None`
///   for a key without expiry or a missing key; TTLs keep millisecond precision. A TTL is
///   accepted from 1 ms to [`crate::MAX_TTL`] (100 years) and is `InvalidInput` outside that
///   range ([`crate::Limits::check_ttl`]), never a panic or a wrap-around. An expired key is not
///   counted by `delete`, `batch_delete` or `delete_prefix`, and `set_if_not_exists` on it
///   stores.
/// - `set_if_not_exists`, `get_and_delete` and `compare_and_swap` are atomic: of N concurrent
///   callers exactly one wins.
/// - `clear`, `count`, `list_keys` and `scan` touch only this backend's namespace.
/// - Deleting a missing key is not an error. `list_keys` and `scan` order is unspecified.
///
/// # Failures, unknown outcomes and cancellation
///
/// An answer is either definite or [`crate::ErrorKind::OutcomeUnknown`]:
///
/// - `Ok(..)` is the true answer. A backend never turns a failure into a definite-looking
///   `Ok(false)` / `Ok(None)` / a smaller count (for instance by re-sending a
///   `set_if_not_exists` whose first copy landed, which then answers `false`).
/// - An error of any kind but `OutcomeUnknown` from a call that changes state (`put`,
///   `put_with_ttl`, `delete`, the batches, `clear`, `delete_prefix`, `compare_and_swap`,
///   `set_if_not_exists`, `get_and_delete`, `restore`) means the call was **not** applied:
///   [`crate::ErrorKind::Connection`] and [`crate::ErrorKind::Timeout`] then say it failed
///   before reaching the server (no connection, no pooled connection in time) or was refused.
///   Multi-step calls that are not atomic (`batch_put` without
///   [`Capabilities::atomic_batch`], `clear`, `delete_prefix`, `restore`) may have applied a
///   part before the error.
/// - `OutcomeUnknown` means the call may or may not have been applied: the connection was
///   lost with the command in flight, or a deadline passed after it was sent. It is not
///   retryable by default. A re-send is only safe when it cannot overwrite a later
///   acknowledged write of another writer and cannot answer against its own first copy, which
///   holds for none of the operations above; read the key back (or use a unique value, a
///   fencing token) to learn what happened.
/// - Reads never report `OutcomeUnknown`: a failed read changed nothing, and is
///   `Connection`/`Timeout` (retryable).
///
/// Dropping a call's future (a caller's timeout, a cancelled task) leaves a write in the same
/// state as `OutcomeUnknown`: it may or may not have been applied, and the backend does no
/// further work for it once the drop returns, except what was already sent to a server; a
/// remote backend then makes its later writes wait until the server has answered the dropped
/// one, so it cannot land after them. Each later write waits at most its command timeout and
/// then fails unsent (a retryable [`crate::ErrorKind::Timeout`]) for as long as the dropped
/// one stays unanswered (held up on the network, a stalled server).
///
/// # Cancellation
///
/// Dropping an operation's future before it completes (a `Timeout` layer, `select!`, an
/// aborted request) is allowed at every await point. What holds then, per operation:
///
/// - **Reads** (`get`, `contains`, `batch_get`, `get_with_ttl`, `get_for_cache`, `ttl`,
///   `list_keys`, `count`, `scan` and its stream, `checkpoint`, `stats`, `health_check`,
///   `memory_usage`): nothing changes. A dropped `checkpoint` leaves its writer with a partial
///   stream that a restore rejects as corrupted.
/// - **Single-key writes** (`put`, `put_with_ttl`, `delete`, `compare_and_swap`,
///   `set_if_not_exists`, `get_and_delete`): the key is left either as before the call or as
///   the completed call would have left it, never anything else; which one is unknown to the
///   caller (a request may already be on the wire, or, for an in-process backend, the write
///   may be done when the call returns its future, before the first poll). A conditional
///   write that took effect took effect atomically.
/// - **Multi-key writes** (`batch_put`, `batch_delete`, `delete_prefix`, `clear`, `restore`):
///   each key is left either as before or as after; with [`Capabilities::atomic_batch`] a
///   batch is all or nothing, otherwise any subset of its keys may have been written.
/// - **For every operation**: once the future is dropped, the operation changes nothing after
///   a later operation on the same backend is acknowledged: no background task, blocking
///   thread, cache fill or retry it started may land afterwards and overwrite or delete a
///   later write.
///
/// The `state-testkit` case `proof_cancelled_operations_leave_before_or_after_state` drops
/// each operation after every number of polls until it completes, over a backend that yields
/// at every await point, and checks these rules for every backend and wrapper.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use state_core::{StateBackend, StateResult};
///
/// async fn remember(backend: Arc<dyn StateBackend>) -> StateResult<()> {
///     backend.put(b"session:42", b"alice").await?;
///     assert_eq!(backend.get(b"session:42").await?, Some(Bytes::from_static(b"alice")));
///     assert!(backend.delete(b"session:42").await?);
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// Returns the value stored under `key`, or `None`.
    ///
    /// The four point operations (`get`, `put`, `delete`, `contains`) return a
    /// [`StateFuture`] rather than being `async fn`s, so an in-process backend answers
    /// without allocating a boxed future per call; `.await` them as usual.
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>>;

    /// Stores `value` under `key`, replacing any previous value and TTL.
    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()>;

    /// Removes `key`; returns whether a live entry was removed. A missing key is not an error.
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool>;

    /// Lists every live key starting with `prefix` (empty: all keys), in unspecified order.
    ///
    /// This collects the keys; use [`StateBackend::scan`] for large keyspaces.
    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>>;

    /// Removes every key of this backend's namespace, and nothing outside it.
    async fn clear(&self) -> StateResult<()>;

    /// Counts the live keys of this backend's namespace.
    async fn count(&self) -> StateResult<usize>;

    /// Whether a live entry exists under `key`.
    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool>;

    /// What this backend supports, and its size limits.
    ///
    /// The default declares nothing beyond what the provided methods do.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Reads several keys; the answer has one slot per key asked, in order, duplicates
    /// included. Default: one `get` per key.
    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Writes several entries; when a key repeats, the last value wins. Default: one `put`
    /// per entry (not atomic; see [`Capabilities::atomic_batch`]).
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        for (key, value) in entries {
            self.put(key, value).await?;
        }
        Ok(())
    }

    /// Deletes several keys; returns how many live entries were removed.
    /// Default: one `delete` per key.
    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        let mut removed = 0;
        for key in keys {
            removed += usize::from(self.delete(key).await?);
        }
        Ok(removed)
    }

    /// Stores `value` under `key` for `ttl`, from 1 ms to [`crate::MAX_TTL`] (100 years);
    /// outside that range, [`crate::ErrorKind::InvalidInput`]. Default: unsupported.
    async fn put_with_ttl(&self, _key: &[u8], _value: &[u8], _ttl: Duration) -> StateResult<()> {
        Err(StateError::unsupported("put_with_ttl"))
    }

    /// Time left before `key` expires; `None` when it has no expiry or does not exist.
    /// Default: `None` (a backend without TTL support has no expiring keys).
    async fn ttl(&self, _key: &[u8]) -> StateResult<Option<Duration>> {
        Ok(None)
    }

    /// Reads `key` together with its remaining TTL (`None` inside: no expiry), as one
    /// observation where the engine allows it. Caches use it so a cached copy never outlives
    /// the key. Default: `get`, then `ttl` when [`Capabilities::ttl`] is declared (two reads:
    /// an overwrite between them can pair the value with the newer write's TTL); backends
    /// override it with one atomic read.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        let Some(value) = self.get(key).await? else {
            return Ok(None);
        };
        let ttl = if self.capabilities().ttl {
            self.ttl(key).await?
        } else {
            None
        };
        Ok(Some((value, ttl)))
    }

    /// Reads `key` for a cache in front of this backend: the value and the longest a copy of
    /// it may be kept (`None` inside: no limit). Default: [`StateBackend::get_with_ttl`] (a
    /// copy may live as long as the key). Tiered backends override it to answer from a cache
    /// tier with that tier's remaining lifetime, a bound that never exceeds the key's TTL.
    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.get_with_ttl(key).await
    }

    /// Atomically replaces the value under `key` with `new` (`None` deletes) when the current
    /// value equals `expected` (`None`: the key is absent or expired). Returns whether it
    /// swapped. The new value is written like `put`: any previous TTL is cleared (or the
    /// default TTL applied). Default: unsupported.
    async fn compare_and_swap(
        &self,
        _key: &[u8],
        _expected: Option<&[u8]>,
        _new: Option<&[u8]>,
    ) -> StateResult<bool> {
        Err(StateError::unsupported("compare_and_swap"))
    }

    /// Atomically stores `value` when `key` is absent (or expired), optionally with a TTL;
    /// returns whether it stored. Default: `compare_and_swap(key, None, Some(value))` without
    /// TTL, unsupported with one.
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        if ttl.is_some() || !self.capabilities().atomic {
            return Err(StateError::unsupported("set_if_not_exists"));
        }
        self.compare_and_swap(key, None, Some(value)).await
    }

    /// Atomically removes `key` and returns the value it held. Default: a `get` +
    /// `compare_and_swap` loop, on backends that declare `atomic`.
    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        if !self.capabilities().atomic {
            return Err(StateError::unsupported("get_and_delete"));
        }
        loop {
            let Some(current) = self.get(key).await? else {
                return Ok(None);
            };
            if self.compare_and_swap(key, Some(&current), None).await? {
                return Ok(Some(current));
            }
        }
    }

    /// Deletes every key starting with `prefix`; returns how many were removed.
    /// Default: `list_keys` then `batch_delete` in chunks.
    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        let keys = self.list_keys(prefix).await?;
        let mut removed = 0;
        for chunk in keys.chunks(DEFAULT_CHUNK) {
            let refs: Vec<&[u8]> = chunk.iter().map(AsRef::as_ref).collect();
            removed += self.batch_delete(&refs).await?;
        }
        Ok(removed)
    }

    /// Streams every live entry whose key starts with `prefix`, in unspecified order, without
    /// collecting the keyspace. Entries written or deleted during the scan may or may not
    /// appear; each yielded value was current at some point during the scan.
    ///
    /// Default: `list_keys`, then `batch_get` and `ttl` per chunk of keys (the key list is
    /// collected); backends override it with a native cursor.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        crate::scan::default_scan(self, prefix)
    }

    /// Writes every live entry to `writer` in the portable checkpoint format
    /// ([`crate::checkpoint`]). Default: built on [`StateBackend::scan`].
    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        checkpoint::write_from_scan(self, writer).await
    }

    /// Reads a checkpoint from `reader` and writes its entries (upserting; call `clear` first
    /// to replace the state). Entries keep their remaining TTL. Default: batched `batch_put`
    /// and `put_with_ttl`.
    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        checkpoint::restore_into(self, reader).await
    }

    /// Operation counters, hit rate and latency. Default: all zero.
    async fn stats(&self) -> StateStats {
        StateStats::default()
    }

    /// Whether the backend can serve requests right now. Default: a probe `contains`.
    async fn health_check(&self) -> StateResult<bool> {
        self.contains(b"\0state-health-probe").await.map(|_| true)
    }

    /// Bytes of memory the stored state occupies. Default: unsupported.
    async fn memory_usage(&self) -> StateResult<u64> {
        Err(StateError::unsupported("memory_usage"))
    }

    /// Makes every acknowledged write durable, as far as the backend can. Default: nothing to
    /// do (an in-memory or server-side backend has no client-side buffer).
    async fn flush(&self) -> StateResult<()> {
        Ok(())
    }

    /// The connection pool's figures, for a backend with a pool (Redis, PostgreSQL) and for
    /// wrappers over one, which report their inner backend's (summed over shards); `None`
    /// for a backend without connections. Cheap: read from counters, no round trip.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use state_core::StateBackend;
    ///
    /// fn alert_if_exhausted(backend: &Arc<dyn StateBackend>) {
    ///     if backend.pool_stats().is_some_and(|p| p.is_exhausted()) {
    ///         eprintln!("every connection is busy");
    ///     }
    /// }
    /// ```
    fn pool_stats(&self) -> Option<crate::PoolStats> {
        None
    }
}
