//! Each documented option does what the README's table says; bad URLs and options are
//! `ConfigInvalid` errors naming the option; secrets never reach an error or `Debug`.

#![cfg(feature = "full")]

use std::time::Duration;

use anystate::prelude::*;
use anystate::{BackendConfig, CacheOptions, RedisOptions, RetryOptions};

fn config_err(result: StateResult<impl Sized>) -> StateError {
    match result {
        Ok(_) => panic!("expected a ConfigInvalid error"),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
            err
        }
    }
}

async fn open_err(url: &str) -> StateError {
    config_err(anystate::open(url).await)
}

/// `default_ttl` gives every plain write a TTL.
#[tokio::test]
async fn default_ttl_option_expires_plain_writes() {
    let b = anystate::open("memory://?default_ttl=1h").await.unwrap();
    b.put(b"k", b"v").await.unwrap();
    let ttl = b.ttl(b"k").await.unwrap().expect("a TTL");
    assert!(ttl <= Duration::from_secs(3600) && ttl > Duration::from_secs(3590));
    let plain = anystate::open("memory://").await.unwrap();
    plain.put(b"k", b"v").await.unwrap();
    assert_eq!(plain.ttl(b"k").await.unwrap(), None);
}

/// `max_entries` bounds the memory backend: one more key is `CapacityExceeded`.
#[tokio::test]
async fn max_entries_option_refuses_writes_beyond_it() {
    let b = anystate::open("memory://?max_entries=2").await.unwrap();
    b.put(b"a", b"1").await.unwrap();
    b.put(b"b", b"2").await.unwrap();
    let err = b.put(b"c", b"3").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CapacityExceeded);
}

/// `max_bytes` bounds the memory backend's bytes.
#[tokio::test]
async fn max_bytes_option_refuses_writes_beyond_it() {
    let b = anystate::open("memory://?max_bytes=1000").await.unwrap();
    b.put(b"small", b"v").await.unwrap();
    let err = b.put(b"big", &[0u8; 2000]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CapacityExceeded);
}

/// `cleanup_interval` sweeps expired entries' memory at that pace.
#[tokio::test]
async fn cleanup_interval_option_sweeps_expired_entries() {
    let fast = anystate::open("memory://?cleanup_interval=10ms")
        .await
        .unwrap();
    let slow = anystate::open("memory://").await.unwrap();
    for b in [&fast, &slow] {
        b.put_with_ttl(b"k", b"v", Duration::from_millis(5))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fast.memory_usage().await.unwrap(), 0);
    assert!(slow.memory_usage().await.unwrap() > 0);
}

/// `tree` picks the namespace inside one sled database; `default_ttl` works on sled.
#[tokio::test]
async fn sled_tree_and_default_ttl_options() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("sled://{}", dir.path().join("db").display());
    {
        let a = anystate::open(&format!("{base}?tree=a&default_ttl=1h"))
            .await
            .unwrap();
        a.put(b"k", b"v").await.unwrap();
        assert!(a.ttl(b"k").await.unwrap().is_some());
    }
    {
        let b = anystate::open(&format!("{base}?tree=b")).await.unwrap();
        assert_eq!(b.count().await.unwrap(), 0);
    }
    let a = anystate::open(&format!("{base}?tree=a")).await.unwrap();
    assert_eq!(a.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// `temporary=true` removes the database folder when the backend is dropped.
#[tokio::test]
async fn sled_temporary_option_removes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tmpdb");
    let b = anystate::open(&format!("sled://{}?temporary=true", path.display()))
        .await
        .unwrap();
    b.put(b"k", b"v").await.unwrap();
    drop(b);
    for _ in 0..100 {
        if !path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the temporary database was not removed");
}

/// The layers stack in the documented order: backend, namespace, cache, timeout, retry.
#[tokio::test]
async fn layer_options_stack_in_the_documented_order() {
    let b = anystate::open(
        "memory://?namespace=tenant&cache.max_items=10&cache.ttl=1m&timeout=1s&retry.max_times=2&retry.min_delay=1ms&retry.max_delay=5ms",
    )
    .await
    .unwrap();
    let shown = format!("{b:?}");
    let at = |name: &str| {
        shown
            .find(name)
            .unwrap_or_else(|| panic!("{name} missing in {shown}"))
    };
    assert!(at("Retry") < at("Timeout"), "{shown}");
    assert!(at("Timeout") < at("CachedStateBackend"), "{shown}");
    assert!(at("CachedStateBackend") < at("Namespaced"), "{shown}");
    assert!(at("Namespaced") < at("MemoryStateBackend"), "{shown}");
    let plain = format!("{:?}", anystate::open("memory://").await.unwrap());
    for layer in ["Retry", "Timeout", "CachedStateBackend", "Namespaced"] {
        assert!(!plain.contains(layer), "{plain}");
    }
}

/// `namespace` takes room from the key limit (the prefix is part of each stored key).
#[tokio::test]
async fn namespace_option_prefixes_keys() {
    let plain = anystate::open("memory://").await.unwrap();
    let spaced = anystate::open("memory://?namespace=abc").await.unwrap();
    assert_eq!(
        spaced.capabilities().limits.max_key_size,
        plain.capabilities().limits.max_key_size - "abc:".len()
    );
}

/// `cache.*` answers repeated reads from L1 (counted as hits) and holds at most
/// `cache.max_items`.
#[tokio::test]
async fn cache_options_serve_reads_from_l1() {
    let b = anystate::open("memory://?cache.max_items=100&cache.ttl=60s")
        .await
        .unwrap();
    b.put(b"k", b"v").await.unwrap();
    for _ in 0..3 {
        assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert!(b.stats().await.hits >= 2);
}

/// A TOML file, JSON and a URL describe the same stack.
#[test]
fn toml_json_and_url_describe_the_same_config() {
    let toml: BackendConfig = toml::from_str(
        r#"
        kind = "redis"
        url = "redis://:secret@cache.internal:6379"
        prefix = "optimizer"
        default_ttl = "1h"
        pool_size = 4
        timeout = "250ms"
        cache = { max_items = 1000, ttl = "60s" }
        retry = { max_times = 3 }
        "#,
    )
    .unwrap();
    let json: BackendConfig = serde_json::from_str(
        r#"{"kind":"redis","url":"redis://:secret@cache.internal:6379","prefix":"optimizer",
            "default_ttl":3600,"pool_size":4,"timeout":"250ms",
            "cache":{"max_items":1000,"ttl":"1m"},"retry":{"max_times":3}}"#,
    )
    .unwrap();
    let url = BackendConfig::from_url(
        "redis://:secret@cache.internal:6379?prefix=optimizer&default_ttl=1h&pool_size=4&timeout=250ms&cache.max_items=1000&cache.ttl=60s&retry.max_times=3",
    )
    .unwrap();
    let mut expected = RedisOptions {
        url: "redis://:secret@cache.internal:6379".into(),
        prefix: Some("optimizer".into()),
        pool_size: Some(4),
        ..RedisOptions::default()
    };
    expected.default_ttl = Some(Duration::from_secs(3600));
    expected.timeout = Some(Duration::from_millis(250));
    expected.cache = Some(CacheOptions {
        max_items: Some(1000),
        ttl: Some(Duration::from_secs(60)),
    });
    expected.retry = Some(RetryOptions {
        max_times: Some(3),
        ..RetryOptions::default()
    });
    let expected = BackendConfig::Redis(expected);
    assert_eq!(toml, expected);
    assert_eq!(json, expected);
    assert_eq!(url, expected);
    // And back: serialised, then read again.
    let again: BackendConfig =
        serde_json::from_str(&serde_json::to_string(&expected).unwrap()).unwrap();
    assert_eq!(again, expected);
}

/// Unknown fields in a config file are refused by the format's parser, naming the field.
#[test]
fn unknown_config_fields_are_refused() {
    let err = toml::from_str::<BackendConfig>("kind = \"memory\"\nmax_entires = 3\n").unwrap_err();
    assert!(err.to_string().contains("max_entires"), "{err}");
    let err = toml::from_str::<BackendConfig>("kind = \"mongo\"\n").unwrap_err();
    assert!(err.to_string().contains("mongo"), "{err}");
}

/// `from_env` reads `STATE_URL` and the shared options' variables.
#[tokio::test]
async fn from_env_reads_state_url_and_friends() {
    let vars = |name: &str| match name {
        "STATE_URL" => Some("memory://?max_entries=5".to_owned()),
        "STATE_DEFAULT_TTL" => Some("30m".to_owned()),
        "STATE_CACHE_MAX_ITEMS" => Some("50".to_owned()),
        _ => None,
    };
    let config = BackendConfig::from_env_with(vars).unwrap();
    let BackendConfig::Memory(o) = &config else {
        panic!("not memory: {config:?}")
    };
    assert_eq!(o.max_entries, Some(5));
    assert_eq!(o.default_ttl, Some(Duration::from_secs(1800)));
    assert_eq!(o.cache.as_ref().unwrap().max_items, Some(50));
    let b = config.open().await.unwrap();
    b.put(b"k", b"v").await.unwrap();
    assert!(b.ttl(b"k").await.unwrap().unwrap() <= Duration::from_secs(1800));

    let err = config_err(BackendConfig::from_env_with(|_| None));
    assert!(err.message().contains("STATE_URL"), "{err}");
    let twice = |name: &str| match name {
        "STATE_URL" => Some("memory://?default_ttl=1h".to_owned()),
        "STATE_DEFAULT_TTL" => Some("30m".to_owned()),
        _ => None,
    };
    let err = config_err(BackendConfig::from_env_with(twice));
    assert!(err.message().contains("`default_ttl`"), "{err}");
}

/// Unknown options and bad values name the option; unknown schemes name the scheme.
#[tokio::test]
async fn bad_urls_and_options_are_config_invalid_naming_the_option() {
    for (url, named) in [
        ("memory://?max_entires=3", "`max_entires`"),
        ("memory://?default_ttl=soon", "`default_ttl`"),
        ("memory://?default_ttl=0s", "`default_ttl`"),
        ("memory://?max_entries=-1", "`max_entries`"),
        ("memory://?cache.max_items=0", "`cache.max_items`"),
        ("memory://?timeout=0ms", "`timeout`"),
        ("memory://?namespace=a:b:c", "`namespace`"),
        (
            "memory://?retry.min_delay=2s&retry.max_delay=1s",
            "`retry.min_delay`",
        ),
        ("memory://?prefix=x", "`prefix`"),
        ("memory://host", "memory://"),
        ("sled://", "sled://"),
        ("sled:///tmp/x?tree=__expiry", "`tree`"),
        ("sled:///tmp/x?sync_writes=maybe", "`sync_writes`"),
        ("redis://localhost?table=t", "`table`"),
        ("redis://localhost?pool_size=0", "`pool_size`"),
        ("redis://localhost?pool_size=many", "`pool_size`"),
        ("redis://localhost?prefix=a:b:c", "`prefix`"),
        ("postgres://u@localhost/db?table=bad;name", "`table`"),
        ("postgres://u@localhost/db?pool_size=0", "`pool_size`"),
        (
            "postgres://u@localhost/db?statement_timeout=0ms",
            "`statement_timeout`",
        ),
        (
            "postgres://u@localhost/db?no_such_option=1",
            "no_such_option",
        ),
        ("mongodb://localhost", "`mongodb`"),
        ("localhost:6379", "not a backend URL"),
    ] {
        let err = open_err(url).await;
        assert!(err.message().contains(named), "{url}: {err}");
    }
}

/// Passwords never appear in errors or `Debug`, whatever goes wrong.
#[tokio::test]
async fn secrets_never_appear_in_errors_or_debug() {
    for url in [
        "redis://:hunter2@localhost?bogus=1",
        "redis://user:hunter2@localhost?pool_size=x",
        "rediss://user:hunter2@localhost?prefix=a:b:c",
        "redis-cluster://user:hunter2@localhost:1?node=localhost:2&default_ttl=zz",
        "postgres://app:hunter2@localhost/db?table=1bad",
        "postgres://app:hunter2@localhost/db?sslpassword_typo=hunter2",
        "postgres://app:hunter2@localhost/db?cache.max_items=0",
        "postgress://app:hunter2@localhost/db",
        "hunter2",
    ] {
        let err = open_err(url).await;
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{url}: {text}");
    }
    let config =
        BackendConfig::from_url("redis://app:hunter2@localhost:6379?prefix=p&node=h2:1").unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
    let config = BackendConfig::from_url("postgres://app:hunter2@db/x?table=t").unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}

fn server_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the servers)")
    })
}

/// On Redis, `namespace` nests under `prefix`: a backend on the bare prefix sees the
/// namespaced key as `namespace:key`.
#[tokio::test]
async fn redis_prefix_and_namespace_options_place_keys() {
    let url = server_env("STATE_REDIS_URL");
    let prefix = state_testkit::unique_namespace();
    let spaced = anystate::open(&format!("{url}?prefix={prefix}&namespace=tenant"))
        .await
        .unwrap();
    spaced.put(b"k", b"v").await.unwrap();
    let bare = anystate::open(&format!("{url}?prefix={prefix}"))
        .await
        .unwrap();
    assert_eq!(
        bare.list_keys(b"").await.unwrap(),
        vec![Bytes::from_static(b"tenant:k")]
    );
    let other = anystate::open(&format!("{url}?prefix={prefix}x"))
        .await
        .unwrap();
    assert_eq!(other.count().await.unwrap(), 0);
    bare.clear().await.unwrap();
}

/// `timeout` bounds each operation: a batch of 500 round trips cannot finish in 1 ms, and
/// does without the option.
#[tokio::test]
async fn timeout_option_bounds_each_operation() {
    let url = server_env("STATE_REDIS_URL");
    let prefix = state_testkit::unique_namespace();
    let keys: Vec<Vec<u8>> = (0..50_000).map(|i| format!("k{i}").into_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let bounded = anystate::open(&format!("{url}?prefix={prefix}&timeout=1ms"))
        .await
        .unwrap();
    let err = bounded.batch_get(&keys).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let free = anystate::open(&format!("{url}?prefix={prefix}"))
        .await
        .unwrap();
    assert_eq!(free.batch_get(&keys).await.unwrap().len(), keys.len());
}

/// `table` and `statement_timeout` reach PostgreSQL: the table is created and used.
#[tokio::test]
async fn postgres_table_option_names_the_table() {
    let url = server_env("STATE_POSTGRES_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    let table = state_testkit::unique_namespace();
    let a = anystate::open(&format!("{url}{sep}table={table}&statement_timeout=5s"))
        .await
        .unwrap();
    a.put(b"k", b"v").await.unwrap();
    let again = anystate::open(&format!("{url}{sep}table={table}"))
        .await
        .unwrap();
    assert_eq!(again.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let other = anystate::open(&format!("{url}{sep}table={table}_b"))
        .await
        .unwrap();
    assert_eq!(other.count().await.unwrap(), 0);
    a.clear().await.unwrap();
}

/// `pool_stats()` through `Arc<dyn StateBackend>` (issue 14 point 3): the pool's figures on
/// Redis and PostgreSQL, through every layer and the cache, and `None` where there is no pool.
#[tokio::test]
async fn pool_stats_reach_through_the_trait_object_and_every_layer() {
    let memory = anystate::open("memory://").await.unwrap();
    assert_eq!(memory.pool_stats(), None);
    let redis = server_env("STATE_REDIS_URL");
    let postgres = server_env("STATE_POSTGRES_URL");
    let table = format!("pool_{}", state_testkit::unique_namespace());
    let prefix = state_testkit::unique_namespace();
    let layers = "namespace=t&cache.max_items=10&timeout=5s&retry.max_times=2";
    for url in [
        format!("{redis}?prefix={prefix}&pool_size=3"),
        format!("{redis}?prefix={prefix}&pool_size=3&{layers}"),
        format!("{postgres}?table={table}&pool_size=3"),
        format!("{postgres}?table={table}&pool_size=3&{layers}"),
    ] {
        let backend = anystate::open(&url).await.unwrap();
        backend.put(b"k", b"v").await.unwrap();
        let stats = backend
            .pool_stats()
            .unwrap_or_else(|| panic!("no pool figures through {}", state_core::redact_url(&url)));
        assert_eq!(stats.max_connections, 3, "{stats:?}");
        assert!(
            stats.active_connections + stats.idle_connections >= 1,
            "{stats:?}"
        );
        backend.clear().await.unwrap();
    }
}
