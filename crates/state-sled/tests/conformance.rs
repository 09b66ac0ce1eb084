//! The shared conformance suite on sled, with and without compression.

use std::sync::Arc;

use state_core::{StateBackend, StateResult};
use state_sled::SledStateBackend;
use state_testkit::BackendFactory;

/// One database per test; each namespace is a tree in it.
struct SledFactory {
    db: sled::Db,
    _dir: tempfile::TempDir,
}

impl SledFactory {
    fn new(compression: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(64 << 20)
            .use_compression(compression)
            .open()
            .expect("open sled");
        Self { db, _dir: dir }
    }
}

#[async_trait::async_trait]
impl BackendFactory for SledFactory {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Arc::new(SledStateBackend::open_tree(
            self.db.clone(),
            namespace,
        )?))
    }
}

mod conformance {
    state_testkit::conformance_suite!(super::SledFactory::new(false));
}

#[cfg(feature = "compression")]
mod conformance_compressed {
    state_testkit::conformance_suite!(super::SledFactory::new(true));
}
