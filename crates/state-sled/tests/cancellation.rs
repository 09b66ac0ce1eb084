//! `delete_prefix` and `clear` work in pages and stop when their future is dropped: a
//! `Timeout` cutting the call means no deletion happens after the caller saw the timeout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use state_core::StateBackend;
use state_sled::SledStateBackend;

async fn fill(b: &SledStateBackend, prefix: &str, n: u32) {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i:06}")).collect();
    for chunk in keys.chunks(10_000) {
        let entries: Vec<(&[u8], &[u8])> =
            chunk.iter().map(|k| (k.as_bytes(), &b"old"[..])).collect();
        b.batch_put(&entries).await.unwrap();
    }
}

/// 300k keys; `delete_prefix` cut by a 20 ms timeout; then 11 keys are written under that
/// prefix (names already deleted, names not reached yet, new names). Two seconds later all 11
/// hold their new value and not one more key has gone.
#[tokio::test]
async fn delete_prefix_cut_by_a_timeout_deletes_nothing_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    fill(&b, "job:", 300_000).await;
    b.put(b"other", b"kept").await.unwrap();

    let cut = tokio::time::timeout(Duration::from_millis(20), b.delete_prefix(b"job:")).await;
    assert!(cut.is_err(), "300k keys deleted within 20 ms: {cut:?}");
    let left_at_timeout = b.list_keys(b"job:").await.unwrap().len();
    // At most a few pages of 1,000 went in 20 ms (possibly none yet).
    assert!(
        left_at_timeout > 250_000,
        "{left_at_timeout} keys left when the timeout fired"
    );

    let mut written = Vec::new();
    for i in [0u32, 1, 2, 150_000, 299_998, 299_999] {
        written.push(format!("job:{i:06}"));
    }
    for i in 0..5 {
        written.push(format!("job:new{i}"));
    }
    let mut added = 0;
    for key in &written {
        added += usize::from(!b.contains(key.as_bytes()).await.unwrap());
        b.put(key.as_bytes(), b"new").await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for key in &written {
        assert_eq!(
            b.get(key.as_bytes()).await.unwrap(),
            Some(Bytes::from_static(b"new")),
            "{key} was deleted after the caller saw the timeout"
        );
    }
    assert_eq!(
        b.list_keys(b"job:").await.unwrap().len(),
        left_at_timeout + added,
        "keys were deleted after the timeout"
    );
    assert_eq!(
        b.get(b"other").await.unwrap(),
        Some(Bytes::from_static(b"kept"))
    );

    // Run to the end, the same call removes every key under the prefix and nothing else.
    let removed = b.delete_prefix(b"job:").await.unwrap();
    assert_eq!(removed, left_at_timeout + added);
    assert_eq!(b.count().await.unwrap(), 1);
}

/// `clear` cut by a timeout stops too: keys written after the timeout stay.
#[tokio::test]
async fn clear_cut_by_a_timeout_deletes_nothing_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    fill(&b, "k", 200_000).await;
    let cut = tokio::time::timeout(Duration::from_millis(20), b.clear()).await;
    assert!(cut.is_err(), "200k keys cleared within 20 ms");
    let left = b.count().await.unwrap();
    assert!(left > 0, "everything was cleared");
    b.put(b"k199999", b"new").await.unwrap();
    b.put(b"after", b"new").await.unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        b.get(b"k199999").await.unwrap(),
        Some(Bytes::from_static(b"new")),
        "deleted {:?} after the timeout",
        started.elapsed()
    );
    assert_eq!(b.count().await.unwrap(), left + 1);
    b.clear().await.unwrap();
    assert_eq!(b.count().await.unwrap(), 0);
    assert_eq!(b.expiry_index_len(), 0);
}

/// Paged deletion counts across pages: 2,500 keys (three pages) with a third of them
/// expiring soon and a third expired, plus a neighbouring prefix that must stay.
#[tokio::test]
async fn delete_prefix_over_several_pages_counts_live_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    for i in 0..2_500u32 {
        let key = format!("p:{i:05}");
        match i % 3 {
            0 => b.put(key.as_bytes(), b"v").await.unwrap(),
            1 => b
                .put_with_ttl(key.as_bytes(), b"v", Duration::from_secs(60))
                .await
                .unwrap(),
            _ => b
                .put_with_ttl(key.as_bytes(), b"v", Duration::from_millis(30))
                .await
                .unwrap(),
        }
    }
    b.put_with_ttl(b"q:1", b"v", Duration::from_secs(60))
        .await
        .unwrap();
    b.put(b"p", b"shorter than the prefix").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = (0..2_500u32).filter(|i| i % 3 != 2).count();
    assert_eq!(b.delete_prefix(b"p:").await.unwrap(), live);
    assert_eq!(b.count().await.unwrap(), 2);
    assert!(b.list_keys(b"p:").await.unwrap().is_empty());
    assert_eq!(
        b.expiry_index_len(),
        1,
        "index entries of deleted keys left"
    );
}
