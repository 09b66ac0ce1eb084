//! [`PostgresTransaction`]: several operations that commit or roll back together.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Object;
use state_core::{Limits, StateError, StateResult, prefix_upper_bound};
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

use crate::PostgresStateBackend;
use crate::backend::Inner;
use crate::error::{map_pg, map_pool};

/// An open database transaction on one pooled connection, from
/// [`PostgresStateBackend::begin_transaction`].
///
/// Reads see the transaction's own writes; other connections see none of them until
/// [`PostgresTransaction::commit`]. Dropping it without `commit` rolls it back: with a tokio
/// runtime at hand a `ROLLBACK` is sent on a spawned task before the connection returns to
/// the pool; without one the connection is closed instead (PostgreSQL then rolls back), so a
/// half-done transaction never reaches another caller. `Drop` never panics.
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
}

impl fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTransaction")
            .field("table", &self.inner.config.table)
            .field("open", &self.client.is_some())
            .finish()
    }
}

impl PostgresStateBackend {
    /// Starts a `READ COMMITTED` transaction (PostgreSQL's default).
    pub async fn begin_transaction(&self) -> StateResult<PostgresTransaction> {
        self.begin_transaction_with(IsolationLevel::ReadCommitted)
            .await
    }

    /// Starts a transaction at `level`. Under `RepeatableRead` and `Serializable`,
    /// conflicting transactions fail at commit (or earlier) with a retryable
    /// `ConditionNotMatch` error: run the whole transaction again.
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
            client.batch_execute(begin).await.map_err(map_pg)?;
            Ok(PostgresTransaction {
                client: Some(client),
                inner: Arc::clone(&self.inner),
            })
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
            .ok_or_else(|| StateError::new(state_core::ErrorKind::Closed, "transaction finished"))
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StateResult<Vec<tokio_postgres::Row>> {
        let client = self.client()?;
        let run = async {
            let stmt = client.prepare_cached(sql).await.map_err(map_pg)?;
            client.query(&stmt, params).await.map_err(map_pg)
        };
        match tokio::time::timeout(self.inner.config.command_timeout, run).await {
            Ok(result) => result.map_err(|e| e.with_operation(op)),
            Err(_) => Err(
                StateError::timeout("postgres: no answer within command_timeout")
                    .with_operation(op),
            ),
        }
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

    /// Makes every write of the transaction visible at once. A serialization failure is a
    /// retryable `ConditionNotMatch` error and nothing was written.
    pub async fn commit(mut self) -> StateResult<()> {
        self.finish("COMMIT", "commit").await
    }

    /// Discards every write of the transaction.
    pub async fn rollback(mut self) -> StateResult<()> {
        self.finish("ROLLBACK", "rollback").await
    }

    async fn finish(&mut self, command: &str, op: &'static str) -> StateResult<()> {
        let client = self.client()?;
        let result = match tokio::time::timeout(
            self.inner.config.command_timeout,
            client.batch_execute(command),
        )
        .await
        {
            Ok(result) => result.map_err(|e| map_pg(e).with_operation(op)),
            Err(_) => Err(
                StateError::timeout("postgres: no answer within command_timeout")
                    .with_operation(op),
            ),
        };
        let client = self.client.take().expect("checked above");
        if result.is_err() {
            // The connection's transaction state is unknown: never hand it to another caller.
            drop(Object::take(client));
        }
        result
    }
}

impl Drop for PostgresTransaction {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
            // No runtime: close the connection; the server rolls the transaction back.
            Err(_) => drop(Object::take(client)),
        }
    }
}
