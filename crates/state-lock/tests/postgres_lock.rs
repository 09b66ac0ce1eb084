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
