//! Test backends shared by the state-tiered tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use state_core::{StateBackend, StateFuture, StateResult};
use state_memory::MemoryStateBackend;

/// A memory backend that counts inner reads and answers each read `delay` after making it.
#[derive(Debug)]
pub(crate) struct Slow {
    pub(crate) inner: MemoryStateBackend,
    pub(crate) loads: AtomicU64,
    pub(crate) delay: Duration,
}

impl Slow {
    pub(crate) fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStateBackend::new(None),
            loads: AtomicU64::new(0),
            delay,
        })
    }
}

#[async_trait::async_trait]
impl StateBackend for Slow {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.inner.get(key).await
        })
    }
    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.put(key, value).await
        })
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.inner.delete(key)
    }
    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.inner.list_keys(prefix).await
    }
    async fn clear(&self) -> StateResult<()> {
        self.inner.clear().await
    }
    async fn count(&self) -> StateResult<usize> {
        self.inner.count().await
    }
    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.inner.contains(key)
    }
    fn capabilities(&self) -> state_core::Capabilities {
        self.inner.capabilities()
    }
    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        // Applied at once, acknowledged late: the key's TTL runs from the application.
        self.inner.put_with_ttl(key, value, ttl).await?;
        tokio::time::sleep(self.delay).await;
        Ok(())
    }
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        // Read first, answer late: the answer may be outdated by the time it arrives.
        self.loads.fetch_add(1, Ordering::SeqCst);
        let found = self.inner.get_with_ttl(key).await;
        tokio::time::sleep(self.delay).await;
        found
    }
}

/// A memory backend whose batch writes are acknowledged `batch_delay` after they applied,
/// and whose every operation fails with a connection error while `failing` is set.
#[derive(Debug, Default)]
#[allow(dead_code)] // used by tests/tiered.rs, not by every test binary that shares this module
pub(crate) struct Controlled {
    pub(crate) inner: MemoryStateBackend,
    pub(crate) batch_delay: Duration,
    pub(crate) failing: std::sync::atomic::AtomicBool,
}

#[allow(dead_code)]
impl Controlled {
    pub(crate) fn new(batch_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStateBackend::new(None),
            batch_delay,
            failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn check(&self) -> StateResult<()> {
        if self.failing.load(Ordering::SeqCst) {
            Err(state_core::StateError::connection("controlled failure"))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl StateBackend for Controlled {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            self.check()?;
            self.inner.get(key).await
        })
    }
    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            self.check()?;
            self.inner.put(key, value).await
        })
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.check()?;
            self.inner.delete(key).await
        })
    }
    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.check()?;
        self.inner.list_keys(prefix).await
    }
    async fn clear(&self) -> StateResult<()> {
        self.check()?;
        self.inner.clear().await
    }
    async fn count(&self) -> StateResult<usize> {
        self.check()?;
        self.inner.count().await
    }
    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.check()?;
            self.inner.contains(key).await
        })
    }
    fn capabilities(&self) -> state_core::Capabilities {
        self.inner.capabilities()
    }
    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.check()?;
        self.inner.put_with_ttl(key, value, ttl).await
    }
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.check()?;
        self.inner.get_with_ttl(key).await
    }
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.check()?;
        self.inner.set_if_not_exists(key, value, ttl).await
    }
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.check()?;
        self.inner.batch_put(entries).await?;
        tokio::time::sleep(self.batch_delay).await;
        Ok(())
    }
}
