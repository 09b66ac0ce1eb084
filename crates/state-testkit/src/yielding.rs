//! [`Yielding`]: a backend wrapper that gives up its turn before and after every call, so a
//! future stacked on top of it is `Pending` at every await point at least once. The
//! cancellation cases put it under the wrapper they test and drop that wrapper's futures at
//! each of those points.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{Capabilities, ScanStream, StateBackend, StateFuture, StateResult, StateStats};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::yield_now;

/// Wraps a backend and yields to the scheduler before and after delegating every call (and
/// before every scanned entry), so each await point of a caller is reached with the call
/// still pending. Behaviour is otherwise the wrapped backend's, unchanged.
///
/// ```
/// use std::sync::Arc;
/// use state_core::StateBackend;
/// use state_testkit::{ReferenceBackend, Yielding};
///
/// # futures::executor::block_on(async {
/// let slowed = Yielding::new(Arc::new(ReferenceBackend::new()));
/// slowed.put(b"k", b"v").await.unwrap();
/// assert!(slowed.contains(b"k").await.unwrap());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Yielding {
    inner: Arc<dyn StateBackend>,
}

impl Yielding {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StateBackend>) -> Self {
        Self { inner }
    }

    /// Wraps `inner` and returns it as a trait object, ready to be stacked under a wrapper.
    pub fn wrap(inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        Arc::new(Self::new(inner))
    }
}

#[async_trait]
impl StateBackend for Yielding {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            yield_now().await;
            let out = self.inner.get(key).await;
            yield_now().await;
            out
        })
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            yield_now().await;
            let out = self.inner.put(key, value).await;
            yield_now().await;
            out
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            yield_now().await;
            let out = self.inner.delete(key).await;
            yield_now().await;
            out
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        yield_now().await;
        let out = self.inner.list_keys(prefix).await;
        yield_now().await;
        out
    }

    async fn clear(&self) -> StateResult<()> {
        yield_now().await;
        let out = self.inner.clear().await;
        yield_now().await;
        out
    }

    async fn count(&self) -> StateResult<usize> {
        yield_now().await;
        let out = self.inner.count().await;
        yield_now().await;
        out
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            yield_now().await;
            let out = self.inner.contains(key).await;
            yield_now().await;
            out
        })
    }

    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        self.inner.pool_stats()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        yield_now().await;
        let out = self.inner.batch_get(keys).await;
        yield_now().await;
        out
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        yield_now().await;
        let out = self.inner.batch_put(entries).await;
        yield_now().await;
        out
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        yield_now().await;
        let out = self.inner.batch_delete(keys).await;
        yield_now().await;
        out
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        yield_now().await;
        let out = self.inner.put_with_ttl(key, value, ttl).await;
        yield_now().await;
        out
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        yield_now().await;
        let out = self.inner.ttl(key).await;
        yield_now().await;
        out
    }

    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        yield_now().await;
        let out = self.inner.get_with_ttl(key).await;
        yield_now().await;
        out
    }

    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        yield_now().await;
        let out = self.inner.get_for_cache(key).await;
        yield_now().await;
        out
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        yield_now().await;
        let out = self.inner.compare_and_swap(key, expected, new).await;
        yield_now().await;
        out
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        yield_now().await;
        let out = self.inner.set_if_not_exists(key, value, ttl).await;
        yield_now().await;
        out
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        yield_now().await;
        let out = self.inner.get_and_delete(key).await;
        yield_now().await;
        out
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        yield_now().await;
        let out = self.inner.delete_prefix(prefix).await;
        yield_now().await;
        out
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        let inner = self.inner.scan(prefix);
        Box::pin(futures::stream::unfold(inner, |mut inner| async move {
            yield_now().await;
            let item = inner.next().await?;
            Some((item, inner))
        }))
    }

    async fn checkpoint(
        &self,
        writer: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> StateResult<CheckpointSummary> {
        yield_now().await;
        let mut writer = YieldingIo::new(writer);
        let out = self.inner.checkpoint(&mut writer).await;
        yield_now().await;
        out
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        yield_now().await;
        let mut reader = YieldingIo::new(reader);
        let out = self.inner.restore(&mut reader).await;
        yield_now().await;
        out
    }

    async fn stats(&self) -> StateStats {
        self.inner.stats().await
    }

    async fn health_check(&self) -> StateResult<bool> {
        yield_now().await;
        let out = self.inner.health_check().await;
        yield_now().await;
        out
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        self.inner.memory_usage().await
    }

    async fn flush(&self) -> StateResult<()> {
        yield_now().await;
        let out = self.inner.flush().await;
        yield_now().await;
        out
    }
}

/// A reader or writer that answers `Pending` (and wakes itself at once) before every other
/// read or write, so a restore or checkpoint over it is pending between its I/O calls.
pub struct YieldingIo<T> {
    inner: T,
    ready: bool,
}

impl<T> YieldingIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            ready: false,
        }
    }

    fn take_turn(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ready {
            self.ready = false;
            true
        } else {
            self.ready = true;
            cx.waker().wake_by_ref();
            false
        }
    }
}

impl<T> std::fmt::Debug for YieldingIo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YieldingIo").finish_non_exhaustive()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for YieldingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.take_turn(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for YieldingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.take_turn(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
