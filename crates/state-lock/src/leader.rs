//! [`LeaderElection`]: campaign for a lock, hold and renew it, step down on shutdown.

use std::sync::Arc;
use std::time::Duration;

use state_core::{ErrorKind, StateError, StateResult};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::guard::{LeaseStatus, StatusHandle};
use crate::lock::{DistributedLock, FencingToken, check_ttl};

/// The lease this instance leads with, readable from any thread.
type Current = Arc<std::sync::Mutex<Option<(FencingToken, StatusHandle)>>>;

/// Whether this instance leads, and with which fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not the leader (campaigning).
    Follower,
    /// The leader, holding the lock with this fencing token. Fence leader-only writes with it.
    Leader(FencingToken),
}

impl Leadership {
    /// Whether this is [`Leadership::Leader`].
    pub fn is_leader(self) -> bool {
        matches!(self, Leadership::Leader(_))
    }
}

/// Leader election on any [`DistributedLock`]: one background task per instance campaigns
/// (polls `try_acquire` every `retry_interval` of the lock's options), holds the lock while it
/// leads (the guard renews it every third of the TTL), and drops back to campaigning when the
/// lease is lost.
///
/// Handover bounds, for a lease TTL `ttl` and a poll interval `r` (jittered up to `1.5 r`):
///
/// - the leader steps down ([`LeaderElection::step_down`], or the election is dropped inside a
///   runtime): it releases the lock, and another instance leads within `1.5 r` (plus one
///   round trip);
/// - the leader dies or is cut off: its lease expires on the server after at most `ttl`, and
///   another instance leads within `ttl + 1.5 r`. A leader cut off from the server sees its
///   [`Leadership`] drop to `Follower` before the lease expires (at `0.9 ttl` by default).
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use state_lock::{LeaderElection, Leadership, RedisLock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let lock = RedisLock::new("redis://localhost:6379", "scheduler-leader").await?;
/// let election = LeaderElection::start(Arc::new(lock), Duration::from_secs(10))?;
/// let mut leadership = election.watch();
/// loop {
///     if let Leadership::Leader(token) = *leadership.borrow_and_update() {
///         println!("leading with token {token}");
///         // run leader-only work; stop it when leadership changes
///     }
///     if leadership.changed().await.is_err() {
///         break;
///     }
/// #   break;
/// }
/// election.step_down().await?;
/// # Ok(()) }
/// ```
pub struct LeaderElection {
    state: watch::Receiver<Leadership>,
    current: Current,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    name: String,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("name", &self.name)
            .field("leadership", &self.leadership())
            .finish_non_exhaustive()
    }
}

impl LeaderElection {
    /// Starts campaigning for `lock` with leases of `ttl`, on the current tokio runtime.
    pub fn start(lock: Arc<dyn DistributedLock>, ttl: Duration) -> StateResult<Self> {
        check_ttl(ttl)?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            StateError::new(
                ErrorKind::ConfigInvalid,
                "LeaderElection::start needs a running tokio runtime",
            )
        })?;
        let (tx, state) = watch::channel(Leadership::Follower);
        let (shutdown, stop) = oneshot::channel();
        let name = lock.name().to_owned();
        let current = Current::default();
        let task = rt.spawn(campaign(lock, ttl, tx, stop, Arc::clone(&current)));
        Ok(Self {
            state,
            current,
            shutdown: Some(shutdown),
            task: Some(task),
            name,
        })
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this instance leads right now, answered from the local lease deadline: it turns
    /// false when the lease's deadline passes even if no task could run to notice (a stalled
    /// runtime), and when the campaign task is gone (its runtime shut down, or it panicked).
    /// Two instances never both answer true while the clocks' rates agree within the lock's
    /// drift margin.
    pub fn is_leader(&self) -> bool {
        self.leadership().is_leader()
    }

    /// The current leadership, with the same rules as [`LeaderElection::is_leader`].
    pub fn leadership(&self) -> Leadership {
        if self.task.as_ref().is_none_or(JoinHandle::is_finished) {
            return Leadership::Follower;
        }
        match &*self.current.lock().expect("leadership lock") {
            Some((token, lease)) if lease.status() == LeaseStatus::Held => {
                Leadership::Leader(*token)
            }
            _ => Leadership::Follower,
        }
    }

    /// A watch channel of the leadership: `Leader(token)` while leading, `Follower` otherwise.
    /// Select on `changed()` to stop leader-only work as soon as leadership is lost. Changes
    /// are sent by the campaign task, so a stalled runtime delays them: before an
    /// irreversible step, ask [`LeaderElection::is_leader`] (and fence the write).
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Waits until this instance leads; returns its fencing token.
    pub async fn wait_for_leadership(&self) -> StateResult<FencingToken> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.is_leader())
            .await
            .map_err(|_| StateError::new(ErrorKind::Closed, "the election has stopped"))?;
        match *state {
            Leadership::Leader(token) => Ok(token),
            Leadership::Follower => unreachable!("wait_for returned a leader state"),
        }
    }

    /// Stops campaigning and, if leading, releases the lock so another instance takes over
    /// at its next poll. Waits for the release (bounded by the lock's operation timeout).
    pub async fn step_down(mut self) -> StateResult<()> {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| {
                StateError::backend(format!("the election task failed: {e}"))
                    .with_operation("step_down")
            })?;
        }
        Ok(())
    }
}

impl Drop for LeaderElection {
    /// Dropping the election stops the campaign: the task sees its shutdown channel close and
    /// releases the lock if it leads (on the runtime it runs on).
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
    }
}

async fn campaign(
    lock: Arc<dyn DistributedLock>,
    ttl: Duration,
    tx: watch::Sender<Leadership>,
    mut stop: oneshot::Receiver<()>,
    current: Current,
) {
    let set_current = |lease: Option<(FencingToken, StatusHandle)>| {
        *current.lock().expect("leadership lock") = lease;
    };
    loop {
        match lock.try_acquire(ttl).await {
            Ok(Some(guard)) => {
                let token = guard.token();
                tracing::info!(lock = %lock.name(), %token, "state-lock: became leader");
                set_current(Some((token, guard.status_handle())));
                tx.send_replace(Leadership::Leader(token));
                let lost = guard.lost();
                tokio::select! {
                    () = lost => {
                        set_current(None);
                        tx.send_replace(Leadership::Follower);
                        tracing::warn!(lock = %lock.name(), %token, "state-lock: lost leadership");
                        drop(guard);
                    }
                    _ = &mut stop => {
                        set_current(None);
                        tx.send_replace(Leadership::Follower);
                        match guard.release().await {
                            Ok(_) => tracing::info!(lock = %lock.name(), "state-lock: stepped down"),
                            Err(err) => tracing::warn!(
                                lock = %lock.name(),
                                error = %err,
                                "state-lock: step-down release failed; the lease expires at its TTL"
                            ),
                        }
                        return;
                    }
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(lock = %lock.name(), error = %err, "state-lock: campaign attempt failed");
            }
        }
        let pause = lock.options().retry().mul_f64(0.5 + rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stop => return,
        }
    }
}
