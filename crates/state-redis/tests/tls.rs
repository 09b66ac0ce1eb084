//! TLS against the TLS-only Redis `cargo xtask test` starts (`STATE_REDIS_TLS_URL`, with
//! the test CA in `STATE_TLS_CA_FILE`): `rediss://` verifies the server by default, a custom
//! CA works, a wrong CA or a plain `redis://` to the TLS port fails.

use std::time::Duration;

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisConfigBuilder, RedisStateBackend};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run `cargo xtask test`"))
}

fn builder(url: &str) -> RedisConfigBuilder {
    RedisConfig::builder()
        .url(url)
        .key_prefix(format!("tls-{}", state_testkit::unique_namespace()))
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
        .max_retries(0)
}

/// With the test CA, `rediss://` connects and works; the config says TLS.
#[tokio::test]
async fn rediss_with_custom_ca_works() {
    let config = builder(&env("STATE_REDIS_TLS_URL"))
        .tls_ca_file(env("STATE_TLS_CA_FILE"))
        .build()
        .unwrap();
    assert!(config.tls());
    assert!(config.redacted_url().starts_with("rediss://"));
    let b = RedisStateBackend::new(config).await.unwrap();
    b.put(b"k", b"v").await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    b.clear().await.unwrap();
}

/// Without a CA, `rediss://` verifies against the system's roots, which do not trust the
/// test CA: the connection fails instead of skipping verification. A wrong CA fails too.
#[tokio::test]
async fn rediss_verifies_by_default_and_refuses_a_wrong_ca() {
    let url = env("STATE_REDIS_TLS_URL");
    let default = builder(&url).build().unwrap();
    assert!(RedisStateBackend::new(default).await.is_err());
    let wrong = builder(&url)
        .tls_ca_file(env("STATE_TLS_OTHER_CA_FILE"))
        .build()
        .unwrap();
    assert!(RedisStateBackend::new(wrong).await.is_err());
}

/// A plain `redis://` URL to the TLS port never "works": no silent plain text.
#[tokio::test]
async fn plain_url_to_a_tls_server_fails() {
    let url = env("STATE_REDIS_TLS_URL").replacen("rediss://", "redis://", 1);
    let config = builder(&url).build().unwrap();
    assert!(!config.tls());
    assert!(RedisStateBackend::new(config).await.is_err());
}
