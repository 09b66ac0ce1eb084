//! The cases of [`lock_suite!`](crate::lock_suite), one function per generated test. Each
//! documents its contract; every case works on lock names of its own, so cases run in
//! parallel against one server.
//!
//! Knobs (environment): `STATE_LOCK_SUITE_ROUNDS` (acquisitions per task in the
//! mutual-exclusion case, default 4).

use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use crate::{
    DistributedLock, LeaderElection, Lease, LeaseStatus, LockGuard, LockOptions, new_owner_token,
};
use state_core::{ErrorKind, StateError, StateResult};

use crate::testing::LockFactory;
use state_testkit::lock_history::{self, Hold};
use state_testkit::unique_namespace;

/// Environment variable that makes a re-run test binary act as the second process of the
/// mutual-exclusion case: `<test path>|<lock name>`.
pub const CHILD_ENV: &str = "STATE_LOCK_SUITE_CHILD";

const TASKS_PER_PROCESS: usize = 16;
/// Handles per process: each is shared by `TASKS_PER_PROCESS / HANDLES` tasks (every
/// acquisition is its own lease with its own owner, whatever handle it goes through).
const HANDLES_PER_PROCESS: usize = 4;
/// How long a cancelled acquisition or release may keep the lock from others (its lease is
/// released in the background); the leases in those cases last much longer (5 s).
const RELEASED_SOON: Duration = Duration::from_millis(1500);

/// The libtest name of a generated test, from the `module_path!()` at its definition (whose
/// first segment is the crate) and its function name.
#[doc(hidden)]
pub fn test_path(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    }
}

fn options() -> LockOptions {
    LockOptions::default()
        .retry_interval(Duration::from_millis(10))
        .expect("a valid retry interval")
}

fn unique(tag: &str) -> String {
    format!("suite-{tag}-{}", unique_namespace())
}

async fn open(factory: &dyn LockFactory, name: &str) -> Arc<dyn DistributedLock> {
    open_with(factory, name, options()).await
}

async fn open_with(
    factory: &dyn LockFactory,
    name: &str,
    options: LockOptions,
) -> Arc<dyn DistributedLock> {
    factory
        .lock(name, options)
        .await
        .unwrap_or_else(|err| panic!("the factory could not open lock {name}: {err:?}"))
}

async fn lease(lock: &dyn DistributedLock, ttl: Duration) -> Lease {
    lock.try_lease(ttl)
        .await
        .expect("try_lease")
        .expect("the lock is free")
}

/// Polls `lock.try_acquire` until it answers a guard, releases it, and returns how long that
/// took; panics past `within`.
async fn free_within(lock: &dyn DistributedLock, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(guard) = lock
            .try_acquire(Duration::from_secs(5))
            .await
            .unwrap_or_else(|err| panic!("{what}: try_acquire failed: {err:?}"))
        {
            assert!(guard.release().await.expect("release"), "{what}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: the lock was still held by nobody known after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A future polled at most `polls` times: `Some(output)` when it finished, `None` right after
/// its last allowed poll answered `Pending` (then the caller drops it, mid-way).
struct Budget<F: Future> {
    inner: Pin<Box<F>>,
    polls: usize,
}

fn budget<F: Future>(polls: usize, inner: F) -> Budget<F> {
    Budget {
        inner: Box::pin(inner),
        polls,
    }
}

impl<F: Future> Future for Budget<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending if self.polls == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Deadlines at which the timed cancellation cases drop a call: spread over the first
/// round trips, where a request is sent and its reply not yet read.
const DEADLINES_US: [u64; 14] = [
    0, 20, 50, 100, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 8_000,
];

/// A lock is exclusive and not re-entrant: while one acquisition holds it, `try_acquire`
/// through the same handle and through another answers `None`; after the release the other
/// handle gets it.
pub async fn try_acquire_is_exclusive_and_not_reentrant(factory: &dyn LockFactory) {
    let name = unique("exclusive");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_secs(5);
    let ga = a.try_acquire(ttl).await.unwrap().expect("a free lock");
    assert!(
        a.try_acquire(ttl).await.unwrap().is_none(),
        "not re-entrant"
    );
    assert!(b.try_acquire(ttl).await.unwrap().is_none(), "exclusive");
    assert!(b.try_lease(ttl).await.unwrap().is_none(), "exclusive lease");
    assert!(ga.is_held());
    assert_eq!(ga.status(), LeaseStatus::Held);
    assert_eq!(ga.name(), name);
    assert!(ga.release().await.unwrap(), "held until released");
    let gb = b
        .try_acquire(ttl)
        .await
        .unwrap()
        .expect("free after release");
    assert!(gb.release().await.unwrap());
}

/// Fencing tokens strictly increase with every acquisition, whichever handle takes it and
/// whether through a guard or a raw lease.
pub async fn tokens_strictly_increase_across_handles(factory: &dyn LockFactory) {
    let name = unique("tokens");
    let locks = [
        open(factory, &name).await,
        open(factory, &name).await,
        open(factory, &name).await,
    ];
    let ttl = Duration::from_secs(5);
    let mut last = 0;
    for i in 0..12 {
        let lock = &locks[i % 3];
        let token = if i % 2 == 0 {
            let guard = lock.acquire(ttl).await.unwrap();
            let token = guard.token();
            assert_eq!(guard.fence().token(), token);
            assert!(guard.release().await.unwrap());
            token
        } else {
            let lease = lease(lock.as_ref(), ttl).await;
            assert!(lock.release_lease(&lease).await.unwrap());
            lease.token()
        };
        assert!(token.get() > last, "token {token} after {last}");
        last = token.get();
    }
}

/// `with_lock` runs the closure under the lock and releases after success, error and panic
/// (the panic resumes in the caller).
pub async fn with_lock_releases_after_success_error_and_panic(factory: &dyn LockFactory) {
    let name = unique("with");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_secs(5);
    let b2 = Arc::clone(&b);
    let v = crate::with_lock(a.as_ref(), ttl, || async move {
        assert!(
            b2.try_acquire(ttl).await.unwrap().is_none(),
            "held while the closure runs"
        );
        Ok::<_, StateError>(7)
    })
    .await
    .unwrap();
    assert_eq!(v, 7);
    let free = || async {
        b.try_acquire(ttl)
            .await
            .unwrap()
            .expect("released")
            .release()
            .await
            .unwrap();
    };
    free().await;
    let err = crate::with_lock(a.as_ref(), ttl, || async {
        Err::<(), _>(StateError::invalid_input("boom"))
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    free().await;
    let a2 = Arc::clone(&a);
    let panicked = tokio::spawn(async move {
        crate::with_lock(a2.as_ref(), ttl, || async {
            assert!(ttl.is_zero(), "the critical section panics");
            Ok::<_, StateError>(())
        })
        .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    free().await;
}

/// A guard renews its lease: held four TTLs long while another handle is refused, with its
/// local deadline moving on. A raw lease renewed before its TTL is held past the original
/// TTL.
pub async fn renewed_lease_is_held_past_its_ttl(factory: &dyn LockFactory) {
    let name = unique("renew");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let guard = a.acquire(ttl).await.unwrap();
    while started.elapsed() < ttl * 4 {
        assert!(b.try_acquire(ttl).await.unwrap().is_none(), "renewed");
        assert!(guard.is_held());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        guard.valid_until() > started + ttl * 3,
        "the local deadline moves with the renewals"
    );
    assert!(guard.release().await.unwrap());

    let lease = lease(a.as_ref(), ttl).await;
    tokio::time::sleep(ttl * 2 / 3).await;
    assert!(a.renew_lease(&lease, ttl).await.unwrap(), "renewed in time");
    tokio::time::sleep(ttl * 2 / 3).await;
    // 400 ms after a 300 ms lease was taken: held thanks to the renewal.
    assert!(
        b.try_lease(ttl).await.unwrap().is_none(),
        "held past the original TTL"
    );
    assert!(a.release_lease(&lease).await.unwrap());
}

/// Renewing (or releasing) a lease that expired or was taken away fails, and changes
/// nothing for the next holder.
pub async fn renewal_after_expiry_or_revocation_fails(factory: &dyn LockFactory) {
    let name = unique("renew-lost");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    if factory.leases_expire() {
        let ttl = Duration::from_millis(150);
        let old = lease(a.as_ref(), ttl).await;
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert!(!a.renew_lease(&old, ttl).await.unwrap(), "renewed expired");
        let next = lease(b.as_ref(), Duration::from_secs(5)).await;
        assert!(next.token() > old.token());
        assert!(!a.renew_lease(&old, ttl).await.unwrap(), "renewed taken");
        assert!(!a.release_lease(&old).await.unwrap(), "released taken");
        assert!(b.release_lease(&next).await.unwrap(), "still the holder");
    }
    let old = lease(a.as_ref(), Duration::from_secs(5)).await;
    factory.revoke(&name).await.expect("revoke");
    let renewed = a.renew_lease(&old, Duration::from_secs(5)).await;
    assert!(
        !matches!(renewed, Ok(true)),
        "renewed a revoked lease: {renewed:?}"
    );
    let next = lease(b.as_ref(), Duration::from_secs(5)).await;
    assert!(next.token() > old.token());
    let released = a.release_lease(&old).await;
    assert!(
        !matches!(released, Ok(true)),
        "released a revoked lease: {released:?}"
    );
    assert!(b.release_lease(&next).await.unwrap(), "still the holder");
}

/// A lease nobody renews: with server-side expiry, another holder cannot take it before its
/// TTL and can right after, with a higher token. A session-bound lock stays held however
/// long it goes unrenewed, and is free as soon as the lease (its session) is dropped.
pub async fn unrenewed_lease_expires_at_ttl_unless_session_bound(factory: &dyn LockFactory) {
    let name = unique("expiry");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_millis(300);
    let sent = Instant::now();
    let old = lease(a.as_ref(), ttl).await;
    let refused_until = if factory.leases_expire() {
        ttl.mul_f64(0.9)
    } else {
        ttl * 3
    };
    while sent.elapsed() < refused_until {
        assert!(
            b.try_lease(ttl).await.unwrap().is_none(),
            "taken {:?} into a {ttl:?} lease",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !factory.leases_expire() {
        drop(old);
        free_within(b.as_ref(), Duration::from_secs(2), "dropped session").await;
        return;
    }
    let next = loop {
        if let Some(next) = b.try_lease(Duration::from_secs(5)).await.unwrap() {
            break next;
        }
        assert!(
            sent.elapsed() < ttl + Duration::from_millis(500),
            "not expired {:?} into a {ttl:?} lease",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(sent.elapsed() >= ttl.mul_f64(0.9), "{:?}", sent.elapsed());
    assert!(next.token() > old.token());
    assert!(!a.renew_lease(&old, ttl).await.unwrap());
    assert!(!a.release_lease(&old).await.unwrap());
    assert!(b.release_lease(&next).await.unwrap());
}

/// A lease taken away on the server is reported by its guard before the TTL is over
/// (`lost()` resolves, `status()` is `Lost`, `is_held()` false, `watch()` says `Lost`), its
/// release answers `false`, and another holder gets the lock. `with_lock` whose lease is
/// taken away mid-section stops the section and fails with `ConditionNotMatch`.
pub async fn revoked_lease_is_reported_lost_by_guard_and_with_lock(factory: &dyn LockFactory) {
    let name = unique("revoked");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_millis(600);
    let guard = a.acquire(ttl).await.unwrap();
    let mut watch = guard.watch();
    factory.revoke(&name).await.expect("revoke");
    let revoked = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the guard never reported the loss");
    assert!(
        revoked.elapsed() < ttl,
        "loss reported after {:?}",
        revoked.elapsed()
    );
    watch.wait_for(|s| *s == LeaseStatus::Lost).await.unwrap();
    assert_eq!(guard.status(), LeaseStatus::Lost);
    assert!(!guard.is_held());
    free_within(b.as_ref(), Duration::from_secs(2), "revoked lease").await;
    let released = guard.release().await;
    assert!(
        !matches!(released, Ok(true)),
        "a lost guard's release claimed it held the lock: {released:?}"
    );

    let started = Instant::now();
    let err = crate::with_lock(a.as_ref(), ttl, || async {
        factory.revoke(&name).await.expect("revoke");
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, StateError>(())
    })
    .await
    .expect_err("with_lock succeeded on a revoked lease");
    assert_eq!(err.kind(), ErrorKind::ConditionNotMatch, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the section was not stopped: {:?}",
        started.elapsed()
    );
    free_within(b.as_ref(), Duration::from_secs(2), "after with_lock").await;
}

/// A lease with another owner token (forged, or a stale copy) neither releases nor renews
/// the lock: answered `false` or refused as `InvalidInput`, and the holder keeps it.
pub async fn forged_lease_neither_releases_nor_renews(factory: &dyn LockFactory) {
    let name = unique("forged");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_secs(5);
    let guard = a.acquire(ttl).await.unwrap();
    let forged = Lease::new(new_owner_token(), guard.token());
    let refused = |r: StateResult<bool>| match r {
        Ok(false) => {}
        Err(err) if err.kind() == ErrorKind::InvalidInput => {}
        other => panic!("a forged lease was accepted: {other:?}"),
    };
    refused(b.release_lease(&forged).await);
    refused(b.renew_lease(&forged, ttl).await);
    refused(a.release_lease(&forged).await);
    assert!(b.try_acquire(ttl).await.unwrap().is_none(), "still held");
    assert!(guard.is_held());
    assert!(guard.release().await.unwrap());
}

/// Dropping a guard inside a runtime releases it in the background (the next holder gets
/// the lock well before the TTL); dropping one on a thread without a runtime does not panic,
/// and the lock is free at the latest when the TTL is over.
pub async fn dropped_guard_is_released_in_background_or_expires(factory: &dyn LockFactory) {
    let name = unique("drop");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_millis(800);
    drop(a.acquire(ttl).await.unwrap());
    free_within(
        b.as_ref(),
        Duration::from_millis(500),
        "dropped in a runtime",
    )
    .await;
    let guard = a.acquire(ttl).await.unwrap();
    let dropped = Instant::now();
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("drop outside a runtime does not panic");
    free_within(
        b.as_ref(),
        ttl + Duration::from_millis(500),
        "dropped outside a runtime",
    )
    .await;
    assert!(dropped.elapsed() <= ttl + Duration::from_millis(600));
}

/// A release racing the guard's own renewal (released at instants swept across the
/// renewal's round trip) answers `true`, since the lease was held until it was released,
/// and the next holder gets the lock at once.
pub async fn release_racing_a_renewal_answers_held(factory: &dyn LockFactory) {
    let name = unique("release-race");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_millis(150);
    let interval = a.options().renew_interval(ttl);
    let mut tries = 0;
    // Sweep 0..3 ms past the first renewal, in 200 us steps.
    for step in 0..15u32 {
        let sent = tokio::time::Instant::now();
        let guard = a.acquire(ttl).await.unwrap();
        let at = sent + interval + Duration::from_micros(200) * step;
        tokio::time::sleep_until(at - Duration::from_millis(2)).await;
        while tokio::time::Instant::now() < at {
            tokio::task::yield_now().await;
        }
        assert!(guard.is_held(), "lost before its first renewal was due");
        let released = guard.release().await;
        tries += 1;
        assert!(
            matches!(released, Ok(true)),
            "a release {:?} after the acquire, as the renewal ran, answered {released:?}",
            sent.elapsed()
        );
        free_within(b.as_ref(), Duration::from_millis(300), "after a release").await;
    }
    assert_eq!(tries, 15);
}

/// TTLs under 1 ms or over a year are `InvalidInput` (not retryable) on every call that
/// takes one, before anything is sent.
pub async fn invalid_ttl_is_invalid_input(factory: &dyn LockFactory) {
    let name = unique("bad-ttl");
    let a = open(factory, &name).await;
    let invalid = |r: StateResult<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err:?}");
        assert!(!err.is_retryable(), "{what}");
    };
    let year = Duration::from_secs(367 * 24 * 3600);
    invalid(
        a.try_acquire(Duration::from_micros(10)).await.map(drop),
        "try_acquire 10 us",
    );
    invalid(a.acquire(Duration::ZERO).await.map(drop), "acquire 0");
    invalid(
        a.acquire_timeout(year, Duration::from_secs(1))
            .await
            .map(drop),
        "acquire_timeout over a year",
    );
    invalid(a.try_lease(Duration::ZERO).await.map(drop), "try_lease 0");
    let held = lease(a.as_ref(), Duration::from_secs(5)).await;
    invalid(
        a.renew_lease(&held, Duration::ZERO).await.map(drop),
        "renew_lease 0",
    );
    invalid(
        a.renew_lease(&held, year).await.map(drop),
        "renew_lease over a year",
    );
    assert!(a.release_lease(&held).await.unwrap(), "still held");
}

/// An acquisition dropped mid-way (after k polls, for every k until it completes, and at
/// deadlines over its first round trips) never leaves the lock held by nobody known: the
/// next holder gets it well before the 5 s lease would end (a grant that may have happened
/// is released in the background). A waiter dropped while another holds the lock takes
/// nothing.
pub async fn cancelled_acquire_leaves_lock_free_or_released_soon(factory: &dyn LockFactory) {
    let name = unique("cancel-acquire");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_secs(5);
    let mut points = 0;
    let mut slowest = Duration::ZERO;
    for polls in 0.. {
        assert!(polls < 1_000, "acquire never completed");
        let outcome = budget(polls, a.acquire(ttl)).await;
        points += 1;
        if let Some(guard) = outcome {
            assert!(guard.unwrap().release().await.unwrap());
            break;
        }
        let what = format!("acquire dropped after {polls} polls");
        slowest = slowest.max(free_within(b.as_ref(), RELEASED_SOON, &what).await);
    }
    let by_polls = points;
    for us in DEADLINES_US {
        let outcome = tokio::time::timeout(Duration::from_micros(us), a.acquire(ttl)).await;
        points += 1;
        if let Ok(guard) = outcome {
            assert!(guard.unwrap().release().await.unwrap());
            continue;
        }
        let what = format!("acquire dropped after {us} us");
        slowest = slowest.max(free_within(b.as_ref(), RELEASED_SOON, &what).await);
    }
    // Contended: `b` holds; waiters dropped at several points take nothing.
    let held = b.acquire(ttl).await.unwrap();
    for polls in 0..4 {
        assert!(budget(polls, a.acquire(ttl)).await.is_none(), "held by b");
        points += 1;
    }
    for ms in [1, 5, 15, 40] {
        let outcome = tokio::time::timeout(Duration::from_millis(ms), a.acquire(ttl)).await;
        assert!(outcome.is_err(), "held by b");
        points += 1;
    }
    assert!(held.release().await.unwrap());
    free_within(
        a.as_ref(),
        Duration::from_millis(300),
        "dropped waiters took the lock",
    )
    .await;
    println!(
        "LOCK SUITE cancelled acquire: {points} cancellation points ({by_polls} by poll count, \
         {} deadlines, 8 while contended); slowest release after a drop {slowest:?}",
        DEADLINES_US.len()
    );
}

/// A release dropped mid-way (after k polls, for every k until it completes, and at
/// deadlines over its round trip) leaves the lock released: at once, or in the background
/// well before the 5 s lease would end.
pub async fn cancelled_release_leaves_lock_released_soon(factory: &dyn LockFactory) {
    let name = unique("cancel-release");
    let a = open(factory, &name).await;
    let b = open(factory, &name).await;
    let ttl = Duration::from_secs(5);
    let mut points = 0;
    let mut slowest = Duration::ZERO;
    for polls in 0.. {
        assert!(polls < 1_000, "release never completed");
        let guard = a.acquire(ttl).await.unwrap();
        let outcome = budget(polls, guard.release()).await;
        points += 1;
        if let Some(released) = outcome {
            assert!(released.unwrap(), "held until released");
            break;
        }
        let what = format!("release dropped after {polls} polls");
        slowest = slowest.max(free_within(b.as_ref(), RELEASED_SOON, &what).await);
    }
    let by_polls = points;
    for us in DEADLINES_US {
        let guard = a.acquire(ttl).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_micros(us), guard.release()).await;
        points += 1;
        if let Ok(released) = outcome {
            assert!(released.unwrap(), "held until released");
        }
        let what = format!("release dropped after {us} us");
        slowest = slowest.max(free_within(b.as_ref(), RELEASED_SOON, &what).await);
    }
    println!(
        "LOCK SUITE cancelled release: {points} cancellation points ({by_polls} by poll count, \
         {} deadlines); slowest release after a drop {slowest:?}",
        DEADLINES_US.len()
    );
}

/// Leader election on the lock: one leader at a time; after a step-down the other candidate
/// leads within a poll interval, and after the leader's runtime dies (no release) within the
/// TTL plus a poll, each with a higher fencing token.
pub async fn leader_handover_is_bounded_after_step_down_and_crash(factory: &dyn LockFactory) {
    let ttl = Duration::from_secs(1);
    let retry = Duration::from_millis(10);
    let name = unique("leader");
    let a = LeaderElection::start(open(factory, &name).await, ttl).unwrap();
    let token_a = tokio::time::timeout(Duration::from_secs(5), a.wait_for_leadership())
        .await
        .unwrap()
        .unwrap();
    let b = LeaderElection::start(open(factory, &name).await, ttl).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!b.is_leader(), "one leader at a time");
    let started = Instant::now();
    a.step_down().await.unwrap();
    let token_b = tokio::time::timeout(Duration::from_secs(5), b.wait_for_leadership())
        .await
        .unwrap()
        .unwrap();
    let graceful = started.elapsed();
    assert!(token_b > token_a);
    assert!(
        graceful < retry.mul_f64(1.5) + Duration::from_millis(300),
        "{graceful:?}"
    );

    // c leads, then its runtime dies without releasing.
    b.step_down().await.unwrap();
    let (lead_tx, lead_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let dying = {
        let lock = open(factory, &name).await;
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            // The lock's connections live on the main runtime; what dies here is the
            // campaign and its renewal, as when a process freezes for good.
            let election = rt.block_on(async move {
                let c = LeaderElection::start(lock, ttl).unwrap();
                let token = c.wait_for_leadership().await.unwrap();
                lead_tx.send(token).unwrap();
                c
            });
            die_rx.recv().unwrap();
            rt.shutdown_background();
            std::mem::forget(election);
        })
    };
    let token_c = tokio::task::spawn_blocking(move || lead_rx.recv().unwrap())
        .await
        .unwrap();
    assert!(token_c > token_b);
    let d = LeaderElection::start(open(factory, &name).await, ttl).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!d.is_leader(), "c leads");
    let started = Instant::now();
    die_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || dying.join().unwrap())
        .await
        .unwrap();
    let token_d = tokio::time::timeout(Duration::from_secs(10), d.wait_for_leadership())
        .await
        .unwrap()
        .unwrap();
    let crashed = started.elapsed();
    assert!(token_d > token_c);
    if factory.leases_expire() {
        assert!(
            crashed <= ttl + retry.mul_f64(1.5) + Duration::from_millis(300),
            "{crashed:?}"
        );
    }
    println!(
        "LOCK SUITE leader handover: after step-down {graceful:?}, after a crash {crashed:?} \
         (ttl {ttl:?})"
    );
    d.step_down().await.unwrap();
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A holder whose whole runtime stalls past the TTL (no renewal can run, as in a long GC or
/// VM pause) sees its lease lost as soon as it resumes: `is_held()` false, `status()` `Lost`,
/// `lost()` resolved; a lease the server expired answers its release with `false`. The same
/// stall inside `with_lock`, while another holder takes the lock, fails with
/// `ConditionNotMatch` even though the section ends with an `.await`.
pub fn stalled_holder_sees_lease_lost_and_with_lock_fails(factory: &Arc<dyn LockFactory>) {
    let name = unique("stall");
    let ttl = Duration::from_millis(300);
    let expires = factory.leases_expire();
    current_thread().block_on(async {
        let lock = open(factory.as_ref(), &name).await;
        let guard = lock.acquire(ttl).await.unwrap();
        std::thread::sleep(ttl * 2);
        assert!(!guard.is_held(), "held after a stall of two TTLs");
        assert_eq!(guard.status(), LeaseStatus::Lost);
        tokio::time::timeout(Duration::from_millis(1), guard.lost())
            .await
            .expect("lost() resolves at once");
        let released = guard.release().await.unwrap();
        if expires {
            assert!(!released, "released a lease the server expired");
        }
    });

    let (acquired_tx, acquired_rx) = std::sync::mpsc::channel();
    let rival = {
        let factory = Arc::clone(factory);
        let name = name.clone();
        std::thread::spawn(move || {
            current_thread().block_on(async {
                let lock = open(factory.as_ref(), &name).await;
                acquired_rx.recv().unwrap();
                let guard = lock
                    .acquire_timeout(Duration::from_secs(5), Duration::from_secs(10))
                    .await
                    .unwrap();
                let took = SystemTime::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(guard.release().await.unwrap());
                took
            })
        })
    };
    let (result, stall_ended) = current_thread().block_on(async {
        let lock = open(factory.as_ref(), &name).await;
        let mut stall_ended = None;
        let ended = &mut stall_ended;
        let result = crate::with_lock(lock.as_ref(), ttl, move || async move {
            acquired_tx.send(()).unwrap();
            // A stall of the whole runtime: no renewal, no timer fires.
            std::thread::sleep(ttl * 2);
            *ended = Some(SystemTime::now());
            tokio::task::yield_now().await;
            Ok::<_, StateError>(42)
        })
        .await;
        (result, stall_ended)
    });
    let took = rival.join().expect("the rival");
    if expires {
        assert!(
            stall_ended.is_some_and(|ended| took < ended),
            "the rival did not take the expired lease during the stall"
        );
    }
    let err = result.expect_err("with_lock reported success for a lost lease");
    assert_eq!(err.kind(), ErrorKind::ConditionNotMatch, "{err}");
}

fn rounds() -> usize {
    std::env::var("STATE_LOCK_SUITE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4)
}

/// What one task of the mutual-exclusion case does in a round.
#[derive(Clone, Copy)]
enum Style {
    /// A guard, a short critical section, `release()`.
    Release,
    /// A guard, dropped (released in the background).
    Drop,
    /// A guard held across several renewals (a short TTL, a section longer than it).
    Renewed,
    /// A raw lease with a short TTL, held past it without renewal: the holder believes it
    /// only until its local deadline (`sent + valid_for(ttl)`), and the lock may pass on.
    Lapsed,
}

fn style(task: usize, round: usize) -> Style {
    match (task, round) {
        (0, 0 | 1) => Style::Lapsed,
        (1, 0) => Style::Renewed,
        (_, r) if (task + r) % 3 == 0 => Style::Drop,
        _ => Style::Release,
    }
}

/// Takes the lock once in `style` and records the hold.
///
/// A release of a lease the holder saw held that answers anything but `true` is returned as
/// an anomaly, reported after the history is checked (the history names overlaps better).
async fn hold_once(
    lock: &dyn DistributedLock,
    holder: String,
    style: Style,
) -> (Hold, Option<String>) {
    let wait = Duration::from_secs(60);
    if let Style::Lapsed = style {
        let ttl = Duration::from_millis(150);
        let valid_for = lock.options().valid_for(ttl);
        let started = Instant::now();
        let (lease, sent) = loop {
            // Taken before the request is sent: the lease cannot start earlier.
            let sent = SystemTime::now();
            if let Some(lease) = lock.try_lease(ttl).await.expect("try_lease") {
                break (lease, sent);
            }
            assert!(started.elapsed() < wait, "{holder} waited {wait:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let acquired = SystemTime::now();
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        let release_invoked = SystemTime::now();
        // Its answer depends on whether someone took the lapsed lease: either is fine.
        let _ = lock.release_lease(&lease).await;
        let believed_until = release_invoked.min(sent + valid_for);
        let mut hold = Hold::new(holder, lease.token().get(), acquired, believed_until);
        hold.lost = believed_until < release_invoked;
        return (hold, None);
    }
    let ttl = match style {
        Style::Renewed => Duration::from_millis(150),
        _ => Duration::from_secs(2),
    };
    let guard: LockGuard = lock
        .acquire_timeout(ttl, wait)
        .await
        .unwrap_or_else(|err| panic!("{holder}: acquire failed: {err:?}"));
    let acquired = SystemTime::now();
    let mut believed_until = acquired;
    let mut lost = false;
    // Belief is what a check answered: the time is taken before the check, so the lease was
    // believed held at least until then.
    let mut check = |guard: &LockGuard| {
        let now = SystemTime::now();
        if !lost && guard.is_held() {
            believed_until = now;
        } else {
            lost = true;
        }
    };
    check(&guard);
    match style {
        Style::Renewed => {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                check(&guard);
            }
        }
        _ => {
            for _ in 0..3 {
                tokio::task::yield_now().await;
                check(&guard);
            }
        }
    }
    let token = guard.token().get();
    check(&guard);
    let mut anomaly = None;
    if let Style::Drop = style {
        drop(guard);
    } else {
        let released = guard.release().await;
        if !lost && !matches!(released, Ok(true)) {
            anomaly = Some(format!(
                "{holder}: the release of a lease it saw held (token {token}) answered {released:?}"
            ));
        }
    }
    let mut hold = Hold::new(holder, token, acquired, believed_until);
    hold.lost = lost;
    (hold, anomaly)
}

/// Mutual exclusion over 2 processes × 16 tasks, checked from the recorded history: this
/// process and a second one (the test binary re-run for this test alone) contend on one lock;
/// every task takes it `rounds()` times (releasing, dropping, holding across renewals, or
/// letting a raw lease lapse past its TTL) and records when its acquisition was acknowledged,
/// until when it believed it held the lock, and its token. [`lock_history::check`] then finds
/// no two holders at once, and tokens strictly increasing from holder to holder across both
/// processes.
pub async fn mutual_exclusion_history_2_processes_x_16_tasks_has_no_overlap(
    factory: &dyn LockFactory,
    test_path: &str,
) {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (path, name) = spec.split_once('|').expect("a child spec");
        assert_eq!(path, test_path, "the child runs the test that spawned it");
        run_child(factory, name).await;
        return;
    }
    let name = unique("exclusion");
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test_path, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{test_path}|{name}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the second process");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("the second process did not get ready within 60 s");
        match line {
            // libtest prints `test <name> ... ` without a newline before the test runs.
            Some(line) if line.trim_end().ends_with(CHILD_READY) => break,
            Some(_) => {}
            None => panic!(
                "the second process ended before contending: {:?}",
                child.wait()
            ),
        }
    }
    let mut stdin = child.stdin.take().expect("piped stdin");
    let go = tokio::spawn(contend_after(factory_handles(factory, &name).await));
    stdin.write_all(b"go\n").expect("start the second process");
    drop(stdin);
    let (mut holds, mut anomalies) = go.await.expect("this process's tasks");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait for the child"))
        .await
        .unwrap();
    reader.join().expect("the reader thread");
    let mut child_holds = Vec::new();
    while let Ok(line) = lines.try_recv() {
        child_holds.extend(Hold::parse_line(&line));
        if let Some(anomaly) = line.trim().strip_prefix(ANOMALY_TAG) {
            anomalies.push(anomaly.trim().to_owned());
        }
    }
    assert!(status.success(), "the second process failed: {status}");
    let expected = TASKS_PER_PROCESS * rounds();
    assert_eq!(holds.len(), expected, "holds of this process");
    assert_eq!(child_holds.len(), expected, "holds of the second process");
    holds.extend(child_holds);
    let summary = lock_history::check(&holds).unwrap_or_else(|violation| panic!("{violation}"));
    assert!(anomalies.is_empty(), "{}", anomalies.join("\n"));
    assert_eq!(summary.holders, 2 * TASKS_PER_PROCESS);
    assert!(summary.counted * 10 >= summary.holds * 9, "{summary:?}");
    println!(
        "LOCK SUITE mutual exclusion: 2 processes x {TASKS_PER_PROCESS} tasks, {} holds \
         ({} counted, {} lost), {} tokens checked strictly increasing, in {:?}",
        summary.holds,
        summary.counted,
        summary.lost,
        summary.counted,
        started.elapsed()
    );
}

const CHILD_READY: &str = "LOCKSUITE READY";
const ANOMALY_TAG: &str = "LOCKANOMALY";

/// The handles of one process, opened before it starts contending.
struct Contender {
    handles: Vec<Arc<dyn DistributedLock>>,
    process: usize,
}

async fn factory_handles(factory: &dyn LockFactory, name: &str) -> Contender {
    let mut handles = Vec::new();
    for _ in 0..HANDLES_PER_PROCESS {
        handles.push(open_with(factory, name, options()).await);
    }
    Contender {
        handles,
        process: 0,
    }
}

async fn contend_after(contender: Contender) -> (Vec<Hold>, Vec<String>) {
    let mut tasks = Vec::new();
    for task in 0..TASKS_PER_PROCESS {
        let lock = Arc::clone(&contender.handles[task % HANDLES_PER_PROCESS]);
        let process = contender.process;
        tasks.push(tokio::spawn(async move {
            let mut holds = Vec::new();
            let mut anomalies = Vec::new();
            for round in 0..rounds() {
                let holder = format!("p{process}/t{task}");
                let (hold, anomaly) = hold_once(lock.as_ref(), holder, style(task, round)).await;
                holds.push(hold);
                anomalies.extend(anomaly);
            }
            (holds, anomalies)
        }));
    }
    let mut holds = Vec::new();
    let mut anomalies = Vec::new();
    for task in tasks {
        let (h, a) = task.await.expect("a contending task");
        holds.extend(h);
        anomalies.extend(a);
    }
    (holds, anomalies)
}

/// The second process: connect, say ready, wait for the go, contend, print every hold.
async fn run_child(factory: &dyn LockFactory, name: &str) {
    let mut contender = factory_handles(factory, name).await;
    contender.process = 1;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{CHILD_READY}").unwrap();
        out.flush().unwrap();
    }
    tokio::task::spawn_blocking(|| {
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).expect("the go line");
    })
    .await
    .unwrap();
    let (holds, anomalies) = contend_after(contender).await;
    let mut out = std::io::stdout().lock();
    for hold in holds {
        writeln!(out, "{}", hold.to_line()).unwrap();
    }
    for anomaly in anomalies {
        writeln!(out, "{ANOMALY_TAG} {anomaly}").unwrap();
    }
    out.flush().unwrap();
}
