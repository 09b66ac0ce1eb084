//! RedisLock against a real Redis (standalone and Cluster) and throwaway servers of its own.

mod common;

use std::time::{Duration, Instant};

use common::{Target, env, unique};
use state_core::{ErrorKind, StateBackend};
use state_lock::{DistributedLock, FencingToken, RedisLock};
use state_redis::{RedisConfig, RedisStateBackend};

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_a_typed_error() {
    let err = RedisLock::new(&env("STATE_REDIS_URL"), "")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = RedisLock::new(&env("STATE_REDIS_URL"), "a{b}")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let backend = RedisStateBackend::new(
        RedisConfig::builder()
            .url(env("STATE_REDIS_URL"))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let err = RedisLock::with_pool(backend.pool().clone(), "x", "p{}", "s").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_holder_write_is_refused_standalone() {
    common::stale_holder_write_is_refused(Target::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_holder_write_is_refused_cluster() {
    common::stale_holder_write_is_refused(Target::RedisCluster).await;
}

/// The seed's constructor and calls, verbatim.
/// An application's own error type, as the seed's `with_lock` closures return.
#[derive(Debug)]
enum AppError {
    State(state_core::StateError),
    Rejected(&'static str),
}
impl From<state_core::StateError> for AppError {
    fn from(err: state_core::StateError) -> Self {
        Self::State(err)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_calls_work() {
    let name = unique("seed-calls");
    let lock = RedisLock::new(&env("STATE_REDIS_URL"), &name)
        .await
        .unwrap();
    let other = RedisLock::new(&env("STATE_REDIS_URL"), &name)
        .await
        .unwrap();
    assert!(lock.try_lock(Duration::from_secs(30)).await.unwrap());
    assert!(lock.current_token().await.is_some());
    assert!(
        !lock.try_lock(Duration::from_secs(30)).await.unwrap(),
        "not re-entrant"
    );
    assert!(!other.try_lock(Duration::from_secs(30)).await.unwrap());
    assert!(
        !other.unlock().await.unwrap(),
        "a non-owner's unlock is refused"
    );
    assert!(
        !other.try_lock(Duration::from_secs(30)).await.unwrap(),
        "still held"
    );
    assert!(lock.unlock().await.unwrap());
    assert!(!lock.unlock().await.unwrap(), "nothing left to unlock");
    let out = lock
        .with_lock(Duration::from_secs(30), || async {
            Ok::<_, state_core::StateError>("done")
        })
        .await
        .unwrap();
    assert_eq!(out, "done");

    // The seed's shape: the closure returns the application's own error type; the lock's
    // failures arrive converted into it.
    let answer = lock
        .with_lock(Duration::from_secs(30), || async { Ok::<_, AppError>(42) })
        .await
        .unwrap();
    assert_eq!(answer, 42);
    let refused = lock
        .with_lock(Duration::from_secs(30), || async {
            Err::<u8, _>(AppError::Rejected("by the application"))
        })
        .await;
    assert!(matches!(
        refused,
        Err(AppError::Rejected("by the application"))
    ));
    // The lock's own failure (here a TTL it refuses) arrives as the application's error.
    let refused_ttl = lock
        .with_lock(Duration::ZERO, || async { Ok::<_, AppError>(()) })
        .await;
    assert!(
        matches!(&refused_ttl, Err(AppError::State(err)) if err.kind() == ErrorKind::InvalidInput),
        "{refused_ttl:?}"
    );
}

/// A throwaway redis-server of this test's own.
struct OwnServer {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnServer {
    fn start(aof: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("state-lock-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            child: Self::spawn(port, &dir, aof),
            port,
            dir,
        };
        s.wait_ready();
        s
    }

    fn spawn(port: u16, dir: &std::path::Path, aof: bool) -> std::process::Child {
        let bin = env("STATE_REDIS_SERVER_BIN");
        std::process::Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                if aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn wait_ready(&mut self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With AOF persistence the fence counter survives a crash (SIGKILL) and restart: tokens keep
/// increasing.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_increase_across_a_server_restart_with_aof() {
    let mut server = OwnServer::start(true);
    let name = unique("restart");
    let lock = RedisLock::new(&server.url(), &name).await.unwrap();
    let mut last = FencingToken::new(0);
    for _ in 0..5 {
        let g = lock.acquire(Duration::from_secs(5)).await.unwrap();
        last = g.token();
        g.release().await.unwrap();
    }
    server.kill();
    server.child = OwnServer::spawn(server.port, &server.dir, true);
    server.wait_ready();
    let lock = RedisLock::new(&server.url(), &name).await.unwrap();
    let g = lock.acquire(Duration::from_secs(5)).await.unwrap();
    assert!(g.token() > last, "{} after {last}", g.token());
    g.release().await.unwrap();
}

/// Without persistence the counter restarts (documented): this test pins that behaviour so
/// the docs stay true.
#[tokio::test(flavor = "multi_thread")]
async fn without_persistence_tokens_restart() {
    let mut server = OwnServer::start(false);
    let name = unique("volatile");
    let lock = RedisLock::new(&server.url(), &name).await.unwrap();
    for _ in 0..3 {
        lock.acquire(Duration::from_secs(5))
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    server.kill();
    server.child = OwnServer::spawn(server.port, &server.dir, false);
    server.wait_ready();
    let lock = RedisLock::new(&server.url(), &name).await.unwrap();
    let g = lock.acquire(Duration::from_secs(5)).await.unwrap();
    assert_eq!(g.token(), FencingToken::new(1));
    g.release().await.unwrap();
}

/// No server: a clear retryable error within a few seconds, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RedisLock::new(&format!("redis://:pw-secret@127.0.0.1:{port}"), "x")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
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

/// A server that stops answering (paused): lock calls fail with OutcomeUnknown within the
/// operation deadline, and a held guard reports its lease lost before the TTL is over.
#[tokio::test(flavor = "multi_thread")]
async fn paused_server_times_out_and_the_guard_reports_loss_before_expiry() {
    let server = OwnServer::start(false);
    let lock = RedisLock::new(&server.url(), &unique("paused"))
        .await
        .unwrap();
    let ttl = Duration::from_millis(1500);
    let sent = Instant::now();
    let guard = lock.acquire(ttl).await.unwrap();
    let admin = RedisStateBackend::new(RedisConfig::builder().url(server.url()).build().unwrap())
        .await
        .unwrap();
    let client = admin.pool().next().clone();
    let _: String = fred::prelude::ClientLike::custom(
        &client,
        fred::cmd!("CLIENT"),
        vec!["PAUSE", "4000", "ALL"],
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .unwrap();
    let lost_after = sent.elapsed();
    assert!(
        lost_after < ttl,
        "loss reported after {lost_after:?}, TTL {ttl:?}"
    );
    assert!(!guard.is_held());
    let started = Instant::now();
    let err = lock.try_acquire(ttl).await.unwrap_err();
    // The acquire script was written to the paused server, which may still run it.
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(guard);
}

/// Lock keys live in the reserved `@` namespace: `clear` and `delete_prefix` of data
/// backends whose prefixes share the lock namespace's leading characters (`state`,
/// `state-lock`, and the default `state:`) leave the fencing counter alone, so tokens keep
/// increasing; and no data backend may take an `@` prefix.
#[tokio::test(flavor = "multi_thread")]
async fn clearing_lookalike_data_namespaces_keeps_tokens_increasing() {
    // Database 7, used by no other test: `clear` under `state:` must not race other tests.
    let url = format!("{}/7", env("STATE_REDIS_URL"));
    let name = unique("fence-clear");
    let lock = RedisLock::new(&url, &name).await.unwrap();
    assert!(lock.fence_key().starts_with("@state-lock:"));
    let mut last = 0;
    for prefix in ["state", "state-lock", "state:", "st"] {
        for _ in 0..3 {
            let guard = lock.acquire(Duration::from_secs(5)).await.unwrap();
            assert!(guard.token().get() > last, "{} after {last}", guard.token());
            last = guard.token().get();
            assert!(guard.release().await.unwrap());
        }
        let data = RedisStateBackend::new(
            RedisConfig::builder()
                .url(&url)
                .key_prefix(prefix)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        data.clear().await.unwrap();
        assert_eq!(data.delete_prefix(b"").await.unwrap(), 0);
    }
    let guard = lock.acquire(Duration::from_secs(5)).await.unwrap();
    assert!(guard.token().get() > last, "{} after {last}", guard.token());
    assert!(guard.release().await.unwrap());
    for reserved in ["@state-lock:", "@x"] {
        let err = RedisConfig::builder()
            .key_prefix(reserved)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{reserved}");
    }
}
