//! Multi-key ACID transactions over a sled tree and its expiry index.

use std::time::Duration;

use bytes::Bytes;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use state_core::{Limits, StateError, StateResult};

use crate::SledStateBackend;
use crate::backend::reindex;
use crate::codec::{self, Stored, now_ms};
use crate::error::map_sled;

/// What a transaction closure returns; `?` on the transaction's methods propagates conflicts
/// (which make sled re-run the closure) and aborts.
pub type TransactionResult<T> = Result<T, ConflictableTransactionError<StateError>>;

/// A view of the backend inside [`SledStateBackend::transaction`]: reads see the
/// transaction's own writes, and everything commits atomically or not at all.
pub struct SledTransaction<'a> {
    tree: &'a TransactionalTree,
    index: &'a TransactionalTree,
    default_ttl: Option<Duration>,
    limits: Limits,
    now: u64,
}

fn abort<T>(err: StateError) -> TransactionResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

impl SledTransaction<'_> {
    /// Reads the live value under `key`.
    pub fn get(&self, key: &[u8]) -> TransactionResult<Option<Bytes>> {
        if let Err(err) = self.limits.check_key(key) {
            return abort(err);
        }
        match self.tree.get(key)? {
            Some(raw) => match Stored::decode(raw) {
                Ok(stored) => Ok(stored.is_live(self.now).then(|| stored.into_bytes())),
                Err(err) => abort(err),
            },
            None => Ok(None),
        }
    }

    /// Writes `value` under `key` (with the backend's default TTL, if any). The replaced
    /// value's expiry-index entry is dropped in the same transaction.
    pub fn put(&self, key: &[u8], value: &[u8]) -> TransactionResult<()> {
        self.write(key, value, self.default_ttl)
    }

    /// Writes `value` under `key`, expiring after `ttl` (1 ms to [`state_core::MAX_TTL`];
    /// outside that range the transaction aborts with `InvalidInput`).
    pub fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> TransactionResult<()> {
        if let Err(err) = Limits::check_ttl(ttl) {
            return abort(err);
        }
        self.write(key, value, Some(ttl))
    }

    fn write(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> TransactionResult<()> {
        if let Err(err) = self.limits.check_entry(key, value) {
            return abort(err);
        }
        let expires_at = match ttl
            .map(|ttl| Limits::expiry_ms_after(self.now, ttl))
            .transpose()
        {
            Ok(at) => at,
            Err(err) => return abort(err),
        };
        let old = self.tree.insert(key, codec::encode(value, expires_at))?;
        reindex(self.index, key, old.as_deref(), expires_at)?;
        Ok(())
    }

    /// Removes `key`; returns whether a live value was removed.
    pub fn delete(&self, key: &[u8]) -> TransactionResult<bool> {
        if let Err(err) = self.limits.check_key(key) {
            return abort(err);
        }
        Ok(match self.tree.remove(key)? {
            Some(raw) => {
                reindex(self.index, key, Some(&raw), None)?;
                Stored::decode(raw).is_ok_and(|s| s.is_live(self.now))
            }
            None => false,
        })
    }

    /// Aborts the transaction with `err`: nothing it wrote is applied.
    pub fn abort<T>(&self, err: StateError) -> TransactionResult<T> {
        abort(err)
    }
}

impl SledStateBackend {
    /// Runs `f` as one ACID transaction on a blocking thread and returns its result.
    ///
    /// sled re-runs `f` when it conflicts with a concurrent transaction, so `f` must not have
    /// side effects outside the transaction. Returning `Err` from `f` (or calling
    /// [`SledTransaction::abort`]) applies nothing. With `sync_writes`, the commit is flushed
    /// before this returns.
    ///
    /// ```no_run
    /// # async fn demo(backend: state_sled::SledStateBackend) -> state_core::StateResult<()> {
    /// // Move 10 units between two counters atomically.
    /// let moved = backend
    ///     .transaction(|tx| {
    ///         let from: u64 = tx.get(b"a")?.map_or(0, |v| v[0].into());
    ///         if from < 10 {
    ///             return tx.abort(state_core::StateError::invalid_input("not enough"));
    ///         }
    ///         tx.put(b"a", &[(from - 10) as u8])?;
    ///         tx.put(b"b", &[10])?;
    ///         Ok(true)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<F, R>(&self, f: F) -> StateResult<R>
    where
        F: Fn(&SledTransaction<'_>) -> TransactionResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let result = self
            .blocking(move |inner| {
                let default_ttl = inner.default_ttl;
                let limits = inner.limits;
                (&inner.tree, &inner.index)
                    .transaction(|(tree, index)| {
                        f(&SledTransaction {
                            tree,
                            index,
                            default_ttl,
                            limits,
                            now: now_ms(),
                        })
                    })
                    .map_err(|err| match err {
                        TransactionError::Abort(err) => err,
                        TransactionError::Storage(err) => map_sled(err),
                    })
            })
            .await?;
        if self.inner.default_ttl.is_some() {
            self.ensure_sweeper();
        }
        self.flush_if_sync().await?;
        Ok(result)
    }

    async fn flush_if_sync(&self) -> StateResult<()> {
        if self.sync_writes() {
            self.inner.db.flush_async().await.map_err(map_sled)?;
        }
        Ok(())
    }
}
