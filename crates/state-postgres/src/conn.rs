//! [`Conn`]: a pooled connection that is never handed to another caller while one of its
//! statements may still be running on the server.
//!
//! Every operation runs under the client-side `command_timeout`: when it passes (or the
//! caller drops the operation's future), the future holding the connection is dropped with a
//! statement in flight. Returned to the pool as it is, that connection would make the next
//! caller queue behind the abandoned statement (a row lock can hold it for as long as the
//! other transaction lives), and the statement would go on running on the server. So a
//! `Conn` counts the statements it has sent and not yet seen answered; dropped with one in
//! flight, it asks the server to cancel it (the driver's cancel request, over a new
//! connection with the same TLS) and detaches the connection from the pool (`Object::take`):
//! the pool opens a fresh one when needed, and the old one closes once the server has
//! answered the cancelled statement.
//!
//! A write's connection ([`Conn::for_writes`]) does more: the cancel request may arrive after
//! the statement has run, and the statement could then land *after* a later write acknowledged
//! on another connection (a dropped `delete_prefix` removing a key put after it: found by the
//! shared suite's cancellation case, reproduced in `tests/cancellation.rs`). So the dropped
//! write also takes a ticket in the backend's [`OrphanedWrites`], held by a spawned task until
//! the server has answered everything sent on the connection (an empty query queued behind
//! the cancelled statement) or the connection is gone; every write waits first until no
//! ticket is out, at most the command timeout, and then fails unsent (a retryable `Timeout`).
//! Giving the ticket up after a timeout would let a statement delayed on the network land
//! after a later acknowledged write (`tests/cancellation.rs`). Reads never wait.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use state_core::{OrphanedWrites, StateResult};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, SimpleQueryMessage, Statement, ToStatement};

use crate::error::map_pool;
use crate::tls::Connector;

/// How long a cancel request may take to reach the server before it is given up.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements sent on one connection and not yet answered. A future dropped while awaiting
/// an answer leaves its count raised: that is how a [`Conn`] learns, in `Drop`, that a
/// statement was abandoned.
#[derive(Debug, Default, Clone)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Awaits `fut` with the count raised; a dropped `fut` leaves it raised.
    pub(crate) async fn run<T>(&self, fut: impl Future<Output = T>) -> T {
        self.0.fetch_add(1, Ordering::SeqCst);
        let out = fut.await;
        self.0.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// Whether a statement was abandoned (or is still running).
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// Asks the server to cancel whatever `client` is running, on a spawned task (no-op without
/// a tokio runtime: then the server cancels nothing, and the connection is still closed).
pub(crate) fn cancel_running(client: &tokio_postgres::Client, connector: &Connector) {
    let token = client.cancel_token();
    let connector = connector.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            match tokio::time::timeout(CANCEL_TIMEOUT, connector.cancel(&token)).await {
                Ok(Ok(())) => tracing::debug!("state-postgres: abandoned statement cancelled"),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "state-postgres: cancel request failed");
                }
                Err(_) => tracing::debug!("state-postgres: cancel request timed out"),
            }
        });
    }
}

/// A pooled connection whose statements are tracked; see the module docs.
pub(crate) struct Conn {
    client: Option<Object>,
    connector: Connector,
    in_flight: InFlight,
    /// For a write's connection: the backend's dropped writes.
    orphans: Option<Arc<OrphanedWrites>>,
}

impl Conn {
    /// Checks a connection out of `pool`; `connector` is the pool's own (for cancel requests).
    pub(crate) async fn checkout(pool: &Pool, connector: &Connector) -> StateResult<Self> {
        let client = pool.get().await.map_err(map_pool)?;
        Ok(Self {
            client: Some(client),
            connector: connector.clone(),
            in_flight: InFlight::default(),
            orphans: None,
        })
    }

    /// Marks this connection as carrying a write: dropped with a statement in flight, it
    /// holds a ticket in `orphans` until the server has answered or the connection is gone;
    /// see the module docs.
    pub(crate) fn for_writes(mut self, orphans: Arc<OrphanedWrites>) -> Self {
        self.orphans = Some(orphans);
        self
    }

    fn object(&self) -> &Object {
        self.client.as_ref().expect("present until drop")
    }

    /// The pooled connection itself, for work the wrappers below do not cover (a
    /// transaction); run it inside [`Conn::in_flight`]'s `run` so an abandoned statement is
    /// still cancelled.
    pub(crate) fn object_mut(&mut self) -> &mut Object {
        self.client.as_mut().expect("present until drop")
    }

    /// This connection's statement count.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// `prepare_cached`, tracked.
    pub(crate) async fn prepare_cached(
        &self,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        self.in_flight.run(self.object().prepare_cached(sql)).await
    }

    /// `query`, tracked.
    pub(crate) async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.in_flight
            .run(self.object().query(statement, params))
            .await
    }

    /// `query_one`, tracked.
    pub(crate) async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.in_flight
            .run(self.object().query_one(statement, params))
            .await
    }

    /// `execute`, tracked.
    pub(crate) async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.in_flight
            .run(self.object().execute(statement, params))
            .await
    }

    /// `simple_query`, tracked.
    pub(crate) async fn simple_query(
        &self,
        sql: &str,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        self.in_flight.run(self.object().simple_query(sql)).await
    }

    /// `batch_execute`, tracked.
    pub(crate) async fn batch_execute(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.in_flight.run(self.object().batch_execute(sql)).await
    }
}

impl Conn {
    /// Closes the connection instead of returning it to the pool (its session state, such as
    /// a session-level advisory lock, goes with it).
    pub(crate) fn discard(mut self) {
        if let Some(client) = self.client.take() {
            if self.in_flight.any() {
                cancel_running(&client, &self.connector);
            }
            drop(Object::take(client));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.in_flight.any() {
            cancel_running(&client, &self.connector);
            match (&self.orphans, tokio::runtime::Handle::try_current()) {
                (Some(orphans), Ok(_)) if !client.is_closed() => {
                    // Later writes wait until everything sent on this connection is answered
                    // (the empty query is answered after the cancelled statement) or the
                    // connection is gone, then it closes, never back to the pool. No timer:
                    // a statement held up on the network past the command timeout still runs
                    // when it arrives, so later writes fail unsent until then.
                    orphans.drain_in_background(async move {
                        let _ = client.simple_query("").await;
                        drop(Object::take(client));
                    });
                }
                // Never back to the pool: the connection closes once the server has answered
                // the cancelled statement (the driver's task finishes the queue, then closes).
                _ => drop(Object::take(client)),
            }
        }
        // Otherwise dropping the Object returns the idle connection to the pool.
    }
}
