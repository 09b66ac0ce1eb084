//! [`Sweeper`]: a periodic background task tied to the life of its owner.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// Runs a job every `interval` on the tokio runtime of the call that starts it, for as long
/// as its owner lives: the task keeps only a [`Weak`] reference, upgraded for each run, and
/// is aborted when the `Sweeper` (a field of the owner) is dropped. Backends use it to remove
/// expired entries; it starts lazily with the first expiring write, so a backend that never
/// uses TTLs runs no task.
///
/// Outside a tokio runtime, [`Sweeper::ensure_started`] does nothing and returns `false`
/// (callers fall back to removing expired entries when they touch them).
#[derive(Debug, Default)]
pub struct Sweeper {
    started: AtomicBool,
    handle: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Sweeper {
    /// A sweeper that has not started.
    pub const fn new() -> Self {
        Self {
            started: AtomicBool::new(false),
            handle: Mutex::new(None),
        }
    }

    /// Starts the periodic task unless it is already running; returns whether it runs.
    /// `job` gets a strong reference to the owner for the duration of one run.
    pub fn ensure_started<T, F, Fut>(&self, owner: &Arc<T>, interval: Duration, job: F) -> bool
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return false;
        };
        let weak: Weak<T> = Arc::downgrade(owner);
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(owner) = weak.upgrade() else { break };
                job(owner).await;
            }
        });
        *self.handle.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        true
    }

    /// Whether the task is running.
    pub fn is_running(&self) -> bool {
        self.handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(handle) = self
            .handle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            handle.abort();
        }
    }
}
