//! sled-specific behaviour: persistence across reopen and process kill, transactions,
//! TTL across restarts, the sweeper, configuration errors.

use std::io::{BufRead, BufReader};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use state_core::{ErrorKind, StateBackend, StateError};
use state_sled::SledStateBackend;

/// sled releases its file lock a moment after the last handle drops; retry briefly.
fn reopen(path: &Path) -> SledStateBackend {
    for _ in 0..100 {
        match SledStateBackend::new(path) {
            Ok(b) => return b,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    SledStateBackend::new(path).expect("reopen sled")
}

/// Data, TTLs and deletions survive closing and reopening the database.
#[tokio::test]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledStateBackend::new(dir.path()).unwrap();
        b.put(b"plain", b"v1").await.unwrap();
        b.put_with_ttl(b"expiring", b"v2", Duration::from_secs(600))
            .await
            .unwrap();
        b.put_with_ttl(b"short", b"v3", Duration::from_millis(100))
            .await
            .unwrap();
        b.put(b"deleted", b"x").await.unwrap();
        b.delete(b"deleted").await.unwrap();
        b.flush().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = reopen(dir.path());
    assert_eq!(
        b.get(b"plain").await.unwrap(),
        Some(Bytes::from_static(b"v1"))
    );
    let left = b
        .ttl(b"expiring")
        .await
        .unwrap()
        .expect("ttl kept across restart");
    assert!(left > Duration::from_secs(590));
    assert_eq!(b.get(b"short").await.unwrap(), None, "expired while closed");
    assert_eq!(b.get(b"deleted").await.unwrap(), None);
    assert_eq!(b.count().await.unwrap(), 2);
}

const CHILD_ENV: &str = "STATE_SLED_KILL_CHILD_DIR";

/// A write acknowledged with `sync_writes` survives SIGKILL of the process right after it.
///
/// The test re-runs its own binary as the child: with `STATE_SLED_KILL_CHILD_DIR` set, this
/// function writes, prints `ACK`, and waits to be killed.
#[tokio::test]
async fn sync_write_survives_process_kill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let b = SledStateBackend::builder(&dir)
            .sync_writes(true)
            .flush_every(None)
            .build()
            .unwrap();
        for i in 0..100u32 {
            b.put(format!("k{i}").as_bytes(), &i.to_le_bytes())
                .await
                .unwrap();
        }
        b.put(b"acked", b"yes").await.unwrap();
        println!("ACK");
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sync_write_survives_process_kill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // libtest prints `test NAME ... ` before the test's own output, so match the line's end.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let acked = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.trim_end().ends_with("ACK"));
        let _ = tx.send(acked);
    });
    let acked = rx.recv_timeout(Duration::from_secs(120)).unwrap_or(false);
    child.kill().unwrap(); // SIGKILL: no destructor, no flush on drop
    child.wait().unwrap();
    assert!(acked, "the child never acknowledged its write");
    let b = reopen(dir.path());
    assert_eq!(
        b.get(b"acked").await.unwrap(),
        Some(Bytes::from_static(b"yes"))
    );
    assert_eq!(
        b.get(b"k99").await.unwrap(),
        Some(Bytes::copy_from_slice(&99u32.to_le_bytes()))
    );
}

/// A transaction commits all its writes at once, sees its own writes, and an abort applies
/// nothing.
#[tokio::test]
async fn transactions_commit_atomically_and_abort_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    b.put(b"a", &[100]).await.unwrap();
    let moved = b
        .transaction(|tx| {
            let a = tx.get(b"a")?.map_or(0, |v| v[0]);
            tx.put(b"a", &[a - 10])?;
            tx.put(b"b", &[10])?;
            assert_eq!(
                tx.get(b"b")?,
                Some(Bytes::from_static(&[10])),
                "reads its own write"
            );
            tx.put_with_ttl(b"t", b"x", Duration::from_secs(60))?;
            Ok(a)
        })
        .await
        .unwrap();
    assert_eq!(moved, 100);
    assert_eq!(b.get(b"a").await.unwrap(), Some(Bytes::from_static(&[90])));
    assert!(b.ttl(b"t").await.unwrap().is_some());

    let err = b
        .transaction(|tx| -> state_sled::TransactionResult<()> {
            tx.put(b"a", &[0])?;
            tx.delete(b"b")?;
            tx.abort(StateError::invalid_input("not enough funds"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(b.get(b"a").await.unwrap(), Some(Bytes::from_static(&[90])));
    assert_eq!(b.get(b"b").await.unwrap(), Some(Bytes::from_static(&[10])));
}

/// Concurrent transactions incrementing one counter lose no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_serialize() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    b.transaction(|tx| {
                        let n = tx
                            .get(b"n")?
                            .map_or(0u32, |v| u32::from_le_bytes(v[..4].try_into().unwrap()));
                        tx.put(b"n", &(n + 1).to_le_bytes())?;
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = b.get(b"n").await.unwrap().unwrap();
    assert_eq!(u32::from_le_bytes(n[..4].try_into().unwrap()), 200);
}

/// The sweeper deletes expired entries from disk through the expiry index, and leaves a key
/// rewritten without TTL alone.
#[tokio::test]
async fn sweeper_removes_expired_entries_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::builder(dir.path())
        .cleanup_interval(Duration::from_millis(30))
        .build()
        .unwrap();
    for i in 0..200u32 {
        b.put_with_ttl(&i.to_be_bytes(), b"v", Duration::from_millis(20))
            .await
            .unwrap();
    }
    b.put_with_ttl(b"rewritten", b"old", Duration::from_millis(20))
        .await
        .unwrap();
    b.put(b"rewritten", b"new").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.db().open_tree("state").unwrap().len(),
        1,
        "expired entries left on disk"
    );
    assert_eq!(
        b.get(b"rewritten").await.unwrap(),
        Some(Bytes::from_static(b"new"))
    );
    assert_eq!(b.purge_expired().await.unwrap(), 0);
}

/// A default TTL applies to plain puts; plain puts without one clear an earlier TTL.
#[tokio::test]
async fn default_ttl_applies_to_plain_puts() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::builder(dir.path())
        .default_ttl(Duration::from_millis(150))
        .build()
        .unwrap();
    b.put(b"k", b"v").await.unwrap();
    b.batch_put(&[(b"j", b"v")]).await.unwrap();
    assert!(b.ttl(b"k").await.unwrap().is_some());
    assert!(b.ttl(b"j").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.count().await.unwrap(), 0);
}

/// Invalid configuration is a typed error, not a panic.
#[test]
fn invalid_configuration_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = SledStateBackend::builder(dir.path())
        .tree("__expiry__x")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = SledStateBackend::builder(dir.path())
        .compression_factor(99)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    #[cfg(not(feature = "compression"))]
    {
        let err = SledStateBackend::builder(dir.path())
            .compression(true)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    }
}

/// Opening a path that is a file, not a folder, is an error naming the problem.
#[test]
fn unusable_path_is_an_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = SledStateBackend::new(file.path().join("db")).unwrap_err();
    assert_eq!(err.operation(), Some("open"));
}

/// A value with a header this crate did not write is reported as corrupted, not returned.
#[tokio::test]
async fn foreign_values_are_reported_as_corrupted() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::new(dir.path()).unwrap();
    b.db()
        .open_tree("state")
        .unwrap()
        .insert(b"raw", &b"\x09garbage"[..])
        .unwrap();
    assert_eq!(
        b.get(b"raw").await.unwrap_err().kind(),
        ErrorKind::Corrupted
    );
}

/// Compression round-trips values of every size (an earlier implementation could not read
/// back LZ4-compressed values of 256 bytes or more).
#[cfg(feature = "compression")]
#[tokio::test]
async fn compressed_database_round_trips_values_of_every_size() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = SledStateBackend::builder(dir.path())
            .compression(true)
            .build()
            .unwrap();
        assert!(b.capabilities().compression);
        for len in [0usize, 1, 100, 255, 256, 257, 1000, 4096, 100_000] {
            let v: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
            b.put(format!("k{len}").as_bytes(), &v).await.unwrap();
        }
        b.flush().await.unwrap();
    }
    let b = reopen_compressed(dir.path());
    for len in [0usize, 1, 100, 255, 256, 257, 1000, 4096, 100_000] {
        let v: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
        assert_eq!(
            b.get(format!("k{len}").as_bytes()).await.unwrap().unwrap(),
            v,
            "len {len}"
        );
    }
}

#[cfg(feature = "compression")]
fn reopen_compressed(path: &Path) -> SledStateBackend {
    for _ in 0..100 {
        if let Ok(b) = SledStateBackend::builder(path).compression(true).build() {
            return b;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("could not reopen");
}

/// A checkpoint moves state from the memory backend into sled and back, byte for byte with
/// TTLs, through a verified checkpoint file.
#[tokio::test]
async fn checkpoint_moves_state_between_memory_and_sled() {
    use state_core::StateBackendExt;
    let dir = tempfile::tempdir().unwrap();
    let memory = state_memory::MemoryStateBackend::new(None);
    memory.put(b"\x00bin\xff", b"\x01\x02").await.unwrap();
    memory.put(b"empty", b"").await.unwrap();
    memory
        .put_with_ttl(b"session", b"alice", Duration::from_secs(300))
        .await
        .unwrap();
    let path = dir.path().join("move.ckpt");
    assert_eq!(memory.checkpoint_to_file(&path).await.unwrap().entries, 3);

    let sled_backend = SledStateBackend::new(dir.path().join("db")).unwrap();
    assert_eq!(
        sled_backend.restore_from_file(&path).await.unwrap().entries,
        3
    );
    assert_eq!(
        sled_backend.get(b"\x00bin\xff").await.unwrap(),
        Some(Bytes::from_static(b"\x01\x02"))
    );
    assert_eq!(
        sled_backend.get(b"empty").await.unwrap(),
        Some(Bytes::new())
    );
    assert!(sled_backend.ttl(b"session").await.unwrap().unwrap() > Duration::from_secs(290));

    let back = state_memory::MemoryStateBackend::new(None);
    let mut buf = Vec::new();
    sled_backend.checkpoint(&mut buf).await.unwrap();
    back.restore(&mut &buf[..]).await.unwrap();
    assert_eq!(back.count().await.unwrap(), 3);
    assert!(back.ttl(b"session").await.unwrap().is_some());
}

/// The sweeper keeps up with bulk expiry: more expired entries than one sweep batch
/// (10,000) are all removed by a single sweep, not one batch per interval.
#[tokio::test]
async fn sweeper_drains_more_than_one_batch_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let b = SledStateBackend::builder(dir.path())
        .default_ttl(Duration::from_millis(50))
        .cleanup_interval(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let keys: Vec<[u8; 4]> = (0..25_000u32).map(u32::to_be_bytes).collect();
    for chunk in keys.chunks(1000) {
        let entries: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &b"v"[..])).collect();
        b.batch_put(&entries).await.unwrap();
    }
    let tree = b.db().open_tree("state").unwrap();
    // The sweeper ticks at once (few entries yet), then after 2 s: that one sweep must drain
    // all 25,000 before the third tick at 4 s.
    while started.elapsed() < Duration::from_millis(3500) {
        if tree.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} expired entries still on disk after one sweep",
        tree.len()
    );
}

/// `memory_usage` is the resident bound: the size on disk, capped by the page cache
/// (issue 14); `stats()` reports both figures.
#[tokio::test]
async fn memory_usage_is_size_on_disk_capped_by_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let backend = state_sled::SledConfig::new(dir.path().join("db"))
        .cache_capacity(1 << 20)
        .build()
        .unwrap();
    let value = vec![3u8; 64 * 1024];
    for i in 0..64u32 {
        backend
            .put(format!("k{i}").as_bytes(), &value)
            .await
            .unwrap();
    }
    backend.flush().await.unwrap();
    let on_disk = backend.size_on_disk().unwrap();
    let resident = backend.memory_usage().await.unwrap();
    assert!(on_disk > 1 << 20, "{on_disk}");
    assert_eq!(resident, 1 << 20, "capped by cache_capacity");
    let stats = backend.stats().await;
    assert!((stats.details["cache_capacity_bytes"] - f64::from(1u32 << 20)).abs() < 1.0);
    assert!(stats.details["size_on_disk_bytes"] >= on_disk as f64 * 0.5);
}
