//! [`RedisStateBackend`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use fred::prelude::*;
use fred::types::scan::{ScanResult, Scanner};
use fred::types::scripts::Script;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use state_core::{
    Capabilities, Entry, Limits, OpKind, PoolStats, ScanStream, StateBackend, StateError,
    StateFuture, StateResult, StateStats, StatsRecorder,
};

use crate::config::RedisConfig;
use crate::error::{map_fred, map_fred_write};
use crate::once::{Sending, eval_once, one_attempt};
use crate::scripts;

/// Keys asked per SCAN call.
const SCAN_COUNT: u32 = 1000;

struct Inner {
    pool: Pool,
    /// Builds extra clients (subscribers) with the pool's settings.
    builder: Builder,
    config: RedisConfig,
    prefix: Bytes,
    /// Whether the backend talks to a Redis Cluster.
    cluster: bool,
    cas: Script,
    get_ttl: Script,
    stats: StatsRecorder,
    /// Writes dropped with a command possibly in flight (see [`Sending`]).
    orphans: Arc<state_core::OrphanedWrites>,
}

/// A [`StateBackend`] on Redis or Redis Cluster through [fred](https://docs.rs/fred).
///
/// - Every key is stored as `key_prefix + key`; `list_keys`, `count`, `clear`, `scan` and
///   `delete_prefix` walk only that prefix with `SCAN MATCH` (glob metacharacters escaped; on
///   every primary in a Cluster), never `KEYS` or `FLUSHDB`.
/// - TTLs are sent in milliseconds (`SET .. PX`, `PTTL`), never rounded to seconds.
/// - Batches are one pipeline: `MGET`/`MSET`/`DEL` per hash slot in a Cluster (so no
///   `CROSSSLOT`), in chunks of `pipeline_batch_size` keys.
/// - `set_if_not_exists` is `SET NX`, `get_and_delete` is `GETDEL`, `compare_and_swap` a Lua
///   script loaded once by SHA and re-sent on `NOSCRIPT`.
///
/// ```no_run
/// use std::time::Duration;
/// use state_core::StateBackend;
/// use state_redis::{RedisConfig, RedisStateBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let config = RedisConfig::builder()
///     .url("redis://localhost:6379")
///     .key_prefix("optimizer:")
///     .default_ttl(Duration::from_secs(3600))
///     .pool_size(10, 50)
///     .max_retries(3)
///     .build()?;
/// let backend = RedisStateBackend::new(config).await?;
/// backend.put(b"session:abc123", b"alice").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStateBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStateBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Escapes `*`, `?`, `[`, `]` and `\` so a byte string matches itself in `SCAN MATCH`.
pub(crate) fn glob_escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

impl RedisStateBackend {
    /// Connects to Redis (or the Cluster) described by `config`.
    ///
    /// Fails with a `Connection` error when no server answers within `connect_timeout`
    /// (retried `max_retries` times), `PermissionDenied` on bad credentials.
    pub async fn new(config: RedisConfig) -> StateResult<Self> {
        // Parsed once by the builder (fred's own URL reading: cluster flag, TLS, database).
        let fred_config = config.fred.clone();
        let cluster = matches!(fred_config.server, ServerConfig::Clustered { .. });
        let connect_timeout = config.connect_timeout;
        let command_timeout = config.command_timeout;
        let retries = config.max_retries;
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                c.max_command_attempts = retries.max(1);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
            })
            // Reconnect forever with backoff: giving up after a failover would leave a dead
            // client behind. Callers see Timeout/Connection errors meanwhile.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        builder.with_performance_config(|p| {
            p.broadcast_channel_capacity = crate::pubsub::SUBSCRIBER_BUFFER;
        });
        let pool = builder
            .build_pool(config.pool_min)
            .map_err(|err| map_fred(err).with_operation("connect"))?;
        let init = tokio::time::timeout(connect_timeout * (retries + 1), pool.init()).await;
        match init {
            Ok(Ok(_task)) => {}
            Ok(Err(err)) => {
                let _ = pool.quit().await;
                return Err(map_fred(err).with_operation("connect"));
            }
            Err(_) => {
                let _ = pool.quit().await;
                return Err(StateError::timeout("could not connect to Redis in time")
                    .with_operation("connect"));
            }
        }
        let prefix = Bytes::copy_from_slice(config.key_prefix.as_bytes());
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                builder,
                prefix,
                cluster,
                cas: Script::from_lua(scripts::COMPARE_AND_SWAP),
                get_ttl: Script::from_lua(scripts::GET_WITH_TTL),
                // A network call takes ~30 µs; timing one in 4 keeps percentiles meaningful.
                stats: StatsRecorder::new(4),
                orphans: state_core::OrphanedWrites::new(),
                config,
            }),
        })
    }

    /// The settings this backend runs with (its key prefix, topology, default TTL).
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The fred pool, for commands this crate does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Connections opened and the configured ceiling, as the seed's `pool_stats()`.
    pub fn pool_stats(&self) -> PoolStats {
        let clients = self.inner.pool.clients();
        let active = clients.iter().filter(|c| c.is_connected()).count();
        PoolStats {
            active_connections: active,
            idle_connections: 0,
            max_connections: self.inner.config.pool_max,
            waiting: 0,
        }
    }

    /// The channel name a logical `channel` maps to: namespaced by the key prefix, so two
    /// backends with different prefixes never hear each other.
    fn channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.inner.config.key_prefix)
    }

    /// Publishes `message` on `channel` (within this backend's prefix); returns how many
    /// subscribers received it.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> StateResult<usize> {
        let n: i64 = self
            .inner
            .pool
            .next()
            .publish(self.channel(channel), Bytes::copy_from_slice(message))
            .await
            .map_err(|e| map_fred(e).with_operation("publish"))?;
        Ok(n.max(0) as usize)
    }

    /// Subscribes to `channel` (within this backend's prefix) on a connection of its own;
    /// see [`Subscription`](crate::Subscription) for delivery guarantees.
    pub async fn subscribe(&self, channel: &str) -> StateResult<crate::Subscription> {
        crate::Subscription::open(&self.inner.builder, self.channel(channel)).await
    }

    /// Closes every connection.
    pub async fn close(&self) -> StateResult<()> {
        self.inner.pool.quit().await.map_err(map_fred)
    }

    /// A client for one write, once every earlier dropped write has been answered (so none
    /// can reach Redis after this one); see [`Sending`].
    async fn sending(&self) -> StateResult<Sending> {
        let patience = self.inner.config.command_timeout;
        self.inner.orphans.settled("redis", patience).await?;
        Ok(Sending::new(
            self.inner.pool.next().clone(),
            Arc::clone(&self.inner.orphans),
        ))
    }

    fn full_key(&self, key: &[u8]) -> Bytes {
        let mut k = BytesMut::with_capacity(self.inner.prefix.len() + key.len());
        k.extend_from_slice(&self.inner.prefix);
        k.extend_from_slice(key);
        k.freeze()
    }

    fn user_key(&self, full: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&full[self.inner.prefix.len()..])
    }

    fn pattern(&self, prefix: &[u8]) -> Bytes {
        let mut p = Vec::with_capacity(self.inner.prefix.len() + prefix.len() * 2 + 1);
        glob_escape(&mut p, &self.inner.prefix);
        glob_escape(&mut p, prefix);
        p.push(b'*');
        Bytes::from(p)
    }

    fn expiry(&self, ttl: Option<Duration>) -> Option<Expiration> {
        ttl.or(self.inner.config.default_ttl)
            .map(|ttl| Expiration::PX(ttl.as_millis().min(i64::MAX as u128) as i64))
    }

    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// Groups `keys` (full keys, with their positions) into round trips: one group per hash
    /// slot in a Cluster, chunks of `pipeline_batch_size` everywhere.
    fn groups(&self, keys: Vec<(usize, Bytes)>) -> Vec<Vec<(usize, Bytes)>> {
        let size = self.inner.config.pipeline_batch_size;
        if !self.inner.cluster {
            let mut out = Vec::new();
            let mut it = keys.into_iter().peekable();
            while it.peek().is_some() {
                out.push(it.by_ref().take(size).collect());
            }
            return out;
        }
        let mut by_slot: BTreeMap<u16, Vec<(usize, Bytes)>> = BTreeMap::new();
        for (i, k) in keys {
            by_slot
                .entry(fred::util::redis_keyslot(&k))
                .or_default()
                .push((i, k));
        }
        by_slot
            .into_values()
            .flat_map(|group| {
                group
                    .chunks(size)
                    .map(<[(usize, Bytes)]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every full key under `prefix`, page by page (SCAN on every primary in a Cluster).
    fn scan_keys(&self, prefix: &[u8]) -> BoxStream<'static, StateResult<Vec<Bytes>>> {
        let pattern = self.pattern(prefix);
        let pattern = String::from_utf8(pattern.to_vec());
        // fred takes the pattern as a string; escaped binary prefixes that are not UTF-8 are
        // matched client-side instead.
        let (pattern, client_filter) = if let Ok(p) = pattern {
            (p, None)
        } else {
            let mut p = Vec::new();
            glob_escape(&mut p, &self.inner.prefix);
            p.push(b'*');
            (
                String::from_utf8(p).unwrap_or_else(|_| "*".to_owned()),
                Some(self.full_key(prefix)),
            )
        };
        let client = self.inner.pool.next().clone();
        let pages = if self.inner.cluster {
            client.scan_cluster(pattern, Some(SCAN_COUNT), None).boxed()
        } else {
            client.scan(pattern, Some(SCAN_COUNT), None).boxed()
        };
        pages
            .map(move |page: Result<ScanResult, fred::error::Error>| {
                let mut page = page.map_err(map_fred)?;
                let keys = page.take_results().unwrap_or_default();
                page.next();
                Ok(keys
                    .into_iter()
                    .map(fred::types::Key::into_bytes)
                    .filter(|k| client_filter.as_ref().is_none_or(|f| k.starts_with(f)))
                    .collect())
            })
            .boxed()
    }

    /// Deletes full keys in slot-aware pipelined `DEL`s, each written once (a re-sent `DEL`
    /// would count 0 for keys its first copy removed); returns how many existed.
    async fn delete_full(&self, keys: Vec<Bytes>) -> StateResult<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let groups = self.groups(keys.into_iter().enumerate().collect());
        let sending = self.sending().await?;
        let pipe = sending.client().pipeline().with_options(&one_attempt());
        for group in &groups {
            let keys: Vec<Bytes> = group.iter().map(|(_, k)| k.clone()).collect();
            let () = pipe.del(keys).await.map_err(map_fred_write)?;
        }
        let counts: Vec<i64> = pipe.all().await.map_err(map_fred_write)?;
        sending.answered();
        Ok(counts.into_iter().map(|n| n.max(0) as usize).sum())
    }
}

#[async_trait]
impl StateBackend for RedisStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            let result: StateResult<Option<Bytes>> = self
                .inner
                .pool
                .get(self.full_key(key))
                .await
                .map_err(map_fred);
            match &result {
                Ok(v) => self.inner.stats.record_get(timer, v.is_some()),
                Err(_) => self.inner.stats.record_error(timer),
            }
            result.map_err(|e| e.with_operation("get"))
        })
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            self.limits().check_entry(key, value)?;
            let timer = self.inner.stats.start();
            let result: StateResult<()> = async {
                let sending = self.sending().await?;
                sending
                    .client()
                    .set::<(), _, _>(
                        self.full_key(key),
                        Bytes::copy_from_slice(value),
                        self.expiry(None),
                        None,
                        false,
                    )
                    .await
                    .map_err(map_fred_write)?;
                sending.answered();
                Ok(())
            }
            .await;
            self.inner.stats.observe(timer, OpKind::Put, 1, &result);
            result.map_err(|e| e.with_operation("put"))
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            // One attempt: a re-sent DEL would answer 0 for the key its first copy removed.
            let result: StateResult<i64> = async {
                let sending = self.sending().await?;
                let n = sending
                    .client()
                    .with_options(&one_attempt())
                    .del(self.full_key(key))
                    .await
                    .map_err(map_fred_write)?;
                sending.answered();
                Ok(n)
            }
            .await;
            self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
            Ok(result.map_err(|e| e.with_operation("delete"))? > 0)
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.limits().check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let mut seen = HashSet::new();
        let mut pages = self.scan_keys(prefix);
        let mut result = Ok(());
        while let Some(page) = pages.next().await {
            match page {
                Ok(keys) => seen.extend(keys.iter().map(|k| self.user_key(k))),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result.map_err(|e| e.with_operation("list_keys"))?;
        Ok(seen.into_iter().collect())
    }

    async fn clear(&self) -> StateResult<()> {
        self.delete_prefix(b"").await.map(|_| ())
    }

    async fn count(&self) -> StateResult<usize> {
        let timer = self.inner.stats.start();
        let mut seen = HashSet::new();
        let mut pages = self.scan_keys(b"");
        while let Some(page) = pages.next().await {
            match page {
                Ok(keys) => seen.extend(keys),
                Err(err) => {
                    self.inner.stats.record_error(timer);
                    return Err(err.with_operation("count"));
                }
            }
        }
        self.inner.stats.record(timer, OpKind::Other, 1);
        Ok(seen.len())
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            let result: StateResult<i64> = self
                .inner
                .pool
                .exists(self.full_key(key))
                .await
                .map_err(map_fred);
            match &result {
                Ok(n) => self.inner.stats.record_get(timer, *n > 0),
                Err(_) => self.inner.stats.record_error(timer),
            }
            Ok(result.map_err(|e| e.with_operation("contains"))? > 0)
        })
    }

    /// The client pool ([`RedisStateBackend::pool_stats`]).
    fn pool_stats(&self) -> Option<PoolStats> {
        Some(Self::pool_stats(self))
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.ttl = true;
        caps.atomic = true;
        caps.native_batch = true;
        caps.persistence = true;
        caps.shared = true;
        caps.pub_sub = true;
        caps.clustering = self.inner.cluster;
        caps.memory_usage = true;
        caps.limits = *self.limits();
        caps.default_ttl = self.inner.config.default_ttl;
        caps
    }

    /// One pipeline of `MGET`s (one per hash slot in a Cluster).
    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.limits().check_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let timer = self.inner.stats.start();
        let groups = self.groups(keys.iter().map(|k| self.full_key(k)).enumerate().collect());
        let client = self.inner.pool.next();
        let pipe = client.pipeline();
        let mut out = vec![None; keys.len()];
        let result: StateResult<()> = async {
            for group in &groups {
                let ks: Vec<Bytes> = group.iter().map(|(_, k)| k.clone()).collect();
                let () = pipe.mget(ks).await.map_err(map_fred)?;
            }
            let answers: Vec<Vec<Option<Bytes>>> = pipe.all().await.map_err(map_fred)?;
            for (group, values) in groups.iter().zip(answers) {
                for ((i, _), v) in group.iter().zip(values) {
                    out[*i] = v;
                }
            }
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => {
                let hits = out.iter().filter(|v| v.is_some()).count() as u64;
                self.inner
                    .stats
                    .record_batch_get(timer, hits, keys.len() as u64 - hits);
            }
            Err(_) => self.inner.stats.record_error(timer),
        }
        result.map_err(|e| e.with_operation("batch_get"))?;
        Ok(out)
    }

    /// One pipeline of `MSET`s per hash slot, or of `SET .. PX` with a default TTL.
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.limits().check_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let timer = self.inner.stats.start();
        let result: StateResult<()> = async {
            let sending = self.sending().await?;
            let pipe = sending.client().pipeline();
            if let Some(expire) = self.expiry(None) {
                for (key, value) in entries {
                    let () = pipe
                        .set(
                            self.full_key(key),
                            Bytes::copy_from_slice(value),
                            Some(expire.clone()),
                            None,
                            false,
                        )
                        .await
                        .map_err(map_fred_write)?;
                }
            } else {
                let groups = self.groups(
                    entries
                        .iter()
                        .map(|(k, _)| self.full_key(k))
                        .enumerate()
                        .collect(),
                );
                for group in groups {
                    // MSET keeps the last of duplicate keys, like sequential puts.
                    let pairs: Vec<(Bytes, Bytes)> = group
                        .into_iter()
                        .map(|(i, k)| (k, Bytes::copy_from_slice(entries[i].1)))
                        .collect();
                    let () = pipe.mset(pairs).await.map_err(map_fred_write)?;
                }
            }
            let _: Vec<Value> = pipe.all().await.map_err(map_fred_write)?;
            sending.answered();
            Ok(())
        }
        .await;
        self.inner
            .stats
            .observe(timer, OpKind::Put, entries.len() as u64, &result);
        result.map_err(|e| e.with_operation("batch_put"))
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.limits().check_keys(keys)?;
        let timer = self.inner.stats.start();
        // Duplicates would be counted once by DEL per group but twice across groups: dedup.
        let mut unique: Vec<Bytes> = keys.iter().map(|k| self.full_key(k)).collect();
        unique.sort();
        unique.dedup();
        let result = self.delete_full(unique).await;
        self.inner
            .stats
            .observe(timer, OpKind::Delete, keys.len() as u64, &result);
        result.map_err(|e| e.with_operation("batch_delete"))
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.limits().check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let result: StateResult<()> = async {
            let sending = self.sending().await?;
            sending
                .client()
                .set::<(), _, _>(
                    self.full_key(key),
                    Bytes::copy_from_slice(value),
                    self.expiry(Some(ttl)),
                    None,
                    false,
                )
                .await
                .map_err(map_fred_write)?;
            sending.answered();
            Ok(())
        }
        .await;
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result.map_err(|e| e.with_operation("put_with_ttl"))
    }

    /// One Lua call: `GET` and `PTTL` of the same key, atomically.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.limits().check_key(key)?;
        let timer = self.inner.stats.start();
        let result: StateResult<Option<(Bytes, Option<Duration>)>> = async {
            let reply: Vec<Value> = self
                .inner
                .get_ttl
                .evalsha_with_reload(self.inner.pool.next(), vec![self.full_key(key)], ())
                .await
                .map_err(map_fred)?;
            let mut it = reply.into_iter();
            let value: Option<Bytes> = it
                .next()
                .unwrap_or(Value::Null)
                .convert()
                .map_err(map_fred)?;
            let ttl: i64 = it.next().unwrap_or(Value::Null).convert().unwrap_or(-2);
            Ok(value.map(|v| (v, (ttl >= 0).then(|| Duration::from_millis(ttl as u64)))))
        }
        .await;
        match &result {
            Ok(v) => self.inner.stats.record_get(timer, v.is_some()),
            Err(_) => self.inner.stats.record_error(timer),
        }
        result.map_err(|e| e.with_operation("get_with_ttl"))
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.limits().check_key(key)?;
        let ms: i64 = self
            .inner
            .pool
            .pttl(self.full_key(key))
            .await
            .map_err(|e| map_fred(e).with_operation("ttl"))?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.limits().check_swap(key, new)?;
        let timer = self.inner.stats.start();
        let ttl = match self.expiry(None) {
            Some(Expiration::PX(ms)) => Bytes::from(ms.to_string()),
            _ => Bytes::new(),
        };
        let args: Vec<Bytes> = vec![
            Bytes::from_static(if expected.is_some() { b"1" } else { b"0" }),
            Bytes::copy_from_slice(expected.unwrap_or_default()),
            Bytes::from_static(if new.is_some() { b"1" } else { b"0" }),
            Bytes::copy_from_slice(new.unwrap_or_default()),
            ttl,
        ];
        // One attempt: a re-sent swap would compare against its own first copy's write.
        let result: StateResult<i64> = async {
            let sending = self.sending().await?;
            let n = eval_once(
                sending.client(),
                &self.inner.cas,
                vec![self.full_key(key)],
                args,
            )
            .await?;
            sending.answered();
            Ok(n)
        }
        .await;
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        Ok(result.map_err(|e| e.with_operation("compare_and_swap"))? == 1)
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.limits().check_entry(key, value)?;
        Limits::check_optional_ttl(ttl)?;
        let timer = self.inner.stats.start();
        // One attempt: a re-sent SET NX would be refused by its own first copy.
        let result: StateResult<Option<()>> = async {
            let sending = self.sending().await?;
            let set = sending
                .client()
                .with_options(&one_attempt())
                .set(
                    self.full_key(key),
                    Bytes::copy_from_slice(value),
                    self.expiry(ttl),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(map_fred_write)?;
            sending.answered();
            Ok(set)
        }
        .await;
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        Ok(result
            .map_err(|e| e.with_operation("set_if_not_exists"))?
            .is_some())
    }

    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits().check_key(key)?;
        let timer = self.inner.stats.start();
        // One attempt: a re-sent GETDEL would answer None, and the value would be gone.
        let result: StateResult<Option<Bytes>> = async {
            let sending = self.sending().await?;
            let value = sending
                .client()
                .with_options(&one_attempt())
                .getdel(self.full_key(key))
                .await
                .map_err(map_fred_write)?;
            sending.answered();
            Ok(value)
        }
        .await;
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        result.map_err(|e| e.with_operation("get_and_delete"))
    }

    /// SCANs the prefix and deletes page by page (slot-aware `DEL`s).
    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.limits().check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let mut pages = self.scan_keys(prefix);
        let mut removed = 0;
        let mut result = Ok(());
        while let Some(page) = pages.next().await {
            match page {
                Ok(keys) => match self.delete_full(keys).await {
                    Ok(n) => removed += n,
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                },
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        self.inner
            .stats
            .observe(timer, OpKind::Delete, removed as u64, &result);
        result.map_err(|e| e.with_operation("delete_prefix"))?;
        Ok(removed)
    }

    /// SCAN pages, each followed by one pipeline of `GET` + `PTTL` per key. SCAN may repeat
    /// a key while Redis resizes its table; repeats are dropped (a set of 8-byte key hashes
    /// is kept, not the keys).
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        if let Err(err) = self.limits().check_prefix(prefix) {
            return Box::pin(stream::iter([Err(err)]));
        }
        let pages = self.scan_keys(prefix);
        let mut seen: HashSet<u64> = HashSet::new();
        let hasher = std::collections::hash_map::RandomState::new();
        let entries = pages.then(move |page| async move {
            let keys = page?;
            let client = self.inner.pool.next();
            let pipe = client.pipeline();
            for k in &keys {
                let () = pipe.get(k.clone()).await.map_err(map_fred)?;
                let () = pipe.pttl(k.clone()).await.map_err(map_fred)?;
            }
            let answers: Vec<Value> = if keys.is_empty() {
                Vec::new()
            } else {
                pipe.all().await.map_err(map_fred)?
            };
            let mut out = Vec::with_capacity(keys.len());
            for (k, pair) in keys.into_iter().zip(answers.chunks(2)) {
                let value: Option<Bytes> = pair[0].clone().convert().map_err(map_fred)?;
                let ttl: i64 = pair[1].clone().convert().map_err(map_fred)?;
                if let Some(value) = value
                    && ttl != -2
                {
                    out.push(Entry {
                        key: self.user_key(&k),
                        value,
                        ttl: (ttl >= 0).then(|| Duration::from_millis(ttl as u64)),
                    });
                }
            }
            Ok::<_, StateError>(out)
        });
        Box::pin(entries.flat_map(move |page| match page {
            Ok(list) => {
                let fresh: Vec<_> = list
                    .into_iter()
                    .filter(|e| seen.insert(hash_key(&hasher, &e.key)))
                    .map(Ok)
                    .collect();
                stream::iter(fresh).left_stream()
            }
            Err(err) => stream::iter(vec![Err(err)]).right_stream(),
        }))
    }

    /// Sums `MEMORY USAGE .. SAMPLES 0` over the namespace's keys, one pipeline per SCAN
    /// page: O(keys), meant for diagnostics.
    async fn memory_usage(&self) -> StateResult<u64> {
        let usage = fred::types::CustomCommand::new_static(
            "MEMORY",
            fred::types::ClusterHash::Offset(1),
            false,
        );
        let mut pages = self.scan_keys(b"");
        let mut total = 0u64;
        while let Some(page) = pages.next().await {
            let keys = page.map_err(|e| e.with_operation("memory_usage"))?;
            if keys.is_empty() {
                continue;
            }
            let client = self.inner.pool.next();
            let pipe = client.pipeline();
            for key in keys {
                let args: Vec<Value> = vec!["USAGE".into(), key.into(), "SAMPLES".into(), 0.into()];
                let () = pipe.custom(usage.clone(), args).await.map_err(map_fred)?;
            }
            let sizes: Vec<Option<i64>> = pipe.all().await.map_err(map_fred)?;
            total += sizes
                .into_iter()
                .flatten()
                .map(|n| n.max(0) as u64)
                .sum::<u64>();
        }
        Ok(total)
    }

    async fn stats(&self) -> StateStats {
        let mut stats = self.inner.stats.snapshot();
        let pool = self.pool_stats();
        stats
            .details
            .insert("connections".into(), pool.active_connections as f64);
        stats
    }

    /// PING on every server (every primary in a Cluster); `false` when any does not answer.
    async fn health_check(&self) -> StateResult<bool> {
        let client = self.inner.pool.next();
        if self.inner.cluster {
            let Some(state) = client.cached_cluster_state() else {
                return Ok(false);
            };
            for server in state.unique_primary_nodes() {
                let pong: Result<String, _> = client.with_cluster_node(server).ping(None).await;
                if pong.is_err() {
                    return Ok(false);
                }
            }
            Ok(true)
        } else {
            let pong: Result<String, _> = client.ping(None).await;
            Ok(pong.is_ok())
        }
    }
}

/// A 64-bit hash of a key for scan de-duplication (randomly keyed SipHash, per process).
fn hash_key(state: &std::collections::hash_map::RandomState, key: &[u8]) -> u64 {
    std::hash::BuildHasher::hash_one(state, key)
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_metacharacters_are_escaped() {
        let mut out = Vec::new();
        glob_escape(&mut out, b"a*b?c[d]e\\f");
        assert_eq!(out, b"a\\*b\\?c\\[d\\]e\\\\f");
    }
}
