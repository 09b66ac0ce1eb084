//! [`Namespaced`]: a key prefix over any backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use state_core::checkpoint::{self, CheckpointSummary, RestoreSummary};
use state_core::{
    Capabilities, Entry, Limits, ScanStream, StateBackend, StateFuture, StateResult, StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::util::{join, owned_stream};

/// Puts every key of the inner backend under a fixed prefix, so several tenants or
/// components share one store without seeing each other's keys.
///
/// `clear`, `count`, `list_keys`, `scan` and `checkpoint` cover only the prefix (`clear`
/// is the inner backend's `delete_prefix`, never its `clear`). The key limit shrinks by the
/// prefix length, so a key accepted here is never refused by the inner backend. `stats`,
/// `memory_usage` and `health_check` describe the whole inner backend.
///
/// A prefix is one namespace segment ended by `:` (`users` becomes `users:`), checked by
/// [`state_core::validate_namespace`]: no prefix can then contain another (`a:` would
/// otherwise see `a:b:`'s keys). Nest namespaces by wrapping one `Namespaced` in another.
///
/// ```
/// use std::sync::Arc;
/// use state_core::StateBackend;
/// use state_layers::Namespaced;
/// use state_memory::MemoryStateBackend;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let shared = Arc::new(MemoryStateBackend::new(None));
/// let users = Namespaced::new(shared.clone(), "users:").unwrap();
/// users.put(b"42", b"alice").await.unwrap();
/// assert_eq!(shared.list_keys(b"").await.unwrap(), vec![bytes::Bytes::from_static(b"users:42")]);
/// assert_eq!(users.list_keys(b"").await.unwrap(), vec![bytes::Bytes::from_static(b"42")]);
/// # });
/// ```
#[derive(Debug)]
pub struct Namespaced {
    inner: Arc<dyn StateBackend>,
    prefix: Bytes,
    limits: Limits,
}

impl Namespaced {
    /// Wraps `inner` under `prefix`.
    ///
    /// # Errors
    /// `InvalidInput` when `prefix` is not one segment of `A-Z a-z 0-9 _ - .` optionally
    /// ended by `:`.
    pub fn new(inner: Arc<dyn StateBackend>, prefix: &str) -> StateResult<Self> {
        let prefix = Bytes::from(state_core::validate_namespace(prefix)?);
        let mut limits = inner.capabilities().limits;
        limits.max_key_size = limits.max_key_size.saturating_sub(prefix.len());
        Ok(Self {
            inner,
            prefix,
            limits,
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }

    #[inline]
    fn key(&self, key: &[u8]) -> StateResult<Vec<u8>> {
        self.limits.check_key(key)?;
        Ok(join(&self.prefix, key))
    }

    fn keys(&self, keys: &[&[u8]]) -> StateResult<Vec<Vec<u8>>> {
        self.limits.check_keys(keys)?;
        Ok(keys.iter().map(|k| join(&self.prefix, k)).collect())
    }

    fn full_prefix(&self, prefix: &[u8]) -> StateResult<Vec<u8>> {
        self.limits.check_prefix(prefix)?;
        Ok(join(&self.prefix, prefix))
    }

    fn strip(&self, key: &Bytes) -> Bytes {
        key.slice(self.prefix.len().min(key.len())..)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl StateBackend for Namespaced {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        match self.key(key) {
            Ok(full) => StateFuture::boxed(async move { self.inner.get(&full).await }),
            Err(err) => StateFuture::ready(Err(err.with_operation("get"))),
        }
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        match self.key(key) {
            Ok(full) => StateFuture::boxed(async move { self.inner.put(&full, value).await }),
            Err(err) => StateFuture::ready(Err(err.with_operation("put"))),
        }
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        match self.key(key) {
            Ok(full) => StateFuture::boxed(async move { self.inner.delete(&full).await }),
            Err(err) => StateFuture::ready(Err(err.with_operation("delete"))),
        }
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        match self.key(key) {
            Ok(full) => StateFuture::boxed(async move { self.inner.contains(&full).await }),
            Err(err) => StateFuture::ready(Err(err.with_operation("contains"))),
        }
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        let full = self.full_prefix(prefix)?;
        let keys = self.inner.list_keys(&full).await?;
        Ok(keys.iter().map(|k| self.strip(k)).collect())
    }

    async fn clear(&self) -> StateResult<()> {
        self.inner.delete_prefix(&self.prefix).await.map(|_| ())
    }

    async fn count(&self) -> StateResult<usize> {
        // Keys only: the inner backend's own listing under the prefix.
        Ok(self.inner.list_keys(&self.prefix).await?.len())
    }

    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        self.inner.pool_stats()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.limits = self.limits;
        caps
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        let full = self.keys(keys)?;
        let refs: Vec<&[u8]> = full.iter().map(Vec::as_slice).collect();
        self.inner.batch_get(&refs).await
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.limits.check_entries(entries)?;
        let full: Vec<Vec<u8>> = entries.iter().map(|(k, _)| join(&self.prefix, k)).collect();
        let refs: Vec<(&[u8], &[u8])> = full
            .iter()
            .zip(entries)
            .map(|(k, (_, v))| (k.as_slice(), *v))
            .collect();
        self.inner.batch_put(&refs).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        let full = self.keys(keys)?;
        let refs: Vec<&[u8]> = full.iter().map(Vec::as_slice).collect();
        self.inner.batch_delete(&refs).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        let full = self.key(key)?;
        self.inner.put_with_ttl(&full, value, ttl).await
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        let full = self.key(key)?;
        self.inner.ttl(&full).await
    }

    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        let full = self.key(key)?;
        self.inner.get_with_ttl(&full).await
    }

    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        let full = self.key(key)?;
        self.inner.get_for_cache(&full).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        let full = self.key(key)?;
        self.inner.compare_and_swap(&full, expected, new).await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        let full = self.key(key)?;
        self.inner.set_if_not_exists(&full, value, ttl).await
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        let full = self.key(key)?;
        self.inner.get_and_delete(&full).await
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        let full = self.full_prefix(prefix)?;
        self.inner.delete_prefix(&full).await
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        let full = match self.full_prefix(prefix) {
            Ok(full) => full,
            Err(err) => return Box::pin(futures_util::stream::once(async move { Err(err) })),
        };
        owned_stream(move |tx| async move {
            let mut inner = self.inner.scan(&full);
            while let Some(item) = inner.next().await {
                let item = item.map(|e| Entry {
                    key: self.strip(&e.key),
                    value: e.value,
                    ttl: e.ttl,
                });
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        })
    }

    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        // Our own scan: only this namespace, keys without the prefix (portable).
        checkpoint::write_from_scan(self, writer).await
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        // Through our batch_put / put_with_ttl, so every key gets the prefix.
        checkpoint::restore_into(self, reader).await
    }

    async fn stats(&self) -> StateStats {
        self.inner.stats().await
    }

    async fn health_check(&self) -> StateResult<bool> {
        self.inner.health_check().await
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        self.inner.memory_usage().await
    }

    async fn flush(&self) -> StateResult<()> {
        self.inner.flush().await
    }
}
