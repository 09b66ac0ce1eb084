//! Redis-specific behaviour against the servers `cargo xtask test` starts.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use state_core::{ErrorKind, StateBackend};
use state_redis::{RedisConfig, RedisStateBackend};

fn url() -> String {
    std::env::var("STATE_REDIS_URL").expect("STATE_REDIS_URL: run `cargo xtask test`")
}

fn cluster_urls() -> Vec<String> {
    std::env::var("STATE_REDIS_CLUSTER_URLS")
        .expect("STATE_REDIS_CLUSTER_URLS: run `cargo xtask test`")
        .split(',')
        .map(str::to_owned)
        .collect()
}

async fn backend(prefix: &str) -> RedisStateBackend {
    RedisStateBackend::new(
        RedisConfig::builder()
            .url(url())
            .key_prefix(prefix)
            .build()
            .unwrap(),
    )
    .await
    .unwrap()
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}:", state_testkit::unique_namespace())
}

/// `clear` on one prefix leaves another prefix's keys (and unprefixed keys) alone.
#[tokio::test]
async fn clear_touches_only_its_own_prefix() {
    let a = backend(&unique("a")).await;
    let b = backend(&unique("b")).await;
    for i in 0..50u8 {
        a.put(&[i], b"a").await.unwrap();
        b.put(&[i], b"b").await.unwrap();
    }
    let raw = a.pool().next().clone();
    let outside = format!("outside-{}", state_testkit::unique_namespace());
    let () = fred::prelude::KeysInterface::set(&raw, &outside, "x", None, None, false)
        .await
        .unwrap();
    a.clear().await.unwrap();
    assert_eq!(a.count().await.unwrap(), 0);
    assert_eq!(b.count().await.unwrap(), 50);
    let still: Option<String> = fred::prelude::KeysInterface::get(&raw, &outside)
        .await
        .unwrap();
    assert_eq!(still.as_deref(), Some("x"));
    let _: i64 = fred::prelude::KeysInterface::del(&raw, &outside)
        .await
        .unwrap();
    b.clear().await.unwrap();
}

/// A batch of 1,000 keys spread over every hash slot reads back in order in one call.
#[tokio::test]
async fn cluster_batch_of_1000_keys_spans_all_slots() {
    let prefix = unique("slots");
    let b = RedisStateBackend::new(
        RedisConfig::builder()
            .cluster_nodes(cluster_urls())
            .key_prefix(&prefix)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
    let slots: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| fred::util::redis_keyslot(&[prefix.as_bytes(), k].concat()))
        .collect();
    assert!(slots.len() > 900, "keys cover {} slots", slots.len());
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &k[..])).collect();
    b.batch_put(&entries).await.unwrap();
    let asked: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let got = b.batch_get(&asked).await.unwrap();
    for (k, v) in keys.iter().zip(got) {
        assert_eq!(v, Some(Bytes::copy_from_slice(k)));
    }
    assert_eq!(b.batch_delete(&asked).await.unwrap(), 1000);
    assert!(b.health_check().await.unwrap());
}

/// An unreachable server is a clear, retryable connection or timeout error, not a hang.
#[tokio::test]
async fn unreachable_server_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RedisConfig::builder()
        .url(format!("redis://:hunter2@127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(300))
        .max_retries(1)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = RedisStateBackend::new(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(!format!("{err:?} {err}").contains("hunter2"));
}

/// A throwaway redis-server of this test's own (so pausing or killing it disturbs no other
/// test), killed on drop.
struct OwnServer {
    child: std::process::Child,
    port: u16,
}

impl OwnServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::spawn(port);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// Starts `redis-server` (no persistence) on `port`.
    fn spawn(port: u16) -> std::process::Child {
        let bin = std::env::var("STATE_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        std::process::Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A paused server gives a retryable timeout within the command timeout, not a hang, and the
/// backend works again once the server resumes.
#[tokio::test]
async fn paused_server_gives_a_timeout_then_recovers() {
    let server = OwnServer::start();
    let prefix = unique("pause");
    let b = RedisStateBackend::new(
        RedisConfig::builder()
            .url(server.url())
            .key_prefix(&prefix)
            .command_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    b.put(b"k", b"v").await.unwrap();
    let admin = RedisStateBackend::new(RedisConfig::builder().url(server.url()).build().unwrap())
        .await
        .unwrap();
    let client = admin.pool().next().clone();
    let _: String = fred::prelude::ClientLike::custom(
        &client,
        fred::cmd!("CLIENT"),
        vec!["PAUSE", "1500", "ALL"],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = b.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(b.get(b"k").await.unwrap(), Some(Bytes::from_static(b"v")));
}

/// A server killed mid-run and restarted on the same port: calls during the outage fail with
/// retryable errors (never wrong data), and the backend reconnects by itself afterwards.
#[tokio::test]
async fn backend_recovers_after_server_restart() {
    let mut server = OwnServer::start();
    let b = RedisStateBackend::new(
        RedisConfig::builder()
            .url(server.url())
            .key_prefix("restart:")
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    b.put(b"k", b"before").await.unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let err = b.get(b"k").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    server.child = OwnServer::spawn(server.port);
    // The restarted server is empty (no persistence): the value is gone, not stale.
    let mut answer = None;
    for _ in 0..50 {
        match b.get(b"k").await {
            Ok(v) => {
                answer = Some(v);
                break;
            }
            Err(err) => assert!(err.is_retryable(), "{err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer,
        Some(None),
        "reconnected and read the empty restarted server"
    );
    b.put(b"k", b"after").await.unwrap();
    assert_eq!(
        b.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"after"))
    );
}

/// A subscription whose server restarts yields one retryable error (messages published
/// meanwhile were lost), resubscribes by itself, and delivers again.
#[tokio::test]
async fn subscription_reports_a_reconnect_and_resumes() {
    let mut server = OwnServer::start();
    let b = RedisStateBackend::new(
        RedisConfig::builder()
            .url(server.url())
            .key_prefix("sub-restart:")
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut sub = b.subscribe("events").await.unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    server.child = OwnServer::spawn(server.port);
    let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an item after the reconnect")
        .expect("stream open");
    let err = item.expect_err("the reconnect is reported before any message");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(err.is_retryable());
    // Resubscribed: a message published now arrives.
    let started = std::time::Instant::now();
    loop {
        let _ = b.publish("events", b"after").await;
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            assert_eq!(m, Bytes::from_static(b"after"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no delivery after resubscribe"
        );
    }
}

/// `pool_stats` reports the opened connections and the configured ceiling.
#[tokio::test]
async fn pool_stats_reports_connections() {
    let b = RedisStateBackend::new(
        RedisConfig::builder()
            .url(url())
            .key_prefix(unique("pool"))
            .pool_size(2, 8)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let stats = b.pool_stats();
    assert_eq!((stats.active_connections, stats.max_connections), (2, 8));
    assert!(!stats.is_exhausted());
}

/// Published messages reach a subscriber in order; channels are namespaced by the key
/// prefix, so another prefix's subscriber hears nothing. Works on a Cluster too.
#[tokio::test]
async fn publish_reaches_subscribers_of_the_same_prefix_only() {
    use futures_util::StreamExt;
    let prefix = unique("pubsub");
    let cluster_config = RedisConfig::builder()
        .cluster_nodes(cluster_urls())
        .key_prefix(&prefix)
        .build()
        .unwrap();
    for (config, standalone) in [
        (
            RedisConfig::builder()
                .url(url())
                .key_prefix(&prefix)
                .build()
                .unwrap(),
            true,
        ),
        (cluster_config, false),
    ] {
        let a = RedisStateBackend::new(config).await.unwrap();
        let other = backend(&unique("other")).await;
        let mut sub = a.subscribe("invalidate").await.unwrap();
        let mut other_sub = other.subscribe("invalidate").await.unwrap();
        for i in 0..3u8 {
            let receivers = a.publish("invalidate", &[i, 0xFF]).await.unwrap();
            // In a Cluster, PUBLISH counts only the receiving node's subscribers.
            assert!(!standalone || receivers == 1, "{receivers} receivers");
        }
        for i in 0..3u8 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap();
            assert_eq!(got.unwrap().unwrap(), Bytes::from(vec![i, 0xFF]));
        }
        let nothing = tokio::time::timeout(Duration::from_millis(200), other_sub.next()).await;
        assert!(
            nothing.is_err(),
            "another prefix heard the message: {nothing:?}"
        );
        sub.close().await.unwrap();
    }
}
