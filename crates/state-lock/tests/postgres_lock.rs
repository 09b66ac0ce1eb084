//! PostgresLock (lease table) and PostgresAdvisoryLock against a real PostgreSQL, and a
//! throwaway server for the restart test.

mod common;

use std::time::{Duration, Instant};

use common::{Target, env, unique};
use state_core::ErrorKind;
use state_lock::{DistributedLock, FencingToken, PostgresAdvisoryLock, PostgresLock};
use state_postgres::PostgresStateBackend;

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_a_typed_error() {
    let err = PostgresLock::new(&env("STATE_POSTGRES_URL"), "")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = PostgresLock::new("mysql://nope", "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_holder_write_is_refused_lease() {
    common::stale_holder_write_is_refused(Target::PgLease).await;
}

/// The seed API on PostgreSQL: another instance's `unlock` is refused and its `try_lock`
/// answers `false` while the lock is held (forged leases are in the shared lock suite).
#[tokio::test(flavor = "multi_thread")]
async fn seed_calls_of_another_instance_are_refused() {
    let name = unique("owner");
    let lock = PostgresLock::new(&env("STATE_POSTGRES_URL"), &name)
        .await
        .unwrap();
    let guard = lock.acquire(Duration::from_secs(5)).await.unwrap();
    let other = PostgresLock::new(&env("STATE_POSTGRES_URL"), &name)
        .await
        .unwrap();
    assert!(!other.unlock().await.unwrap());
    assert!(!other.try_lock(Duration::from_secs(5)).await.unwrap());
    assert!(guard.release().await.unwrap());
}

/// The advisory lock lives on a dedicated connection, never a pooled one: while it is held,
/// every connection of the pool sees it as taken by someone else (not re-entrant), and the
/// holder's release unlocks on the right session.
#[tokio::test(flavor = "multi_thread")]
async fn advisory_lock_is_never_on_a_pooled_connection() {
    let backend = PostgresStateBackend::new(env("STATE_POSTGRES_URL"), "state_lock_test")
        .await
        .unwrap();
    let name = unique("advisory");
    let lock = PostgresAdvisoryLock::from_backend(&backend, &name)
        .await
        .unwrap();
    let guard = lock.acquire(Duration::from_secs(5)).await.unwrap();
    for _ in 0..4 {
        let client = backend.pool().get().await.unwrap();
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&state_lock::ADVISORY_CLASS, &name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            !got,
            "a pooled connection must not hold (or re-enter) the lock"
        );
    }
    assert!(
        lock.try_acquire(Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        guard.release().await.unwrap(),
        "unlocked on the session that took it"
    );
    let again = lock
        .try_acquire(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free again");
    assert!(again.release().await.unwrap());
}

/// Fencing tokens come from a sequence: they keep increasing across a crash and restart.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_increase_across_a_server_restart() {
    let mut server = tokio::task::spawn_blocking(|| {
        state_test_servers::postgres::PostgresServer::temp("lock-restart")
    })
    .await
    .unwrap()
    .unwrap();
    let url = server.url();
    let name = unique("restart");
    let lock = PostgresLock::new(&url, &name).await.unwrap();
    let mut last = FencingToken::new(0);
    for _ in 0..5 {
        let g = lock.acquire(Duration::from_secs(5)).await.unwrap();
        last = g.token();
        g.release().await.unwrap();
    }
    drop(lock);
    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        server.start().unwrap();
        server
    })
    .await
    .unwrap();
    let lock = PostgresLock::new(&url, &name).await.unwrap();
    let g = lock.acquire(Duration::from_secs(5)).await.unwrap();
    assert!(g.token() > last, "{} after {last}", g.token());
    g.release().await.unwrap();
    drop(lock);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = PostgresLock::new(
        &format!("postgres://app:pw-secret@127.0.0.1:{port}/db"),
        "x",
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains("pw-secret"));
}

/// Resumes WAL replay on the replica at `url` when dropped (also during a panic unwind).
struct ReplayPaused(String);

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        let url = self.0.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
                    .execute("SELECT pg_wal_replay_resume()", &[])
                    .await
                    .unwrap();
            });
        })
        .join()
        .unwrap();
    }
}

/// Read-your-writes covers fenced writes: right after `put_fenced` on a PostgreSQL backend
/// in `ReadYourWrites` mode, a `get` through that backend sees the write although the
/// replica has stopped replaying (it served the old value before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_write_is_read_back_while_the_replica_lags() {
    use state_core::StateBackend;
    use state_lock::FencedWrite;
    use state_postgres::{PostgresConfig, ReadConsistency};

    let table = unique("ryw_fenced").replace('-', "_");
    let replica = env("STATE_POSTGRES_REPLICA_URLS")
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let config = PostgresConfig::builder()
        .url(env("STATE_POSTGRES_URL"))
        .replica_urls([replica.clone()])
        .read_consistency(ReadConsistency::ReadYourWrites)
        .table(table.as_str())
        .sweep_interval(None)
        .build()
        .unwrap();
    let backend = PostgresStateBackend::with_config(config).await.unwrap();
    backend.put(b"k", b"old").await.unwrap();
    // Until the replica serves the old value: it has replayed every write so far.
    let started = Instant::now();
    loop {
        let (before, _) = backend.replica_read_counts();
        let got = backend.get(b"k").await.unwrap();
        let (after, _) = backend.replica_read_counts();
        if after > before && got.as_deref() == Some(b"old".as_slice()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no catch-up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lock = PostgresLock::from_backend(&backend, &unique("ryw-lock"))
        .await
        .unwrap()
        .with_options(common::fast_options());
    let guard = lock.acquire(Duration::from_secs(10)).await.unwrap();

    let (client, connection) = tokio_postgres::connect(&replica, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let paused = ReplayPaused(replica);
    assert!(
        backend
            .put_fenced(b"k", b"new", &guard.fence())
            .await
            .unwrap()
    );
    assert_eq!(
        backend.get(b"k").await.unwrap().as_deref(),
        Some(b"new".as_slice()),
        "a read after a fenced write missed it"
    );
    drop(paused);
    guard.release().await.unwrap();
    backend.clear().await.unwrap();
}
