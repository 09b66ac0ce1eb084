//! Built without a backend's or a layer's feature (`cargo test -p anystate` with the default
//! features), opening one is a `ConfigInvalid` error that names the feature.

#![cfg(not(feature = "full"))]

use state_core::ErrorKind;

async fn message(url: &str) -> String {
    let err = anystate::open(url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    err.message().to_owned()
}

/// A kind or layer whose feature is off is a clear error.
#[cfg(not(feature = "services-redis"))]
#[tokio::test]
async fn a_kind_without_its_feature_says_which_feature() {
    let m = message("redis://localhost").await;
    assert!(
        m.contains("compiled without feature `services-redis`"),
        "{m}"
    );
}

/// A layer whose feature is off is a clear error.
#[cfg(not(feature = "layers-cache"))]
#[tokio::test]
async fn a_layer_without_its_feature_says_which_feature() {
    let m = message("memory://?cache.max_items=10").await;
    assert!(m.contains("compiled without feature `layers-cache`"), "{m}");
}
