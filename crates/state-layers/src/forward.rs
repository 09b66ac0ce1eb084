//! The `StateBackend` impl shared by the layers that wrap each call of one inner backend
//! (`Timeout`, `Retry`, `Instrumented`, `FaultInjector`).
//!
//! Each such layer defines four inherent methods and the macro routes every trait method,
//! required and provided, through them, so no call falls back to a trait default that would
//! bypass the inner backend's native path (`#[deny(clippy::missing_trait_methods)]` proves
//! the list is complete):
//!
//! - `point(op, key, f)`: a point operation; `f` issues the inner call and may be called
//!   again (retries), so it only captures references.
//! - `call(op, items, f)`: any other operation, `f` as above; `items` is the batch size.
//! - `layer_scan(prefix)`, `layer_checkpoint(writer)`, `layer_restore(reader)`: the
//!   streaming operations, which cannot be replayed by a closure.
//! - `layer_stats()`: the inner statistics plus the layer's own figures.
//!
//! The point operations poll the inner future once when they are called (see
//! `util::poll_once`), so an in-process backend answers without a boxed future. Like the
//! memory backend's own `StateFuture::ready`, the call then starts when it is made, not at
//! its first `.await`; call them from inside a tokio runtime.

macro_rules! forward_backend {
    ($ty:ty) => {
        #[deny(clippy::missing_trait_methods)]
        #[::async_trait::async_trait]
        impl ::state_core::StateBackend for $ty {
            #[inline]
            fn get<'a>(
                &'a self,
                key: &'a [u8],
            ) -> ::state_core::StateFuture<'a, Option<::bytes::Bytes>> {
                self.point($crate::Op::Get, key, move || self.inner.get(key))
            }

            #[inline]
            fn put<'a>(
                &'a self,
                key: &'a [u8],
                value: &'a [u8],
            ) -> ::state_core::StateFuture<'a, ()> {
                self.point($crate::Op::Put, key, move || self.inner.put(key, value))
            }

            #[inline]
            fn delete<'a>(&'a self, key: &'a [u8]) -> ::state_core::StateFuture<'a, bool> {
                self.point($crate::Op::Delete, key, move || self.inner.delete(key))
            }

            #[inline]
            fn contains<'a>(&'a self, key: &'a [u8]) -> ::state_core::StateFuture<'a, bool> {
                self.point($crate::Op::Contains, key, move || self.inner.contains(key))
            }

            async fn list_keys(
                &self,
                prefix: &[u8],
            ) -> ::state_core::StateResult<Vec<::bytes::Bytes>> {
                self.call($crate::Op::ListKeys, 0, || self.inner.list_keys(prefix))
                    .await
            }

            async fn clear(&self) -> ::state_core::StateResult<()> {
                self.call($crate::Op::Clear, 0, || self.inner.clear()).await
            }

            async fn count(&self) -> ::state_core::StateResult<usize> {
                self.call($crate::Op::Count, 0, || self.inner.count()).await
            }

            fn capabilities(&self) -> ::state_core::Capabilities {
                self.inner.capabilities()
            }

            fn pool_stats(&self) -> Option<::state_core::PoolStats> {
                self.inner.pool_stats()
            }

            async fn batch_get(
                &self,
                keys: &[&[u8]],
            ) -> ::state_core::StateResult<Vec<Option<::bytes::Bytes>>> {
                self.call($crate::Op::BatchGet, keys.len(), || {
                    self.inner.batch_get(keys)
                })
                .await
            }

            async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> ::state_core::StateResult<()> {
                self.call($crate::Op::BatchPut, entries.len(), || {
                    self.inner.batch_put(entries)
                })
                .await
            }

            async fn batch_delete(&self, keys: &[&[u8]]) -> ::state_core::StateResult<usize> {
                self.call($crate::Op::BatchDelete, keys.len(), || {
                    self.inner.batch_delete(keys)
                })
                .await
            }

            async fn put_with_ttl(
                &self,
                key: &[u8],
                value: &[u8],
                ttl: ::std::time::Duration,
            ) -> ::state_core::StateResult<()> {
                self.call($crate::Op::PutWithTtl, 1, || {
                    self.inner.put_with_ttl(key, value, ttl)
                })
                .await
            }

            async fn ttl(
                &self,
                key: &[u8],
            ) -> ::state_core::StateResult<Option<::std::time::Duration>> {
                self.call($crate::Op::Ttl, 1, || self.inner.ttl(key)).await
            }

            async fn get_with_ttl(
                &self,
                key: &[u8],
            ) -> ::state_core::StateResult<Option<(::bytes::Bytes, Option<::std::time::Duration>)>>
            {
                self.call($crate::Op::GetWithTtl, 1, || self.inner.get_with_ttl(key))
                    .await
            }

            async fn get_for_cache(
                &self,
                key: &[u8],
            ) -> ::state_core::StateResult<Option<(::bytes::Bytes, Option<::std::time::Duration>)>>
            {
                self.call($crate::Op::GetForCache, 1, || self.inner.get_for_cache(key))
                    .await
            }

            async fn compare_and_swap(
                &self,
                key: &[u8],
                expected: Option<&[u8]>,
                new: Option<&[u8]>,
            ) -> ::state_core::StateResult<bool> {
                self.call($crate::Op::CompareAndSwap, 1, || {
                    self.inner.compare_and_swap(key, expected, new)
                })
                .await
            }

            async fn set_if_not_exists(
                &self,
                key: &[u8],
                value: &[u8],
                ttl: Option<::std::time::Duration>,
            ) -> ::state_core::StateResult<bool> {
                self.call($crate::Op::SetIfNotExists, 1, || {
                    self.inner.set_if_not_exists(key, value, ttl)
                })
                .await
            }

            async fn get_and_delete(
                &self,
                key: &[u8],
            ) -> ::state_core::StateResult<Option<::bytes::Bytes>> {
                self.call($crate::Op::GetAndDelete, 1, || {
                    self.inner.get_and_delete(key)
                })
                .await
            }

            async fn delete_prefix(&self, prefix: &[u8]) -> ::state_core::StateResult<usize> {
                self.call($crate::Op::DeletePrefix, 0, || {
                    self.inner.delete_prefix(prefix)
                })
                .await
            }

            fn scan<'a>(&'a self, prefix: &'a [u8]) -> ::state_core::ScanStream<'a> {
                self.layer_scan(prefix)
            }

            async fn checkpoint(
                &self,
                writer: &mut (dyn ::tokio::io::AsyncWrite + Send + Unpin),
            ) -> ::state_core::StateResult<::state_core::checkpoint::CheckpointSummary> {
                self.layer_checkpoint(writer).await
            }

            async fn restore(
                &self,
                reader: &mut (dyn ::tokio::io::AsyncRead + Send + Unpin),
            ) -> ::state_core::StateResult<::state_core::checkpoint::RestoreSummary> {
                self.layer_restore(reader).await
            }

            async fn stats(&self) -> ::state_core::StateStats {
                self.layer_stats().await
            }

            async fn health_check(&self) -> ::state_core::StateResult<bool> {
                self.call($crate::Op::HealthCheck, 0, || self.inner.health_check())
                    .await
            }

            async fn memory_usage(&self) -> ::state_core::StateResult<u64> {
                self.call($crate::Op::MemoryUsage, 0, || self.inner.memory_usage())
                    .await
            }

            async fn flush(&self) -> ::state_core::StateResult<()> {
                self.call($crate::Op::Flush, 0, || self.inner.flush()).await
            }
        }
    };
}

pub(crate) use forward_backend;
