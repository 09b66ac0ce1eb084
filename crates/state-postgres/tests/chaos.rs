//! The chaos soak (issue 11) on PostgreSQL: 16 tasks of mixed `get`, `put`,
//! `compare_and_swap`, `set_if_not_exists` and `get_and_delete` through a fault proxy in front
//! of the primary (`STATE_POSTGRES_URL`) that loses replies, resets connections, adds latency
//! and blackholes traffic at random; no acknowledged write may be lost, no SETNX key may have
//! two winners, and the history must be linearizable ([`state_testkit::chaos`]); the final
//! state is read on a direct connection. `STATE_CHAOS_SECS` (default 30) bounds the soak;
//! `STATE_CHAOS_SEED` repeats one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use state_postgres::{PostgresConfig, PostgresStateBackend};
use state_test_servers::proxy::FaultProxy;
use state_testkit::chaos::{self, FaultInjector, SoakConfig};

fn url() -> String {
    std::env::var("STATE_POSTGRES_URL").expect("STATE_POSTGRES_URL: run `cargo xtask test`")
}

/// `url` with its host and port replaced by `127.0.0.1:port`.
fn url_via(port: u16) -> String {
    let url = url();
    let (scheme_user, rest) = url.split_once('@').expect("postgres://user@host:port/db");
    let path = rest.split_once('/').map_or("postgres", |(_, path)| path);
    format!("{scheme_user}@127.0.0.1:{port}/{path}")
}

fn upstream() -> SocketAddr {
    let url = url();
    let rest = url.split_once('@').expect("user@host").1;
    rest.split('/')
        .next()
        .unwrap()
        .parse()
        .expect("an IP host and a port")
}

/// What a latency-sensitive service would configure: a pool smaller than the task count (so
/// tasks queue for connections), a 1 s command timeout (a blackhole stalls calls that long).
async fn open(url: String, table: &str) -> PostgresStateBackend {
    let config = PostgresConfig::builder()
        .url(url)
        .table(table)
        .pool_size(8)
        .command_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    PostgresStateBackend::with_config(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_primary_loses_no_acknowledged_write() {
    let table = format!("chaos_{}", state_testkit::unique_namespace());
    let proxy = Arc::new(FaultProxy::start(upstream()).await.unwrap());
    let direct = Arc::new(open(url(), &table).await);
    let proxied = Arc::new(open(url_via(proxy.port()), &table).await);
    let report = chaos::run(
        "postgres primary",
        proxied,
        direct.clone(),
        vec![proxy as Arc<dyn FaultInjector>],
        &SoakConfig::default(),
    )
    .await
    .unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!("{report}");
    assert!(report.faults_fired > 0, "{report}");
}
