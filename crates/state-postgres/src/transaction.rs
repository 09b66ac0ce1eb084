//! [`PostgresTransaction`]: several operations that commit or roll back together.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Object;
use state_core::{ErrorKind, Limits, StateError, StateResult, prefix_upper_bound};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::PostgresStateBackend;
use crate::backend::Inner;
use crate::conn::cancel_running;
use crate::error::{map_pg, map_pool};

/// An open database transaction on one pooled connection, from
/// [`PostgresStateBackend::begin_transaction`].
///
/// Reads see the transaction's own writes; other connections see none of them until
/// [`PostgresTransaction::commit`].
///
/// **Failures.** PostgreSQL aborts a transaction at its first failed statement, so any error
/// inside it (a statement error, a statement timeout, a lost connection, a statement whose
/// future was dropped before its answer came) marks the handle failed: its error says "the
/// transaction is rolled back: retry the whole transaction" and is not retryable (sending
/// the same statement again cannot succeed), later statements fail at once, and `commit`
/// returns an error saying the transaction was rolled back instead of reporting success.
/// `commit` also checks, in the same round trip as `COMMIT`, that the server still has the
/// transaction open (`SELECT 1` before `COMMIT` fails in an aborted transaction, where a bare
/// `COMMIT` would silently answer `ROLLBACK`). A `COMMIT` whose reply is lost (connection
/// dropped, `command_timeout` passed after it was sent) is
/// [`state_core::ErrorKind::OutcomeUnknown`]: the transaction may or may not have committed.
///
/// **Drop and cancellation.** Dropping it without `commit` rolls it back: with a tokio
/// runtime at hand a `ROLLBACK` is sent on a spawned task, and the connection goes back to
/// the pool only once the server confirmed it (if the task never runs or the `ROLLBACK`
/// fails, the connection is closed instead); without a runtime the connection is closed
/// (PostgreSQL then rolls back). The handle exists before `BEGIN` is sent, so cancelling
/// [`PostgresStateBackend::begin_transaction`] at any point never returns a connection to the
/// pool inside a transaction. `Drop` never panics.
///
/// tokio-postgres' own `Transaction` was considered: it borrows the connection mutably, so
/// it cannot live in an owned handle beside the pooled connection, and its `commit` does not
/// check the reply either.
///
/// ```no_run
/// use state_postgres::PostgresStateBackend;
///
/// # async fn demo(backend: PostgresStateBackend) -> state_core::StateResult<()> {
/// let mut tx = backend.begin_transaction().await?;
/// let balance = tx.get(b"account:a").await?.unwrap_or_default();
/// tx.put(b"account:a", b"90").await?;
/// tx.put(b"account:b", b"110").await?;
/// backend.commit_transaction(tx).await?; // or tx.commit().await?
/// # let _ = balance; Ok(()) }
/// ```
pub struct PostgresTransaction {
    client: Option<Object>,
    inner: Arc<Inner>,
    /// The first failure inside the transaction (its kind and message), if any.
    failure: Mutex<Option<(ErrorKind, String)>>,
    /// Statements sent and not yet answered (a dropped statement future leaves it raised).
    in_flight: AtomicUsize,
}

impl fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTransaction")
            .field("table", &self.inner.config.table)
            .field("open", &self.client.is_some())
            .field("failed", &self.failed())
            .field("in_flight", &self.in_flight.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// `COMMIT` checked (see [`PostgresTransaction::commit`]) and followed by the primary's WAL
/// insert position, which is past the commit record.
const COMMIT_WITH_LSN: &str =
    "SELECT 1; COMMIT; SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";

/// The WAL position [`COMMIT_WITH_LSN`] answered: its last row's only column.
fn commit_lsn(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<i64> {
    messages.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
        _ => None,
    })
}

/// What a failed transaction tells the caller.
const RETRY_WHOLE: &str = "the transaction is rolled back: retry the whole transaction";

/// A pooled connection that must not go back to the pool unless marked clean: dropped dirty,
/// it is detached from the pool and closed (PostgreSQL rolls back what it had open).
struct Dirty(Option<Object>);

impl Dirty {
    fn clean(mut self) {
        // Dropping the Object returns it to the pool.
        drop(self.0.take());
    }
}

impl Drop for Dirty {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

impl PostgresStateBackend {
    /// Starts a `READ COMMITTED` transaction (PostgreSQL's default).
    pub async fn begin_transaction(&self) -> StateResult<PostgresTransaction> {
        self.begin_transaction_with(IsolationLevel::ReadCommitted)
            .await
    }

    /// Starts a transaction at `level`. Under `RepeatableRead` and `Serializable`,
    /// conflicting transactions fail at commit (or earlier) with a `ConditionNotMatch` error
    /// saying to retry the whole transaction (not retryable as a single call).
    pub async fn begin_transaction_with(
        &self,
        level: IsolationLevel,
    ) -> StateResult<PostgresTransaction> {
        let begin = match level {
            IsolationLevel::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
            IsolationLevel::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            IsolationLevel::ReadUncommitted => "BEGIN ISOLATION LEVEL READ UNCOMMITTED",
            _ => "BEGIN ISOLATION LEVEL READ COMMITTED",
        };
        self.timed("begin_transaction", async {
            let client = self.inner.primary.get().await.map_err(map_pool)?;
            // The handle exists before BEGIN is sent: if this future is dropped from here on,
            // the handle's Drop rolls back, and the connection never reaches the pool inside
            // the transaction.
            let mut tx = PostgresTransaction {
                client: Some(client),
                inner: Arc::clone(&self.inner),
                failure: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
            };
            let sent = tx.client()?.batch_execute(begin).await;
            match sent {
                Ok(()) => Ok(tx),
                Err(err) => {
                    // The connection's state is unknown: close it rather than reuse it.
                    if let Some(client) = tx.client.take() {
                        drop(Object::take(client));
                    }
                    Err(map_pg(err))
                }
            }
        })
        .await
    }

    /// The seed's `commit_transaction`: same as [`PostgresTransaction::commit`].
    pub async fn commit_transaction(&self, tx: PostgresTransaction) -> StateResult<()> {
        tx.commit().await
    }

    /// The seed's `rollback_transaction`: same as [`PostgresTransaction::rollback`].
    pub async fn rollback_transaction(&self, tx: PostgresTransaction) -> StateResult<()> {
        tx.rollback().await
    }
}

impl PostgresTransaction {
    fn client(&self) -> StateResult<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| StateError::new(ErrorKind::Closed, "transaction finished"))
    }

    /// The first failure inside the transaction, if any.
    fn failed(&self) -> Option<(ErrorKind, String)> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Records a failure inside the transaction and returns the caller's error: same kind,
    /// not retryable, saying the whole transaction must be retried.
    fn fail(&self, op: &'static str, err: StateError) -> StateError {
        let mut failure = self.failure.lock().expect("failure lock");
        if failure.is_none() {
            *failure = Some((err.kind(), err.to_string()));
        }
        StateError::new(err.kind(), format!("{}; {RETRY_WHOLE}", err.message()))
            .with_operation(op)
            .with_retryable(false)
            .with_source(err)
    }

    /// The error every call of a failed transaction returns.
    fn rolled_back(op: &'static str, kind: ErrorKind, first: &str) -> StateError {
        StateError::new(
            kind,
            format!("an earlier statement failed ({first}); {RETRY_WHOLE}"),
        )
        .with_operation(op)
        .with_retryable(false)
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StateResult<Vec<tokio_postgres::Row>> {
        if let Some((kind, first)) = self.failed() {
            return Err(Self::rolled_back(op, kind, &first));
        }
        let client = self.client()?;
        // Raised until the answer arrives: if this future is dropped in between, the
        // statement's effect on the transaction is unknown and commit refuses.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let run = async {
            let stmt = client.prepare_cached(sql).await.map_err(map_pg)?;
            client.query(&stmt, params).await.map_err(map_pg)
        };
        let result = if let Ok(result) =
            tokio::time::timeout(self.inner.config.command_timeout, run).await
        {
            result
        } else {
            // The statement goes on running on the server (a row lock can hold it for as
            // long as the other transaction lives): cancel it, so the rollback that follows
            // does not wait behind it.
            cancel_running(client, &self.inner.connector);
            Err(StateError::timeout(
                "postgres: no answer within command_timeout",
            ))
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result.map_err(|e| self.fail(op, e))
    }

    fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// Reads `key`, including this transaction's uncommitted writes.
    pub async fn get(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits().check_key(key)?;
        let rows = self.query("get", &self.inner.sql.get, &[&key]).await?;
        Ok(rows
            .first()
            .map(|r| Bytes::copy_from_slice(r.get::<_, &[u8]>(0))))
    }

    /// Reads `key` and locks its row (`SELECT .. FOR UPDATE`) until the transaction ends, so
    /// a read-modify-write cannot lose a concurrent update.
    pub async fn get_for_update(&self, key: &[u8]) -> StateResult<Option<Bytes>> {
        self.limits().check_key(key)?;
        let sql = format!("{} FOR UPDATE", self.inner.sql.get);
        let rows = self.query("get_for_update", &sql, &[&key]).await?;
        Ok(rows
            .first()
            .map(|r| Bytes::copy_from_slice(r.get::<_, &[u8]>(0))))
    }

    /// Whether a live entry exists under `key`.
    pub async fn contains(&self, key: &[u8]) -> StateResult<bool> {
        self.limits().check_key(key)?;
        let rows = self
            .query("contains", &self.inner.sql.contains, &[&key])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Writes `key` (with the backend's default TTL, if any).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> StateResult<()> {
        self.limits().check_entry(key, value)?;
        let ttl = self.inner.config.default_ttl.map(|t| t.as_millis() as i64);
        self.query("put", &self.inner.sql.put, &[&key, &value, &ttl])
            .await
            .map(|_| ())
    }

    /// Writes `key` expiring after `ttl`.
    pub async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> StateResult<()> {
        self.limits().check_entry(key, value)?;
        Limits::check_ttl(ttl)?;
        let ttl = Some(ttl.as_millis().min(i64::MAX as u128) as i64);
        self.query("put_with_ttl", &self.inner.sql.put, &[&key, &value, &ttl])
            .await
            .map(|_| ())
    }

    /// Deletes `key`; returns whether a live entry was removed.
    pub async fn delete(&self, key: &[u8]) -> StateResult<bool> {
        self.limits().check_key(key)?;
        let rows = self
            .query("delete", &self.inner.sql.delete, &[&key])
            .await?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)))
    }

    /// Lists live keys under `prefix`, including this transaction's writes.
    pub async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.limits().check_prefix(prefix)?;
        let sql = &self.inner.sql;
        let upper = prefix_upper_bound(prefix);
        let rows = match (prefix.is_empty(), &upper) {
            (true, _) => self.query("list_keys", &sql.list_all, &[]).await?,
            (false, Some(u)) => {
                self.query("list_keys", &sql.list_range, &[&prefix, &u.as_slice()])
                    .await?
            }
            (false, None) => self.query("list_keys", &sql.list_from, &[&prefix]).await?,
        };
        Ok(rows
            .iter()
            .map(|r| Bytes::copy_from_slice(r.get::<_, &[u8]>(0)))
            .collect())
    }

    /// Makes every write of the transaction visible at once.
    ///
    /// Fails without committing, with an error saying the transaction was rolled back, when
    /// anything inside it failed (or a statement's answer never arrived because its future
    /// was dropped), or when the server had aborted it. A serialization failure or deadlock
    /// at commit is a `ConditionNotMatch` error: nothing was written, run the whole
    /// transaction again. A lost reply to `COMMIT` is `OutcomeUnknown`.
    pub async fn commit(mut self) -> StateResult<()> {
        let failed = self.failed().or_else(|| {
            (self.in_flight.load(Ordering::SeqCst) > 0).then(|| {
                (
                    ErrorKind::OutcomeUnknown,
                    "a statement was cancelled before its answer arrived".to_owned(),
                )
            })
        });
        if let Some((kind, first)) = failed {
            let kind = if kind == ErrorKind::OutcomeUnknown {
                // Rolled back below: the outcome is known now.
                ErrorKind::ConditionNotMatch
            } else {
                kind
            };
            if self.in_flight.load(Ordering::SeqCst) > 0
                && let Some(client) = &self.client
            {
                // An abandoned statement may still be running: cancel it first, or the
                // ROLLBACK queues behind it.
                cancel_running(client, &self.inner.connector);
            }
            let _ = self.finish("ROLLBACK", "commit").await;
            return Err(Self::rolled_back("commit", kind, &first));
        }
        let client = self.client.take().ok_or_else(|| {
            StateError::new(ErrorKind::Closed, "transaction finished").with_operation("commit")
        })?;
        let client = Dirty(Some(client));
        let conn = client.0.as_ref().expect("just set");
        if conn.is_closed() {
            // The connection died (a server restart, a network failure) before COMMIT could
            // be sent: the server rolled the transaction back when it lost the session.
            return Err(Self::rolled_back(
                "commit",
                ErrorKind::Connection,
                "the connection to the server was lost before COMMIT was sent",
            ));
        }
        // One round trip: `SELECT 1` fails with 25P02 when the server has aborted the
        // transaction (then COMMIT is not run), so a silent `COMMIT` -> `ROLLBACK` cannot
        // pass for success. In read-your-writes mode the primary's WAL position after the
        // commit comes back in the same round trip, so reads through the backend see it.
        let ryw = self.inner.read_your_writes();
        let sql = if ryw {
            COMMIT_WITH_LSN
        } else {
            "SELECT 1; COMMIT"
        };
        let sent =
            tokio::time::timeout(self.inner.config.command_timeout, conn.simple_query(sql)).await;
        match sent {
            Ok(Ok(messages)) => {
                client.clean();
                if ryw && let Some(lsn) = commit_lsn(&messages) {
                    self.inner.record_write_lsn(lsn);
                }
                Ok(())
            }
            Ok(Err(err)) if err.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                let rolled = conn.batch_execute("ROLLBACK").await;
                if rolled.is_ok() {
                    client.clean();
                }
                Err(Self::rolled_back(
                    "commit",
                    ErrorKind::ConditionNotMatch,
                    "the server had aborted the transaction",
                ))
            }
            Ok(Err(err)) if err.code().is_some() => {
                // COMMIT itself failed (serialization failure, deferred constraint): the
                // server ended the transaction with a rollback. The connection is closed
                // (dropped dirty) all the same.
                let mapped = map_pg(err);
                Err(StateError::new(
                    mapped.kind(),
                    format!("{}; {RETRY_WHOLE}", mapped.message()),
                )
                .with_operation("commit")
                .with_retryable(false)
                .with_source(mapped))
            }
            Ok(Err(err)) => Err(StateError::outcome_unknown(format!(
                "postgres: the connection failed with COMMIT in flight ({err}); the \
                 transaction may or may not have committed"
            ))
            .with_operation("commit")
            .with_source(err)),
            Err(_) => Err(StateError::outcome_unknown(format!(
                "postgres: no answer to COMMIT within command_timeout ({:?}); the \
                 transaction may or may not have committed",
                self.inner.config.command_timeout
            ))
            .with_operation("commit")),
        }
    }

    /// Discards every write of the transaction.
    pub async fn rollback(mut self) -> StateResult<()> {
        self.finish("ROLLBACK", "rollback").await
    }

    async fn finish(&mut self, command: &str, op: &'static str) -> StateResult<()> {
        let client = self.client.take().ok_or_else(|| {
            StateError::new(ErrorKind::Closed, "transaction finished").with_operation(op)
        })?;
        let client = Dirty(Some(client));
        let result = match tokio::time::timeout(
            self.inner.config.command_timeout,
            client.0.as_ref().expect("just set").batch_execute(command),
        )
        .await
        {
            Ok(result) => result.map_err(|e| map_pg(e).with_operation(op)),
            Err(_) => Err(
                StateError::timeout("postgres: no answer within command_timeout")
                    .with_operation(op),
            ),
        };
        if result.is_ok() {
            client.clean();
        }
        // Otherwise the connection's transaction state is unknown: `client` is dropped dirty
        // and closed, never handed to another caller.
        result
    }
}

impl Drop for PostgresTransaction {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            cancel_running(&client, &self.inner.connector);
        }
        let client = Dirty(Some(client));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // If the task never runs (runtime shutting down), `client` is dropped dirty
                // and closed: it never reaches the pool inside the transaction.
                runtime.spawn(async move {
                    let rolled = client
                        .0
                        .as_ref()
                        .expect("just set")
                        .batch_execute("ROLLBACK")
                        .await;
                    if rolled.is_ok() {
                        client.clean();
                    }
                });
            }
            // No runtime: close the connection; the server rolls the transaction back.
            Err(_) => drop(client),
        }
    }
}
