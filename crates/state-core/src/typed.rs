//! Typed access over any backend: values encoded with MessagePack (`rmp-serde`).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint::{self, CheckpointSummary, RestoreSummary};
use crate::{StateBackend, StateResult};

/// Encodes a value the way [`StateBackendExt::put_typed`] stores it (MessagePack with field
/// names, so adding an optional field to a struct keeps old values readable).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> StateResult<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a value stored by [`StateBackendExt::put_typed`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StateResult<T> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Convenience methods on every [`StateBackend`], including `Arc<dyn StateBackend>`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use state_core::{StateBackend, StateBackendExt, StateResult};
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Window { start_ms: u64, count: u32 }
///
/// async fn save(backend: &dyn StateBackend) -> StateResult<()> {
///     backend.put_typed(b"window:7", &Window { start_ms: 7000, count: 3 }).await?;
///     let back: Option<Window> = backend.get_typed(b"window:7").await?;
///     assert_eq!(back, Some(Window { start_ms: 7000, count: 3 }));
///     Ok(())
/// }
/// ```
pub trait StateBackendExt: StateBackend {
    /// Reads and decodes the value under `key`.
    fn get_typed<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> impl Future<Output = StateResult<Option<T>>> + Send {
        async move {
            match self.get(key).await? {
                Some(bytes) => decode(&bytes).map(Some),
                None => Ok(None),
            }
        }
    }

    /// Encodes and stores `value` under `key`.
    fn put_typed<T: Serialize + Sync + ?Sized>(
        &self,
        key: &[u8],
        value: &T,
    ) -> impl Future<Output = StateResult<()>> + Send {
        async move {
            let bytes = encode(value)?;
            self.put(key, &bytes).await
        }
    }

    /// Encodes and stores `value` under `key` for `ttl`.
    fn put_typed_with_ttl<T: Serialize + Sync + ?Sized>(
        &self,
        key: &[u8],
        value: &T,
        ttl: Duration,
    ) -> impl Future<Output = StateResult<()>> + Send {
        async move {
            let bytes = encode(value)?;
            self.put_with_ttl(key, &bytes, ttl).await
        }
    }

    /// Checkpoints into a file atomically; see [`checkpoint::write_file`].
    fn checkpoint_to_file(
        &self,
        path: impl AsRef<Path> + Send,
    ) -> impl Future<Output = StateResult<CheckpointSummary>> + Send {
        async move { checkpoint::write_file(self, path).await }
    }

    /// Restores from a verified checkpoint file; see [`checkpoint::restore_file`].
    fn restore_from_file(
        &self,
        path: impl AsRef<Path> + Send,
    ) -> impl Future<Output = StateResult<RestoreSummary>> + Send {
        async move { checkpoint::restore_file(self, path).await }
    }
}

impl<B: StateBackend + ?Sized> StateBackendExt for B {}
