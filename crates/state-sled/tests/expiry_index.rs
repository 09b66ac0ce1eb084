//! The expiry index holds one entry per expiring value: TTL rewrites, plain puts, deletes and
//! every other write drop the replaced value's entry together with the write.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use state_core::{ErrorKind, MAX_TTL, StateBackend};
use state_sled::SledStateBackend;

const TTL: Duration = Duration::from_secs(60);

fn open() -> (tempfile::TempDir, SledStateBackend) {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    (dir, b)
}

/// 3,000 TTL refreshes of one key leave one index entry (they used to leave 3,000).
#[tokio::test]
async fn ttl_rewrites_of_one_key_keep_one_index_entry() {
    let (_dir, b) = open();
    for i in 0..3_000u32 {
        b.put_with_ttl(
            b"session",
            &i.to_be_bytes(),
            TTL + Duration::from_millis(i.into()),
        )
        .await
        .unwrap();
    }
    assert_eq!(b.expiry_index_len(), 1);
    assert_eq!(
        b.get(b"session").await.unwrap(),
        Some(Bytes::copy_from_slice(&2_999u32.to_be_bytes()))
    );
    for _ in 0..100 {
        assert!(
            !b.set_if_not_exists(b"session", b"x", Some(TTL))
                .await
                .unwrap()
        );
    }
    assert_eq!(b.expiry_index_len(), 1);
}

/// Every kind of write that replaces or removes an expiring value drops its index entry.
#[tokio::test]
async fn every_write_drops_the_replaced_values_index_entry() {
    let (_dir, b) = open();
    let armed = || async {
        b.put_with_ttl(b"k", b"v", TTL).await.unwrap();
        assert_eq!(b.expiry_index_len(), 1);
    };

    armed().await;
    b.put(b"k", b"plain").await.unwrap();
    assert_eq!(b.expiry_index_len(), 0, "plain put");

    armed().await;
    assert!(b.delete(b"k").await.unwrap());
    assert_eq!(b.expiry_index_len(), 0, "delete");

    armed().await;
    b.batch_put(&[(b"k", b"batch"), (b"j", b"batch")])
        .await
        .unwrap();
    assert_eq!(b.expiry_index_len(), 0, "batch_put");

    armed().await;
    assert_eq!(b.batch_delete(&[b"k", b"j"]).await.unwrap(), 2);
    assert_eq!(b.expiry_index_len(), 0, "batch_delete");

    armed().await;
    assert!(
        b.compare_and_swap(b"k", Some(b"v"), Some(b"w"))
            .await
            .unwrap()
    );
    assert_eq!(b.expiry_index_len(), 0, "compare_and_swap to a value");

    armed().await;
    assert!(b.compare_and_swap(b"k", Some(b"v"), None).await.unwrap());
    assert_eq!(b.expiry_index_len(), 0, "compare_and_swap to absent");

    armed().await;
    assert_eq!(
        b.get_and_delete(b"k").await.unwrap(),
        Some(Bytes::from_static(b"v"))
    );
    assert_eq!(b.expiry_index_len(), 0, "get_and_delete");

    assert!(b.set_if_not_exists(b"k", b"v", Some(TTL)).await.unwrap());
    assert_eq!(b.expiry_index_len(), 1, "set_if_not_exists with a ttl");
    assert_eq!(b.delete_prefix(b"k").await.unwrap(), 1);
    assert_eq!(b.expiry_index_len(), 0, "delete_prefix");

    for key in [&b"a"[..], b"b", b"c"] {
        b.put_with_ttl(key, b"v", TTL).await.unwrap();
    }
    b.clear().await.unwrap();
    assert_eq!(b.expiry_index_len(), 0, "clear");

    // Reading an expired value removes it and its entry.
    b.put_with_ttl(b"short", b"v", Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(b.get(b"short").await.unwrap(), None);
    assert_eq!(b.expiry_index_len(), 0, "expired read");
}

/// Transactions keep the index too.
#[tokio::test]
async fn transactions_drop_the_replaced_values_index_entry() {
    let (_dir, b) = open();
    b.transaction(|tx| {
        for _ in 0..3 {
            tx.put_with_ttl(b"k", b"v", TTL)?;
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(b.expiry_index_len(), 1);
    b.transaction(|tx| tx.put(b"k", b"plain")).await.unwrap();
    assert_eq!(b.expiry_index_len(), 0);
    b.put_with_ttl(b"k", b"v", TTL).await.unwrap();
    assert!(b.transaction(|tx| tx.delete(b"k")).await.unwrap());
    assert_eq!(b.expiry_index_len(), 0);
    let err = b
        .transaction(|tx| tx.put_with_ttl(b"k", b"v", Duration::MAX))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// A default TTL applies to plain puts: 3,000 rewrites of one key, one entry.
#[tokio::test]
async fn default_ttl_rewrites_keep_one_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::builder(dir.path())
        .default_ttl(TTL)
        .build()
        .unwrap();
    for i in 0..3_000u32 {
        b.put(b"k", &i.to_be_bytes()).await.unwrap();
    }
    assert_eq!(b.expiry_index_len(), 1);
}

/// Writers racing on one key (TTL rewrites, plain puts, deletes, CAS) leave exactly the
/// entries their final values need: one if the key ends with a TTL, none otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_leave_an_exact_index() {
    let (_dir, b) = open();
    let b = Arc::new(b);
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..750u64 {
                    let key = [b'k', (i % 3) as u8];
                    match (t + i) % 5 {
                        0 | 1 => b
                            .put_with_ttl(&key, b"v", TTL + Duration::from_millis(i % 7))
                            .await
                            .unwrap(),
                        2 => b.put(&key, b"v").await.unwrap(),
                        3 => {
                            b.delete(&key).await.unwrap();
                        }
                        _ => {
                            b.set_if_not_exists(&key, b"v", Some(TTL)).await.unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut expiring = 0;
    for k in 0..3u8 {
        expiring += usize::from(b.ttl(&[b'k', k]).await.unwrap().is_some());
    }
    assert_eq!(b.expiry_index_len(), expiring);
}

/// The TTL rule on sled: the ~584-million-year TTL that used to wrap to ~384 ms is refused,
/// and a default TTL over 100 years is a configuration error.
#[tokio::test]
async fn huge_ttls_are_refused_not_wrapped() {
    let (dir, b) = open();
    let wrap = Duration::from_millis(u64::MAX) + Duration::from_millis(385);
    for ttl in [Duration::MAX, wrap, MAX_TTL + Duration::from_millis(1)] {
        let err = b.put_with_ttl(b"k", b"v", ttl).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{ttl:?}");
    }
    assert_eq!(b.get(b"k").await.unwrap(), None);
    assert_eq!(b.expiry_index_len(), 0);
    drop(b);
    let err = SledStateBackend::builder(dir.path().join("other"))
        .default_ttl(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
}
