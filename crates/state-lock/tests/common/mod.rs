//! Shared helpers: servers from the environment `cargo xtask test` sets, the lock and store
//! of each target, and the generic cases every target runs.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::{ErrorKind, StateBackend};
use state_lock::{
    DistributedLock, FencedWrite, LockOptions, PostgresAdvisoryLock, PostgresLock, RedisLock,
};
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

/// Env var a re-executed test binary reads to act as the second contending process.
pub const WORKER_ENV: &str = "STATE_LOCK_TEST_WORKER";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers)")
    })
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Redis,
    RedisCluster,
    PgLease,
    PgAdvisory,
}

/// A data store for fenced writes, beside the lock.
#[derive(Clone)]
pub enum Store {
    Redis(RedisStateBackend),
    Pg(PostgresStateBackend),
}

impl Store {
    pub async fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self {
            Store::Redis(b) => b.get(key).await.unwrap(),
            Store::Pg(b) => b.get(key).await.unwrap(),
        }
    }

    pub async fn put_fenced(&self, key: &[u8], value: &[u8], fence: &state_lock::Fence) -> bool {
        match self {
            Store::Redis(b) => b.put_fenced(key, value, fence).await.unwrap(),
            Store::Pg(b) => b.put_fenced(key, value, fence).await.unwrap(),
        }
    }
}

pub fn fast_options() -> LockOptions {
    LockOptions::default()
        .retry_interval(Duration::from_millis(10))
        .unwrap()
}

pub async fn store(target: Target) -> Store {
    match target {
        Target::Redis => Store::Redis(
            RedisStateBackend::new(
                RedisConfig::builder()
                    .url(env("STATE_REDIS_URL"))
                    .key_prefix("lock-test:")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap(),
        ),
        Target::RedisCluster => {
            let nodes: Vec<String> = env("STATE_REDIS_CLUSTER_URLS")
                .split(',')
                .map(str::to_owned)
                .collect();
            Store::Redis(
                RedisStateBackend::new(
                    RedisConfig::builder()
                        .cluster_nodes(nodes)
                        .key_prefix("lock-test:")
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap(),
            )
        }
        Target::PgLease | Target::PgAdvisory => Store::Pg(
            PostgresStateBackend::new(env("STATE_POSTGRES_URL"), "state_lock_test")
                .await
                .unwrap(),
        ),
    }
}

/// A fresh lock instance (its own identity) for `name` on `target`, sharing `store`'s
/// connections.
pub async fn lock(target: Target, store: &Store, name: &str) -> Arc<dyn DistributedLock> {
    match (target, store) {
        (Target::Redis | Target::RedisCluster, Store::Redis(b)) => Arc::new(
            RedisLock::from_backend(b, name)
                .unwrap()
                .with_options(fast_options()),
        ),
        (Target::PgLease, Store::Pg(b)) => Arc::new(
            PostgresLock::from_backend(b, name)
                .await
                .unwrap()
                .with_options(fast_options()),
        ),
        (Target::PgAdvisory, Store::Pg(b)) => Arc::new(
            PostgresAdvisoryLock::from_backend(b, name)
                .await
                .unwrap()
                .with_options(fast_options()),
        ),
        _ => unreachable!("store matches target"),
    }
}

const TASKS_PER_PROCESS: usize = 8;
const ROUNDS: u64 = 8;

/// 8 tasks here and 8 in a child process (this test binary re-executed with `--exact
/// test_name`) contend on one lock; each round reads a shared counter `token:count`, checks
/// its token is above the last one written, and writes `count + 1` with a fenced write. Two
/// holders at once would lose an increment or see a token go backwards.
pub async fn contention(target: Target, test_name: &str) {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let (name, key) = spec.split_once('|').expect("worker spec");
        run_tasks(target, name, key).await;
        return;
    }
    let name = unique("contend");
    let key = unique("counter");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .env(WORKER_ENV, format!("{name}|{key}"))
        .spawn()
        .expect("spawn the second process");
    run_tasks(target, &name, &key).await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the second process failed: {status}");
    let store = store(target).await;
    let total = store.get(key.as_bytes()).await.expect("counter written");
    let total = String::from_utf8(total.to_vec()).unwrap();
    let count: u64 = total.split_once(':').unwrap().1.parse().unwrap();
    assert_eq!(count, 2 * TASKS_PER_PROCESS as u64 * ROUNDS, "{total}");
}

async fn run_tasks(target: Target, name: &str, key: &str) {
    let store = store(target).await;
    let mut tasks = Vec::new();
    for _ in 0..TASKS_PER_PROCESS {
        let lock = lock(target, &store, name).await;
        let store = store.clone();
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = lock
                    .acquire_timeout(Duration::from_secs(5), Duration::from_secs(120))
                    .await
                    .unwrap();
                let (last, count) = match store.get(key.as_bytes()).await {
                    Some(v) => {
                        let s = String::from_utf8(v.to_vec()).unwrap();
                        let (t, c) = s.split_once(':').unwrap();
                        (t.parse::<u64>().unwrap(), c.parse::<u64>().unwrap())
                    }
                    None => (0, 0),
                };
                assert!(
                    guard.token().get() > last,
                    "token {} not above the last written {last}: two holders at once",
                    guard.token()
                );
                tokio::task::yield_now().await;
                let value = format!("{}:{}", guard.token(), count + 1);
                assert!(
                    store
                        .put_fenced(key.as_bytes(), value.as_bytes(), &guard.fence())
                        .await,
                    "a fenced write by the current holder was refused"
                );
                assert!(guard.release().await.unwrap(), "lease lost mid-round");
            }
        }));
    }
    for t in tasks {
        t.await.expect("contending task");
    }
}

/// The seed API: `try_lock` is exclusive and not re-entrant; `unlock` by an instance that
/// holds nothing is refused; the holder's `unlock` reports it held the lock.
pub async fn seed_api(target: Target) {
    let store = store(target).await;
    let name = unique("seed");
    let a = lock(target, &store, &name).await;
    let b = lock(target, &store, &name).await;
    let ttl = Duration::from_secs(5);
    let ga = a.try_acquire(ttl).await.unwrap().expect("free lock");
    assert!(
        a.try_acquire(ttl).await.unwrap().is_none(),
        "not re-entrant"
    );
    assert!(b.try_acquire(ttl).await.unwrap().is_none(), "exclusive");
    assert!(ga.is_held());
    assert!(ga.release().await.unwrap(), "held until released");
    let gb = b
        .try_acquire(ttl)
        .await
        .unwrap()
        .expect("free after release");
    assert!(gb.release().await.unwrap());
}

/// Tokens strictly increase across acquisitions by different instances.
pub async fn tokens_increase(target: Target) {
    let store = store(target).await;
    let name = unique("tokens");
    let locks = [
        lock(target, &store, &name).await,
        lock(target, &store, &name).await,
    ];
    let mut last = 0;
    for i in 0..10 {
        let guard = locks[i % 2].acquire(Duration::from_secs(5)).await.unwrap();
        assert!(guard.token().get() > last, "{} after {last}", guard.token());
        last = guard.token().get();
        assert!(guard.release().await.unwrap());
    }
}

/// `with_lock` releases after success, error and panic.
pub async fn with_lock_releases(target: Target) {
    let store = store(target).await;
    let name = unique("with");
    let a = lock(target, &store, &name).await;
    let b = lock(target, &store, &name).await;
    let ttl = Duration::from_secs(5);
    let v = state_lock::with_lock(a.as_ref(), ttl, || async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    b.try_acquire(ttl)
        .await
        .unwrap()
        .expect("released after success")
        .release()
        .await
        .unwrap();
    let err = state_lock::with_lock(a.as_ref(), ttl, || async {
        Err::<(), _>(state_core::StateError::invalid_input("boom"))
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    b.try_acquire(ttl)
        .await
        .unwrap()
        .expect("released after error")
        .release()
        .await
        .unwrap();
    let a2 = Arc::clone(&a);
    let panicked = tokio::spawn(async move {
        state_lock::with_lock(a2.as_ref(), ttl, || async {
            assert!(ttl.is_zero(), "critical section panics");
            Ok(())
        })
        .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    b.try_acquire(ttl)
        .await
        .unwrap()
        .expect("released after panic")
        .release()
        .await
        .unwrap();
}

/// A guard renews its lease: held well past its TTL, and nobody else gets in.
pub async fn renewal_keeps_the_lock(target: Target) {
    let store = store(target).await;
    let name = unique("renew");
    let a = lock(target, &store, &name).await;
    let b = lock(target, &store, &name).await;
    let ttl = Duration::from_millis(300);
    let guard = a.acquire(ttl).await.unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(b.try_acquire(ttl).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(guard.is_held());
    assert!(guard.release().await.unwrap());
}

/// Dropping a guard inside a runtime releases it in the background; dropping one on a thread
/// without a runtime does not panic and the lease expires at its TTL.
pub async fn drop_releases(target: Target, expires: bool) {
    let store = store(target).await;
    let name = unique("drop");
    let a = lock(target, &store, &name).await;
    let b = lock(target, &store, &name).await;
    let ttl = Duration::from_millis(800);
    drop(a.acquire(ttl).await.unwrap());
    let started = Instant::now();
    let g = b
        .acquire_timeout(ttl, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    g.release().await.unwrap();

    let guard = a.acquire(ttl).await.unwrap();
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("drop outside a runtime does not panic");
    if expires {
        let started = Instant::now();
        let g = b
            .acquire_timeout(ttl, Duration::from_secs(5))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(waited <= ttl + Duration::from_millis(300), "{waited:?}");
        g.release().await.unwrap();
    }
}

/// Invalid names and TTLs are typed errors.
pub async fn bad_input(target: Target) {
    let store = store(target).await;
    let name = unique("bad");
    let a = lock(target, &store, &name).await;
    let err = a.try_acquire(Duration::from_micros(10)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!err.is_retryable());
    let err = a.acquire(Duration::ZERO).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// A holder "paused" (its whole runtime blocked, as in a GC or VM pause) past its TTL: a new
/// holder takes over and writes, and the old holder's late fenced write is refused.
pub async fn stale_holder_write_is_refused(target: Target) {
    let store = store(target).await;
    let name = unique("fenced");
    let key = unique("fenced-key");
    let ttl = Duration::from_millis(400);
    let (acquired_tx, acquired_rx) = std::sync::mpsc::channel();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let old = {
        let store = store.clone();
        let name = name.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // A store of its own on this runtime, so the pause stalls everything it does.
                let own = self::store(target).await;
                let _ = store;
                let lock = lock(target, &own, &name).await;
                let guard = lock.acquire(ttl).await.unwrap();
                assert!(
                    own.put_fenced(key.as_bytes(), b"old-1", &guard.fence())
                        .await
                );
                acquired_tx.send(guard.token()).unwrap();
                // The pause: the renewal task cannot run either.
                resume_rx.recv().unwrap();
                assert!(!guard.is_held(), "the guard knows its lease is gone");
                let late = own
                    .put_fenced(key.as_bytes(), b"old-late", &guard.fence())
                    .await;
                (late, guard.release().await.unwrap())
            })
        })
    };
    let old_token = acquired_rx.recv().unwrap();
    let new_lock = lock(target, &store, &name).await;
    let guard = new_lock
        .acquire_timeout(ttl, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(guard.token() > old_token);
    assert!(
        store
            .put_fenced(key.as_bytes(), b"new", &guard.fence())
            .await
    );
    resume_tx.send(()).unwrap();
    let (late_written, old_released) = tokio::task::spawn_blocking(move || old.join().unwrap())
        .await
        .unwrap();
    assert!(!late_written, "the stale holder's write must be refused");
    assert!(
        !old_released,
        "the stale holder cannot release the new holder's lock"
    );
    assert_eq!(
        store.get(key.as_bytes()).await.unwrap(),
        Bytes::from_static(b"new")
    );
    assert!(guard.is_held());
    assert!(guard.release().await.unwrap());
}

/// Two elections on one lock: measures the handover when the leader steps down and when it
/// dies without releasing, and asserts the bounds derived from the TTL and poll interval.
pub async fn leader_failover(target: Target) {
    let ttl = Duration::from_secs(1);
    let retry = Duration::from_millis(10);
    let store = store(target).await;
    let name = unique("leader");
    let a = state_lock::LeaderElection::start(lock(target, &store, &name).await, ttl).unwrap();
    let token_a = tokio::time::timeout(Duration::from_secs(5), a.wait_for_leadership())
        .await
        .unwrap()
        .unwrap();
    let b = state_lock::LeaderElection::start(lock(target, &store, &name).await, ttl).unwrap();
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
    // Bound: one jittered poll (1.5 × retry) plus round trips.
    assert!(
        graceful < retry.mul_f64(1.5) + Duration::from_millis(300),
        "{graceful:?}"
    );

    // The leader dies: its runtime stops without releasing.
    let (tx, rx) = std::sync::mpsc::channel();
    let name2 = name.clone();
    let dying = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let election = rt.block_on(async {
            let own = self::store(target).await;
            let c =
                state_lock::LeaderElection::start(lock(target, &own, &name2).await, ttl).unwrap();
            (c, own)
        });
        rx.recv().unwrap();
        rt.shutdown_background();
        std::mem::forget(election);
    });
    b.step_down().await.unwrap();
    // c takes over from b; then c dies and d must take over within ttl + poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = state_lock::LeaderElection::start(lock(target, &store, &name).await, ttl).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!d.is_leader(), "c leads");
    let started = Instant::now();
    tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || dying.join().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), d.wait_for_leadership())
        .await
        .unwrap()
        .unwrap();
    let crashed = started.elapsed();
    assert!(
        crashed <= ttl + retry.mul_f64(1.5) + Duration::from_millis(300),
        "{crashed:?}"
    );
    println!(
        "FAILOVER {target:?}: step-down handover {graceful:?}, crashed-leader handover {crashed:?} (ttl {ttl:?})"
    );
    d.step_down().await.unwrap();
}
