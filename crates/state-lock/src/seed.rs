//! The seed's instance-level API (`try_lock` / `unlock` / `with_lock`), shared by every lock
//! type through [`seed_api!`].

use std::sync::Arc;
use std::time::Duration;

use state_core::StateResult;
use tokio::sync::Mutex;

use crate::guard::LockGuard;
use crate::lock::DistributedLock;

/// The guard an instance holds between `try_lock` and `unlock`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Held(Arc<Mutex<Option<LockGuard>>>);

impl Held {
    pub(crate) async fn try_lock(
        &self,
        lock: &dyn DistributedLock,
        ttl: Duration,
    ) -> StateResult<bool> {
        let mut held = self.0.lock().await;
        if held.as_ref().is_some_and(LockGuard::is_held) {
            // Not re-entrant: this instance already holds the lock.
            return Ok(false);
        }
        // A lost guard is dropped (its release is attempted in the background).
        *held = None;
        match lock.try_acquire(ttl).await? {
            Some(guard) => {
                *held = Some(guard);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(crate) async fn unlock(&self) -> StateResult<bool> {
        let guard = self.0.lock().await.take();
        match guard {
            Some(guard) => guard.release().await,
            None => Ok(false),
        }
    }

    pub(crate) async fn token(&self) -> Option<crate::FencingToken> {
        self.0
            .lock()
            .await
            .as_ref()
            .filter(|g| g.is_held())
            .map(LockGuard::token)
    }
}

/// Inherent seed methods and the [`DistributedLock`] delegation for a lock type with fields
/// `core: Arc<impl DistributedLock>` and `held: Held`.
macro_rules! seed_api {
    ($ty:ty) => {
        impl $ty {
            /// The seed's `try_lock`: one attempt; `true` when this instance now holds the lock.
            /// The lease is renewed automatically until [`Self::unlock`]. Not re-entrant: an
            /// instance that already holds the lock gets `false`.
            pub async fn try_lock(
                &self,
                ttl: std::time::Duration,
            ) -> state_core::StateResult<bool> {
                self.held.try_lock(self, ttl).await
            }

            /// The seed's `unlock`: releases what [`Self::try_lock`] took; `true` when the lock
            /// was still held by this instance (`false` when it expired meanwhile, or when this
            /// instance held nothing). Never releases another owner's lock.
            pub async fn unlock(&self) -> state_core::StateResult<bool> {
                self.held.unlock().await
            }

            /// The fencing token of the lease taken by [`Self::try_lock`], while it is held.
            pub async fn current_token(&self) -> Option<crate::FencingToken> {
                self.held.token().await
            }

            /// The seed's `with_lock`: waits for the lock, runs `f`, releases on success,
            /// error and panic. See [`crate::with_lock`].
            pub async fn with_lock<T, E, F, Fut>(
                &self,
                ttl: std::time::Duration,
                f: F,
            ) -> Result<T, E>
            where
                E: From<state_core::StateError>,
                F: FnOnce() -> Fut,
                Fut: std::future::Future<Output = Result<T, E>>,
            {
                crate::lock::with_lock(self, ttl, f).await
            }
        }

        #[async_trait::async_trait]
        impl crate::DistributedLock for $ty {
            fn name(&self) -> &str {
                self.core.name()
            }

            fn options(&self) -> &crate::LockOptions {
                self.core.options()
            }

            fn shared(&self) -> std::sync::Arc<dyn crate::DistributedLock> {
                self.core.clone()
            }

            async fn try_lease(
                &self,
                ttl: std::time::Duration,
            ) -> state_core::StateResult<Option<crate::Lease>> {
                self.core.try_lease(ttl).await
            }

            async fn renew_lease(
                &self,
                lease: &crate::Lease,
                ttl: std::time::Duration,
            ) -> state_core::StateResult<bool> {
                self.core.renew_lease(lease, ttl).await
            }

            async fn release_lease(&self, lease: &crate::Lease) -> state_core::StateResult<bool> {
                self.core.release_lease(lease).await
            }
        }
    };
}

pub(crate) use seed_api;
