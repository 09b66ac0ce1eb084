//! Faults on the wire (issue 11): a proxy forwards a command, swallows the server's reply and
//! resets the connection. Every operation that changes state must then answer either the true
//! answer or `OutcomeUnknown`, checked against the server's real state read on a direct
//! connection. Before the fix, fred re-sent the command after reconnecting and the re-send
//! answered against the first copy (`set_if_not_exists` -> `false`, `get_and_delete` ->
//! `None`, `compare_and_swap` -> `false`).
//!
//! Standalone: one proxy in front of `STATE_REDIS_URL`. Cluster: the keys share one hash slot
//! (a hash tag in the prefix); a proxy goes in front of the primary owning it, and that node
//! announces the proxy's port (`CONFIG SET cluster-announce-port`), so `CLUSTER SLOTS`, which
//! fred routes by, sends the client through the proxy. The node's setting is restored at the
//! end (and by a guard on panic).

mod common;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Announce, addr_of, cluster_urls, primary_of, url};

use bytes::Bytes;
use state_core::{ErrorKind, StateBackend, StateResult};
use state_redis::{RedisConfig, RedisStateBackend};
use state_test_servers::proxy::{FaultProxy, ProxyFault};

/// A call that went through the proxy while the reply was lost: it was applied (the server
/// got it), so the answer must be the true one or `OutcomeUnknown`; any definite error would
/// claim it was not applied.
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
                "{op}: an applied call reported as {err:?}"
            );
            assert!(!err.is_retryable(), "{op}");
            true
        }
    }
}

/// Waits until `backend` answers again after its connection was reset (fred reconnects).
async fn recovered(backend: &RedisStateBackend) {
    let until = Instant::now() + Duration::from_secs(10);
    // A write: it also waits until the backend has drained the connection of an earlier
    // write whose reply was lost (a PING behind it), so that PING cannot meet the next fault.
    while backend.put(b"probe", b"1").await.is_err() {
        assert!(Instant::now() < until, "the backend did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs every state-changing operation once with its reply lost, through `proxied`, and
/// checks each answer against `direct`'s view of the server. Returns how many answers were
/// `OutcomeUnknown`.
async fn every_write_with_its_reply_lost(
    proxy: &FaultProxy,
    proxied: &RedisStateBackend,
    direct: &RedisStateBackend,
) -> usize {
    let v = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
    let mut unknown = 0;
    let mut fired = proxy.faults_fired();
    // Warm up: connected, scripts loaded.
    proxied
        .compare_and_swap(b"warm", None, Some(b"1"))
        .await
        .unwrap();
    proxied.get(b"warm").await.unwrap();

    macro_rules! lost {
        ($op:expr, $call:expr, $truth:expr) => {{
            recovered(proxied).await;
            proxy.set_fault(ProxyFault::ReplyLostThenReset);
            let answer = $call.await;
            assert_eq!(proxy.faults_fired(), fired + 1, "{}: the fault fired", $op);
            fired += 1;
            unknown += usize::from(check($op, answer, &$truth));
        }};
    }

    // SET NX of an absent key: the key now holds our value, so the answer is `true`.
    lost!(
        "set_if_not_exists",
        proxied.set_if_not_exists(b"nx", b"mine", None),
        true
    );
    assert_eq!(direct.get(b"nx").await.unwrap(), v("mine"));

    lost!(
        "set_if_not_exists with ttl",
        proxied.set_if_not_exists(b"nx-ttl", b"mine", Some(Duration::from_secs(60))),
        true
    );
    assert_eq!(direct.get(b"nx-ttl").await.unwrap(), v("mine"));

    direct.put(b"gd", b"value").await.unwrap();
    lost!(
        "get_and_delete",
        proxied.get_and_delete(b"gd"),
        Some(Bytes::from_static(b"value"))
    );
    assert_eq!(direct.get(b"gd").await.unwrap(), None);

    direct.put(b"cas", b"v1").await.unwrap();
    lost!(
        "compare_and_swap",
        proxied.compare_and_swap(b"cas", Some(b"v1"), Some(b"v2")),
        true
    );
    assert_eq!(direct.get(b"cas").await.unwrap(), v("v2"));

    direct.put(b"cas-del", b"v1").await.unwrap();
    lost!(
        "compare_and_swap to delete",
        proxied.compare_and_swap(b"cas-del", Some(b"v1"), None),
        true
    );
    assert_eq!(direct.get(b"cas-del").await.unwrap(), None);

    direct.put(b"del", b"x").await.unwrap();
    lost!("delete", proxied.delete(b"del"), true);
    assert_eq!(direct.get(b"del").await.unwrap(), None);

    direct
        .batch_put(&[(b"bd1", b"x"), (b"bd2", b"x")])
        .await
        .unwrap();
    lost!(
        "batch_delete",
        proxied.batch_delete(&[b"bd1", b"bd2", b"bd-missing"]),
        2
    );
    assert_eq!(
        direct.batch_get(&[b"bd1", b"bd2"]).await.unwrap(),
        vec![None, None]
    );

    direct
        .batch_put(&[(b"dp:1", b"x"), (b"dp:2", b"x"), (b"dp:3", b"x")])
        .await
        .unwrap();
    // `delete_prefix` sends SCAN, then DEL: lose the DEL's reply.
    recovered(proxied).await;
    proxy.set_fault(ProxyFault::ReplyLostThenResetOn(b"DEL"));
    let answer = proxied.delete_prefix(b"dp:").await;
    assert_eq!(
        proxy.faults_fired(),
        fired + 1,
        "delete_prefix: the fault fired"
    );
    fired += 1;
    // SCAN pages are deleted one by one: after an unknown outcome any part may be gone (the
    // contract allows a partial `delete_prefix`); a definite answer must be the whole truth.
    let left = direct.list_keys(b"dp:").await.unwrap().len();
    if answer.is_ok() {
        assert_eq!(left, 0, "delete_prefix answered {answer:?}");
    }
    unknown += usize::from(check("delete_prefix", answer, &3));

    direct
        .batch_put(&[(b"cl:1", b"x"), (b"cl:2", b"x")])
        .await
        .unwrap();
    recovered(proxied).await;
    proxy.set_fault(ProxyFault::ReplyLostThenResetOn(b"DEL"));
    let answer = proxied.clear().await;
    assert_eq!(proxy.faults_fired(), fired + 1, "clear: the fault fired");
    fired += 1;
    let left = direct.count().await.unwrap();
    if answer.is_ok() {
        assert_eq!(left, 0, "clear answered Ok");
    }
    unknown += usize::from(check("clear", answer, &()));
    direct.clear().await.unwrap();
    proxied
        .compare_and_swap(b"warm", None, Some(b"1"))
        .await
        .unwrap();

    // Plain writes may be re-sent by fred (their first copy cannot land later): the value is
    // ours either way, and a failure is OutcomeUnknown.
    direct.put(b"put", b"old").await.unwrap();
    lost!("put", proxied.put(b"put", b"new"), ());
    assert_eq!(direct.get(b"put").await.unwrap(), v("new"));

    lost!(
        "put_with_ttl",
        proxied.put_with_ttl(b"put-ttl", b"new", Duration::from_secs(60)),
        ()
    );
    assert_eq!(direct.get(b"put-ttl").await.unwrap(), v("new"));

    lost!(
        "batch_put",
        proxied.batch_put(&[(b"bp1", b"a"), (b"bp2", b"b")]),
        ()
    );
    assert_eq!(
        direct.batch_get(&[b"bp1", b"bp2"]).await.unwrap(),
        vec![v("a"), v("b")]
    );

    // Reads are re-sent and answer normally after the reset.
    lost!("get", proxied.get(b"put"), v("new"));
    recovered(proxied).await;
    assert_eq!(fired, proxy.faults_fired());
    unknown
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::builder()
        .url(url)
        .key_prefix(prefix)
        .command_timeout(Duration::from_secs(3))
        .max_retries(3)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lost_replies_give_the_truth_or_outcome_unknown() {
    let prefix = format!("wire-{}:", state_testkit::unique_namespace());
    let proxy = FaultProxy::start(addr_of(&url())).await.unwrap();
    let proxied = RedisStateBackend::new(config(
        &format!("redis://127.0.0.1:{}", proxy.port()),
        &prefix,
    ))
    .await
    .unwrap();
    let direct = RedisStateBackend::new(config(&url(), &prefix))
        .await
        .unwrap();
    let unknown = every_write_with_its_reply_lost(&proxy, &proxied, &direct).await;
    // The written-once commands cannot recover their answer: SET NX (x2), GETDEL, CAS (x2),
    // DEL, batch_delete, delete_prefix, clear are unknown; plain writes and reads recover.
    assert!(unknown >= 9, "{unknown} outcomes unknown");
    direct.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_replies_give_the_truth_or_outcome_unknown() {
    let urls = cluster_urls();
    let tag = format!("wire-{}", state_testkit::unique_namespace());
    let prefix = format!("{{{tag}}}:");
    let slot = fred::util::redis_keyslot(tag.as_bytes());
    let seed_port = addr_of(&urls[0]).port();
    let port = primary_of(seed_port, slot);
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let _restore = Announce::new(
        port,
        proxy.port(),
        urls.iter().map(|u| addr_of(u).port()).collect(),
    );
    let proxied = RedisStateBackend::new(
        RedisConfig::builder()
            .cluster_nodes([format!("redis://127.0.0.1:{}", proxy.port())])
            .key_prefix(&prefix)
            .command_timeout(Duration::from_secs(3))
            .max_retries(3)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // The real state, read from the node itself (a plain connection, not through the cluster
    // view, which may route through the proxy once gossip spreads the announced port).
    let direct = RedisStateBackend::new(config(&format!("redis://127.0.0.1:{port}"), &prefix))
        .await
        .unwrap();
    // Every key of the prefix lives on the proxied node: the proxy sees their traffic.
    let before = proxy.connections();
    assert!(before >= 1, "the client reached the node through the proxy");
    let unknown = every_write_with_its_reply_lost(&proxy, &proxied, &direct).await;
    assert!(unknown >= 9, "{unknown} outcomes unknown");
    direct.clear().await.unwrap();
}
