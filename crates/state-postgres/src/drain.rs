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
//! command timeout, until no such orphan is pending ([`state_core::OrphanedWrites`]). Reads
//! never wait.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use state_core::OrphanedWrites;

/// A primary connection for one write. Dropped without [`Writer::done`] (the write's future
/// was cancelled, or it failed), it is drained on a spawned task before it goes back to the
/// pool; see the module docs.
pub(crate) struct Writer {
    conn: Option<Object>,
    orphans: Arc<OrphanedWrites>,
    /// How long the drain waits for the server's answer before it discards the connection.
    patience: Duration,
}

impl Writer {
    pub(crate) fn new(conn: Object, orphans: Arc<OrphanedWrites>, patience: Duration) -> Self {
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
        // Answered after everything already sent on this connection (a transaction the write
        // had open is rolled back by tokio-postgres before it). Unanswered within the
        // patience, or broken: the connection is closed and never reused (a statement still
        // running on the server may yet apply; its caller was told the outcome is unknown).
        if tokio::runtime::Handle::try_current().is_err() {
            // No runtime to drain on: the connection cannot be trusted any more.
            drop(Object::take(conn));
            return;
        }
        let patience = self.patience;
        let drain = async move {
            match tokio::time::timeout(patience, conn.simple_query("")).await {
                Ok(Ok(_)) => drop(conn),
                _ => drop(Object::take(conn)),
            }
        };
        // The drain gives up on its own after `patience`; the backstop is never reached.
        self.orphans.drain_in_background(patience * 2, drain);
    }
}
