//! [`LayerExt`]: stack layers with method calls.

use std::sync::Arc;
use std::time::Duration;

use metrics::SharedString;
use state_core::{StateBackend, StateResult};

use crate::{Instrumented, Namespaced, Retry, Timeout};

/// Stacks layers over an `Arc<dyn StateBackend>` with their default settings, innermost
/// first. Build a layer with its own constructor to configure it further.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use state_core::StateBackend;
/// use state_layers::LayerExt;
/// use state_memory::MemoryStateBackend;
///
/// let engine: Arc<dyn StateBackend> = Arc::new(MemoryStateBackend::new(None));
/// let backend = engine
///     .with_timeout(Duration::from_millis(250))
///     .with_retry()
///     .instrumented("sessions")
///     .namespaced("sessions:")?;
/// assert_eq!(backend.capabilities().limits.max_key_size, 2048 - 9);
/// # Ok::<(), state_core::StateError>(())
/// ```
pub trait LayerExt {
    /// Wraps in a [`Timeout`] with `deadline` on every operation but checkpoints.
    fn with_timeout(self, deadline: Duration) -> Arc<dyn StateBackend>;
    /// Wraps in a [`Retry`] with the default policy.
    fn with_retry(self) -> Arc<dyn StateBackend>;
    /// Wraps in an [`Instrumented`] labelled `name`.
    fn instrumented(self, name: impl Into<SharedString>) -> Arc<dyn StateBackend>;
    /// Wraps in a [`Namespaced`] under `prefix`; fails on a prefix that is not one
    /// namespace segment (see [`Namespaced::new`]).
    fn namespaced(self, prefix: &str) -> StateResult<Arc<dyn StateBackend>>;
}

impl LayerExt for Arc<dyn StateBackend> {
    fn with_timeout(self, deadline: Duration) -> Arc<dyn StateBackend> {
        Arc::new(Timeout::new(self, deadline))
    }

    fn with_retry(self) -> Arc<dyn StateBackend> {
        Arc::new(Retry::new(self))
    }

    fn instrumented(self, name: impl Into<SharedString>) -> Arc<dyn StateBackend> {
        Arc::new(Instrumented::new(self, name))
    }

    fn namespaced(self, prefix: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Arc::new(Namespaced::new(self, prefix)?))
    }
}
