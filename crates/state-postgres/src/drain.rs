//! Cancelled writes: a statement whose caller stopped waiting keeps its connection until the
//! server has answered it, and later writes wait for it.
//!
//! tokio-postgres sends a statement to the server when its future is first polled; dropping
//! the future afterwards (a timeout, a cancelled request, a `select!`) does not stop the
//! statement. Without this module the connection went straight back to the pool, and the
//! statement could land *after* a later write acknowledged on another connection (a dropped
//! `delete_prefix` removing a key written after it; found by the shared suite's cancellation
//! case). Here the dropped write's connection is handed to a spawned task that waits until
//! the server has answered everything sent on it (an empty query queued behind the orphaned
//! statement), and only then returns it to the pool; every write first waits, up to the
//! command timeout, until no such orphan is pending. A write dropped before it was sent waits
//! for nothing, and reads never wait.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Object;
use state_core::{StateError, StateResult};
use tokio::sync::Notify;

/// Writes dropped with a statement possibly in flight, not yet answered by the server.
#[derive(Debug, Default)]
pub(crate) struct Orphans {
    pending: AtomicUsize,
    settled: Notify,
}

impl Orphans {
    /// Orphaned statements not answered yet.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every orphaned statement has been answered; a retryable `Timeout` (nothing
    /// was sent) after `within`.
    pub(crate) async fn settled(&self, within: Duration) -> StateResult<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(StateError::timeout(format!(
                    "postgres: an earlier cancelled write was still running on the server \
                     after {within:?}; nothing was sent"
                )));
            }
        }
    }

    fn finished(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
    }
}

/// A primary connection for one write. Dropped without [`Writer::done`] (the write's future
/// was cancelled, or it failed), it is drained on a spawned task before it goes back to the
/// pool; see the module docs.
pub(crate) struct Writer {
    conn: Option<Object>,
    orphans: Arc<Orphans>,
    /// How long the drain waits for the server's answer before it discards the connection.
    patience: Duration,
}

impl Writer {
    pub(crate) fn new(conn: Object, orphans: Arc<Orphans>, patience: Duration) -> Self {
        Self {
            conn: Some(conn),
            orphans,
            patience,
        }
    }

    /// The write has its answer: the connection goes back to the pool as it is.
    pub(crate) fn done(mut self) {
        self.conn = None;
    }
}

impl Deref for Writer {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.conn
            .as_ref()
            .expect("a writer's connection is present until done")
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Object {
        self.conn
            .as_mut()
            .expect("a writer's connection is present until done")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.is_closed() {
            // Nothing more will be answered on it; the pool discards it.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to drain on: the connection cannot be trusted any more.
            drop(Object::take(conn));
            return;
        };
        self.orphans.pending.fetch_add(1, Ordering::AcqRel);
        let orphans = Arc::clone(&self.orphans);
        let patience = self.patience;
        runtime.spawn(async move {
            // Answered after everything already sent on this connection (a transaction the
            // write had open is rolled back by tokio-postgres before it).
            match tokio::time::timeout(patience, conn.simple_query("")).await {
                Ok(Ok(_)) => drop(conn),
                // Broken, or the server did not answer in time: the connection is closed and
                // never reused (a statement still running on the server may yet apply; its
                // caller was told the outcome is unknown).
                _ => drop(Object::take(conn)),
            }
            orphans.finished();
        });
    }
}
