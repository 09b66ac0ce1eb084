//! TLS against real servers: the TLS-enabled primary + replica `cargo xtask test` starts
//! (`STATE_POSTGRES_TLS_URL`, `STATE_POSTGRES_TLS_REPLICA_URLS`, certificates made at start
//! under `STATE_TLS_CA_FILE`) and the plain primary (`STATE_POSTGRES_URL`). TLS is decided per
//! connection from its parsed `sslmode`, and never turned off silently. Each check reads
//! `pg_stat_ssl` on the server, so "TLS used" is the server's word, not ours.

use std::time::Duration;

use state_core::{ErrorKind, StateBackend};
use state_postgres::tokio_postgres::{self, NoTls};
use state_postgres::{PostgresConfig, PostgresStateBackend, ReadConsistency, TlsMode};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: run `cargo xtask test`"))
}

fn tls_url() -> String {
    env("STATE_POSTGRES_TLS_URL")
}

fn tls_replica_url() -> String {
    env("STATE_POSTGRES_TLS_REPLICA_URLS")
        .split(',')
        .next()
        .expect("one replica")
        .to_owned()
}

fn ca() -> String {
    env("STATE_TLS_CA_FILE")
}

fn unique(tag: &str) -> String {
    format!("{tag}_{}", state_testkit::unique_namespace())
}

/// Host and port of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> (String, String) {
    let authority = url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    (host.to_owned(), port.to_owned())
}

/// Whether the server's sessions named `app` use TLS: one entry per session.
async fn sessions_ssl(server_url: &str, app: &str) -> Vec<bool> {
    let (client, connection) = tokio_postgres::connect(server_url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn open(config: PostgresConfig) -> PostgresStateBackend {
    PostgresStateBackend::with_config(config).await.unwrap()
}

/// `verify-full` with the test CA connects over TLS (chain and host name checked), in the
/// URL form and the libpq key=value form alike (spaces around `=` included).
#[tokio::test]
async fn verify_full_with_custom_ca_uses_tls_in_url_and_key_value_form() {
    let (host, port) = host_port(&tls_url());
    let app_url = unique("vf_url");
    let app_kv = unique("vf_kv");
    let forms = [
        (
            format!(
                "{}?sslmode=verify-full&sslrootcert={}&application_name={app_url}",
                tls_url(),
                ca()
            ),
            app_url,
        ),
        (
            format!(
                "host={host} port={port} user=postgres dbname=postgres sslmode = verify-full \
                 sslrootcert = '{}' application_name={app_kv}",
                ca()
            ),
            app_kv,
        ),
    ];
    for (url, app) in forms {
        let b = open(
            PostgresConfig::builder()
                .url(&url)
                .table(unique("tls").as_str())
                .build()
                .unwrap(),
        )
        .await;
        b.put(b"k", b"v").await.unwrap();
        assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
        let ssl = sessions_ssl(&tls_url(), &app).await;
        assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{url}: {ssl:?}");
        assert!(format!("{:?}", b.config()).contains("sslmode=verify-full"));
    }
}

/// A server certificate that does not chain to the given CA is refused, in `verify-full`,
/// `verify-ca` and `require` with a root certificate (libpq's rule), and by
/// `TlsMode::RequireWithCa`; the error says it is a connection (TLS) failure.
#[tokio::test]
async fn wrong_ca_is_refused() {
    let other = env("STATE_TLS_OTHER_CA_FILE");
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = format!("{}?sslmode={mode}&sslrootcert={other}", tls_url());
        let config = PostgresConfig::builder()
            .url(url)
            .connect_timeout(Duration::from_secs(3))
            .table(unique("wrongca").as_str())
            .build()
            .unwrap();
        let err = PostgresStateBackend::with_config(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{mode}: {err}");
    }
    let config = PostgresConfig::builder()
        .url(tls_url())
        .tls(TlsMode::RequireWithCa(other.into()))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let err = PostgresStateBackend::with_config(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    // The test CA itself is accepted by the same builder mode.
    let b = open(
        PostgresConfig::builder()
            .url(tls_url())
            .table(unique("rightca").as_str())
            .tls(TlsMode::RequireWithCa(ca().into()))
            .build()
            .unwrap(),
    )
    .await;
    assert!(b.health_check().await.unwrap());
}

/// `require`, `verify-ca` and `verify-full` against a server without TLS fail; never a
/// plain-text fallback.
#[tokio::test]
async fn tls_required_against_a_plain_server_fails() {
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{}?sslmode={mode}", env("STATE_POSTGRES_URL"));
        let config = PostgresConfig::builder()
            .url(url)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let err = PostgresStateBackend::with_config(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{mode}: {err}");
    }
}

/// The primary's URL asks for no TLS, the replica's for `require`: replica reads go over
/// TLS and the primary's connections do not (the choice is per connection, from each
/// connection's own string, never once from the primary's text).
#[tokio::test]
async fn replica_requiring_tls_uses_it_whatever_the_primary_says() {
    let primary_app = unique("prim");
    let replica_app = unique("repl");
    let b = open(
        PostgresConfig::builder()
            .url(format!(
                "{}?sslmode=disable&application_name={primary_app}",
                tls_url()
            ))
            .replica_urls([format!(
                "{}?sslmode=require&application_name={replica_app}",
                tls_replica_url()
            )])
            .read_consistency(ReadConsistency::Replica)
            .table(unique("repl_tls").as_str())
            .build()
            .unwrap(),
    )
    .await;
    b.put(b"k", b"v").await.unwrap();
    // Reads go to the replica (it may lag a few ms behind the write).
    for _ in 0..50 {
        if b.get(b"k").await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replica = sessions_ssl(&tls_replica_url(), &replica_app).await;
    assert!(
        !replica.is_empty() && replica.iter().all(|s| *s),
        "replica sessions: {replica:?}"
    );
    let primary = sessions_ssl(&tls_url(), &primary_app).await;
    assert!(
        !primary.is_empty() && primary.iter().all(|s| !*s),
        "primary sessions: {primary:?}"
    );
}

/// The LISTEN connection follows the primary's TLS choice like the pool does.
#[tokio::test]
async fn listen_connection_uses_tls_when_asked() {
    let app = unique("listen");
    let b = open(
        PostgresConfig::builder()
            .url(format!(
                "{}?sslmode=verify-full&sslrootcert={}&application_name={app}",
                tls_url(),
                ca()
            ))
            .table(unique("listen_tls").as_str())
            .build()
            .unwrap(),
    )
    .await;
    let _sub = b.subscribe("events").await.unwrap();
    let ssl = sessions_ssl(&tls_url(), &app).await;
    // At least the pool's connection and the listener's.
    assert!(ssl.len() >= 2 && ssl.iter().all(|s| *s), "{ssl:?}");
}

/// No `sslmode` means libpq's default, `prefer`: TLS when the server offers it.
#[tokio::test]
async fn default_mode_prefers_tls() {
    let app = unique("prefer");
    let b = open(
        PostgresConfig::builder()
            .url(format!("{}?application_name={app}", tls_url()))
            .table(unique("prefer").as_str())
            .build()
            .unwrap(),
    )
    .await;
    assert!(b.health_check().await.unwrap());
    let ssl = sessions_ssl(&tls_url(), &app).await;
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{ssl:?}");
}

/// `TlsMode::Disable` never overrides a connection string that asks for TLS.
#[tokio::test]
async fn disabling_tls_over_a_url_that_requires_it_is_a_config_error() {
    for url in [
        format!("{}?sslmode=require", tls_url()),
        "host=db sslmode=verify-full".to_owned(),
    ] {
        let err = PostgresConfig::builder()
            .url(url)
            .tls(TlsMode::Disable)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    }
    let err = PostgresConfig::builder()
        .url(tls_url())
        .replica_urls([format!("{}?sslmode=verify-ca", tls_replica_url())])
        .tls(TlsMode::Disable)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("replica 1"), "{err}");
}
