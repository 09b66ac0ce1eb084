//! The TTL rule (1 ms to `MAX_TTL`) on the memory backend's default-TTL path: a configured
//! default over 100 years used to panic on the first write (`Instant + Duration` overflow).

use std::time::Duration;

use state_core::{ErrorKind, MAX_TTL, StateBackend};
use state_memory::MemoryStateBackend;

#[track_caller]
fn invalid<T: std::fmt::Debug>(result: state_core::StateResult<T>) {
    assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidInput);
}

/// Every write that applies the default TTL refuses an out-of-range one with `InvalidInput`
/// and writes nothing; reads and deletes keep working.
#[tokio::test]
async fn default_ttl_over_100_years_is_invalid_input_on_every_write() {
    for ttl in [
        Duration::MAX,
        MAX_TTL + Duration::from_millis(1),
        Duration::ZERO,
    ] {
        let b = MemoryStateBackend::new(Some(ttl));
        invalid(b.put(b"k", b"v").await);
        invalid(b.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await);
        invalid(b.compare_and_swap(b"k", None, Some(b"v")).await);
        invalid(b.set_if_not_exists(b"k", b"v", None).await);
        assert_eq!(b.count().await.unwrap(), 0, "{ttl:?}");
        // An explicit TTL in range still works, and deleting needs no TTL.
        b.put_with_ttl(b"k", b"v", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(b.compare_and_swap(b"k", Some(b"v"), None).await.unwrap());
        assert!(
            b.set_if_not_exists(b"k", b"v", Some(Duration::from_secs(5)))
                .await
                .unwrap()
        );
        assert!(b.delete(b"k").await.unwrap());
    }
}

/// A default TTL of exactly 100 years is applied as given.
#[tokio::test]
async fn default_ttl_of_exactly_100_years_is_applied() {
    let b = MemoryStateBackend::builder().ttl(MAX_TTL).build();
    b.put(b"k", b"v").await.unwrap();
    let left = b.ttl(b"k").await.unwrap().expect("the default ttl");
    assert!(left <= MAX_TTL && left > MAX_TTL.saturating_sub(Duration::from_secs(60)));
}
