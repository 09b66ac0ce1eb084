//! `TieredStateBackend` degrading gracefully: the L2 Redis server (a throwaway one of this
//! test's own, with persistence so it comes back with its old data) is killed and restarted
//! under a PostgreSQL durable tier; no read ever returns a replaced value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::StateBackend;
use state_memory::MemoryStateBackend;
use state_postgres::PostgresStateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use state_tiered::TieredStateBackend;

mod common;
use common::Slow;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run `cargo xtask test`"))
}

struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = std::process::Command::new(env("STATE_REDIS_SERVER_BIN"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_l2_degrades_to_durable_and_never_serves_a_replaced_value() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("state-tiered-l2-{port}"));
    let mut server = OwnRedis::start(port, &dir);
    let redis = Arc::new(
        RedisStateBackend::new(
            RedisConfig::builder()
                .url(format!("redis://127.0.0.1:{}", server.port))
                .command_timeout(Duration::from_millis(300))
                .connect_timeout(Duration::from_millis(300))
                .build()
                .unwrap(),
        )
        .await
        .unwrap(),
    );
    let table = format!("tier_{}", state_testkit::unique_namespace());
    let postgres = Arc::new(
        PostgresStateBackend::new(env("STATE_POSTGRES_URL"), table.as_str())
            .await
            .unwrap(),
    );
    let tier_ttl = Duration::from_secs(2);
    let tiered = TieredStateBackend::builder()
        .cache_tier("redis", redis.clone(), tier_ttl)
        .durable(postgres.clone())
        .unwrap();

    tiered.put(b"k", b"v1").await.unwrap();
    assert_eq!(
        tiered.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v1"))
    );
    assert_eq!(
        redis.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"\x00v1")),
        "written through to L2 (one header byte: a value)"
    );
    // Promotion: a key only in the durable tier is copied up on read, with the tier TTL.
    postgres.put(b"cold", b"c").await.unwrap();
    assert!(tiered.get(b"cold").await.unwrap().is_some());
    let copy_ttl = redis
        .ttl(b"cold")
        .await
        .unwrap()
        .expect("promoted with a TTL");
    assert!(copy_ttl <= tier_ttl);

    server.kill();
    // L2 down: reads and writes still work through the durable tier.
    let started = Instant::now();
    assert_eq!(
        tiered.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v1"))
    );
    tiered.put(b"k", b"v2").await.unwrap();
    assert_eq!(
        tiered.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v2"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stats = tiered.stats().await;
    assert!(stats.details["redis_failures"] >= 1.0, "{stats:?}");
    assert!((stats.details["redis_bypassed"] - 1.0).abs() < f64::EPSILON);

    // L2 comes back with its old data (v1, appendonly): it is bypassed until that copy has
    // expired, so the replaced value is never served.
    let mut server = OwnRedis::start(port, &dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.get(b"k").await.is_err() {
        assert!(Instant::now() < deadline, "client did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = Instant::now();
    while back.elapsed() < tier_ttl + Duration::from_millis(500) {
        assert_eq!(
            tiered.get(b"k").await.unwrap(),
            Some(Bytes::from_static(b"v2")),
            "a replaced value was served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the tier is used again.
    tiered.put(b"k", b"v3").await.unwrap();
    assert_eq!(
        redis.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"\x00v3"))
    );
    assert!((tiered.stats().await.details["redis_bypassed"] - 0.0).abs() < f64::EPSILON);
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A read that loaded the old value from the durable tier before a delete finished must not
/// promote it into the cache tier afterwards: the delete leaves a tombstone there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_racing_a_slow_read_leaves_no_resurrected_copy() {
    let durable = Slow::new(Duration::from_millis(150));
    durable.inner.put(b"k", b"old").await.unwrap();
    let l2 = Arc::new(MemoryStateBackend::new(None));
    let tiered = Arc::new(
        TieredStateBackend::builder()
            .cache_tier("l2", l2.clone(), Duration::from_secs(60))
            .durable(durable.clone())
            .unwrap(),
    );
    let reader = {
        let tiered = Arc::clone(&tiered);
        tokio::spawn(async move { tiered.get(b"k").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(tiered.delete(b"k").await.unwrap());
    // The slow read returns what it read before the delete, then tries to promote it.
    assert_eq!(reader.await.unwrap(), Some(Bytes::from_static(b"old")));
    assert_eq!(
        tiered.get(b"k").await.unwrap(),
        None,
        "deleted value resurrected"
    );
    assert_eq!(tiered.get(b"k").await.unwrap(), None);
    // A later write replaces the tombstone and is served from the cache tier again.
    tiered.put(b"k", b"new").await.unwrap();
    assert_eq!(
        tiered.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"new"))
    );
    assert!(tiered.tier_counts()[0].1 >= 1, "served from l2");
}

/// A read that loaded a value from the durable tier before a `delete_prefix`, `clear` or
/// `restore` finished must not promote it into the cache tier afterwards (issue 12 point 2:
/// after `delete_prefix`, `count()` was 0 and `get()` still returned the value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_racing_a_slow_read_leave_no_stale_copy() {
    let mut replacement = Vec::new();
    let source = MemoryStateBackend::new(None);
    source.put(b"k", b"restored").await.unwrap();
    source.checkpoint(&mut replacement).await.unwrap();
    for op in ["delete_prefix", "clear", "restore"] {
        let durable = Slow::new(Duration::from_millis(150));
        durable.inner.put(b"k", b"old").await.unwrap();
        let l2 = Arc::new(MemoryStateBackend::new(None));
        let tiered = Arc::new(
            TieredStateBackend::builder()
                .cache_tier("l2", l2.clone(), Duration::from_secs(60))
                .durable(durable.clone())
                .unwrap(),
        );
        let reader = {
            let tiered = Arc::clone(&tiered);
            tokio::spawn(async move { tiered.get(b"k").await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let expected = match op {
            "delete_prefix" => {
                assert_eq!(tiered.delete_prefix(b"").await.unwrap(), 1);
                None
            }
            "clear" => {
                tiered.clear().await.unwrap();
                None
            }
            _ => {
                tiered.restore(&mut &replacement[..]).await.unwrap();
                Some(Bytes::from_static(b"restored"))
            }
        };
        assert_eq!(reader.await.unwrap(), Some(Bytes::from_static(b"old")));
        assert_eq!(
            tiered.get(b"k").await.unwrap(),
            expected,
            "{op}: stale copy served"
        );
        assert_ne!(
            l2.get(b"k").await.unwrap().map(|v| v.slice(1..)),
            Some(Bytes::from_static(b"old")),
            "{op}: the cache tier kept the old value"
        );
    }
}

/// A write whose caller is cancelled after the durable tier applied it still leaves no
/// cache tier with the value it replaced (issue 12 point 2: durable at v2, L2 still v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_write_leaves_no_replaced_value_in_the_tiers() {
    let durable = Slow::new(Duration::from_millis(200));
    let l2 = Arc::new(MemoryStateBackend::new(None));
    let tiered = TieredStateBackend::builder()
        .cache_tier("l2", l2.clone(), Duration::from_secs(60))
        .durable(durable.clone())
        .unwrap();
    let ttl = Duration::from_secs(60);
    tiered.put_with_ttl(b"k", b"v1", ttl).await.unwrap();
    assert_eq!(tiered.get(b"k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // Applied at once by the durable tier, acknowledged 200 ms later: cut at 50 ms.
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        tiered.put_with_ttl(b"k", b"v2", ttl),
    )
    .await;
    assert!(cut.is_err(), "the write was cancelled");
    assert_eq!(
        durable.inner.get(b"k").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tiered.get(b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

/// A slow `batch_put(v1)` racing a `put(v2)` of the same key leaves the cache tier at the
/// value the durable tier ends with (issue 12 point 2: L2 was left at v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_racing_a_single_write_keeps_the_tiers_in_durable_order() {
    let durable = common::Controlled::new(Duration::from_millis(200));
    let l2 = Arc::new(MemoryStateBackend::new(None));
    let tiered = Arc::new(
        TieredStateBackend::builder()
            .cache_tier("l2", l2.clone(), Duration::from_secs(60))
            .durable(durable.clone())
            .unwrap(),
    );
    let batch = {
        let tiered = Arc::clone(&tiered);
        tokio::spawn(async move { tiered.batch_put(&[(b"k", b"v1"), (b"j", b"x")]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    tiered.put(b"k", b"v2").await.unwrap();
    batch.await.unwrap().unwrap();
    let durable_value = durable.inner.get(b"k").await.unwrap();
    assert_eq!(tiered.get(b"k").await.unwrap(), durable_value);
    assert_eq!(
        l2.get(b"k").await.unwrap().map(|v| v.slice(1..)),
        durable_value,
        "the cache tier agrees with the durable tier"
    );
}

/// While one instance bypasses a failed cache tier, its writes still tombstone the key
/// there, so another instance reading the shared tier never serves the replaced value
/// (issue 12 point 2: quarantine was per instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_tier_still_gets_tombstones_for_other_instances() {
    let durable = Arc::new(MemoryStateBackend::new(None));
    let shared_l2 = common::Controlled::new(Duration::ZERO);
    // Instance A sees the shared tier through a view that can fail.
    let a_view = common::Controlled::new(Duration::ZERO);
    let a_l2: Arc<dyn StateBackend> = Arc::new(ViewOf {
        shared: shared_l2.clone(),
        view: a_view.clone(),
    });
    let a = TieredStateBackend::builder()
        .cache_tier("l2", a_l2, Duration::from_secs(60))
        .durable(durable.clone())
        .unwrap();
    let b = TieredStateBackend::builder()
        .cache_tier("l2", shared_l2.clone(), Duration::from_secs(60))
        .durable(durable.clone())
        .unwrap();
    a.put(b"k", b"v1").await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // A's tier fails once: A bypasses it for its TTL.
    a_view
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = a.get(b"other").await.unwrap();
    a_view
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!((a.stats().await.details["l2_bypassed"] - 1.0).abs() < f64::EPSILON);
    a.put(b"k", b"v2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v2"[..]));
}

/// The shared tier, failing when `view` fails.
#[derive(Debug)]
struct ViewOf {
    shared: Arc<common::Controlled>,
    view: Arc<common::Controlled>,
}

impl ViewOf {
    async fn check(&self) -> state_core::StateResult<()> {
        // `view` only decides failure; data lives in `shared`.
        self.view.contains(b"\0probe").await.map(|_| ())
    }
}

#[async_trait::async_trait]
impl StateBackend for ViewOf {
    fn get<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, Option<Bytes>> {
        state_core::StateFuture::boxed(async move {
            self.check().await?;
            self.shared.get(key).await
        })
    }
    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> state_core::StateFuture<'a, ()> {
        state_core::StateFuture::boxed(async move {
            self.check().await?;
            self.shared.put(key, value).await
        })
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, bool> {
        state_core::StateFuture::boxed(async move {
            self.check().await?;
            self.shared.delete(key).await
        })
    }
    async fn list_keys(&self, prefix: &[u8]) -> state_core::StateResult<Vec<Bytes>> {
        self.check().await?;
        self.shared.list_keys(prefix).await
    }
    async fn clear(&self) -> state_core::StateResult<()> {
        self.check().await?;
        self.shared.clear().await
    }
    async fn count(&self) -> state_core::StateResult<usize> {
        self.check().await?;
        self.shared.count().await
    }
    fn contains<'a>(&'a self, key: &'a [u8]) -> state_core::StateFuture<'a, bool> {
        state_core::StateFuture::boxed(async move {
            self.check().await?;
            self.shared.contains(key).await
        })
    }
    fn capabilities(&self) -> state_core::Capabilities {
        self.shared.capabilities()
    }
    async fn put_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> state_core::StateResult<()> {
        self.check().await?;
        self.shared.put_with_ttl(key, value, ttl).await
    }
    async fn get_with_ttl(
        &self,
        key: &[u8],
    ) -> state_core::StateResult<Option<(Bytes, Option<Duration>)>> {
        self.check().await?;
        self.shared.get_with_ttl(key).await
    }
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> state_core::StateResult<bool> {
        self.check().await?;
        self.shared.set_if_not_exists(key, value, ttl).await
    }
}
