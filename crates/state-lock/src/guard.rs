//! [`LockGuard`]: a held lease, renewed in the background, released on drop.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use state_core::StateResult;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lock::{DistributedLock, Fence, FencingToken, Lease};

/// Where a guard's lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Held, and renewed in time so far.
    Held,
    /// Lost: a renewal was refused (the lease expired or was taken over), or no renewal
    /// succeeded before the local deadline. Reported before the server can expire the lease,
    /// as long as the clocks' rates agree within the drift margin.
    Lost,
    /// Released by [`LockGuard::release`] (or the guard was dropped).
    Released,
}

#[derive(Debug, Clone, Copy)]
struct State {
    status: LeaseStatus,
    /// Past this instant the lease may have expired on the server.
    valid_until: Instant,
}

/// Answers a guard's [`LeaseStatus`] from anywhere, from the local lease deadline: it turns
/// `Lost` when the deadline passes even if no task could run to say so (a stalled runtime),
/// and `Released` when the guard is dropped (also when the task holding it died).
#[derive(Clone)]
pub(crate) struct StatusHandle(Arc<watch::Sender<State>>);

impl StatusHandle {
    pub(crate) fn status(&self) -> LeaseStatus {
        let state = *self.0.borrow();
        if state.status == LeaseStatus::Held && Instant::now() >= state.valid_until {
            LeaseStatus::Lost
        } else {
            state.status
        }
    }
}

/// A held lock. Carries the [`FencingToken`] of this acquisition, renews the lease every
/// `renew_fraction` of its TTL in a background task, and reports loss through
/// [`LockGuard::lost`] / [`LockGuard::watch`].
///
/// # Release
///
/// [`LockGuard::release`] releases the lease and says whether it was still held. Dropping
/// the guard instead is best effort: the renewal task stops at once and, when a tokio runtime
/// is running on the dropping thread, the release is spawned on it (its result is only
/// logged). Without a runtime nothing is sent and the lease simply expires at its TTL. `Drop`
/// never blocks and never panics.
pub struct LockGuard {
    lock: Arc<dyn DistributedLock>,
    lease: Option<Lease>,
    ttl: Duration,
    state: Arc<watch::Sender<State>>,
    renewal: Option<JoinHandle<()>>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lock", &self.lock.name())
            .field("token", &self.token())
            .field("ttl", &self.ttl)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// Wraps a lease acquired at `sent` (the instant the acquire request was sent) and starts
    /// its renewal on the current tokio runtime.
    pub(crate) fn start(
        lock: Arc<dyn DistributedLock>,
        lease: Lease,
        ttl: Duration,
        sent: Instant,
    ) -> Self {
        let valid_until = sent + lock.options().valid_for(ttl);
        let (tx, _rx) = watch::channel(State {
            status: LeaseStatus::Held,
            valid_until,
        });
        let state = Arc::new(tx);
        let renewal = tokio::runtime::Handle::try_current().ok().map(|rt| {
            rt.spawn(renew(
                Arc::clone(&lock),
                lease.clone(),
                ttl,
                Arc::clone(&state),
                sent,
            ))
        });
        Self {
            lock,
            lease: Some(lease),
            ttl,
            state,
            renewal,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.lock.name()
    }

    /// This acquisition's fencing token.
    pub fn token(&self) -> FencingToken {
        self.lease
            .as_ref()
            .map_or(FencingToken::new(0), Lease::token)
    }

    /// The lock name and token, for [`crate::FencedWrite::put_fenced`].
    pub fn fence(&self) -> Fence {
        Fence::new(self.name(), self.token())
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease (owner and fencing token).
    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .expect("a LockGuard holds its lease until release() consumes it")
    }

    /// Where the lease stands now. A lease whose local deadline has passed reads as
    /// [`LeaseStatus::Lost`] even if the renewal task has not run yet (a paused process).
    pub fn status(&self) -> LeaseStatus {
        self.status_handle().status()
    }

    /// A handle that answers [`LockGuard::status`] from another task or thread.
    pub(crate) fn status_handle(&self) -> StatusHandle {
        StatusHandle(Arc::clone(&self.state))
    }

    /// Whether the lease is still held (renewed in time). Check it before an irreversible
    /// step; fence writes for the cases a check cannot catch (a pause after the check).
    pub fn is_held(&self) -> bool {
        self.status() == LeaseStatus::Held
    }

    /// Until when the lease is known to be held, on this process's monotonic clock.
    pub fn valid_until(&self) -> Instant {
        self.state.borrow().valid_until
    }

    /// A future that resolves once the lease is no longer held (lost or released): select on
    /// it to stop work that must not continue without the lock. It does not borrow the guard.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.state.subscribe();
        async move {
            loop {
                let state = *rx.borrow_and_update();
                if state.status != LeaseStatus::Held {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(state.valid_until) => {
                        if rx.borrow().valid_until <= Instant::now() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A watch channel of the lease's status (`Held` until it is lost or released).
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        let mut rx = self.state.subscribe();
        let (tx, out) = watch::channel(rx.borrow_and_update().status);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let status = rx.borrow_and_update().status;
                            if tx.send(status).is_err() || status != LeaseStatus::Held {
                                return;
                            }
                        }
                        () = tx.closed() => return,
                    }
                }
            });
        }
        out
    }

    /// Stops renewal and releases the lease; `Ok(true)` when it was still held (nobody else
    /// can have taken it in between), `Ok(false)` when it had already expired or been taken
    /// over, an error when the server could not be asked (the lease then expires at its TTL).
    ///
    /// A renewal in flight is let finish first (it is bounded by the lease's local deadline):
    /// cut off mid-call it could leave the lease's session unusable (a PostgreSQL advisory
    /// lock's connection is closed when its renewal is dropped), and the release would then
    /// answer `false` for a lease that was held.
    pub async fn release(mut self) -> StateResult<bool> {
        // The renewal task stops at its next pause once it sees `Released`.
        self.set_status(LeaseStatus::Released);
        if let Some(task) = self.renewal.take() {
            // If this future is dropped here, the guard's `Drop` still releases the lease in
            // the background (it is not taken out yet).
            let _ = task.await;
        }
        let lease = self.lease.take().expect("release consumes the guard");
        self.lock.release_lease(&lease).await
    }

    fn set_status(&self, status: LeaseStatus) {
        self.state.send_modify(|s| s.status = status);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.set_status(LeaseStatus::Released);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let lock = Arc::clone(&self.lock);
            rt.spawn(async move {
                match lock.release_lease(&lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        lock = %lock.name(),
                        "state-lock: dropped guard's lease had already expired"
                    ),
                    Err(err) => tracing::warn!(
                        lock = %lock.name(),
                        error = %err,
                        "state-lock: release on drop failed; the lease expires at its TTL"
                    ),
                }
            });
        } else {
            tracing::debug!(
                lock = %self.lock.name(),
                "state-lock: guard dropped outside a tokio runtime; the lease expires at its TTL"
            );
        }
    }
}

/// The renewal task: renews every `renew_interval`, retries failures quickly, and declares
/// the lease lost when a renewal is refused or none succeeds before the local deadline.
async fn renew(
    lock: Arc<dyn DistributedLock>,
    lease: Lease,
    ttl: Duration,
    state: Arc<watch::Sender<State>>,
    acquired: Instant,
) {
    let options = lock.options().clone();
    let interval = options.renew_interval(ttl);
    let valid_for = options.valid_for(ttl);
    let mut deadline = acquired + valid_for;
    let mut next = acquired + interval;
    let lose = |why: &str| {
        tracing::warn!(lock = %lock.name(), token = %lease.token(), reason = why, "state-lock: lease lost");
        state.send_modify(|s| {
            if s.status == LeaseStatus::Held {
                s.status = LeaseStatus::Lost;
            }
        });
    };
    let mut status = state.subscribe();
    loop {
        tokio::select! {
            biased;
            // Released: stop between renewals, never in the middle of one.
            _ = status.wait_for(|s| s.status == LeaseStatus::Released) => return,
            () = tokio::time::sleep_until(deadline) => {
                lose("no renewal succeeded before the local deadline");
                return;
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let call = tokio::time::timeout_at(deadline, lock.renew_lease(&lease, ttl)).await;
        match call {
            Ok(Ok(true)) => {
                deadline = sent + valid_for;
                next = sent + interval;
                state.send_modify(|s| s.valid_until = deadline);
            }
            Ok(Ok(false)) => {
                lose("the server refused the renewal (expired or taken over)");
                return;
            }
            Ok(Err(err)) => {
                tracing::debug!(lock = %lock.name(), error = %err, "state-lock: renewal failed; retrying");
                next = Instant::now() + (interval / 4).max(Duration::from_millis(1));
            }
            Err(_) => {
                lose("renewal did not answer before the local deadline");
                return;
            }
        }
    }
}
