//! The backend-independent part: [`DistributedLock`], [`Lease`], [`FencingToken`],
//! [`LockOptions`] and the seed's `with_lock`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use state_core::{ErrorKind, StateError, StateResult};
use tokio::time::Instant;

use crate::guard::LockGuard;

/// Longest lock name accepted, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 200;

/// A number that strictly increases with every acquisition of one lock name, across all
/// holders and server restarts (see the crate docs for the persistence each backend needs).
///
/// Pass it with every write the lock protects, and let the store refuse a write whose token
/// is lower than one it has already seen ([`crate::FencedWrite`]): that is what keeps a holder
/// that was paused past its lease from overwriting the work of the next holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a token value (as received from another process, for example).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a fenced write carries: the lock's name and the token the writer holds.
///
/// Get it from [`LockGuard::fence`], or build it with [`Fence::new`] when the token travels
/// to another process with the work it guards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    lock: String,
    token: FencingToken,
}

impl Fence {
    /// A fence for `lock` at `token`.
    pub fn new(lock: impl Into<String>, token: FencingToken) -> Self {
        Self {
            lock: lock.into(),
            token,
        }
    }

    /// The lock's name.
    pub fn lock(&self) -> &str {
        &self.lock
    }

    /// The fencing token.
    pub fn token(&self) -> FencingToken {
        self.token
    }
}

/// Backend state a lease keeps alive (for example the dedicated connection of a PostgreSQL
/// advisory lock); dropped with the lease.
pub type LeaseSession = Arc<dyn Any + Send + Sync>;

/// One acquisition of a lock: the random owner token that identifies the holder to the
/// server (release and renewal are refused for any other owner), the fencing token, and any
/// backend session the lease needs.
///
/// `Debug` shows only a prefix of the owner token: whoever knows it can release the lock.
#[derive(Clone)]
pub struct Lease {
    owner: String,
    token: FencingToken,
    session: Option<LeaseSession>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.owner.chars().take(8).collect();
        f.debug_struct("Lease")
            .field("owner", &format_args!("{shown}…"))
            .field("token", &self.token)
            .field("session", &self.session.is_some())
            .finish()
    }
}

impl Lease {
    /// A lease held by `owner` with fencing token `token`.
    pub fn new(owner: impl Into<String>, token: FencingToken) -> Self {
        Self {
            owner: owner.into(),
            token,
            session: None,
        }
    }

    /// Attaches backend state that must live exactly as long as the lease.
    #[must_use]
    pub fn with_session(mut self, session: LeaseSession) -> Self {
        self.session = Some(session);
        self
    }

    /// The owner token (random, 128 bits, unique per acquisition).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The backend session, if the backend attached one.
    pub fn session(&self) -> Option<&LeaseSession> {
        self.session.as_ref()
    }
}

/// A new random owner token: 128 bits from the thread's CSPRNG, as 32 hex digits.
pub fn new_owner_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// How a lock renews its lease, when a guard gives the lease up as lost, and how acquisition
/// polls. The defaults suit TTLs from about 100 ms to minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct LockOptions {
    renew_fraction: f64,
    drift_fraction: f64,
    retry_interval: Duration,
    op_timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            renew_fraction: 1.0 / 3.0,
            drift_fraction: 0.1,
            retry_interval: Duration::from_millis(50),
            op_timeout: Duration::from_secs(2),
        }
    }
}

impl LockOptions {
    /// Renew the lease every `fraction` of its TTL while held (default 1/3: a 30 s lease is
    /// renewed every 10 s, so two renewals can fail before the guard gives up). Between 0.05
    /// and 0.5.
    pub fn renew_fraction(mut self, fraction: f64) -> StateResult<Self> {
        if !(0.05..=0.5).contains(&fraction) {
            return Err(StateError::config(
                "renew_fraction must be between 0.05 and 0.5 of the TTL",
            ));
        }
        self.renew_fraction = fraction;
        self.check()
    }

    /// The share of the TTL kept as a margin for clock-rate drift and delivery delay (default
    /// 0.1): a guard reports its lease lost once `ttl * (1 - fraction)` has passed, on this
    /// process's monotonic clock, since the last renewal that succeeded was *sent*, so before
    /// the server can expire it. Between 0.01 and 0.5.
    pub fn drift_fraction(mut self, fraction: f64) -> StateResult<Self> {
        if !(0.01..=0.5).contains(&fraction) {
            return Err(StateError::config(
                "drift_fraction must be between 0.01 and 0.5 of the TTL",
            ));
        }
        self.drift_fraction = fraction;
        self.check()
    }

    /// How often `acquire` polls a lock held by someone else (default 50 ms, jittered by
    /// ±50% so waiters do not retry in lockstep).
    pub fn retry_interval(mut self, interval: Duration) -> StateResult<Self> {
        if interval.is_zero() {
            return Err(StateError::config(
                "retry_interval must be greater than zero",
            ));
        }
        self.retry_interval = interval;
        Ok(self)
    }

    /// Deadline of one lock operation against the server (default 2 s): past it the call
    /// fails with `OutcomeUnknown` (the server may still apply it; an acquisition that may
    /// have been granted is released in the background), never hangs. Renewal calls are also cut off at the
    /// guard's local deadline.
    pub fn op_timeout(mut self, timeout: Duration) -> StateResult<Self> {
        if timeout.is_zero() {
            return Err(StateError::config("op_timeout must be greater than zero"));
        }
        self.op_timeout = timeout;
        Ok(self)
    }

    fn check(self) -> StateResult<Self> {
        if self.renew_fraction + self.drift_fraction >= 0.9 {
            return Err(StateError::config(
                "renew_fraction + drift_fraction must stay below 0.9 of the TTL",
            ));
        }
        Ok(self)
    }

    /// The renewal period for `ttl`.
    pub fn renew_interval(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.renew_fraction)
            .max(Duration::from_micros(500))
    }

    /// How long after sending a successful acquire or renewal the guard still counts the
    /// lease as held.
    pub fn valid_for(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(1.0 - self.drift_fraction)
    }

    /// The acquisition poll interval.
    pub fn retry(&self) -> Duration {
        self.retry_interval
    }

    /// The per-operation deadline.
    pub fn timeout(&self) -> Duration {
        self.op_timeout
    }
}

/// Checks a lock name: 1 to [`MAX_LOCK_NAME_LEN`] bytes, no control characters, and no `{`
/// or `}` (they would change which Redis Cluster slot the lock's keys hash to).
pub fn check_name(name: &str) -> StateResult<()> {
    if name.is_empty() {
        return Err(StateError::invalid_input("lock name must not be empty"));
    }
    if name.len() > MAX_LOCK_NAME_LEN {
        return Err(StateError::invalid_input(format!(
            "lock name is {} bytes, over the limit of {MAX_LOCK_NAME_LEN}",
            name.len()
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '{' || c == '}') {
        return Err(StateError::invalid_input(
            "lock name must not contain control characters, `{` or `}`",
        ));
    }
    Ok(())
}

/// Checks a lease TTL: at least 1 ms (the resolution both servers keep), at most a year.
pub fn check_ttl(ttl: Duration) -> StateResult<()> {
    if ttl < Duration::from_millis(1) {
        return Err(StateError::invalid_input(
            "lock ttl must be at least 1 millisecond",
        ));
    }
    if ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err(StateError::invalid_input("lock ttl must be at most a year"));
    }
    Ok(())
}

/// An acquisition in flight. If it ends without a definite answer (a timeout, an error, or
/// the caller dropping the future) the server may still have granted it to an owner nobody
/// knows; dropping the attempt then releases by that owner in the background (best effort,
/// retried a few times, only with a tokio runtime at hand), so the lock is not blocked for a
/// whole TTL.
pub(crate) struct Attempt {
    core: Option<Arc<dyn DistributedLock>>,
    owner: String,
}

impl Attempt {
    pub(crate) fn new(core: Arc<dyn DistributedLock>, owner: &str) -> Self {
        Self {
            core: Some(core),
            owner: owner.to_owned(),
        }
    }

    /// The server answered: nothing to clean up.
    pub(crate) fn settled(mut self) {
        self.core = None;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lease = Lease::new(std::mem::take(&mut self.owner), FencingToken::new(0));
            runtime.spawn(async move {
                // Owner-checked, so sending it again is harmless (its answer is ignored): a
                // release that failed (the connection that lost the acquisition's reply may
                // still be reconnecting) is tried again, five times in about 1.5 s.
                for attempt in 0..5u32 {
                    if core.release_lease(&lease).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
            });
        }
    }
}

/// Runs `fut` under `timeout`, mapping the deadline to a retryable `Timeout` for `"connect"`
/// and to `OutcomeUnknown` for the lease calls (acquire, renew, release), which may have been
/// applied by the server after the deadline.
pub(crate) async fn within<T>(
    timeout: Duration,
    op: &'static str,
    fut: impl Future<Output = StateResult<T>>,
) -> StateResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(|e| e.with_operation(op)),
        // Connecting changes nothing; a lease call that was sent may have been applied.
        Err(_) if op == "connect" => Err(StateError::timeout(format!(
            "the lock server did not answer within {timeout:?}"
        ))
        .with_operation(op)),
        Err(_) => Err(StateError::outcome_unknown(format!(
            "the lock server did not answer within {timeout:?}; the call may or may not have \
             been applied"
        ))
        .with_operation(op)),
    }
}

/// A distributed lock: one name on one lock server, acquired as a lease with a TTL.
///
/// Backends implement the three lease operations; everything else (guards with automatic
/// renewal, waiting, timeouts) is provided on top. The trait is object safe: hold locks as
/// `Arc<dyn DistributedLock>` and swap Redis for PostgreSQL in one line.
///
/// # Cancellation
///
/// Dropping an acquisition (`try_lease`, `try_acquire`, `acquire`, `acquire_timeout`) before
/// it answered never leaves the lock held by an owner nobody knows: a grant that may have
/// happened is released in the background (or, for a session lock, its connection is
/// closed). Dropping [`LockGuard::release`] before it answered still releases: the guard's
/// drop does it in the background. Without a tokio runtime at hand, the lease expires at its
/// TTL. `state_testkit::lock_suite!` checks both at every poll and at deadlines over the
/// round trip, for every lock this crate ships.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use state_lock::{DistributedLock, RedisLock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let lock: Arc<dyn DistributedLock> =
///     Arc::new(RedisLock::new("redis://localhost:6379", "reindex").await?);
/// let guard = lock.acquire_timeout(Duration::from_secs(10), Duration::from_secs(5)).await?;
/// println!("holding {} with fencing token {}", guard.name(), guard.token());
/// assert!(guard.release().await?, "still held when released");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait DistributedLock: Send + Sync + fmt::Debug {
    /// The lock's name.
    fn name(&self) -> &str;

    /// Renewal, loss detection and polling settings.
    fn options(&self) -> &LockOptions;

    /// A shared handle to this lock, kept by guards to renew and release their lease.
    fn shared(&self) -> Arc<dyn DistributedLock>;

    /// One attempt to take the lease for `ttl`: `Some(lease)` with a new fencing token when
    /// it was free (or expired), `None` when another owner holds it.
    async fn try_lease(&self, ttl: Duration) -> StateResult<Option<Lease>>;

    /// Extends `lease` to `ttl` from now; `false` when it is no longer held by its owner
    /// (expired or taken over), in which case nothing changes.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StateResult<bool>;

    /// Releases `lease`; `true` when it was still held by its owner. Never releases a lease
    /// of another owner.
    async fn release_lease(&self, lease: &Lease) -> StateResult<bool>;

    /// One attempt to acquire: a guard (renewed automatically, released on drop) when the
    /// lock was free, `None` when someone else holds it.
    async fn try_acquire(&self, ttl: Duration) -> StateResult<Option<LockGuard>> {
        check_ttl(ttl)?;
        // Measured from before the request is sent: the lease cannot have started earlier.
        let sent = Instant::now();
        let lease = self.try_lease(ttl).await?;
        Ok(lease.map(|lease| LockGuard::start(self.shared(), lease, ttl, sent)))
    }

    /// Waits until the lock is free and acquires it. Server errors (unreachable server,
    /// timeout) are returned at once; use [`DistributedLock::acquire_timeout`] to bound the
    /// wait for other holders.
    async fn acquire(&self, ttl: Duration) -> StateResult<LockGuard> {
        loop {
            if let Some(guard) = self.try_acquire(ttl).await? {
                return Ok(guard);
            }
            tokio::time::sleep(jittered(self.options().retry())).await;
        }
    }

    /// Like [`DistributedLock::acquire`], giving up after `wait` with a retryable `Timeout`.
    async fn acquire_timeout(&self, ttl: Duration, wait: Duration) -> StateResult<LockGuard> {
        check_ttl(ttl)?;
        // A wait too long to represent is as good as forever.
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.try_acquire(ttl)).await;
            match attempt {
                Ok(Ok(Some(guard))) => return Ok(guard),
                Ok(Ok(None)) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => break,
            }
            let pause = jittered(self.options().retry());
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Err(StateError::timeout(format!(
            "lock `{}` still held by another owner after {wait:?}",
            self.name()
        ))
        .with_operation("acquire"))
    }
}

/// `interval` scaled by a random factor in [0.5, 1.5).
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.5 + rand::random::<f64>())
}

/// The seed's `with_lock`: waits for the lock, runs `f`, and releases the lock whether `f`
/// succeeds, fails or panics (the panic is resumed after the release).
///
/// If the guard detects that the lease was lost while `f` runs (renewal failed), `f` is
/// dropped at its next `.await` and the call fails with `ConditionNotMatch`: the critical
/// section must not go on without the lock. It also fails with `ConditionNotMatch`, after
/// `f` returned, when the lease's local deadline passed before `f` finished (a stall that
/// kept the renewal from running) or the release found the lease expired or taken over:
/// another holder may have run meanwhile. Writes `f` already made are protected only by
/// fencing ([`crate::FencedWrite`]).
///
/// `f` may return any error type that a [`StateError`] converts into (`anyhow::Error`, an
/// application error with a `From<StateError>` impl, or `StateError` itself), as in the
/// seed's `lock.with_lock(ttl, || async { Ok::<_, anyhow::Error>(42) })`; the lock's own
/// failures (acquire, loss) arrive converted.
pub async fn with_lock<L, T, E, F, Fut>(lock: &L, ttl: Duration, f: F) -> Result<T, E>
where
    L: DistributedLock + ?Sized,
    E: From<StateError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let guard = lock.acquire(ttl).await.map_err(E::from)?;
    let lost = guard.lost();
    let work = AssertUnwindSafe(f()).catch_unwind();
    let outcome = tokio::select! {
        biased;
        outcome = work => Some(outcome),
        () = lost => None,
    };
    let name = guard.name().to_owned();
    // Held until the end? The local deadline says so even when the critical section
    // stalled the runtime (so the renewal could not run and `lost` could not fire).
    let held_throughout = guard.is_held();
    let released = guard.release().await;
    let lost = || {
        StateError::new(
            ErrorKind::ConditionNotMatch,
            format!("lock `{name}` was lost while the critical section ran"),
        )
        .with_operation("with_lock")
    };
    match outcome {
        Some(Ok(result)) => {
            match released {
                Ok(true) if held_throughout => {}
                Err(err) if held_throughout => tracing::warn!(
                    lock = %name,
                    error = %err,
                    "state-lock: release after with_lock failed; the lease will expire at its TTL"
                ),
                // Expired or taken over before the release (or past the local deadline):
                // another holder may have run.
                _ => return Err(lost().into()),
            }
            result
        }
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => Err(lost().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("jobs/reindex:42").is_ok());
        for bad in ["", "a{b", "a}b", "tab\there"] {
            assert_eq!(
                check_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_LOCK_NAME_LEN + 1);
        assert_eq!(
            check_name(&long).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn ttls_are_checked() {
        assert!(check_ttl(Duration::from_millis(1)).is_ok());
        assert_eq!(
            check_ttl(Duration::from_micros(999)).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(check_ttl(Duration::from_secs(400 * 24 * 3600)).is_err());
    }

    #[test]
    fn options_are_checked() {
        let o = LockOptions::default();
        assert_eq!(
            o.renew_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(o.valid_for(Duration::from_secs(10)), Duration::from_secs(9));
        assert!(o.clone().renew_fraction(0.9).is_err());
        assert!(o.clone().drift_fraction(0.0).is_err());
        assert!(
            o.clone()
                .renew_fraction(0.5)
                .unwrap()
                .drift_fraction(0.45)
                .is_err()
        );
        assert!(o.clone().retry_interval(Duration::ZERO).is_err());
        assert!(o.op_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn owner_tokens_are_unique_and_hidden_in_debug() {
        let a = new_owner_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_owner_token());
        let lease = Lease::new(a.clone(), FencingToken::new(7));
        let shown = format!("{lease:?}");
        assert!(!shown.contains(&a), "{shown}");
        assert!(shown.contains('7'));
    }
}
