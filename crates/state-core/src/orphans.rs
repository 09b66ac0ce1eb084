//! [`OrphanedWrites`]: later writes wait for writes whose callers stopped waiting.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{StateError, StateResult};

/// Writes whose future was dropped while their command may still be on its way to a
/// server, for backend authors.
///
/// A network client sends a command when its future is first polled; dropping the future
/// afterwards (a caller's timeout, `select!`, an aborted task) does not recall it, and with a
/// pool of connections it can reach the server *after* a later write sent on another
/// connection, breaking the trait contract's cancellation rule ("nothing changes after a
/// later operation is acknowledged"). A backend keeps one `OrphanedWrites`: a write dropped
/// mid-flight takes a [`OrphanTicket`] and hands it, with its connection, to a spawned task
/// that waits until the server has answered everything sent on that connection (for
/// instance a `PING` or an empty query queued behind it); every write first calls
/// [`OrphanedWrites::settled`]. Writes that complete normally cost one atomic load.
///
/// A ticket is never given up on a timer: a dropped write held up on the network (or on a
/// stalled server) for longer than the command timeout still lands when it arrives, and a
/// later write let through in the meantime would be overwritten by it. While one is
/// unanswered, later writes wait up to their own bound and then fail unsent (a retryable
/// `Timeout`); the drain ends when the server answers or the connection is gone.
#[derive(Debug, Default)]
pub struct OrphanedWrites {
    pending: AtomicUsize,
    settled: Notify,
}

impl OrphanedWrites {
    /// A new, shared set with nothing pending.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Dropped writes whose server has not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Records one dropped write; it counts as pending until the ticket is dropped.
    pub fn orphan(self: &Arc<Self>) -> OrphanTicket {
        self.pending.fetch_add(1, Ordering::AcqRel);
        OrphanTicket(Arc::clone(self))
    }

    /// Waits until no dropped write is pending; after `within`, a retryable
    /// [`crate::ErrorKind::Timeout`] (the caller's write was not sent) naming `backend`.
    pub async fn settled(&self, backend: &str, within: Duration) -> StateResult<()> {
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
                    "{backend}: an earlier cancelled write was still unanswered by the server \
                     after {within:?}; this write was not sent"
                )));
            }
        }
    }

    /// Spawns `drain` (which resolves once the server answered everything sent before it on
    /// the dropped write's connection, or that connection is gone) on the current tokio
    /// runtime, holding a ticket until it resolves, however long that takes (see the type's
    /// docs: giving up on a timer would let a later write be overwritten by the dropped one).
    /// Returns `false` (nothing spawned, nothing pending) outside a runtime.
    pub fn drain_in_background<F>(self: &Arc<Self>, drain: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let ticket = self.orphan();
        runtime.spawn(async move {
            drain.await;
            drop(ticket);
        });
        true
    }
}

/// One pending dropped write of an [`OrphanedWrites`]; dropping it marks the write answered.
#[derive(Debug)]
pub struct OrphanTicket(Arc<OrphanedWrites>);

impl Drop for OrphanTicket {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settled_waits_for_every_ticket_and_times_out_when_one_stays() {
        let orphans = OrphanedWrites::new();
        orphans
            .settled("t", Duration::from_millis(1))
            .await
            .unwrap();
        let a = orphans.orphan();
        let b = orphans.orphan();
        assert_eq!(orphans.pending(), 2);
        let err = orphans
            .settled("t", Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Timeout);
        assert!(err.is_retryable());
        let waiter = {
            let orphans = Arc::clone(&orphans);
            tokio::spawn(async move { orphans.settled("t", Duration::from_secs(5)).await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.unwrap().unwrap();
        assert_eq!(orphans.pending(), 0);
    }

    #[tokio::test]
    async fn a_drain_holds_its_ticket_until_it_resolves_however_long_that_takes() {
        let orphans = OrphanedWrites::new();
        let (answered, answer) = tokio::sync::oneshot::channel::<()>();
        assert!(orphans.drain_in_background(async move {
            let _ = answer.await;
        }));
        assert_eq!(orphans.pending(), 1);
        // Later writes fail unsent, however many times they try, until the server answered.
        for _ in 0..3 {
            let err = orphans
                .settled("t", Duration::from_millis(20))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Timeout);
        }
        assert_eq!(orphans.pending(), 1);
        answered.send(()).unwrap();
        orphans.settled("t", Duration::from_secs(5)).await.unwrap();
        assert_eq!(orphans.pending(), 0);
    }
}
