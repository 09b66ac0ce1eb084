//! [`PostgresStateBackend`].

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::stream::{self, StreamExt};
use state_core::{
    Capabilities, Entry, Limits, OpKind, PoolStats, ScanStream, StateBackend, StateError,
    StateFuture, StateResult, StateStats, StatsRecorder, Sweeper, prefix_upper_bound,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::config::{PostgresConfig, ReadConsistency, TableName};
use crate::conn::Conn;
use crate::conninfo::ConnTarget;
use crate::error::{map_pg, map_pg_write};
use crate::schema::{self, Sql};
use crate::tls::Connector;

/// The primary's WAL insert position after a write, as a byte offset.
const WRITE_LSN: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";
/// Whether a replica has replayed up to `$1` (false on a server that is not in recovery).
const REPLAYED: &str =
    "SELECT coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 >= $1, false)";

/// Parameters of one statement.
type Params<'p> = [&'p (dyn ToSql + Sync)];

/// One read replica: its pool, and the connector its connections (and cancel requests) use.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    pub(crate) connector: Connector,
}

pub(crate) struct Inner {
    pub(crate) config: PostgresConfig,
    pub(crate) primary: Pool,
    replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    /// Highest primary WAL position this handle has written (read-your-writes mode).
    written_lsn: AtomicI64,
    pub(crate) sql: Sql,
    pub(crate) connector: Connector,
    stats: StatsRecorder,
    replica_reads: AtomicU64,
    primary_fallbacks: AtomicU64,
    swept: AtomicU64,
    /// Writes dropped with a statement in flight (see [`crate::conn`]).
    pub(crate) orphans: Arc<state_core::OrphanedWrites>,
    sweeper: Sweeper,
}

/// A [`StateBackend`] on PostgreSQL through tokio-postgres and a deadpool connection pool.
///
/// - One table per backend (`key bytea PRIMARY KEY, value bytea, expires_at timestamptz`),
///   created and upgraded by versioned migrations under an advisory lock; see
///   [`crate::schema`](crate#schema) in the crate docs.
/// - Every operation is one prepared statement in one round trip: `batch_get` is
///   `= ANY($1)`, `batch_put` one `INSERT .. SELECT FROM UNNEST` per 10,000 rows inside one
///   transaction, `set_if_not_exists` / `compare_and_swap` / `get_and_delete` single atomic
///   statements.
/// - TTLs are an `expires_at` column checked by every read (`list_keys`, `count` and scans
///   included) and swept in the background by one instance at a time.
/// - Optional read replicas with a [`ReadConsistency`] choice; transactions through
///   [`PostgresStateBackend::begin_transaction`]; `LISTEN`/`NOTIFY` pub/sub.
///
/// ```no_run
/// use state_core::StateBackend;
/// use state_postgres::PostgresStateBackend;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let backend = PostgresStateBackend::new(
///     "postgres://user:pass@localhost:5432/db",
///     "state_table",
/// ).await?;
/// backend.put(b"window:42", b"17").await?;
/// backend.vacuum().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStateBackend {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for PostgresStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStateBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// How long data sent on a connection may stay unacknowledged by the peer's TCP before the
/// connection is closed (Linux `TCP_USER_TIMEOUT`; ignored elsewhere).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// One target's connection settings with the configuration's connect timeout, keepalives,
/// application name and statement timeout: the same for pooled and LISTEN connections.
pub(crate) fn connection_config(
    config: &PostgresConfig,
    target: &ConnTarget,
) -> tokio_postgres::Config {
    let mut pg = target.pg.clone();
    pg.connect_timeout(config.connect_timeout);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    // A peer that stopped answering is declared dead within about 45 s (30 s idle, then 3
    // probes 5 s apart) instead of the system's default of minutes, and a connection whose
    // sent data stays unacknowledged for 15 s (a blackholed link) is closed. This bounds how
    // long a dropped write on a cut connection makes later writes wait (see `conn.rs`).
    pg.keepalives_interval(Duration::from_secs(5));
    pg.keepalives_retries(3);
    pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    if pg.get_application_name().is_none() {
        pg.application_name("state-postgres");
    }
    if let Some(timeout) = config.statement_timeout {
        let mut options = pg.get_options().unwrap_or_default().to_owned();
        let _ = write!(options, " -c statement_timeout={}", timeout.as_millis());
        pg.options(options.trim());
    }
    pg
}

/// A pool to one target with the configuration's timeouts, keepalives and TLS.
pub(crate) fn build_pool(
    config: &PostgresConfig,
    target: &ConnTarget,
    connector: &Connector,
) -> StateResult<Pool> {
    let pg = connection_config(config, target);
    // `Fast` recycling: a closed connection is dropped at checkout, an open one is reused
    // without a round trip (`Verified` would add a `SELECT 1` to every operation).
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = connector.manager(pg, manager_config);
    Pool::builder(manager)
        .max_size(config.pool_size)
        // LIFO hands out the most recently used connection: its server process and caches are
        // warm (measured 0.93-0.96x raw with 8 tasks, against 0.88-0.91x with FIFO rotation).
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .wait_timeout(Some(config.command_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StateError::config(format!("postgres pool: {e}")))
}

/// Whether a write's statement has been handed to the connection: before that, a failure
/// or a deadline means the write was not applied; after it, the outcome is unknown.
#[derive(Debug, Default)]
pub(crate) struct Sent(std::sync::atomic::AtomicBool);

impl Sent {
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn ttl_ms(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| t.as_millis().min(i64::MAX as u128) as i64)
}

fn bytes_of(row: &Row, idx: usize) -> Bytes {
    Bytes::copy_from_slice(row.get::<_, &[u8]>(idx))
}

impl PostgresStateBackend {
    /// Connects to `url`, creates or migrates `table`, and returns the backend, as in the
    /// seed: `PostgresStateBackend::new("postgres://user:pass@localhost:5432/db",
    /// "state_table")`. Every other setting takes its default (see
    /// [`crate::PostgresConfigBuilder`]).
    ///
    /// Fails with `InvalidInput` for a table name that is not a plain identifier, and with a
    /// retryable `Connection` or `Timeout` error when the server cannot be reached.
    pub async fn new(url: impl Into<String>, table: impl Into<String>) -> StateResult<Self> {
        let config = PostgresConfig::builder().url(url).table(table).build()?;
        Self::with_config(config).await
    }

    /// Connects with a full [`PostgresConfig`], runs pending migrations, and starts the
    /// expiry sweeper.
    pub async fn with_config(config: PostgresConfig) -> StateResult<Self> {
        // TLS is decided per target, from that target's own parsed request.
        let connector = Connector::new(&config.primary.tls)?;
        let primary = build_pool(&config, &config.primary, &connector)?;
        let replicas = config
            .replicas
            .iter()
            .map(|target| {
                let connector = Connector::new(&target.tls)?;
                let pool = build_pool(&config, target, &connector)?;
                Ok(Replica { pool, connector })
            })
            .collect::<StateResult<Vec<_>>>()?;
        let sql = Sql::new(&config.table);
        let backend = Self {
            inner: Arc::new(Inner {
                primary,
                replicas,
                next_replica: AtomicUsize::new(0),
                written_lsn: AtomicI64::new(0),
                sql,
                connector,
                // A round trip takes ~40 µs; timing one operation in 4 is plenty.
                stats: StatsRecorder::new(4),
                replica_reads: AtomicU64::new(0),
                primary_fallbacks: AtomicU64::new(0),
                swept: AtomicU64::new(0),
                sweeper: Sweeper::new(),
                orphans: state_core::OrphanedWrites::new(),
                config,
            }),
        };
        backend
            .timed("connect", async {
                let mut client = backend.primary().await?;
                let busy = client.in_flight();
                busy.run(schema::migrate(
                    client.object_mut(),
                    &backend.inner.config.table,
                ))
                .await?;
                if !backend.inner.replicas.is_empty() {
                    // Read-your-writes covers the schema too: no replica read before the
                    // replica has the table.
                    let lsn = client.query_one(WRITE_LSN, &[]).await.map_err(map_pg)?;
                    backend
                        .inner
                        .written_lsn
                        .fetch_max(lsn.get::<_, i64>(0), Ordering::AcqRel);
                }
                Ok(())
            })
            .await
            .map_err(|e| {
                let url = backend.inner.config.redacted_url();
                StateError::new(e.kind(), format!("{} (server {url})", e.message()))
                    .with_retryable(e.is_retryable())
                    .with_operation("connect")
            })?;
        if let Some(interval) = backend.inner.config.sweep_interval {
            backend
                .inner
                .sweeper
                .ensure_started(&backend.inner, interval, |inner| async move {
                    if let Err(err) = sweep(&inner).await {
                        tracing::warn!(error = %err, "state-postgres: expiry sweep failed");
                    }
                });
        }
        Ok(backend)
    }

    /// The settings this backend runs with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.inner.config.table
    }

    /// The primary's connection pool, for queries this crate does not wrap.
    pub fn pool(&self) -> &Pool {
        &self.inner.primary
    }

    /// The primary pool's connections: open, idle, the ceiling, and callers waiting, as the
    /// seed's `pool_stats()`.
    pub fn pool_stats(&self) -> PoolStats {
        let status = self.inner.primary.status();
        PoolStats {
            active_connections: status.size.saturating_sub(status.available),
            idle_connections: status.available,
            max_connections: status.max_size,
            waiting: status.waiting,
        }
    }

    /// Closes every pool; later operations fail with `Closed`.
    pub fn close(&self) {
        self.inner.primary.close();
        for replica in &self.inner.replicas {
            replica.pool.close();
        }
    }

    /// Runs `fut` under the client-side command timeout.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StateResult<T>>,
    ) -> StateResult<T> {
        match tokio::time::timeout(self.inner.config.command_timeout, fut).await {
            Ok(result) => result.map_err(|e| e.with_operation(op)),
            Err(_) => Err(StateError::timeout(format!(
                "postgres: no answer within command_timeout ({:?})",
                self.inner.config.command_timeout
            ))
            .with_operation(op)),
        }
    }

    /// Runs a write under the client-side command timeout. A deadline that passes after the
    /// statement was sent (`sent`) is `OutcomeUnknown`; before, a retryable `Timeout`.
    pub(crate) async fn timed_write<T>(
        &self,
        op: &'static str,
        sent: &Sent,
        fut: impl Future<Output = StateResult<T>>,
    ) -> StateResult<T> {
        match tokio::time::timeout(self.inner.config.command_timeout, fut).await {
            Ok(result) => result.map_err(|e| e.with_operation(op)),
            Err(_) if sent.is_marked() => Err(StateError::outcome_unknown(format!(
                "postgres: no answer within command_timeout ({:?}) after the statement was \
                 sent; it may or may not have been applied",
                self.inner.config.command_timeout
            ))
            .with_operation(op)),
            Err(_) => Err(StateError::timeout(format!(
                "postgres: no answer within command_timeout ({:?})",
                self.inner.config.command_timeout
            ))
            .with_operation(op)),
        }
    }

    /// A primary connection that is cancelled and closed, not reused, when dropped with a
    /// statement in flight (see [`Conn`]).
    pub(crate) async fn primary(&self) -> StateResult<Conn> {
        Conn::checkout(&self.inner.primary, &self.inner.connector).await
    }

    /// A primary connection for a write, once every earlier write dropped with its statement
    /// in flight has been answered by the server (so none can land after this one); see
    /// [`crate::conn`].
    pub(crate) async fn writer(&self) -> StateResult<Conn> {
        let patience = self.inner.config.command_timeout;
        self.inner.orphans.settled("postgres", patience).await?;
        Ok(self
            .primary()
            .await?
            .for_writes(Arc::clone(&self.inner.orphans)))
    }

    fn read_your_writes(&self) -> bool {
        self.inner.config.read_consistency == ReadConsistency::ReadYourWrites
    }

    /// Runs a write on the primary; in read-your-writes mode the primary's WAL position
    /// after it is fetched in the same round trip (pipelined) and remembered.
    ///
    /// A connection failure once the statement was sent is `OutcomeUnknown` (its reply may
    /// have been lost after the server committed it); `sent` records that point.
    async fn write_rows(
        &self,
        sent: &Sent,
        sql: &str,
        params: &Params<'_>,
    ) -> StateResult<Vec<Row>> {
        let client = self.writer().await?;
        let stmt = client.prepare_cached(sql).await.map_err(map_pg)?;
        if self.read_your_writes() {
            let lsn_stmt = client.prepare_cached(WRITE_LSN).await.map_err(map_pg)?;
            sent.mark();
            // `join!`, not `try_join!`: both answers are awaited even when the first fails,
            // so a statement error never leaves the other abandoned (which would cost the
            // connection).
            let (rows, lsn) = futures_util::join!(
                client.query(&stmt, params),
                client.query_one(&lsn_stmt, &[])
            );
            let (rows, lsn) = (rows.map_err(map_pg_write)?, lsn.map_err(map_pg_write)?);
            self.inner.record_write_lsn(lsn.get::<_, i64>(0));
            Ok(rows)
        } else {
            sent.mark();
            client.query(&stmt, params).await.map_err(map_pg_write)
        }
    }

    /// Runs a write and returns the number of rows it changed.
    async fn write_count(&self, sent: &Sent, sql: &str, params: &Params<'_>) -> StateResult<u64> {
        let client = self.writer().await?;
        let stmt = client.prepare_cached(sql).await.map_err(map_pg)?;
        if self.read_your_writes() {
            let lsn_stmt = client.prepare_cached(WRITE_LSN).await.map_err(map_pg)?;
            sent.mark();
            let (n, lsn) = futures_util::join!(
                client.execute(&stmt, params),
                client.query_one(&lsn_stmt, &[])
            );
            let (n, lsn) = (n.map_err(map_pg_write)?, lsn.map_err(map_pg_write)?);
            self.inner.record_write_lsn(lsn.get::<_, i64>(0));
            Ok(n)
        } else {
            sent.mark();
            client.execute(&stmt, params).await.map_err(map_pg_write)
        }
    }

    /// Runs a read where [`ReadConsistency`] says: the primary, or the next replica (with the
    /// replay check pipelined before the read in read-your-writes mode). A replica that
    /// cannot answer, or has not replayed this handle's writes, sends the read to the primary.
    async fn read_rows(&self, sql: &str, params: &Params<'_>) -> StateResult<Vec<Row>> {
        if self.inner.config.read_consistency != ReadConsistency::Primary {
            match self.read_on_replica(sql, params).await {
                Ok(Some(rows)) => {
                    self.inner.replica_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(rows);
                }
                Ok(None) => {}
                Err(err) if err.is_retryable() => {
                    tracing::debug!(error = %err, "state-postgres: replica read failed; using the primary");
                }
                Err(err) => return Err(err),
            }
            self.inner.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let client = self.primary().await?;
        let stmt = client.prepare_cached(sql).await.map_err(map_pg)?;
        client.query(&stmt, params).await.map_err(map_pg)
    }

    /// `Ok(None)`: the replica is behind this handle's writes.
    async fn read_on_replica(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> StateResult<Option<Vec<Row>>> {
        let n = self.inner.replicas.len();
        let start = self.inner.next_replica.fetch_add(1, Ordering::Relaxed);
        let replica = &self.inner.replicas[start % n];
        let client = Conn::checkout(&replica.pool, &replica.connector).await?;
        let need = self.inner.written_lsn.load(Ordering::Acquire);
        let check = self.read_your_writes() && need > 0;
        let run = async {
            let stmt = client.prepare_cached(sql).await?;
            if check {
                let check = client.prepare_cached(REPLAYED).await?;
                // The check runs before the read on the same connection, so a true check
                // means the read's snapshot includes every write this handle made.
                let check_params: [&(dyn ToSql + Sync); 1] = [&need];
                let (replayed, rows) = futures_util::join!(
                    client.query_one(&check, &check_params),
                    client.query(&stmt, params)
                );
                let (replayed, rows) = (replayed?, rows?);
                Ok::<_, tokio_postgres::Error>(replayed.get::<_, bool>(0).then_some(rows))
            } else {
                Ok(Some(client.query(&stmt, params).await?))
            }
        };
        match run.await {
            Ok(rows) => Ok(rows),
            // The replica has not replayed the table's creation yet: it is behind.
            Err(err) if err.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(err) => Err(map_pg(err)),
        }
    }

    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    fn default_ttl_ms(&self) -> Option<i64> {
        ttl_ms(self.inner.config.default_ttl)
    }

    async fn put_inner(
        &self,
        sent: &Sent,
        key: &[u8],
        value: &[u8],
        ttl: Option<i64>,
    ) -> StateResult<()> {
        self.write_count(sent, &self.inner.sql.put, &[&key, &value, &ttl])
            .await
            .map(|_| ())
    }

    /// Writes `entries` (deduplicated, last value wins) in `batch_chunk_rows`-row
    /// `INSERT .. SELECT FROM UNNEST` statements inside one transaction: all or nothing.
    async fn upsert(
        &self,
        sent: &Sent,
        entries: &[(&[u8], &[u8])],
        ttl: Option<i64>,
    ) -> StateResult<()> {
        // ON CONFLICT cannot touch one row twice in a statement: keep the last of duplicates.
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(entries.len());
        for (i, (k, _)) in entries.iter().enumerate() {
            last.insert(k, i);
        }
        let unique: Vec<(&[u8], &[u8])> = if last.len() == entries.len() {
            entries.to_vec()
        } else {
            entries
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| last[k] == *i)
                .map(|(_, e)| *e)
                .collect()
        };
        let chunk = self.inner.config.batch_chunk_rows;
        if unique.len() <= chunk {
            let (keys, values): (Vec<&[u8]>, Vec<&[u8]>) = unique.into_iter().unzip();
            return self
                .write_count(sent, &self.inner.sql.batch_put, &[&keys, &values, &ttl])
                .await
                .map(|_| ());
        }
        let mut client = self.writer().await?;
        let stmt = client
            .prepare_cached(&self.inner.sql.batch_put)
            .await
            .map_err(map_pg)?;
        // Tracked as a whole: abandoned midway, the statement running is cancelled and the
        // connection closed (its transaction rolls back).
        let busy = client.in_flight();
        let ryw = self.read_your_writes();
        let lsn = busy
            .run(async {
                let client = client.object_mut();
                let tx = client.transaction().await.map_err(map_pg)?;
                for part in unique.chunks(chunk) {
                    let (keys, values): (Vec<&[u8]>, Vec<&[u8]>) = part.iter().copied().unzip();
                    tx.execute(&stmt, &[&keys, &values, &ttl])
                        .await
                        .map_err(map_pg)?;
                }
                // Until COMMIT is sent, a failure rolls the transaction back: not applied.
                if ryw {
                    let lsn = tx.query_one(WRITE_LSN, &[]).await.map_err(map_pg)?;
                    sent.mark();
                    tx.commit().await.map_err(map_pg_write)?;
                    // The commit record follows the position read inside the transaction;
                    // ask again.
                    let lsn_after = client.query_one(WRITE_LSN, &[]).await.map_err(map_pg)?;
                    Ok::<_, StateError>(Some(lsn.get::<_, i64>(0).max(lsn_after.get::<_, i64>(0))))
                } else {
                    sent.mark();
                    tx.commit().await.map_err(map_pg_write)?;
                    Ok(None)
                }
            })
            .await?;
        if let Some(lsn) = lsn {
            self.inner.record_write_lsn(lsn);
        }
        Ok(())
    }

    /// Runs one write statement of the caller's own on the primary, the way this backend
    /// runs its own writes, and returns its rows: for companion crates (state-lock's fenced
    /// write) whose writes must behave like the backend's.
    ///
    /// - Under `command_timeout`: a deadline before the statement was sent is a retryable
    ///   `Timeout`, after it `OutcomeUnknown` (as is a connection lost with the statement in
    ///   flight); the statement is cancelled on the server and its connection closed.
    /// - In [`ReadConsistency::ReadYourWrites`] mode the primary's WAL position after the
    ///   write is fetched in the same round trip and remembered, so every later read through
    ///   this handle (or its clones) sees the write even when replicas lag.
    ///
    /// `sql` is prepared and cached per connection; `op` names the operation in errors.
    pub async fn execute_write(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StateResult<Vec<Row>> {
        let sent = Sent::default();
        self.timed_write(op, &sent, self.write_rows(&sent, sql, params))
            .await
    }

    /// The seed's `batch_upsert`: same as [`StateBackend::batch_put`] (atomic, one statement
    /// per 10,000 rows).
    pub async fn batch_upsert(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.batch_put(entries).await
    }

    /// Like [`PostgresStateBackend::batch_upsert`], every entry expiring after `ttl`.
    pub async fn batch_upsert_with_ttl(
        &self,
        entries: &[(&[u8], &[u8])],
        ttl: Duration,
    ) -> StateResult<()> {
        self.limits().check_entries(entries)?;
        Limits::check_ttl(ttl)?;
        if entries.is_empty() {
            return Ok(());
        }
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write(
                "batch_upsert_with_ttl",
                &sent,
                self.upsert(&sent, entries, ttl_ms(Some(ttl))),
            )
            .await;
        self.inner
            .stats
            .observe(timer, OpKind::Put, entries.len() as u64, &result);
        result
    }

    /// Deletes every expired row now (the background sweep does this every
    /// `sweep_interval`); returns how many it removed (0 when another instance is sweeping
    /// the table at this moment).
    ///
    /// Rows go in batches of [`crate::PostgresConfigBuilder::sweep_batch_rows`], each one
    /// `DELETE` in its own transaction under `command_timeout` (so the call as a whole may
    /// take longer than `command_timeout` for a large backlog; a batch that exceeds it fails
    /// the call, and the rows already removed stay removed). Writes to expired keys wait at
    /// most for the batch holding their row, never for the whole backlog.
    pub async fn purge_expired(&self) -> StateResult<u64> {
        sweep_all(&self.inner)
            .await
            .map_err(|e| e.with_operation("purge_expired"))
    }

    /// Keyset pages of live entries in `[lower, upper)`, after `after` when set.
    async fn page(
        &self,
        prefix: &[u8],
        upper: Option<&[u8]>,
        after: Option<&[u8]>,
    ) -> StateResult<Vec<Entry>> {
        let sql = &self.inner.sql;
        let (statement, lower) = match (after, upper.is_some()) {
            (None, false) => (&sql.page_from_incl, prefix),
            (None, true) => (&sql.page_range_incl, prefix),
            (Some(a), false) => (&sql.page_from_excl, a),
            (Some(a), true) => (&sql.page_range_excl, a),
        };
        let rows = match upper {
            Some(u) => self.read_rows(statement, &[&lower, &u]).await?,
            None => self.read_rows(statement, &[&lower]).await?,
        };
        Ok(rows
            .iter()
            .map(|row| Entry {
                key: bytes_of(row, 0),
                value: bytes_of(row, 1),
                ttl: row
                    .get::<_, Option<i64>>(2)
                    .map(|ms| Duration::from_millis(ms.max(1) as u64)),
            })
            .collect())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Reads served by a replica, and reads a replica could not serve (sent to the primary).
    pub fn replica_read_counts(&self) -> (u64, u64) {
        (
            self.inner.replica_reads.load(Ordering::Relaxed),
            self.inner.primary_fallbacks.load(Ordering::Relaxed),
        )
    }
}

/// One sweep tick: when this instance wins the sweep lock for the table, deletes expired rows
/// in batches until none are left.
async fn sweep(inner: &Arc<Inner>) -> StateResult<()> {
    let removed = sweep_all(inner).await?;
    if removed > 0 {
        tracing::debug!(table = %inner.config.table, removed, "state-postgres: swept expired rows");
    }
    Ok(())
}

/// Runs one step of the sweep under `command_timeout`.
async fn within<T>(inner: &Inner, fut: impl Future<Output = StateResult<T>>) -> StateResult<T> {
    tokio::time::timeout(inner.config.command_timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(StateError::timeout(format!(
                "postgres: sweep batch not answered within command_timeout ({:?})",
                inner.config.command_timeout
            )))
        })
}

/// A connection holding the table's session-level sweep lock: closed (which releases the
/// lock) unless the lock was released on it, so it never reaches the pool still holding it,
/// even when the sweep's future is dropped between two batches.
struct SweepLock(Option<Conn>);

impl Drop for SweepLock {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}

/// Deletes expired rows in batches of `sweep_batch_rows` until none are left, when this
/// instance wins the table's sweep lock (a session-level advisory lock; the others skip).
///
/// Each batch is one statement in its own transaction, under `command_timeout`, so the rows
/// it locks are released when it commits, a few milliseconds later: a write to an expired
/// key never waits for the whole backlog. The advisory lock only elects the sweeper; no
/// reader or writer ever takes it.
async fn sweep_all(inner: &Arc<Inner>) -> StateResult<u64> {
    let conn = within(inner, Conn::checkout(&inner.primary, &inner.connector)).await?;
    let name = inner.config.table.to_string();
    let class = schema::LOCK_CLASS + 1;
    let won: bool = within(inner, async {
        conn.query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&class, &name],
        )
        .await
        .map_err(map_pg)
    })
    .await?
    .get(0);
    if !won {
        return Ok(0);
    }
    let mut lock = SweepLock(Some(conn));
    let conn = lock.0.as_ref().expect("just set");
    let rows = i64::try_from(inner.config.sweep_batch_rows).unwrap_or(i64::MAX);
    let stmt = within(inner, async {
        conn.prepare_cached(&inner.sql.sweep).await.map_err(map_pg)
    })
    .await?;
    let mut removed = 0;
    loop {
        let n = within(inner, async {
            conn.execute(&stmt, &[&rows]).await.map_err(map_pg)
        })
        .await?;
        removed += n;
        inner.swept.fetch_add(n, Ordering::Relaxed);
        if n < rows as u64 {
            break;
        }
    }
    let released: bool = within(inner, async {
        conn.query_one(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&class, &name],
        )
        .await
        .map_err(map_pg)
    })
    .await?
    .get(0);
    if released {
        // Back to the pool: the lock is gone with it.
        drop(lock.0.take());
    }
    Ok(removed)
}

/// Where a keyset scan stands: before the first page, after a key, or finished.
enum Cursor {
    Start,
    After(Bytes),
    Done,
}

#[async_trait]
impl StateBackend for PostgresStateBackend {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            let result = self
                .timed("get", async {
                    let rows = self.read_rows(&self.inner.sql.get, &[&key]).await?;
                    Ok(rows.first().map(|r| bytes_of(r, 0)))
                })
                .await;
            match &result {
                Ok(v) => self.inner.stats.record_get(timer, v.is_some()),
                Err(_) => self.inner.stats.record_error(timer),
            }
            result
        })
    }

    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        StateFuture::boxed(async move {
            self.limits().check_entry(key, value)?;
            let timer = self.inner.stats.start();
            let sent = Sent::default();
            let result = self
                .timed_write(
                    "put",
                    &sent,
                    self.put_inner(&sent, key, value, self.default_ttl_ms()),
                )
                .await;
            self.inner.stats.observe(timer, OpKind::Put, 1, &result);
            result
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            let sent = Sent::default();
            let result = self
                .timed_write("delete", &sent, async {
                    let rows = self
                        .write_rows(&sent, &self.inner.sql.delete, &[&key])
                        .await?;
                    Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
                })
                .await;
            self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
            result
        })
    }

    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.limits().check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let sql = &self.inner.sql;
        let upper = prefix_upper_bound(prefix);
        let result = self
            .timed("list_keys", async {
                let rows = match (prefix.is_empty(), &upper) {
                    (true, _) => self.read_rows(&sql.list_all, &[]).await?,
                    (false, Some(u)) => {
                        self.read_rows(&sql.list_range, &[&prefix, &u.as_slice()])
                            .await?
                    }
                    (false, None) => self.read_rows(&sql.list_from, &[&prefix]).await?,
                };
                Ok(rows.iter().map(|r| bytes_of(r, 0)).collect())
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result
    }

    async fn clear(&self) -> StateResult<()> {
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write(
                "clear",
                &sent,
                self.write_count(&sent, &self.inner.sql.clear, &[]),
            )
            .await;
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        result.map(|_| ())
    }

    async fn count(&self) -> StateResult<usize> {
        let timer = self.inner.stats.start();
        let result = self
            .timed("count", async {
                let rows = self.read_rows(&self.inner.sql.count, &[]).await?;
                Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Other, 1, &result);
        result
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::boxed(async move {
            self.limits().check_key(key)?;
            let timer = self.inner.stats.start();
            let result = self
                .timed("contains", async {
                    let rows = self.read_rows(&self.inner.sql.contains, &[&key]).await?;
                    Ok(!rows.is_empty())
                })
                .await;
            match &result {
                Ok(found) => self.inner.stats.record_get(timer, *found),
                Err(_) => self.inner.stats.record_error(timer),
            }
            result
        })
    }

    /// The primary's pool ([`PostgresStateBackend::pool_stats`]).
    fn pool_stats(&self) -> Option<PoolStats> {
        Some(Self::pool_stats(self))
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.ttl = true;
        caps.atomic = true;
        caps.atomic_batch = true;
        caps.native_batch = true;
        caps.transactions = true;
        caps.persistence = true;
        caps.shared = true;
        caps.sql = true;
        caps.pub_sub = true;
        caps.clustering = !self.inner.replicas.is_empty();
        caps.memory_usage = true;
        caps.limits = *self.limits();
        caps.default_ttl = self.inner.config.default_ttl;
        caps
    }

    /// One `SELECT .. WHERE key = ANY($1)`.
    async fn batch_get(&self, keys: &[&[u8]]) -> StateResult<Vec<Option<Bytes>>> {
        self.limits().check_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let timer = self.inner.stats.start();
        let result = self
            .timed("batch_get", async {
                let list: Vec<&[u8]> = keys.to_vec();
                let rows = self.read_rows(&self.inner.sql.batch_get, &[&list]).await?;
                let found: HashMap<&[u8], &Row> =
                    rows.iter().map(|r| (r.get::<_, &[u8]>(0), r)).collect();
                Ok(keys
                    .iter()
                    .map(|k| found.get(k).map(|r| bytes_of(r, 1)))
                    .collect::<Vec<_>>())
            })
            .await;
        match &result {
            Ok(values) => {
                let hits = values.iter().filter(|v| v.is_some()).count() as u64;
                self.inner
                    .stats
                    .record_batch_get(timer, hits, keys.len() as u64 - hits);
            }
            Err(_) => self.inner.stats.record_error(timer),
        }
        result
    }

    /// Atomic: one `INSERT .. SELECT FROM UNNEST(..) ON CONFLICT DO UPDATE` per 10,000 rows,
    /// all in one transaction.
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> StateResult<()> {
        self.limits().check_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write(
                "batch_put",
                &sent,
                self.upsert(&sent, entries, self.default_ttl_ms()),
            )
            .await;
        self.inner
            .stats
            .observe(timer, OpKind::Put, entries.len() as u64, &result);
        result
    }

    /// One `DELETE .. WHERE key = ANY($1)`.
    async fn batch_delete(&self, keys: &[&[u8]]) -> StateResult<usize> {
        self.limits().check_keys(keys)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write("batch_delete", &sent, async {
                let list: Vec<&[u8]> = keys.to_vec();
                let rows = self
                    .write_rows(&sent, &self.inner.sql.batch_delete, &[&list])
                    .await?;
                Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
            })
            .await;
        self.inner
            .stats
            .observe(timer, OpKind::Delete, keys.len() as u64, &result);
        result
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.limits().check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write(
                "put_with_ttl",
                &sent,
                self.put_inner(&sent, key, value, ttl_ms(Some(ttl))),
            )
            .await;
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    /// One statement: the value and its remaining milliseconds from the same row version.
    async fn get_with_ttl(&self, key: &[u8]) -> StateResult<Option<(Bytes, Option<Duration>)>> {
        self.limits().check_key(key)?;
        let timer = self.inner.stats.start();
        let result = self
            .timed("get_with_ttl", async {
                let rows = self
                    .read_rows(&self.inner.sql.get_with_ttl, &[&key])
                    .await?;
                Ok(rows.first().map(|r| {
                    let ttl = r
                        .get::<_, Option<i64>>(1)
                        .map(|ms| Duration::from_millis(ms.max(1) as u64));
                    (bytes_of(r, 0), ttl)
                }))
            })
            .await;
        match &result {
            Ok(v) => self.inner.stats.record_get(timer, v.is_some()),
            Err(_) => self.inner.stats.record_error(timer),
        }
        result
    }

    async fn ttl(&self, key: &[u8]) -> StateResult<Option<Duration>> {
        self.limits().check_key(key)?;
        self.timed("ttl", async {
            let rows = self.read_rows(&self.inner.sql.ttl, &[&key]).await?;
            Ok(rows
                .first()
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .map(|ms| Duration::from_millis(ms.max(1) as u64)))
        })
        .await
    }

    /// One statement per case: `UPDATE .. WHERE value = $expected`, `DELETE .. WHERE value =
    /// $expected`, `INSERT .. ON CONFLICT DO UPDATE .. WHERE expired`, or an existence check.
    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> StateResult<bool> {
        self.limits().check_swap(key, new)?;
        let timer = self.inner.stats.start();
        let sql = &self.inner.sql;
        let ttl = self.default_ttl_ms();
        let sent = Sent::default();
        let result = self
            .timed_write("compare_and_swap", &sent, async {
                let n = match (expected, new) {
                    (Some(old), Some(new)) => {
                        self.write_count(&sent, &sql.swap, &[&key, &new, &ttl, &old])
                            .await?
                    }
                    (Some(old), None) => {
                        self.write_count(&sent, &sql.delete_if, &[&key, &old])
                            .await?
                    }
                    (None, Some(new)) => {
                        self.write_count(&sent, &sql.insert_if_absent, &[&key, &new, &ttl])
                            .await?
                    }
                    (None, None) => {
                        // Nothing to write: the swap "succeeds" when the key is absent. Read
                        // on the primary so the answer is current.
                        let client = self.primary().await?;
                        let stmt = client.prepare_cached(&sql.absent).await.map_err(map_pg)?;
                        let row = client.query_one(&stmt, &[&key]).await.map_err(map_pg)?;
                        u64::from(row.get::<_, bool>(0))
                    }
                };
                Ok(n == 1)
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    /// `INSERT .. ON CONFLICT DO UPDATE .. WHERE the existing row has expired`: one atomic
    /// statement; of concurrent callers exactly one inserts.
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StateResult<bool> {
        self.limits().check_entry(key, value)?;
        Limits::check_optional_ttl(ttl)?;
        let timer = self.inner.stats.start();
        let ttl = ttl_ms(ttl).or(self.default_ttl_ms());
        let sent = Sent::default();
        let result = self
            .timed_write(
                "set_if_not_exists",
                &sent,
                self.write_count(
                    &sent,
                    &self.inner.sql.insert_if_absent,
                    &[&key, &value, &ttl],
                ),
            )
            .await
            .map(|n| n == 1);
        self.inner.stats.observe(timer, OpKind::Put, 1, &result);
        result
    }

    /// `DELETE .. RETURNING value`: atomic.
    async fn get_and_delete(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits().check_key(key)?;
        let timer = self.inner.stats.start();
        let sent = Sent::default();
        let result = self
            .timed_write("get_and_delete", &sent, async {
                let rows = self
                    .write_rows(&sent, &self.inner.sql.get_and_delete, &[&key])
                    .await?;
                Ok(rows
                    .first()
                    .filter(|r| r.get::<_, bool>(1))
                    .map(|r| bytes_of(r, 0)))
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        result
    }

    /// One `DELETE` over the key range `[prefix, upper bound)`.
    async fn delete_prefix(&self, prefix: &[u8]) -> StateResult<usize> {
        self.limits().check_prefix(prefix)?;
        let timer = self.inner.stats.start();
        let sql = &self.inner.sql;
        let upper = prefix_upper_bound(prefix);
        let sent = Sent::default();
        let result = self
            .timed_write("delete_prefix", &sent, async {
                let rows = match (prefix.is_empty(), &upper) {
                    (true, _) => self.write_rows(&sent, &sql.delete_all, &[]).await?,
                    (false, Some(u)) => {
                        self.write_rows(&sent, &sql.delete_range, &[&prefix, &u.as_slice()])
                            .await?
                    }
                    (false, None) => self.write_rows(&sent, &sql.delete_from, &[&prefix]).await?,
                };
                Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as usize)
            })
            .await;
        self.inner.stats.observe(timer, OpKind::Delete, 1, &result);
        result
    }

    /// Keyset pagination over the primary key: pages of 1,000 rows ordered by key, each page
    /// one indexed range query (`key > $last AND key < $upper`), so the scan holds no
    /// connection or snapshot between pages.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        if let Err(err) = self.limits().check_prefix(prefix) {
            return Box::pin(stream::iter([Err(err)]));
        }
        let upper = prefix_upper_bound(prefix);
        let pages = stream::unfold(Cursor::Start, move |cursor| {
            let upper = upper.clone();
            async move {
                let after = match cursor {
                    Cursor::Done => return None,
                    Cursor::Start => None,
                    Cursor::After(k) => Some(k),
                };
                let result = self
                    .timed(
                        "scan",
                        self.page(prefix, upper.as_deref(), after.as_deref()),
                    )
                    .await;
                match result {
                    Ok(entries) => {
                        let next = if (entries.len() as i64) < schema::PAGE_ROWS {
                            Cursor::Done
                        } else {
                            Cursor::After(entries.last().map(|e| e.key.clone())?)
                        };
                        Some((Ok(entries), next))
                    }
                    Err(err) => Some((Err(err), Cursor::Done)),
                }
            }
        });
        Box::pin(pages.flat_map(|page| match page {
            Ok(entries) => stream::iter(entries.into_iter().map(Ok)).left_stream(),
            Err(err) => stream::iter(std::iter::once(Err(err))).right_stream(),
        }))
    }

    /// The table's on-disk footprint (`pg_total_relation_size`: heap, TOAST and indexes):
    /// what the stored state occupies on the server. It shrinks after `VACUUM FULL`, not
    /// after deletes (a plain `VACUUM` makes the space reusable).
    async fn memory_usage(&self) -> StateResult<u64> {
        self.timed("memory_usage", async {
            let client = self.primary().await?;
            let row = client
                .query_one(
                    "SELECT pg_total_relation_size($1::text::regclass)",
                    &[&self.inner.config.table.quoted()],
                )
                .await
                .map_err(map_pg)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
        .await
    }

    /// Operation counters and latency, plus the table's figures under `details`:
    /// `database_size_bytes`, `table_size_bytes`, `live_tuples`, `dead_tuples`,
    /// `cache_hit_rate` (heap blocks found in shared buffers), `connections`,
    /// `replica_reads`, `primary_fallbacks`, `swept_rows`. Table figures are left out when the
    /// server cannot be reached.
    async fn stats(&self) -> StateStats {
        let mut stats = self.inner.stats.snapshot();
        let pool = self.pool_stats();
        let d = &mut stats.details;
        d.insert(
            "connections".into(),
            (pool.active_connections + pool.idle_connections) as f64,
        );
        d.insert(
            "replica_reads".into(),
            self.inner.replica_reads.load(Ordering::Relaxed) as f64,
        );
        d.insert(
            "primary_fallbacks".into(),
            self.inner.primary_fallbacks.load(Ordering::Relaxed) as f64,
        );
        d.insert(
            "swept_rows".into(),
            self.inner.swept.load(Ordering::Relaxed) as f64,
        );
        if let Ok(table) = self.table_stats().await {
            d.insert(
                "database_size_bytes".into(),
                table.database_size_bytes as f64,
            );
            d.insert("table_size_bytes".into(), table.table_size_bytes as f64);
            d.insert("live_tuples".into(), table.live_tuples as f64);
            d.insert("dead_tuples".into(), table.dead_tuples as f64);
            if let Some(rate) = table.cache_hit_rate {
                d.insert("cache_hit_rate".into(), rate);
            }
        }
        stats
    }

    /// `SELECT 1` on the primary (and on each replica when reads go to replicas; a replica
    /// that does not answer only degrades reads to the primary, so it is reported by
    /// [`crate::PostgresStateBackend::replica_health`], not here).
    async fn health_check(&self) -> StateResult<bool> {
        let probe = self
            .timed("health_check", async {
                let client = self.primary().await?;
                client.simple_query("SELECT 1").await.map_err(map_pg)
            })
            .await;
        Ok(probe.is_ok())
    }
}

impl Inner {
    /// Remembers that this handle has written up to `lsn` on the primary (read-your-writes:
    /// replica reads wait for that position).
    pub(crate) fn record_write_lsn(&self, lsn: i64) {
        self.written_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Whether reads must see this handle's writes ([`ReadConsistency::ReadYourWrites`]).
    pub(crate) fn read_your_writes(&self) -> bool {
        self.config.read_consistency == ReadConsistency::ReadYourWrites
    }

    /// Replicas, for health reporting.
    pub(crate) fn replicas(&self) -> &[Replica] {
        &self.replicas
    }
}
