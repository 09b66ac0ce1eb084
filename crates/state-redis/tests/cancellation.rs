//! A write whose caller stopped waiting after it was sent must not land after a later
//! acknowledged write (the trait contract's cancellation rule), against the Redis `cargo
//! xtask test` starts (`STATE_REDIS_URL`), through a proxy that delays the dropped write's
//! connection for longer than the command timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_test_servers::proxy::{FaultProxy, ProxyFault};

fn url() -> String {
    std::env::var("STATE_REDIS_URL").expect("STATE_REDIS_URL: run `cargo xtask test`")
}

fn addr_of(url: &str) -> SocketAddr {
    let hostport = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/');
    hostport.parse().expect("redis://host:port with an IP host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_put_delayed_beyond_the_command_timeout_never_overwrites_a_later_acknowledged_put()
 {
    let prefix = format!("cancel-{}:", state_testkit::unique_namespace());
    let proxy = FaultProxy::start(addr_of(&url())).await.unwrap();
    let config = RedisConfig::builder()
        .url(format!("redis://127.0.0.1:{}", proxy.port()))
        .key_prefix(&prefix)
        .pool_size(4, 4)
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let backend = RedisStateBackend::new(config).await.unwrap();
    backend.put(b"k", b"v0").await.unwrap();

    // The dropped put's packets (and the PING queued behind it) take 3 s to reach Redis.
    proxy.set_fault(ProxyFault::Latency(Duration::from_secs(3)));
    let dropped = tokio::time::timeout(Duration::from_millis(50), backend.put(b"k", b"old")).await;
    assert!(dropped.is_err(), "the put should still be on its way");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set_fault(ProxyFault::None);

    // Later writes, until one is acknowledged (well before the dropped put arrives).
    let started = Instant::now();
    let mut acknowledged = false;
    while started.elapsed() < Duration::from_secs(2) {
        if backend.put(b"k", b"new").await.is_ok() {
            acknowledged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the delayed command arrive and run.
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
    let resumed = tokio::time::timeout(Duration::from_secs(5), async {
        while backend.put(b"k", b"after").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(resumed.is_ok(), "writes never resumed");
    backend.clear().await.unwrap();
}
