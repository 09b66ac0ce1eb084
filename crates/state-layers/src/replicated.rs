//! [`Replicated`]: reads spread over read replicas, writes to the primary.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use state_core::checkpoint::{CheckpointSummary, RestoreSummary};
use state_core::{
    Capabilities, ScanStream, StateBackend, StateError, StateFuture, StateResult, StateStats,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::util::owned_stream;

/// How [`Replicated`] picks the replica for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPolicy {
    /// Each read goes to the next healthy replica in turn.
    #[default]
    RoundRobin,
    /// Of two healthy replicas taken in turn, the one with the lower recent latency
    /// (exponentially weighted average); "power of two choices", so a replica that was slow
    /// once keeps being sampled and can win again.
    LeastLatency,
}

#[derive(Debug)]
struct Replica {
    backend: Arc<dyn StateBackend>,
    /// Milliseconds since `Replicated::epoch` until which the replica is out; 0 = in.
    ejected_until_ms: AtomicU64,
    /// Recent latency, nanoseconds (EWMA, weight 1/8 for the newest sample).
    ewma_ns: AtomicU64,
    ejections: AtomicU64,
}

/// Sends writes to a primary and spreads reads over read replicas (PostgreSQL streaming
/// replicas, Redis replicas), taking a failing replica out of rotation for a while.
///
/// - **Reads** (`get`, `contains`, `batch_get`, `ttl`, `get_with_ttl`, `get_for_cache`,
///   `list_keys`, `count`, `scan`) go to a healthy replica chosen by the [`ReadPolicy`]. When
///   it fails with a retryable error (connection, timeout), it is ejected for
///   [`Replicated::with_ejection`] (default 10 s) and the read is answered by the primary.
///   After that time the replica gets reads again; if it fails again, it is ejected again.
///   With every replica out, reads go to the primary.
/// - **Writes**, atomic operations, `delete_prefix`, `clear`, `checkpoint`/`restore`,
///   `memory_usage`, `flush` and `health_check` go to the primary.
///
/// Replicas lag their primary (asynchronous replication): a read right after a write may
/// not see it yet. Read your own writes through [`Replicated::primary`], or use synchronous
/// replication on the server. For the same reason `set_if_not_exists`, `compare_and_swap`
/// and `get_and_delete` never read from a replica.
///
/// ```
/// use std::sync::Arc;
/// use state_core::StateBackend;
/// use state_layers::{ReadPolicy, Replicated};
/// use state_memory::MemoryStateBackend;
///
/// // In production: PostgresStateBackend::new(primary_url, "state") and one backend per
/// // replica URL, all on the same table.
/// let primary: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
/// let backend = Replicated::new(primary.clone(), vec![primary.clone(), primary])
///     .with_policy(ReadPolicy::LeastLatency);
/// assert_eq!(backend.replica_count(), 2);
/// ```
#[derive(Debug)]
pub struct Replicated {
    primary: Arc<dyn StateBackend>,
    replicas: Box<[Replica]>,
    policy: ReadPolicy,
    eject_for: Duration,
    next: AtomicUsize,
    epoch: Instant,
    fallbacks: AtomicU64,
}

impl Replicated {
    /// Writes go to `primary`, reads to `replicas` (to `primary` when the list is empty).
    pub fn new(primary: Arc<dyn StateBackend>, replicas: Vec<Arc<dyn StateBackend>>) -> Self {
        Self {
            primary,
            replicas: replicas
                .into_iter()
                .map(|backend| Replica {
                    backend,
                    ejected_until_ms: AtomicU64::new(0),
                    ewma_ns: AtomicU64::new(0),
                    ejections: AtomicU64::new(0),
                })
                .collect(),
            policy: ReadPolicy::default(),
            eject_for: Duration::from_secs(10),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Sets how replicas are picked.
    #[must_use]
    pub fn with_policy(mut self, policy: ReadPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how long a failed replica stays out of rotation before it is tried again.
    #[must_use]
    pub fn with_ejection(mut self, eject_for: Duration) -> Self {
        self.eject_for = eject_for;
        self
    }

    /// The primary: read from it directly for read-your-writes.
    pub fn primary(&self) -> &Arc<dyn StateBackend> {
        &self.primary
    }

    /// How many replicas were configured.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// How many replicas are in rotation now.
    pub fn healthy_replicas(&self) -> usize {
        let now = self.now_ms();
        self.replicas
            .iter()
            .filter(|r| Self::in_rotation(r, now))
            .count()
    }

    /// Reads that a failing replica handed over to the primary.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn in_rotation(replica: &Replica, now_ms: u64) -> bool {
        replica.ejected_until_ms.load(Relaxed) <= now_ms
    }

    /// The replica for the next read, or `None` (read the primary).
    fn choose(&self) -> Option<usize> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Relaxed);
        let mut healthy = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| Self::in_rotation(&self.replicas[i], now));
        let first = healthy.next()?;
        match self.policy {
            ReadPolicy::RoundRobin => Some(first),
            ReadPolicy::LeastLatency => Some(match healthy.next() {
                Some(second)
                    if self.replicas[second].ewma_ns.load(Relaxed)
                        < self.replicas[first].ewma_ns.load(Relaxed) =>
                {
                    second
                }
                _ => first,
            }),
        }
    }

    fn observe(&self, i: usize, elapsed: Duration) {
        let sample = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        let ewma = &self.replicas[i].ewma_ns;
        let old = ewma.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        ewma.store(new, Relaxed);
    }

    fn eject(&self, i: usize, err: &StateError) {
        let replica = &self.replicas[i];
        let until = self.now_ms() + self.eject_for.as_millis() as u64;
        replica.ejected_until_ms.store(until, Relaxed);
        replica.ejections.fetch_add(1, Relaxed);
        tracing::warn!(replica = i, error = %err, eject_for = ?self.eject_for, "state read replica ejected");
    }

    /// Runs a read on a replica, falling back to the primary when the replica fails with a
    /// retryable error.
    async fn read<'a, T, F, Fut>(&'a self, f: F) -> StateResult<T>
    where
        F: Fn(&'a Arc<dyn StateBackend>) -> Fut,
        Fut: Future<Output = StateResult<T>> + 'a,
    {
        let Some(i) = self.choose() else {
            return f(&self.primary).await;
        };
        let started = Instant::now();
        match f(&self.replicas[i].backend).await {
            Ok(value) => {
                if self.policy == ReadPolicy::LeastLatency {
                    self.observe(i, started.elapsed());
                }
                Ok(value)
            }
            Err(err) if err.is_retryable() => {
                self.eject(i, &err);
                self.fallbacks.fetch_add(1, Relaxed);
                f(&self.primary).await
            }
            Err(err) => Err(err),
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl StateBackend for Replicated {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(self.read(move |b| b.get(key)))
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        self.primary.put(key, value)
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.primary.delete(key)
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(self.read(move |b| b.contains(key)))
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.read(|b| b.list_keys(prefix)).await
    }

    async fn clear(&self) -> StateResult<()> {
        self.primary.clear().await
    }

    async fn count(&self) -> StateResult<usize> {
        self.read(|b| b.count()).await
    }

    /// The primary's pool (the replicas' are reachable through their own backends).
    fn pool_stats(&self) -> Option<state_core::PoolStats> {
        self.primary.pool_stats()
    }

    fn capabilities(&self) -> Capabilities {
        self.primary.capabilities()
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.read(|b| b.batch_get(keys)).await
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.primary.batch_put(entries).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.primary.batch_delete(keys).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.primary.put_with_ttl(key, value, ttl).await
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.read(|b| b.ttl(key)).await
    }

    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.read(|b| b.get_with_ttl(key)).await
    }

    async fn get_for_cache(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.read(|b| b.get_for_cache(key)).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.primary.compare_and_swap(key, expected, new).await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.primary.set_if_not_exists(key, value, ttl).await
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.primary.get_and_delete(key).await
    }

    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.primary.delete_prefix(prefix).await
    }

    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        let Some(i) = self.choose() else {
            return self.primary.scan(prefix);
        };
        owned_stream(move |tx| async move {
            let mut stream = self.replicas[i].backend.scan(prefix);
            let mut yielded = false;
            while let Some(item) = stream.next().await {
                match item {
                    // Nothing handed out yet: the primary can take over without repeats.
                    Err(err) if !yielded && err.is_retryable() => {
                        self.eject(i, &err);
                        self.fallbacks.fetch_add(1, Relaxed);
                        stream = self.primary.scan(prefix);
                        yielded = true;
                    }
                    item => {
                        let stop = item.is_err();
                        yielded = true;
                        if tx.send(item).await.is_err() || stop {
                            return;
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
        self.primary.checkpoint(writer).await
    }

    async fn restore(
        &self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> StateResult<RestoreSummary> {
        self.primary.restore(reader).await
    }

    async fn stats(&self) -> StateStats {
        // The primary and every distinct replica (a replica may be the primary itself).
        let mut backends: Vec<&Arc<dyn StateBackend>> = vec![&self.primary];
        for replica in &self.replicas {
            if !backends
                .iter()
                .any(|b| std::ptr::addr_eq(Arc::as_ptr(b), Arc::as_ptr(&replica.backend)))
            {
                backends.push(&replica.backend);
            }
        }
        let all = futures_util::future::join_all(backends.iter().map(|b| b.stats())).await;
        let mut total = StateStats::default();
        let mut weighted = 0.0;
        for s in &all {
            total.gets += s.gets;
            total.hits += s.hits;
            total.misses += s.misses;
            total.puts += s.puts;
            total.deletes += s.deletes;
            total.other_ops += s.other_ops;
            total.errors += s.errors;
            total.latency_samples += s.latency_samples;
            weighted += s.avg_latency_us * s.latency_samples as f64;
            total.p50_latency_us = total.p50_latency_us.max(s.p50_latency_us);
            total.p99_latency_us = total.p99_latency_us.max(s.p99_latency_us);
            total.uptime = total.uptime.max(s.uptime);
        }
        if total.latency_samples > 0 {
            total.avg_latency_us = weighted / total.latency_samples as f64;
        }
        let d = &mut total.details;
        d.insert("replicas".into(), self.replicas.len() as f64);
        d.insert("replicas.healthy".into(), self.healthy_replicas() as f64);
        d.insert("replicas.fallbacks".into(), self.fallbacks() as f64);
        for (i, r) in self.replicas.iter().enumerate() {
            d.insert(
                format!("replica.{i}.ejections"),
                r.ejections.load(Relaxed) as f64,
            );
            d.insert(
                format!("replica.{i}.latency_us"),
                r.ewma_ns.load(Relaxed) as f64 / 1000.0,
            );
        }
        total
    }

    async fn health_check(&self) -> StateResult<bool> {
        self.primary.health_check().await
    }

    async fn memory_usage(&self) -> StateResult<u64> {
        self.primary.memory_usage().await
    }

    async fn flush(&self) -> StateResult<()> {
        self.primary.flush().await
    }
}
