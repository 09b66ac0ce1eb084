//! A write whose caller stopped waiting after its statement was sent must not land after a
//! later acknowledged write (the trait contract's cancellation rule), against the primary
//! `cargo xtask test` starts (`STATE_POSTGRES_URL`).
//!
//! The statement is made to wait on the server deterministically: another connection holds a
//! row lock on the first key of the range a `delete_prefix` deletes.

use std::sync::Arc;
use std::time::Duration;

use state_core::StateBackend;
use state_postgres::tokio_postgres::{self, NoTls};
use state_postgres::{PostgresConfig, PostgresStateBackend};

fn url() -> String {
    std::env::var("STATE_POSTGRES_URL").expect("STATE_POSTGRES_URL: run `cargo xtask test`")
}

async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_delete_prefix_never_removes_a_later_acknowledged_put() {
    let table = format!("cancel_{}", state_testkit::unique_namespace());
    let config = PostgresConfig::builder()
        .url(url())
        .table(&table)
        .pool_size(4)
        .command_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let backend = Arc::new(PostgresStateBackend::with_config(config).await.unwrap());
    backend.put(b"p:a", b"old").await.unwrap();
    backend.put(b"p:b", b"old").await.unwrap();

    // Another session locks the first row of the range: the DELETE blocks on it.
    let mut locker = raw().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        &format!("SELECT 1 FROM \"{table}\" WHERE key = $1 FOR UPDATE"),
        &[&&b"p:a"[..]],
    )
    .await
    .unwrap();

    // The caller gives up while the DELETE waits on the server.
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), backend.delete_prefix(b"p:")).await;
    assert!(dropped.is_err(), "the DELETE should wait for the row lock");

    // A read takes the most recently returned connection (the pool is LIFO): the one the
    // DELETE is still running on. A later write of a key in the range takes another one;
    // then the lock goes away and the DELETE resumes.
    let reader = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move { backend.get(b"q").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writer = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move { backend.put(b"p:b", b"new").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.commit().await.unwrap();
    writer
        .await
        .unwrap()
        .expect("the later put is acknowledged");
    reader.await.unwrap().unwrap();

    // Whatever the dropped DELETE did, it did before the put was acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.get(b"p:b").await.unwrap().as_deref(),
        Some(&b"new"[..]),
        "an acknowledged put was removed by a delete_prefix its caller had dropped earlier"
    );
    backend.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_at_most_the_command_timeout_for_an_earlier_dropped_one() {
    let table = format!("cancel_{}", state_testkit::unique_namespace());
    let config = PostgresConfig::builder()
        .url(url())
        .table(&table)
        .pool_size(4)
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let backend = PostgresStateBackend::with_config(config).await.unwrap();
    backend.put(b"k", b"old").await.unwrap();

    let mut locker = raw().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        &format!("SELECT 1 FROM \"{table}\" WHERE key = $1 FOR UPDATE"),
        &[&&b"k"[..]],
    )
    .await
    .unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), backend.put(b"k", b"dropped")).await;
    assert!(dropped.is_err(), "the UPDATE should wait for the row lock");

    // The blocked statement holds up later writes for a bounded time only.
    let started = std::time::Instant::now();
    let waited = backend.put(b"other", b"v").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "a later write waited {elapsed:?} for a dropped one"
    );
    drop(waited);
    lock.rollback().await.unwrap();
    // Once the lock is gone everything settles and writes go through again.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if backend.put(b"other", b"v2").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("writes resume after the dropped statement finished");
    assert_eq!(
        backend.get(b"other").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    backend.clear().await.unwrap();
}

/// `STATE_POSTGRES_URL` with its host and port replaced by `127.0.0.1:port`.
fn url_via(port: u16) -> String {
    let url = url();
    let (scheme_user, rest) = url.split_once('@').expect("postgres://user@host:port/db");
    let (_, path) = rest.split_once('/').unwrap_or((rest, "postgres"));
    format!("{scheme_user}@127.0.0.1:{port}/{path}")
}

fn upstream() -> std::net::SocketAddr {
    let url = url();
    let rest = url.split_once('@').expect("user@host").1;
    rest.split('/')
        .next()
        .unwrap()
        .parse()
        .expect("an IP host and a port")
}

/// The dropped write's statement is held up on the network (its connection's packets arrive
/// late) for longer than the command timeout, while a later write on a fresh connection is
/// acknowledged: the later write must either wait for the dropped one or fail unsent; it must
/// never be acknowledged and then overwritten by the late statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_put_delayed_beyond_the_command_timeout_never_overwrites_a_later_acknowledged_put()
 {
    use state_test_servers::proxy::{FaultProxy, ProxyFault};

    let proxy = FaultProxy::start(upstream()).await.unwrap();
    let table = format!("cancel_{}", state_testkit::unique_namespace());
    let config = PostgresConfig::builder()
        .url(url_via(proxy.port()))
        .table(&table)
        .pool_size(4)
        .sweep_interval(None)
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let backend = PostgresStateBackend::with_config(config).await.unwrap();
    backend.put(b"k", b"v0").await.unwrap();

    // The dropped put's packets (and its cancel request) take 3 s to reach the server.
    proxy.set_fault(ProxyFault::Latency(Duration::from_secs(3)));
    let dropped = tokio::time::timeout(Duration::from_millis(50), backend.put(b"k", b"old")).await;
    assert!(dropped.is_err(), "the put should still be on its way");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set_fault(ProxyFault::None);

    // Later writes, until one is acknowledged (well before the dropped put arrives).
    let started = std::time::Instant::now();
    let mut acknowledged = false;
    while started.elapsed() < Duration::from_secs(2) {
        if backend.put(b"k", b"new").await.is_ok() {
            acknowledged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the delayed statement arrive and run.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let value = backend.get(b"k").await.unwrap();
    if acknowledged {
        assert_eq!(
            value.as_deref(),
            Some(&b"new"[..]),
            "a put dropped earlier landed after a later acknowledged put"
        );
    }
    // Once the dropped put was answered, writes go through again.
    backend.put(b"k", b"after").await.unwrap();
    backend.clear().await.unwrap();
}
