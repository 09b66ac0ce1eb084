//! Faults on the wire and around transactions (issue 11), against the primary `cargo xtask
//! test` starts (`STATE_POSTGRES_URL`):
//!
//! - a proxy forwards a write, swallows the server's reply and resets the connection: every
//!   write answers the truth or `OutcomeUnknown`, checked against the table read on a direct
//!   connection; a lost `COMMIT` reply likewise;
//! - a transaction with a failed statement cannot commit, and says the transaction was
//!   rolled back;
//! - cancelling `begin_transaction` after every possible number of polls never leaves an
//!   `idle in transaction` connection in the pool (`pg_stat_activity`).

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::{ErrorKind, StateBackend, StateResult};
use state_postgres::tokio_postgres::{self, NoTls};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use state_test_servers::proxy::{FaultProxy, ProxyFault};

fn url() -> String {
    std::env::var("STATE_POSTGRES_URL").expect("STATE_POSTGRES_URL: run `cargo xtask test`")
}

fn table(tag: &str) -> String {
    format!("{tag}_{}", state_testkit::unique_namespace())
}

/// `url` with its host and port replaced by `127.0.0.1:port` and an `application_name`.
fn url_via(port: Option<u16>, app: &str) -> String {
    let url = url();
    let (scheme_user, rest) = url.split_once('@').expect("postgres://user@host:port/db");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, "postgres"));
    let hostport = port.map_or_else(|| hostport.to_owned(), |p| format!("127.0.0.1:{p}"));
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{scheme_user}@{hostport}/{path}{sep}application_name={app}")
}

fn upstream() -> SocketAddr {
    let url = url();
    let rest = url.split_once('@').expect("user@host").1;
    let hostport = rest.split('/').next().unwrap();
    hostport.parse().expect("an IP host and a port")
}

async fn raw() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn open(url: String, table: &str) -> PostgresStateBackend {
    let config = PostgresConfig::builder()
        .url(url)
        .table(table)
        .pool_size(1)
        .sweep_interval(None)
        .command_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    PostgresStateBackend::with_config(config).await.unwrap()
}

/// An applied write whose reply was lost answers the truth or `OutcomeUnknown`; any definite
/// error would claim it was not applied.
fn check<T: PartialEq + Debug>(op: &str, answer: StateResult<T>, truth: &T) -> bool {
    match answer {
        Ok(value) => {
            assert_eq!(&value, truth, "{op}: a wrong definite answer");
            false
        }
        Err(err) => {
            assert_eq!(
                err.kind(),
                ErrorKind::OutcomeUnknown,
                "{op}: an applied write reported as {err:?}"
            );
            assert!(!err.is_retryable(), "{op}");
            true
        }
    }
}

/// Waits until the backend answers again (the pool drops the reset connection and opens a
/// new one through the proxy).
async fn recovered(backend: &PostgresStateBackend) {
    let until = Instant::now() + Duration::from_secs(10);
    while backend.get(b"probe").await.is_err() {
        assert!(Instant::now() < until, "the backend did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_give_the_truth_or_outcome_unknown() {
    let name = table("wire");
    let proxy = FaultProxy::start(upstream()).await.unwrap();
    let proxied = open(url_via(Some(proxy.port()), "state_wire"), &name).await;
    let direct = open(url(), &name).await;
    let v = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
    let mut unknown = 0;
    let mut fired = 0;

    macro_rules! lost {
        ($op:expr, $warm:expr, $call:expr, $truth:expr) => {{
            recovered(&proxied).await;
            // Once on this connection first, so the statement is prepared and the faulted
            // chunk is the statement's execution.
            let _ = $warm.await;
            proxy.set_fault(ProxyFault::ReplyLostThenReset);
            let answer = $call.await;
            assert_eq!(proxy.faults_fired(), fired + 1, "{}: the fault fired", $op);
            fired += 1;
            unknown += usize::from(check($op, answer, &$truth));
        }};
    }

    lost!(
        "put",
        proxied.put(b"warm", b"x"),
        proxied.put(b"put", b"new"),
        ()
    );
    assert_eq!(direct.get(b"put").await.unwrap(), v("new"));

    lost!(
        "put_with_ttl",
        proxied.put_with_ttl(b"warm", b"x", Duration::from_secs(60)),
        proxied.put_with_ttl(b"ttl", b"new", Duration::from_secs(60)),
        ()
    );
    assert_eq!(direct.get(b"ttl").await.unwrap(), v("new"));

    lost!(
        "set_if_not_exists",
        proxied.set_if_not_exists(b"warm", b"x", None),
        proxied.set_if_not_exists(b"nx", b"mine", None),
        true
    );
    assert_eq!(direct.get(b"nx").await.unwrap(), v("mine"));

    direct.put(b"cas", b"v1").await.unwrap();
    lost!(
        "compare_and_swap",
        proxied.compare_and_swap(b"warm", Some(b"nope"), Some(b"x")),
        proxied.compare_and_swap(b"cas", Some(b"v1"), Some(b"v2")),
        true
    );
    assert_eq!(direct.get(b"cas").await.unwrap(), v("v2"));

    lost!(
        "compare_and_swap from absent",
        proxied.compare_and_swap(b"warm", None, Some(b"x")),
        proxied.compare_and_swap(b"cas-new", None, Some(b"v1")),
        true
    );
    assert_eq!(direct.get(b"cas-new").await.unwrap(), v("v1"));

    direct.put(b"cas-del", b"v1").await.unwrap();
    lost!(
        "compare_and_swap to delete",
        proxied.compare_and_swap(b"warm", Some(b"nope"), None),
        proxied.compare_and_swap(b"cas-del", Some(b"v1"), None),
        true
    );
    assert_eq!(direct.get(b"cas-del").await.unwrap(), None);

    direct.put(b"gd", b"value").await.unwrap();
    lost!(
        "get_and_delete",
        proxied.get_and_delete(b"warm-missing"),
        proxied.get_and_delete(b"gd"),
        v("value")
    );
    assert_eq!(direct.get(b"gd").await.unwrap(), None);

    direct.put(b"del", b"x").await.unwrap();
    lost!(
        "delete",
        proxied.delete(b"warm-missing"),
        proxied.delete(b"del"),
        true
    );
    assert_eq!(direct.get(b"del").await.unwrap(), None);

    direct
        .batch_put(&[(b"bd1", b"x"), (b"bd2", b"x")])
        .await
        .unwrap();
    lost!(
        "batch_delete",
        proxied.batch_delete(&[b"warm-missing"]),
        proxied.batch_delete(&[b"bd1", b"bd2", b"bd-missing"]),
        2
    );
    assert_eq!(
        direct.batch_get(&[b"bd1", b"bd2"]).await.unwrap(),
        vec![None, None]
    );

    lost!(
        "batch_put",
        proxied.batch_put(&[(b"warm", b"x")]),
        proxied.batch_put(&[(b"bp1", b"a"), (b"bp2", b"b")]),
        ()
    );
    assert_eq!(
        direct.batch_get(&[b"bp1", b"bp2"]).await.unwrap(),
        vec![v("a"), v("b")]
    );

    direct
        .batch_put(&[(b"dp:1", b"x"), (b"dp:2", b"x")])
        .await
        .unwrap();
    lost!(
        "delete_prefix",
        proxied.delete_prefix(b"warm-missing:"),
        proxied.delete_prefix(b"dp:"),
        2
    );
    assert!(direct.list_keys(b"dp:").await.unwrap().is_empty());

    // A transaction whose COMMIT reply is lost: committed (the server got COMMIT), so the
    // answer is Ok or OutcomeUnknown, never a definite error.
    recovered(&proxied).await;
    let tx = proxied.begin_transaction().await.unwrap();
    tx.put(b"tx", b"committed").await.unwrap();
    proxy.set_fault(ProxyFault::ReplyLostThenResetOn(b"COMMIT"));
    let answer = tx.commit().await;
    assert_eq!(proxy.faults_fired(), fired + 1, "commit: the fault fired");
    fired += 1;
    unknown += usize::from(check("commit", answer, &()));
    assert_eq!(direct.get(b"tx").await.unwrap(), v("committed"));

    let cleared = direct.count().await.unwrap();
    assert!(cleared > 0);
    lost!("clear", proxied.clear(), proxied.clear(), ());
    assert_eq!(direct.count().await.unwrap(), 0);

    // Reads are not unknown: they fail as Connection (or are answered) and change nothing.
    recovered(&proxied).await;
    proxied.get(b"nothing").await.unwrap();
    proxy.set_fault(ProxyFault::ReplyLostThenReset);
    let read = proxied.get(b"nothing").await;
    assert!(
        read.as_ref()
            .err()
            .is_none_or(|e| e.kind() == ErrorKind::Connection),
        "{read:?}"
    );
    assert_eq!(proxy.faults_fired(), fired + 1);

    // Every write with a lost reply has no way to learn its answer: all are unknown.
    assert_eq!(unknown, 13, "{unknown} outcomes unknown");
    drop(proxied);
    direct.clear().await.unwrap();
}

/// A server that stops answering (the proxy forwards requests and drops replies): a write
/// sent before the client-side `command_timeout` passed is `OutcomeUnknown` (and here it was
/// applied), a read is a retryable `Timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_after_sending_a_write_is_outcome_unknown() {
    let name = table("wirehang");
    let proxy = FaultProxy::start(upstream()).await.unwrap();
    let config = PostgresConfig::builder()
        .url(url_via(Some(proxy.port()), "state_wire_hang"))
        .table(name.as_str())
        .pool_size(2)
        .sweep_interval(None)
        .command_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let proxied = PostgresStateBackend::with_config(config).await.unwrap();
    let direct = open(url(), &name).await;
    proxied.put(b"warm", b"x").await.unwrap();
    proxied.get(b"warm").await.unwrap();
    proxy.set_fault(ProxyFault::Blackhole);
    let err = proxied.put(b"k", b"v").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        direct.get(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v")),
        "the server applied it"
    );
    let err = proxied.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.is_retryable());
    proxy.set_fault(ProxyFault::None);
    drop(proxied);
    direct.clear().await.unwrap();
}

/// A statement that fails inside a transaction (a statement timeout on a row another
/// transaction locked) marks it failed: later statements and `commit` fail, saying the
/// transaction was rolled back, and nothing it wrote is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_failed_statement_cannot_commit() {
    let name = table("txfail");
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .pool_size(3)
        .sweep_interval(None)
        .statement_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"locked", b"0").await.unwrap();
    let holder = b.begin_transaction().await.unwrap();
    holder.get_for_update(b"locked").await.unwrap();

    let tx = b.begin_transaction().await.unwrap();
    tx.put(b"written", b"1").await.unwrap();
    let err = tx.get_for_update(b"locked").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        !err.is_retryable(),
        "a statement inside a transaction: {err}"
    );
    assert!(
        err.to_string().contains("retry the whole transaction"),
        "{err}"
    );
    let later = tx.put(b"later", b"1").await.unwrap_err();
    assert!(later.to_string().contains("retry the whole transaction"));
    let err = tx.commit().await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(b.get(b"written").await.unwrap(), None, "nothing committed");
    holder.rollback().await.unwrap();

    // A statement whose future is dropped before its answer (a caller's timeout) leaves the
    // transaction in an unknown state: commit refuses too.
    let holder = b.begin_transaction().await.unwrap();
    holder.get_for_update(b"locked").await.unwrap();
    let tx = b.begin_transaction().await.unwrap();
    tx.put(b"written", b"2").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), tx.get_for_update(b"locked"))
            .await
            .is_err(),
        "still waiting for the lock"
    );
    let err = tx.commit().await.unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    holder.rollback().await.unwrap();
    assert_eq!(b.get(b"written").await.unwrap(), None);

    // And a healthy transaction still commits.
    let tx = b.begin_transaction().await.unwrap();
    tx.put(b"written", b"3").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        b.get(b"written").await.unwrap(),
        Some(Bytes::from_static(b"3"))
    );
    b.clear().await.unwrap();
}

/// Polls the inner future at most `polls` times, then gives up (drops it).
struct CancelAfter<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// Connections of `app` that sit inside a transaction.
async fn idle_in_transaction(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

/// `begin_transaction` cancelled after 0, 1, 2, ... polls, until it completes: no connection
/// ever goes back to the pool inside the transaction. With a pool of one connection, every
/// later plain `put` runs on that connection and must be visible to others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_begin_transaction_at_every_poll_leaves_no_open_transaction() {
    let name = table("txcancel");
    let app = format!("state_cancel_{}", state_testkit::unique_namespace());
    let b = open(url_via(None, &app), &name).await;
    let check = raw().await;
    let mut completed_at = None;
    for polls in 0..200 {
        let begin = CancelAfter {
            inner: Box::pin(b.begin_transaction()),
            polls,
        };
        let outcome = begin.await;
        // Let a spawned rollback run, as a caller's next request would.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let key = format!("after-{polls}");
        match outcome {
            None => {}
            Some(tx) => {
                let tx = tx.unwrap();
                drop(tx);
                completed_at = Some(polls);
            }
        }
        // The pooled connection is not inside a transaction: a put is visible elsewhere.
        b.put(key.as_bytes(), b"v").await.unwrap();
        let seen = check
            .query_opt(
                &format!("SELECT 1 FROM {} WHERE key = $1", b.table().quoted()),
                &[&key.as_bytes()],
            )
            .await
            .unwrap();
        assert!(
            seen.is_some(),
            "put after cancelling at poll {polls} is invisible"
        );
        assert_eq!(
            idle_in_transaction(&check, &app).await,
            0,
            "cancelled at poll {polls}"
        );
        if completed_at.is_some() {
            break;
        }
    }
    let completed_at = completed_at.expect("begin_transaction completes");
    assert!(
        completed_at >= 2,
        "cancellation points tried: {completed_at}"
    );
    b.clear().await.unwrap();
}

/// Statements of connections whose `application_name` is `app` that are still running.
async fn running(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = $1 AND state = 'active'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

/// A statement still running when the client-side `command_timeout` passes (a `put` waiting
/// for a row lock another transaction holds) is cancelled on the server, and its connection
/// is not handed to the next caller: with a pool of one connection and no server-side
/// `statement_timeout`, the next operations answer at once while the lock is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_cancels_the_statement_on_the_server() {
    let name = table("cancel");
    let app = format!("state_cancel_{}", std::process::id());
    let timeout = Duration::from_millis(300);
    let config = PostgresConfig::builder()
        .url(url_via(None, &app))
        .table(name.as_str())
        .pool_size(1)
        .sweep_interval(None)
        .command_timeout(timeout)
        .no_statement_timeout()
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"locked", b"0").await.unwrap();
    let holder = raw().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query(
            &format!("SELECT 1 FROM \"{name}\" WHERE key = $1 FOR UPDATE"),
            &[&b"locked".as_slice()],
        )
        .await
        .unwrap();

    let started = Instant::now();
    let err = b.put(b"locked", b"1").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Timeout),
        "{err:?}"
    );
    let timed_out = started.elapsed();
    let observer = raw().await;
    while running(&observer, &app).await > 0 {
        assert!(
            started.elapsed() < timeout + Duration::from_secs(2),
            "the abandoned statement is still running on the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gone = started.elapsed();
    eprintln!(
        "command timeout after {timed_out:?}; statement gone from pg_stat_activity after \
         {gone:?} ({:?} after the timeout)",
        gone.saturating_sub(timed_out)
    );

    // The pool's only connection was not reused busy: the next calls answer at once, with
    // the row lock still held.
    let next = Instant::now();
    b.put(b"other", b"x").await.unwrap();
    assert_eq!(
        b.get(b"other").await.unwrap(),
        Some(Bytes::from_static(b"x"))
    );
    let next = next.elapsed();
    eprintln!("put + get on the one-connection pool after the timeout: {next:?}");
    assert!(next < timeout, "{next:?}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        b.get(b"locked").await.unwrap(),
        Some(Bytes::from_static(b"0")),
        "the cancelled put was not applied"
    );
    b.clear().await.unwrap();
}

/// By default every connection's server-side `statement_timeout` is the command timeout;
/// `statement_timeout(..)` sets another, `no_statement_timeout()` none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_follows_the_command_timeout_by_default() {
    let name = table("stmt_to");
    let shown = |builder: state_postgres::PostgresConfigBuilder| {
        let name = name.clone();
        async move {
            let config = builder
                .url(url())
                .table(name.as_str())
                .pool_size(1)
                .sweep_interval(None)
                .build()
                .unwrap();
            let b = PostgresStateBackend::with_config(config).await.unwrap();
            let client = b.pool().get().await.unwrap();
            let row = client
                .query_one("SHOW statement_timeout", &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(
        shown(PostgresConfig::builder().command_timeout(Duration::from_millis(1500))).await,
        "1500ms"
    );
    assert_eq!(
        shown(
            PostgresConfig::builder()
                .command_timeout(Duration::from_millis(1500))
                .statement_timeout(Duration::from_millis(700))
        )
        .await,
        "700ms"
    );
    assert_eq!(
        shown(PostgresConfig::builder().no_statement_timeout()).await,
        "0"
    );

    // And the server stops a blocked statement by itself, even without the client's cancel.
    let config = PostgresConfig::builder()
        .url(url())
        .table(name.as_str())
        .pool_size(1)
        .sweep_interval(None)
        .command_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let b = PostgresStateBackend::with_config(config).await.unwrap();
    b.put(b"locked", b"0").await.unwrap();
    let holder = raw().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query(
            &format!("SELECT 1 FROM \"{name}\" WHERE key = $1 FOR UPDATE"),
            &[&b"locked".as_slice()],
        )
        .await
        .unwrap();
    let err = b.put(b"locked", b"1").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Timeout),
        "{err:?}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    b.clear().await.unwrap();
}

/// A `LISTEN` connection that stops answering without closing (the proxy blackholes it) is
/// noticed by the heartbeat within twice its interval: the subscription yields its
/// `Connection` error, reconnects once the network is back, and delivers messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_heartbeat_detects_a_blackholed_connection_and_resubscribes() {
    let name = table("heartbeat");
    let heartbeat = Duration::from_millis(250);
    let bound = heartbeat * 2;
    let proxy = FaultProxy::start(upstream()).await.unwrap();
    let config = PostgresConfig::builder()
        .url(url_via(Some(proxy.port()), "state_heartbeat"))
        .table(name.as_str())
        .pool_size(1)
        .sweep_interval(None)
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_secs(2))
        .listen_heartbeat(Some(heartbeat))
        .build()
        .unwrap();
    let listener = PostgresStateBackend::with_config(config).await.unwrap();
    let publisher = open(url(), &name).await;
    let mut sub = listener.subscribe("inv").await.unwrap();
    publisher.publish("inv", b"one").await.unwrap();
    let first = next(&mut sub, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.unwrap(), Bytes::from_static(b"one"));

    proxy.set_fault(ProxyFault::Blackhole);
    let started = Instant::now();
    let gap = next(&mut sub, Duration::from_secs(10))
        .await
        .expect("the silent connection was never noticed")
        .expect("the stream goes on");
    let detected = started.elapsed();
    let err = gap.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    eprintln!("blackholed LISTEN connection detected after {detected:?} (bound {bound:?})");
    assert!(
        detected <= bound + Duration::from_millis(300),
        "{detected:?} > {bound:?}"
    );

    proxy.set_fault(ProxyFault::None);
    let back = Instant::now();
    loop {
        // Messages published before it listens again are lost (the documented gap).
        publisher.publish("inv", b"again").await.unwrap();
        match next(&mut sub, Duration::from_millis(100)).await {
            Ok(Some(Ok(message))) => {
                assert_eq!(message, Bytes::from_static(b"again"));
                break;
            }
            Ok(Some(Err(err))) => panic!("unexpected error after the network came back: {err}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => {}
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "invalidations did not resume"
        );
    }
    eprintln!(
        "messages delivered again {:?} after the network came back",
        back.elapsed()
    );
    publisher.clear().await.unwrap();
}

/// The next item of `sub`, or `Err` when none comes `within`.
async fn next(
    sub: &mut state_postgres::Subscription,
    within: Duration,
) -> Result<Option<StateResult<Bytes>>, tokio::time::error::Elapsed> {
    use futures_util::StreamExt;
    tokio::time::timeout(within, sub.next()).await
}
