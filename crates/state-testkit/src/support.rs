//! Helpers the cases share.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use state_core::{
    Capabilities, ErrorKind, ScanStream, StateBackend, StateError, StateFuture, StateResult,
};

use crate::BackendFactory;

/// A fresh namespace name: lowercase ASCII letters, digits and `_`, starting with a letter and
/// at most 30 characters, so it is valid as a table name, a tree name and a key prefix.
pub fn unique_namespace() -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..12)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect();
    format!("t_{suffix}")
}

pub(crate) async fn open(factory: &dyn BackendFactory) -> Arc<dyn StateBackend> {
    open_named(factory, &unique_namespace()).await
}

pub(crate) async fn open_named(factory: &dyn BackendFactory, name: &str) -> Arc<dyn StateBackend> {
    factory
        .open(name)
        .await
        .unwrap_or_else(|err| panic!("the factory could not open namespace {name}: {err:?}"))
}

pub(crate) fn sorted(mut keys: Vec<Bytes>) -> Vec<Bytes> {
    keys.sort();
    keys
}

pub(crate) fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

#[track_caller]
pub(crate) fn assert_kind<T: std::fmt::Debug>(result: StateResult<T>, kind: ErrorKind) {
    match result {
        Err(err) => assert_eq!(err.kind(), kind, "expected {kind:?}, got {err:?}"),
        Ok(value) => panic!("expected a {kind:?} error, got Ok({value:?})"),
    }
}

/// Deterministic pseudo-random bytes (not compressible, unlike zeros).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) async fn collect_scan(
    backend: &dyn StateBackend,
    prefix: &[u8],
) -> Vec<state_core::Entry> {
    let mut out: Vec<_> = backend
        .scan(prefix)
        .map(|e| e.expect("scan entry"))
        .collect()
        .await;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

pub(crate) async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Wraps a backend and makes its scan fail after the first entry, to prove a failed
/// checkpoint never replaces a good checkpoint file.
#[derive(Debug)]
pub struct FailingScan(pub Arc<dyn StateBackend>);

#[async_trait]
impl StateBackend for FailingScan {
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.0.get(key)
    }
    fn put<'a>(&'a self, key: &'a [u8], value: &'a [u8]) -> StateFuture<'a, ()> {
        self.0.put(key, value)
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.0.delete(key)
    }
    async fn list_keys(&self, prefix: &[u8]) -> StateResult<Vec<Bytes>> {
        self.0.list_keys(prefix).await
    }
    async fn clear(&self) -> StateResult<()> {
        self.0.clear().await
    }
    async fn count(&self) -> StateResult<usize> {
        self.0.count().await
    }
    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.0.contains(key)
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> ScanStream<'a> {
        Box::pin(
            self.0
                .scan(prefix)
                .take(1)
                .chain(futures::stream::once(async {
                    Err(StateError::connection("injected failure mid-scan"))
                })),
        )
    }
}
