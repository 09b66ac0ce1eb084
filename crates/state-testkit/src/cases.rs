//! The conformance cases. Each one states its contract in its doc comment; the
//! [`crate::conformance_suite!`] macro turns every case into a named test.
//!
//! Cases that need a capability the backend does not declare return early after checking
//! nothing; the `capability_*` cases check the undeclared direction (`Unsupported`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use state_core::{ErrorKind, StateBackend, StateBackendExt, checkpoint};
use tokio::sync::Barrier;

use crate::support::{assert_kind, b, collect_scan, noise, open, open_named, sleep_ms, sorted};
use crate::{BackendFactory, FailingScan, ReferenceBackend, unique_namespace};

pub use crate::proof::{
    concurrent_history_over, model_based_sequences,
    proof_cancelled_operations_leave_before_or_after_state,
    proof_concurrent_histories_are_linearizable, proof_model_based_sequences_match_reference,
};

fn skip(what: &str) {
    eprintln!("skipped: the backend does not declare `{what}`");
}

// ---------------------------------------------------------------------------------------------
// CRUD and bytes
// ---------------------------------------------------------------------------------------------

/// Reading a key that was never written returns `None`, not an error.
pub async fn get_missing_key_returns_none(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert_eq!(s.get(b"missing").await.unwrap(), None);
}

/// `get` after `put` returns exactly the bytes written.
pub async fn put_then_get_returns_exact_bytes(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"value").await.unwrap();
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"value")));
}

/// A second `put` replaces the value.
pub async fn put_overwrites_previous_value(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"one").await.unwrap();
    s.put(b"k", b"two").await.unwrap();
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"two")));
    assert_eq!(s.count().await.unwrap(), 1);
}

/// `delete` removes the key and reports that it removed something.
pub async fn delete_removes_key_and_reports_it(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"v").await.unwrap();
    assert!(s.delete(b"k").await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap(), None);
}

/// Deleting a missing key succeeds and reports that nothing was removed.
pub async fn delete_missing_key_is_not_an_error(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert!(!s.delete(b"never-written").await.unwrap());
}

/// `contains` follows `put` and `delete`.
pub async fn contains_tracks_put_and_delete(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert!(!s.contains(b"k").await.unwrap());
    s.put(b"k", b"").await.unwrap();
    assert!(s.contains(b"k").await.unwrap());
    s.delete(b"k").await.unwrap();
    assert!(!s.contains(b"k").await.unwrap());
}

/// Keys are bytes: 0x00, 0xFF, invalid UTF-8 and every byte value round trip and list.
pub async fn binary_keys_round_trip(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let keys: Vec<&[u8]> = vec![
        b"\x00",
        b"\xff",
        b"\x00\xff\x00",
        b"\xc3\x28",
        b"a\x00b",
        &all_bytes,
    ];
    for (i, key) in keys.iter().enumerate() {
        s.put(key, &[i as u8, 0, 255]).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            s.get(key).await.unwrap(),
            Some(b(&[i as u8, 0, 255])),
            "key {key:?}"
        );
    }
    let expected = sorted(keys.iter().map(|k| b(k)).collect());
    assert_eq!(sorted(s.list_keys(b"").await.unwrap()), expected);
}

/// An empty value is a value: it is stored, found and counted.
pub async fn empty_value_round_trips(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"empty", b"").await.unwrap();
    assert_eq!(s.get(b"empty").await.unwrap(), Some(Bytes::new()));
    assert!(s.contains(b"empty").await.unwrap());
    assert_eq!(s.count().await.unwrap(), 1);
}

/// A 16 MiB value of incompressible bytes comes back identical.
pub async fn large_16_mib_value_round_trips(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let value = noise(16 * 1024 * 1024, 7);
    s.put(b"big", &value).await.unwrap();
    let back = s.get(b"big").await.unwrap().expect("value present");
    assert_eq!(back.len(), value.len());
    assert!(back == value, "16 MiB value differs after the round trip");
}

/// Values are bytes, not text: an emoji string and a JSON-looking string come back unchanged.
pub async fn emoji_and_json_values_come_back_as_same_bytes(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let emoji = "state 🦀 ✓ — ünïcødé".as_bytes();
    let json = br#"{"a":[1,2,{"b":null}],"c":"\u00e9\n"}"#;
    s.put(b"emoji", emoji).await.unwrap();
    s.put(b"json", json).await.unwrap();
    assert_eq!(s.get(b"emoji").await.unwrap(), Some(b(emoji)));
    assert_eq!(s.get(b"json").await.unwrap(), Some(b(json)));
}

/// An empty key is invalid input on every operation that takes a key.
pub async fn empty_key_is_rejected_as_invalid_input(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert_kind(s.get(b"").await, ErrorKind::InvalidInput);
    assert_kind(s.put(b"", b"v").await, ErrorKind::InvalidInput);
    assert_kind(s.delete(b"").await, ErrorKind::InvalidInput);
    assert_kind(s.contains(b"").await, ErrorKind::InvalidInput);
    assert_kind(s.batch_get(&[b"ok", b""]).await, ErrorKind::InvalidInput);
    assert_kind(s.batch_delete(&[b""]).await, ErrorKind::InvalidInput);
    let caps = s.capabilities();
    if caps.ttl {
        assert_kind(
            s.put_with_ttl(b"", b"v", Duration::from_secs(1)).await,
            ErrorKind::InvalidInput,
        );
    }
    if caps.atomic {
        assert_kind(
            s.compare_and_swap(b"", None, Some(b"v")).await,
            ErrorKind::InvalidInput,
        );
        assert_kind(
            s.set_if_not_exists(b"", b"v", None).await,
            ErrorKind::InvalidInput,
        );
        assert_kind(s.get_and_delete(b"").await, ErrorKind::InvalidInput);
    }
    assert_eq!(s.count().await.unwrap(), 0);
}

/// A key one byte over the limit is invalid input; a key at the limit works.
pub async fn oversized_key_is_rejected_as_invalid_input(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let max = s.capabilities().limits.max_key_size;
    let at_limit = vec![b'k'; max];
    let over = vec![b'k'; max + 1];
    s.put(&at_limit, b"v").await.unwrap();
    assert_eq!(s.get(&at_limit).await.unwrap(), Some(b(b"v")));
    assert_kind(s.put(&over, b"v").await, ErrorKind::InvalidInput);
    assert_kind(s.get(&over).await, ErrorKind::InvalidInput);
    assert_eq!(s.count().await.unwrap(), 1);
}

/// A value one byte over the limit is invalid input, and the previous value is kept.
pub async fn oversized_value_is_rejected_and_old_value_kept(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let max = s.capabilities().limits.max_value_size;
    s.put(b"k", b"old").await.unwrap();
    let over = vec![0u8; max + 1];
    assert_kind(s.put(b"k", &over).await, ErrorKind::InvalidInput);
    assert_kind(s.batch_put(&[(b"k", &over)]).await, ErrorKind::InvalidInput);
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"old")));
}

/// A batch with one invalid entry is refused whole: none of its entries are written.
pub async fn batch_put_with_invalid_entry_writes_nothing(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let result = s.batch_put(&[(b"good", b"v"), (b"", b"v")]).await;
    assert_kind(result, ErrorKind::InvalidInput);
    assert_eq!(s.get(b"good").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Listing, scanning, prefixes
// ---------------------------------------------------------------------------------------------

/// Prefixes `a`, `ab` and `b` list exactly their own keys.
pub async fn list_keys_respects_overlapping_prefixes(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for k in [&b"a"[..], b"a1", b"ab", b"ab1", b"abc", b"b", b"b1", b"ba"] {
        s.put(k, b"v").await.unwrap();
    }
    let list = |p: &'static [u8]| {
        let s = s.clone();
        async move { sorted(s.list_keys(p).await.unwrap()) }
    };
    assert_eq!(
        list(b"a").await,
        vec![b(b"a"), b(b"a1"), b(b"ab"), b(b"ab1"), b(b"abc")]
    );
    assert_eq!(list(b"ab").await, vec![b(b"ab"), b(b"ab1"), b(b"abc")]);
    assert_eq!(list(b"b").await, vec![b(b"b"), b(b"b1"), b(b"ba")]);
    assert_eq!(list(b"c").await, Vec::<Bytes>::new());
}

/// An empty prefix lists every key of the namespace.
pub async fn list_keys_with_empty_prefix_lists_everything(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for i in 0..20u32 {
        s.put(format!("key{i:02}").as_bytes(), b"v").await.unwrap();
    }
    assert_eq!(s.list_keys(b"").await.unwrap().len(), 20);
}

/// Prefix `[0x61, 0xFF]` lists `[0x61, 0xFF, ..]` keys but not `[0x62, 0x00]` (upper-bound bug).
pub async fn list_keys_prefix_ending_in_ff_excludes_next_prefix(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for k in [
        &[0x61, 0xFF][..],
        &[0x61, 0xFF, 0x00],
        &[0x61, 0xFF, 0xFF],
        &[0x62, 0x00],
        &[0x62],
    ] {
        s.put(k, b"v").await.unwrap();
    }
    assert_eq!(
        sorted(s.list_keys(&[0x61, 0xFF]).await.unwrap()),
        vec![
            b(&[0x61, 0xFF]),
            b(&[0x61, 0xFF, 0x00]),
            b(&[0x61, 0xFF, 0xFF])
        ]
    );
    assert_eq!(
        sorted(s.list_keys(&[0xFF]).await.unwrap()),
        Vec::<Bytes>::new()
    );
    let scanned = collect_scan(&*s, &[0x61, 0xFF]).await;
    assert_eq!(scanned.len(), 3);
}

const SPECIAL_KEYS: &[&[u8]] = &[
    b"!@#$%^&()_+-=;',",
    b"glob*",
    b"globXYZ",
    b"q?",
    b"qX",
    b"br[a]",
    b"bra",
    b"pct%",
    b"pctX",
    b"under_",
    b"underX",
    b"back\\slash",
    b"backXslash",
    b"quote'\"",
    b"space key",
];

/// Keys with punctuation, quotes and glob/LIKE metacharacters round trip unchanged.
pub async fn keys_with_special_characters_round_trip(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for (i, k) in SPECIAL_KEYS.iter().enumerate() {
        s.put(k, format!("{i}").as_bytes()).await.unwrap();
    }
    for (i, k) in SPECIAL_KEYS.iter().enumerate() {
        assert_eq!(
            s.get(k).await.unwrap(),
            Some(b(format!("{i}").as_bytes())),
            "{k:?}"
        );
    }
    assert_eq!(s.count().await.unwrap(), SPECIAL_KEYS.len());
}

/// `*`, `?`, `[`, `%`, `_` and `\` in a prefix match literally, never as patterns.
pub async fn glob_and_like_metacharacters_in_prefix_match_literally(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for k in SPECIAL_KEYS {
        s.put(k, b"v").await.unwrap();
    }
    for (prefix, only) in [
        (&b"glob*"[..], &b"glob*"[..]),
        (b"q?", b"q?"),
        (b"br[", b"br[a]"),
        (b"pct%", b"pct%"),
        (b"under_", b"under_"),
        (b"back\\", b"back\\slash"),
        (b"!@#$%^&()_+-=;',", b"!@#$%^&()_+-=;',"),
    ] {
        assert_eq!(
            s.list_keys(prefix).await.unwrap(),
            vec![b(only)],
            "prefix {prefix:?}"
        );
        let scanned = collect_scan(&*s, prefix).await;
        assert_eq!(scanned.len(), 1, "scan prefix {prefix:?}");
    }
}

/// `scan` yields every live entry under the prefix with its value (and TTL where supported).
pub async fn scan_yields_live_entries_under_prefix(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"p:1", b"one").await.unwrap();
    s.put(b"p:2", b"two").await.unwrap();
    s.put(b"q:1", b"other").await.unwrap();
    let ttl = s.capabilities().ttl;
    if ttl {
        s.put_with_ttl(b"p:3", b"three", Duration::from_secs(60))
            .await
            .unwrap();
    }
    let entries = collect_scan(&*s, b"p:").await;
    let keys: Vec<_> = entries.iter().map(|e| e.key.clone()).collect();
    let mut expected = vec![b(b"p:1"), b(b"p:2")];
    if ttl {
        expected.push(b(b"p:3"));
    }
    assert_eq!(keys, expected);
    assert_eq!(entries[0].value, b(b"one"));
    assert_eq!(entries[0].ttl, None);
    if ttl {
        let left = entries[2].ttl.expect("scan reports the remaining ttl");
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "{left:?}"
        );
    }
}

/// 100,000 keys stream through `scan` one entry at a time, each seen exactly once.
pub async fn scan_streams_100k_keys(factory: &dyn BackendFactory) {
    const N: usize = 100_000;
    let s = open(factory).await;
    let keys: Vec<Vec<u8>> = (0..N).map(|i| format!("s:{i:06}").into_bytes()).collect();
    let values: Vec<Vec<u8>> = (0..N).map(|i| (i as u32).to_le_bytes().to_vec()).collect();
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<(&[u8], &[u8])> = chunk
            .iter()
            .map(|&i| (&keys[i][..], &values[i][..]))
            .collect();
        s.batch_put(&entries).await.unwrap();
    }
    s.put(b"other", b"x").await.unwrap();
    let mut seen = vec![false; N];
    let mut count = 0usize;
    let mut stream = s.scan(b"s:");
    while let Some(entry) = stream.next().await {
        let entry = entry.unwrap();
        let i = u32::from_le_bytes(entry.value[..4].try_into().unwrap()) as usize;
        assert_eq!(entry.key, b(&keys[i]));
        assert!(!seen[i], "key {i} seen twice");
        seen[i] = true;
        count += 1;
    }
    assert_eq!(count, N);
    drop(stream);
    // Leave no 100k keys behind on a shared server: every prefix walk of the cases running
    // beside this one (SCAN on Redis) would pay for them.
    s.clear().await.unwrap();
}

/// `delete_prefix` removes exactly the keys under the prefix and returns how many.
pub async fn delete_prefix_removes_exactly_matching_keys(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for k in [&b"a"[..], b"a1", b"ab", b"b", b"b1"] {
        s.put(k, b"v").await.unwrap();
    }
    assert_eq!(s.delete_prefix(b"a").await.unwrap(), 3);
    assert_eq!(
        sorted(s.list_keys(b"").await.unwrap()),
        vec![b(b"b"), b(b"b1")]
    );
    assert_eq!(s.delete_prefix(b"zzz").await.unwrap(), 0);
}

/// `count` follows puts, overwrites and deletes.
pub async fn count_reflects_puts_and_deletes(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert_eq!(s.count().await.unwrap(), 0);
    for i in 0..10u8 {
        s.put(&[b'k', i], b"v").await.unwrap();
    }
    s.put(&[b'k', 0], b"again").await.unwrap();
    assert_eq!(s.count().await.unwrap(), 10);
    s.delete(&[b'k', 3]).await.unwrap();
    assert_eq!(s.count().await.unwrap(), 9);
}

/// `clear` removes every key of the namespace.
pub async fn clear_removes_every_key(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for i in 0..50u8 {
        s.put(&[b'c', i], b"v").await.unwrap();
    }
    s.clear().await.unwrap();
    assert_eq!(s.count().await.unwrap(), 0);
    assert_eq!(s.get(&[b'c', 1]).await.unwrap(), None);
    assert!(s.list_keys(b"").await.unwrap().is_empty());
}

/// Two namespaces on one store: `clear`, `count` and listing of one never touch the other.
pub async fn clear_and_count_are_isolated_between_namespaces(factory: &dyn BackendFactory) {
    let a = open(factory).await;
    let other = open(factory).await;
    for i in 0..3u8 {
        a.put(&[b'x', i], b"a").await.unwrap();
    }
    for i in 0..2u8 {
        other.put(&[b'x', i], b"other").await.unwrap();
    }
    assert_eq!(a.count().await.unwrap(), 3);
    assert_eq!(other.count().await.unwrap(), 2);
    assert_eq!(a.get(&[b'x', 0]).await.unwrap(), Some(b(b"a")));
    a.clear().await.unwrap();
    assert_eq!(a.count().await.unwrap(), 0);
    assert_eq!(other.count().await.unwrap(), 2);
    assert_eq!(other.get(&[b'x', 0]).await.unwrap(), Some(b(b"other")));
    assert_eq!(other.list_keys(b"").await.unwrap().len(), 2);
}

/// Two namespaces whose names are string prefixes of one another (`t_x` and `t_xb`, and
/// keys in the first that spell the second's prefix) never see each other's keys: not in
/// `get`, `list_keys`, `count`, `scan`, `checkpoint`, `delete_prefix` or `clear`.
pub async fn namespaces_named_as_prefixes_of_each_other_stay_isolated(
    factory: &dyn BackendFactory,
) {
    let name = unique_namespace();
    let short = open_named(factory, &name).await;
    let long = open_named(factory, &format!("{name}b")).await;
    // Keys in `short` that would collide with `long`'s if names were joined naively.
    for key in [&b"b:k"[..], b"bk", b"b", b"k"] {
        short.put(key, b"short").await.unwrap();
    }
    long.put(b"k", b"long").await.unwrap();
    long.put(b"k2", b"long").await.unwrap();
    assert_eq!(short.count().await.unwrap(), 4);
    assert_eq!(long.count().await.unwrap(), 2);
    assert_eq!(long.get(b"k").await.unwrap(), Some(b(b"long")));
    assert_eq!(short.get(b"k").await.unwrap(), Some(b(b"short")));
    assert_eq!(
        sorted(long.list_keys(b"").await.unwrap()),
        vec![b(b"k"), b(b"k2")]
    );
    assert_eq!(short.list_keys(b"").await.unwrap().len(), 4);
    assert_eq!(collect_scan(&*long, b"").await.len(), 2);
    assert_eq!(collect_scan(&*short, b"").await.len(), 4);
    let mut buf = Vec::new();
    assert_eq!(long.checkpoint(&mut buf).await.unwrap().entries, 2);
    assert_eq!(short.delete_prefix(b"b").await.unwrap(), 3);
    assert_eq!(long.count().await.unwrap(), 2);
    short.clear().await.unwrap();
    assert_eq!(long.count().await.unwrap(), 2);
    assert_eq!(long.get(b"k2").await.unwrap(), Some(b(b"long")));
    long.clear().await.unwrap();
    assert_eq!(long.count().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

/// `batch_get` answers in the order asked, repeating duplicates.
pub async fn batch_get_keeps_order_and_duplicates(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.batch_put(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        .await
        .unwrap();
    let got = s.batch_get(&[b"c", b"a", b"c", b"b"]).await.unwrap();
    assert_eq!(
        got,
        vec![Some(b(b"3")), Some(b(b"1")), Some(b(b"3")), Some(b(b"2"))]
    );
}

/// A missing key gets `None` in its own slot.
pub async fn batch_get_answers_none_for_missing_key_in_place(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"a", b"1").await.unwrap();
    s.put(b"c", b"3").await.unwrap();
    let got = s.batch_get(&[b"a", b"b", b"c", b"d"]).await.unwrap();
    assert_eq!(got, vec![Some(b(b"1")), None, Some(b(b"3")), None]);
}

/// A batch of 1,000 keys (spread over every hash slot on a cluster) reads back in order.
pub async fn batch_get_of_1000_keys_round_trips(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("bulk:{i}").into_bytes())
        .collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &k[5..])).collect();
    s.batch_put(&entries).await.unwrap();
    let mut asked: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    asked.push(b"bulk:missing");
    let got = s.batch_get(&asked).await.unwrap();
    assert_eq!(got.len(), 1001);
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(&k[5..]));
    }
    assert_eq!(got[1000], None);
    assert_eq!(s.batch_delete(&asked).await.unwrap(), 1000);
    assert_eq!(s.count().await.unwrap(), 0);
}

/// When a key repeats within one `batch_put`, the last value wins.
pub async fn batch_put_last_duplicate_wins(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.batch_put(&[(b"k", b"first"), (b"j", b"x"), (b"k", b"last")])
        .await
        .unwrap();
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"last")));
    assert_eq!(s.count().await.unwrap(), 2);
}

/// `batch_delete` counts the live keys it removed; missing keys are not errors.
pub async fn batch_delete_counts_removed_and_ignores_missing(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.batch_put(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        .await
        .unwrap();
    assert_eq!(s.batch_delete(&[b"a", b"missing", b"c"]).await.unwrap(), 2);
    assert_eq!(s.list_keys(b"").await.unwrap(), vec![b(b"b")]);
}

/// Batches of nothing succeed and change nothing.
pub async fn batch_ops_on_empty_input_do_nothing(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"keep", b"v").await.unwrap();
    assert!(s.batch_get(&[]).await.unwrap().is_empty());
    s.batch_put(&[]).await.unwrap();
    assert_eq!(s.batch_delete(&[]).await.unwrap(), 0);
    assert_eq!(s.count().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// TTL
// ---------------------------------------------------------------------------------------------

async fn with_expired_key(factory: &dyn BackendFactory) -> Option<Arc<dyn StateBackend>> {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        skip("ttl");
        return None;
    }
    s.put(b"x:live", b"v").await.unwrap();
    s.put_with_ttl(b"x:gone", b"v", Duration::from_millis(150))
        .await
        .unwrap();
    assert!(
        s.contains(b"x:gone").await.unwrap(),
        "visible before expiry"
    );
    sleep_ms(400).await;
    Some(s)
}

/// An expired key is invisible to `get` at once, before any cleanup runs.
pub async fn ttl_expired_key_is_invisible_to_get(factory: &dyn BackendFactory) {
    let Some(s) = with_expired_key(factory).await else {
        return;
    };
    assert_eq!(s.get(b"x:gone").await.unwrap(), None);
    assert_eq!(
        s.batch_get(&[b"x:gone", b"x:live"]).await.unwrap(),
        vec![None, Some(b(b"v"))]
    );
    assert_eq!(s.ttl(b"x:gone").await.unwrap(), None);
}

/// An expired key is invisible to `contains` at once.
pub async fn ttl_expired_key_is_invisible_to_contains(factory: &dyn BackendFactory) {
    let Some(s) = with_expired_key(factory).await else {
        return;
    };
    assert!(!s.contains(b"x:gone").await.unwrap());
}

/// An expired key is invisible to `list_keys` at once.
pub async fn ttl_expired_key_is_invisible_to_list_keys(factory: &dyn BackendFactory) {
    let Some(s) = with_expired_key(factory).await else {
        return;
    };
    assert_eq!(s.list_keys(b"x:").await.unwrap(), vec![b(b"x:live")]);
}

/// An expired key is invisible to `count` at once.
pub async fn ttl_expired_key_is_invisible_to_count(factory: &dyn BackendFactory) {
    let Some(s) = with_expired_key(factory).await else {
        return;
    };
    assert_eq!(s.count().await.unwrap(), 1);
}

/// An expired key is invisible to `scan` at once.
pub async fn ttl_expired_key_is_invisible_to_scan(factory: &dyn BackendFactory) {
    let Some(s) = with_expired_key(factory).await else {
        return;
    };
    let keys: Vec<_> = collect_scan(&*s, b"x:")
        .await
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, vec![b(b"x:live")]);
}

/// `get_with_ttl` returns the value with its remaining TTL, `None` inside for a key without
/// expiry, and nothing for a missing or expired key.
pub async fn get_with_ttl_pairs_value_and_time_left(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert_eq!(s.get_with_ttl(b"missing").await.unwrap(), None);
    s.put(b"plain", b"v").await.unwrap();
    assert_eq!(
        s.get_with_ttl(b"plain").await.unwrap(),
        Some((Bytes::from_static(b"v"), None))
    );
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    s.put_with_ttl(b"k", b"w", Duration::from_secs(30))
        .await
        .unwrap();
    let (value, left) = s.get_with_ttl(b"k").await.unwrap().expect("live");
    assert_eq!(value, Bytes::from_static(b"w"));
    let left = left.expect("a ttl");
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(25),
        "{left:?}"
    );
    s.put_with_ttl(b"gone", b"x", Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(s.get_with_ttl(b"gone").await.unwrap(), None);
}

/// `ttl()` reports the time left, never more than was set.
pub async fn ttl_reports_remaining_time(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    s.put_with_ttl(b"k", b"v", Duration::from_secs(30))
        .await
        .unwrap();
    let left = s.ttl(b"k").await.unwrap().expect("a ttl");
    assert!(
        left <= Duration::from_secs(30) && left > Duration::from_secs(25),
        "{left:?}"
    );
    s.put_with_ttl(b"short", b"v", Duration::from_millis(1500))
        .await
        .unwrap();
    let left = s.ttl(b"short").await.unwrap().expect("a ttl");
    assert!(
        left <= Duration::from_millis(1500) && left > Duration::from_secs(1),
        "{left:?}"
    );
}

/// `ttl()` is `None` (not `Duration::MAX`) for a key without expiry and for a missing key.
pub async fn ttl_is_none_without_expiry(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"v").await.unwrap();
    assert_eq!(s.ttl(b"k").await.unwrap(), None);
    assert_eq!(s.ttl(b"missing").await.unwrap(), None);
}

/// A plain `put` after `put_with_ttl` clears the expiry: the value does not vanish later.
pub async fn put_after_put_with_ttl_clears_the_ttl(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    s.put_with_ttl(b"k", b"v1", Duration::from_millis(200))
        .await
        .unwrap();
    s.put(b"k", b"v2").await.unwrap();
    assert_eq!(s.ttl(b"k").await.unwrap(), None);
    s.put_with_ttl(b"b", b"v1", Duration::from_millis(200))
        .await
        .unwrap();
    s.batch_put(&[(b"b", b"v2")]).await.unwrap();
    sleep_ms(400).await;
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"v2")));
    assert_eq!(
        s.get(b"b").await.unwrap(),
        Some(b(b"v2")),
        "batch_put clears the ttl too"
    );
}

/// A 300 ms TTL is kept to the millisecond: the key is never gone before 300 ms and always
/// gone by 600 ms (no rounding to whole seconds).
pub async fn ttl_300ms_expires_between_300_and_600ms(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    let before = Instant::now();
    s.put_with_ttl(b"k", b"v", Duration::from_millis(300))
        .await
        .unwrap();
    let acked = Instant::now();
    loop {
        let poll_started = Instant::now();
        let visible = s.get(b"k").await.unwrap().is_some();
        let poll_ended = Instant::now();
        if visible {
            let since = poll_started - acked;
            assert!(
                since <= Duration::from_millis(600),
                "still visible {since:?} after the write"
            );
        } else {
            let since = poll_ended - before;
            assert!(
                since >= Duration::from_millis(299),
                "gone after only {since:?}"
            );
            break;
        }
        sleep_ms(15).await;
    }
}

/// `set_if_not_exists` with a 500 ms TTL keeps it (not truncated to 0 s) and frees the key
/// once it expires.
pub async fn set_if_not_exists_with_500ms_ttl_is_not_truncated(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !(caps.ttl && caps.atomic) {
        return skip("ttl + atomic");
    }
    let ttl = Duration::from_millis(500);
    assert!(s.set_if_not_exists(b"lock", b"a", Some(ttl)).await.unwrap());
    assert!(!s.set_if_not_exists(b"lock", b"b", Some(ttl)).await.unwrap());
    let left = s.ttl(b"lock").await.unwrap().expect("a ttl");
    assert!(left > Duration::from_millis(200) && left <= ttl, "{left:?}");
    sleep_ms(750).await;
    assert!(s.set_if_not_exists(b"lock", b"c", Some(ttl)).await.unwrap());
    assert_eq!(s.get(b"lock").await.unwrap(), Some(b(b"c")));
}

/// A TTL of zero or under one millisecond is invalid input.
pub async fn zero_or_sub_millisecond_ttl_is_rejected(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    assert_kind(
        s.put_with_ttl(b"k", b"v", Duration::ZERO).await,
        ErrorKind::InvalidInput,
    );
    assert_kind(
        s.put_with_ttl(b"k", b"v", Duration::from_micros(500)).await,
        ErrorKind::InvalidInput,
    );
    assert_eq!(s.get(b"k").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Atomic operations
// ---------------------------------------------------------------------------------------------

async fn atomic_backend(factory: &dyn BackendFactory) -> Option<Arc<dyn StateBackend>> {
    let s = open(factory).await;
    if s.capabilities().atomic {
        Some(s)
    } else {
        skip("atomic");
        None
    }
}

/// `set_if_not_exists` stores only when the key is absent.
pub async fn set_if_not_exists_only_first_write_wins(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    assert!(s.set_if_not_exists(b"k", b"first", None).await.unwrap());
    assert!(!s.set_if_not_exists(b"k", b"second", None).await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"first")));
    assert_eq!(s.ttl(b"k").await.unwrap(), None);
}

/// An expired key counts as absent for `set_if_not_exists` and `compare_and_swap`.
pub async fn set_if_not_exists_treats_expired_key_as_absent(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    s.put_with_ttl(b"k", b"old", Duration::from_millis(100))
        .await
        .unwrap();
    s.put_with_ttl(b"c", b"old", Duration::from_millis(100))
        .await
        .unwrap();
    sleep_ms(300).await;
    assert!(s.set_if_not_exists(b"k", b"new", None).await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"new")));
    assert!(
        !s.compare_and_swap(b"c", Some(b"old"), Some(b"x"))
            .await
            .unwrap()
    );
    assert!(
        s.compare_and_swap(b"c", None, Some(b"fresh"))
            .await
            .unwrap()
    );
    assert_eq!(s.get(b"c").await.unwrap(), Some(b(b"fresh")));
}

/// `get_and_delete` returns the value once, then `None`.
pub async fn get_and_delete_returns_value_once(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    s.put(b"k", b"v").await.unwrap();
    assert_eq!(s.get_and_delete(b"k").await.unwrap(), Some(b(b"v")));
    assert_eq!(s.get_and_delete(b"k").await.unwrap(), None);
    assert_eq!(s.get(b"k").await.unwrap(), None);
}

/// `compare_and_swap` swaps only on a match: `None` means absent, a `None` new value deletes.
pub async fn compare_and_swap_follows_expected_value(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    assert!(s.compare_and_swap(b"k", None, Some(b"1")).await.unwrap());
    assert!(!s.compare_and_swap(b"k", None, Some(b"x")).await.unwrap());
    assert!(
        !s.compare_and_swap(b"k", Some(b"0"), Some(b"x"))
            .await
            .unwrap()
    );
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"1")));
    assert!(
        s.compare_and_swap(b"k", Some(b"1"), Some(b""))
            .await
            .unwrap()
    );
    assert_eq!(s.get(b"k").await.unwrap(), Some(Bytes::new()));
    assert!(s.compare_and_swap(b"k", Some(b""), None).await.unwrap());
    assert_eq!(s.get(b"k").await.unwrap(), None);
    assert!(
        !s.compare_and_swap(b"missing", Some(b"v"), None)
            .await
            .unwrap()
    );
}

async fn race<F, Fut>(s: &Arc<dyn StateBackend>, callers: usize, f: F) -> usize
where
    F: Fn(Arc<dyn StateBackend>, usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(callers));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let barrier = barrier.clone();
            let fut = f(s.clone(), i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    winners
}

/// Of 32 concurrent `set_if_not_exists` callers, exactly one wins.
pub async fn set_if_not_exists_32_concurrent_callers_have_one_winner(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    let winners = race(&s, 32, |s, i| async move {
        s.set_if_not_exists(b"k", format!("{i}").as_bytes(), None)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(winners, 1);
}

/// Of 32 concurrent `get_and_delete` callers, exactly one gets the value.
pub async fn get_and_delete_32_concurrent_callers_have_one_winner(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    s.put(b"k", b"prize").await.unwrap();
    let winners = race(&s, 32, |s, _| async move {
        s.get_and_delete(b"k").await.unwrap().is_some()
    })
    .await;
    assert_eq!(winners, 1);
    assert_eq!(s.get(b"k").await.unwrap(), None);
}

/// Of 32 concurrent `compare_and_swap` callers expecting the same value, exactly one wins.
pub async fn compare_and_swap_32_concurrent_callers_have_one_winner(factory: &dyn BackendFactory) {
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    s.put(b"k", b"v0").await.unwrap();
    let winners = race(&s, 32, |s, i| async move {
        s.compare_and_swap(b"k", Some(b"v0"), Some(format!("w{i}").as_bytes()))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(winners, 1);
}

/// A read + `compare_and_swap` increment loop from 8 tasks loses no update.
pub async fn compare_and_swap_increments_from_8_tasks_lose_no_update(factory: &dyn BackendFactory) {
    const TASKS: usize = 8;
    const PER_TASK: u64 = 50;
    let Some(s) = atomic_backend(factory).await else {
        return;
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..PER_TASK {
                    loop {
                        let current = s.get(b"counter").await.unwrap();
                        let n: u64 = current
                            .as_deref()
                            .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        let next = (n + 1).to_string();
                        if s.compare_and_swap(b"counter", current.as_deref(), Some(next.as_bytes()))
                            .await
                            .unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = (TASKS as u64 * PER_TASK).to_string();
    assert_eq!(s.get(b"counter").await.unwrap(), Some(b(total.as_bytes())));
}

/// 16 tasks writing 64 distinct keys each: every write lands.
pub async fn concurrent_writers_to_distinct_keys_all_land(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let tasks: Vec<_> = (0..16u8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..64u8 {
                    s.put(&[b'w', t, i], &[t, i]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.count().await.unwrap(), 16 * 64);
    assert_eq!(s.get(&[b'w', 7, 9]).await.unwrap(), Some(b(&[7, 9])));
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

async fn fill_for_checkpoint(s: &dyn StateBackend) -> usize {
    let mut n = 0;
    for i in 0..50u32 {
        s.put(
            format!("ck:{i}").as_bytes(),
            &noise(i as usize * 7, u64::from(i) + 1),
        )
        .await
        .unwrap();
        n += 1;
    }
    s.put(b"\x00\xff bin", b"\x00\x01").await.unwrap();
    s.put(b"empty", b"").await.unwrap();
    n += 2;
    if s.capabilities().ttl {
        s.put_with_ttl(b"ck:ttl", b"expiring", Duration::from_secs(120))
            .await
            .unwrap();
        n += 1;
    }
    n
}

async fn assert_same_state(from: &dyn StateBackend, to: &dyn StateBackend) {
    let a = collect_scan(from, b"").await;
    let c = collect_scan(to, b"").await;
    assert_eq!(a.len(), c.len(), "entry count differs");
    for (x, y) in a.iter().zip(&c) {
        assert_eq!(x.key, y.key);
        assert_eq!(x.value, y.value, "value of {:?}", x.key);
        match (x.ttl, y.ttl) {
            (None, None) => {}
            (Some(_), Some(left)) => {
                assert!(
                    left > Duration::from_secs(100),
                    "ttl of {:?} not kept: {left:?}",
                    x.key
                );
            }
            other => panic!("ttl of {:?} differs: {other:?}", x.key),
        }
    }
}

/// Checkpoint then restore into a fresh backend reproduces every key, value and TTL.
pub async fn checkpoint_restore_round_trips_keys_values_and_ttls(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let n = fill_for_checkpoint(&*s).await;
    let mut buf = Vec::new();
    let summary = s.checkpoint(&mut buf).await.unwrap();
    assert_eq!(summary.entries, n as u64, "checkpoint wrote every entry");
    assert_eq!(summary.bytes, buf.len() as u64);
    let fresh = open(factory).await;
    let restored = fresh.restore(&mut &buf[..]).await.unwrap();
    assert_eq!(restored.entries, n as u64);
    assert_same_state(&*s, &*fresh).await;
}

/// A checkpoint restores into a backend of another kind, and back, byte for byte.
pub async fn checkpoint_restores_into_and_from_another_backend_kind(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    fill_for_checkpoint(&*s).await;
    let mut buf = Vec::new();
    s.checkpoint(&mut buf).await.unwrap();
    let other = ReferenceBackend::new();
    other.restore(&mut &buf[..]).await.unwrap();
    assert_same_state(&*s, &other).await;

    let mut back = Vec::new();
    other.checkpoint(&mut back).await.unwrap();
    let fresh = open(factory).await;
    fresh.restore(&mut &back[..]).await.unwrap();
    assert_same_state(&other, &*fresh).await;
}

/// Entries that already expired are not written to a checkpoint.
pub async fn checkpoint_leaves_out_expired_entries(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    if !s.capabilities().ttl {
        return skip("ttl");
    }
    s.put(b"live", b"v").await.unwrap();
    s.put_with_ttl(b"gone", b"v", Duration::from_millis(100))
        .await
        .unwrap();
    sleep_ms(300).await;
    let mut buf = Vec::new();
    assert_eq!(s.checkpoint(&mut buf).await.unwrap().entries, 1);
}

/// A corrupted checkpoint is refused with a `Corrupted` error.
pub async fn restore_rejects_corrupted_checkpoint(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"value").await.unwrap();
    let mut buf = Vec::new();
    s.checkpoint(&mut buf).await.unwrap();
    let fresh = open(factory).await;
    assert_kind(
        fresh.restore(&mut &b"not a checkpoint at all"[..]).await,
        ErrorKind::Corrupted,
    );
    let mut truncated = buf.clone();
    truncated.truncate(buf.len() - 5);
    assert_kind(
        fresh.restore(&mut &truncated[..]).await,
        ErrorKind::Corrupted,
    );
    let mut flipped = buf.clone();
    let last = flipped.len() - 40;
    flipped[last] ^= 0x55;
    assert_kind(fresh.restore(&mut &flipped[..]).await, ErrorKind::Corrupted);
    assert_eq!(fresh.count().await.unwrap(), 0, "nothing applied");

    // 2,000 entries, one flipped bit near the end: the stream is verified before the first
    // write, so nothing is applied (not the 1,537 entries of a streaming restore) and the
    // keys already there keep their values.
    let big = open(factory).await;
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
        .map(|i| (format!("e{i:05}").into_bytes(), noise(64, u64::from(i))))
        .collect();
    let refs: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    big.batch_put(&refs).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(big.checkpoint(&mut buf).await.unwrap().entries, 2000);
    let at = buf.len() - 32 - 9 - 10; // inside the last record's value
    buf[at] ^= 0x01;
    let target = open(factory).await;
    target.put(b"e00000", b"kept").await.unwrap();
    assert_kind(target.restore(&mut &buf[..]).await, ErrorKind::Corrupted);
    assert_eq!(target.count().await.unwrap(), 1, "nothing applied");
    assert_eq!(target.get(b"e00000").await.unwrap(), Some(b(b"kept")));
}

/// `checkpoint::write_file` replaces the file atomically: a checkpoint that fails half-way
/// leaves the previous file intact and no temporary file behind; `restore_file` verifies the
/// whole file before writing anything.
pub async fn checkpoint_file_is_replaced_atomically(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"a", b"1").await.unwrap();
    s.put(b"b", b"2").await.unwrap();
    let dir = std::env::temp_dir().join(format!("state-ckpt-{}", unique_namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.ckpt");
    assert_eq!(s.checkpoint_to_file(&path).await.unwrap().entries, 2);
    let good = std::fs::read(&path).unwrap();

    s.put(b"c", b"3").await.unwrap();
    let failing = FailingScan(s.clone());
    assert!(checkpoint::write_file(&failing, &path).await.is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        good,
        "the old checkpoint survives"
    );
    let leftovers = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary file left behind");

    let mut corrupt = good.clone();
    let at = corrupt.len() - 40;
    corrupt[at] ^= 1;
    std::fs::write(dir.join("bad.ckpt"), &corrupt).unwrap();
    let fresh = open(factory).await;
    assert_kind(
        fresh.restore_from_file(dir.join("bad.ckpt")).await,
        ErrorKind::Corrupted,
    );
    assert_eq!(
        fresh.count().await.unwrap(),
        0,
        "nothing applied from a corrupted file"
    );
    assert_eq!(fresh.restore_from_file(&path).await.unwrap().entries, 2);
    assert_eq!(fresh.get(b"b").await.unwrap(), Some(b(b"2")));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Typed access
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    scopes: Vec<String>,
    expires_at: Option<u64>,
    score: f64,
    raw: Vec<u8>,
}

/// `put_typed` / `get_typed` round trip a struct through MessagePack.
pub async fn typed_values_round_trip(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let session = Session {
        user: "alice 🦀".into(),
        scopes: vec!["read".into(), "write".into()],
        expires_at: Some(1_700_000_000),
        score: 0.25,
        raw: vec![0, 255, 7],
    };
    s.put_typed(b"session:1", &session).await.unwrap();
    let back: Option<Session> = s.get_typed(b"session:1").await.unwrap();
    assert_eq!(back, Some(session));
    let none: Option<Session> = s.get_typed(b"session:2").await.unwrap();
    assert_eq!(none, None);
}

/// Decoding bytes that are not the requested type is a `Serialization` error.
pub async fn typed_decode_of_foreign_bytes_is_serialization_error(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"\xc1 not msgpack").await.unwrap();
    assert_kind(s.get_typed::<Session>(b"k").await, ErrorKind::Serialization);
}

// ---------------------------------------------------------------------------------------------
// Capabilities, both ways
// ---------------------------------------------------------------------------------------------

/// Declared `ttl` works; undeclared `ttl` makes TTL writes `Unsupported`.
pub async fn capability_ttl_declared_works_undeclared_unsupported(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let ttl = Duration::from_secs(10);
    if s.capabilities().ttl {
        s.put_with_ttl(b"k", b"v", ttl).await.unwrap();
        assert!(s.ttl(b"k").await.unwrap().is_some());
    } else {
        assert_kind(
            s.put_with_ttl(b"k", b"v", ttl).await,
            ErrorKind::Unsupported,
        );
        assert_kind(
            s.set_if_not_exists(b"k", b"v", Some(ttl)).await,
            ErrorKind::Unsupported,
        );
        assert!(!s.contains(b"k").await.unwrap());
    }
}

/// Declared `atomic` works; undeclared makes every atomic operation `Unsupported`.
pub async fn capability_atomic_declared_works_undeclared_unsupported(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    s.put(b"k", b"v").await.unwrap();
    if s.capabilities().atomic {
        assert!(
            s.compare_and_swap(b"k", Some(b"v"), Some(b"w"))
                .await
                .unwrap()
        );
        assert!(!s.set_if_not_exists(b"k", b"x", None).await.unwrap());
        assert_eq!(s.get_and_delete(b"k").await.unwrap(), Some(b(b"w")));
    } else {
        assert_kind(
            s.compare_and_swap(b"k", Some(b"v"), Some(b"w")).await,
            ErrorKind::Unsupported,
        );
        assert_kind(
            s.set_if_not_exists(b"n", b"x", None).await,
            ErrorKind::Unsupported,
        );
        assert_kind(s.get_and_delete(b"k").await, ErrorKind::Unsupported);
        assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"v")));
    }
}

/// Declared `memory_usage` reports a figure that grows with the data; undeclared is
/// `Unsupported`.
pub async fn capability_memory_usage_declared_works_undeclared_unsupported(
    factory: &dyn BackendFactory,
) {
    let s = open(factory).await;
    if s.capabilities().memory_usage {
        let before = s.memory_usage().await.unwrap();
        s.put(b"big", &noise(1 << 20, 3)).await.unwrap();
        let after = s.memory_usage().await.unwrap();
        assert!(after >= before + (1 << 20) / 2, "{before} -> {after}");
    } else {
        assert_kind(s.memory_usage().await, ErrorKind::Unsupported);
    }
}

/// Data outlives a dropped backend exactly when `persistence` is declared.
pub async fn capability_persistence_matches_reopen(factory: &dyn BackendFactory) {
    let name = unique_namespace();
    let s = open_named(factory, &name).await;
    let persistent = s.capabilities().persistence;
    s.put(b"k", b"v").await.unwrap();
    s.flush().await.unwrap();
    drop(s);
    let again = open_named(factory, &name).await;
    let found = again.get(b"k").await.unwrap();
    if persistent {
        assert_eq!(
            found,
            Some(b(b"v")),
            "declared persistent, but the value is gone"
        );
    } else {
        assert_eq!(
            found, None,
            "not declared persistent, but the value survived"
        );
    }
}

/// `stats()` counts reads, hits, misses and writes, and reports a latency.
pub async fn stats_count_operations_and_hits(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    for i in 0..3u8 {
        s.put(&[b's', i], b"v").await.unwrap();
    }
    for i in 0..2u8 {
        assert!(s.get(&[b's', i]).await.unwrap().is_some());
    }
    assert!(s.get(b"missing").await.unwrap().is_none());
    let stats = s.stats().await;
    assert!(stats.puts >= 3, "{stats:?}");
    assert!(
        stats.gets >= 3 && stats.hits >= 2 && stats.misses >= 1,
        "{stats:?}"
    );
    assert!(
        stats.hit_rate() > 0.0 && stats.hit_rate() < 1.0,
        "{stats:?}"
    );
}

/// A reachable backend reports healthy.
pub async fn health_check_reports_healthy(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    assert!(s.health_check().await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// TTL range, expired keys and expiry races (issue 12)
// ---------------------------------------------------------------------------------------------

/// TTLs outside the one rule every backend follows (1 ms to [`state_core::MAX_TTL`])
/// for the TTL-taking operations, from the extremes inwards.
fn out_of_range_ttls() -> [Duration; 7] {
    [
        Duration::MAX,
        Duration::from_millis(u64::MAX),
        state_core::MAX_TTL + Duration::from_millis(1),
        state_core::MAX_TTL + Duration::from_nanos(1),
        Duration::from_micros(999),
        Duration::from_nanos(1),
        Duration::ZERO,
    ]
}

/// A TTL over 100 years (`Duration::MAX`, `MAX_TTL` + 1 ms or + 1 ns), zero or under 1 ms
/// is `InvalidInput` on `put_with_ttl` and `set_if_not_exists`: never a panic, never a
/// wrap-around to a short TTL, and nothing is written (a previous value stays as it was).
pub async fn ttl_outside_1ms_to_100_years_is_invalid_input(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !caps.ttl {
        return skip("ttl");
    }
    s.put(b"kept", b"old").await.unwrap();
    for ttl in out_of_range_ttls() {
        assert_kind(
            s.put_with_ttl(b"absent", b"v", ttl).await,
            ErrorKind::InvalidInput,
        );
        assert_kind(
            s.put_with_ttl(b"kept", b"new", ttl).await,
            ErrorKind::InvalidInput,
        );
        if caps.atomic {
            assert_kind(
                s.set_if_not_exists(b"absent", b"v", Some(ttl)).await,
                ErrorKind::InvalidInput,
            );
        }
    }
    assert_eq!(s.get(b"absent").await.unwrap(), None, "a refused TTL wrote");
    assert_eq!(s.get(b"kept").await.unwrap(), Some(b(b"old")));
    assert_eq!(s.ttl(b"kept").await.unwrap(), None);
    sleep_ms(50).await;
    assert_eq!(s.get(b"kept").await.unwrap(), Some(b(b"old")));
    assert_eq!(s.count().await.unwrap(), 1);
}

/// Exactly [`state_core::MAX_TTL`] (100 years) and exactly 1 ms are accepted; the 100-year key
/// reports a TTL of (nearly) 100 years, not a wrapped-around one, and is still there later.
pub async fn ttl_of_exactly_100_years_or_1ms_is_accepted(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !caps.ttl {
        return skip("ttl");
    }
    let max = state_core::MAX_TTL;
    let floor = max.saturating_sub(Duration::from_secs(60));
    let near = |left: Duration| left <= max && left > floor;
    s.put_with_ttl(b"century", b"v", max).await.unwrap();
    let left = s.ttl(b"century").await.unwrap().expect("a ttl");
    assert!(near(left), "ttl of a 100-year key reads {left:?}");
    s.put_with_ttl(b"blink", b"v", Duration::from_millis(1))
        .await
        .unwrap();
    if caps.atomic {
        assert!(
            s.set_if_not_exists(b"nx-century", b"v", Some(max))
                .await
                .unwrap()
        );
        let left = s.ttl(b"nx-century").await.unwrap().expect("a ttl");
        assert!(near(left), "ttl of a 100-year SETNX key reads {left:?}");
        assert!(
            !s.set_if_not_exists(b"nx-century", b"w", Some(max))
                .await
                .unwrap()
        );
        assert!(
            s.set_if_not_exists(b"nx-blink", b"v", Some(Duration::from_millis(1)))
                .await
                .unwrap()
        );
    }
    sleep_ms(400).await;
    assert_eq!(s.get(b"century").await.unwrap(), Some(b(b"v")));
    assert_eq!(s.get(b"blink").await.unwrap(), None);
    if caps.atomic {
        assert_eq!(s.get(b"nx-century").await.unwrap(), Some(b(b"v")));
        assert_eq!(s.get(b"nx-blink").await.unwrap(), None);
    }
}

/// An expired key is not counted as removed: `delete` answers false, `batch_delete` and
/// `delete_prefix` count only live keys, `get_and_delete` returns `None` (50 ms TTLs).
pub async fn deletes_do_not_count_expired_keys(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !caps.ttl {
        return skip("ttl");
    }
    s.put(b"d:live", b"v").await.unwrap();
    s.put(b"d:live2", b"v").await.unwrap();
    for key in [&b"d:a"[..], b"d:b", b"d:c", b"d:e"] {
        s.put_with_ttl(key, b"v", Duration::from_millis(50))
            .await
            .unwrap();
    }
    sleep_ms(200).await;
    assert!(
        !s.delete(b"d:a").await.unwrap(),
        "delete counted an expired key"
    );
    assert_eq!(
        s.batch_delete(&[b"d:b", b"d:live2", b"d:missing"])
            .await
            .unwrap(),
        1,
        "batch_delete counted an expired key"
    );
    if caps.atomic {
        assert_eq!(s.get_and_delete(b"d:e").await.unwrap(), None);
    }
    assert_eq!(
        s.delete_prefix(b"d:").await.unwrap(),
        1,
        "delete_prefix counted an expired key"
    );
    assert_eq!(s.count().await.unwrap(), 0);
    assert!(s.list_keys(b"d:").await.unwrap().is_empty());
}

/// `set_if_not_exists` against a key with a 50 ms TTL, polled every 5 ms: refused while the
/// key lives, it stores from the moment the key expires (never before 50 ms, and at most
/// 500 ms late), and the stored value has no TTL of its own.
pub async fn set_if_not_exists_wins_once_the_key_expires(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !(caps.ttl && caps.atomic) {
        return skip("ttl + atomic");
    }
    let started = Instant::now();
    assert!(
        s.set_if_not_exists(b"k", b"first", Some(Duration::from_millis(50)))
            .await
            .unwrap()
    );
    let acked = Instant::now();
    loop {
        let poll_started = Instant::now();
        let won = s.set_if_not_exists(b"k", b"second", None).await.unwrap();
        if won {
            let since = started.elapsed();
            assert!(
                since >= Duration::from_millis(49),
                "won after {since:?}, the key was still live"
            );
            break;
        }
        let late = poll_started.saturating_duration_since(acked);
        assert!(
            late <= Duration::from_millis(550),
            "refused {late:?} after the write"
        );
        sleep_ms(5).await;
    }
    assert_eq!(s.get(b"k").await.unwrap(), Some(b(b"second")));
    assert_eq!(s.ttl(b"k").await.unwrap(), None);
    assert!(!s.set_if_not_exists(b"k", b"third", None).await.unwrap());
}

/// 16 tasks call `set_if_not_exists` on a key while its 100 ms TTL runs out: exactly one
/// wins, and the key holds the winner's value.
pub async fn set_if_not_exists_racing_expiry_has_one_winner(factory: &dyn BackendFactory) {
    let s = open(factory).await;
    let caps = s.capabilities();
    if !(caps.ttl && caps.atomic) {
        return skip("ttl + atomic");
    }
    s.put_with_ttl(b"k", b"old", Duration::from_millis(100))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let winners = race(&s, 16, move |s, i| async move {
        let mine = format!("w{i}");
        loop {
            if s.set_if_not_exists(b"k", mine.as_bytes(), None)
                .await
                .unwrap()
            {
                return true;
            }
            match s.get(b"k").await.unwrap() {
                Some(v) if v != b"old"[..] => return false,
                _ => {}
            }
            assert!(Instant::now() < deadline, "the key never expired");
            sleep_ms(1).await;
        }
    })
    .await;
    assert_eq!(winners, 1);
    let value = s.get(b"k").await.unwrap().expect("the winner's value");
    assert!(value.starts_with(b"w"), "{value:?}");
}
