//! The whole conformance suite through each layer, over memory and over the real Redis of
//! `STATE_REDIS_URL` (started by `cargo xtask test`; without it the Redis runs fail, never
//! skip).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Inner, Layered, env, redis_at};
use state_core::{StateBackend, StateResult};
use state_layers::{Instrumented, Namespaced, Retry, Timeout};
use state_testkit::BackendFactory;

fn timeout(inner: Arc<dyn StateBackend>, _: &str) -> Arc<dyn StateBackend> {
    Arc::new(Timeout::new(inner, Duration::from_secs(10)))
}

fn retry(inner: Arc<dyn StateBackend>, _: &str) -> Arc<dyn StateBackend> {
    Arc::new(Retry::new(inner))
}

fn instrumented(inner: Arc<dyn StateBackend>, _: &str) -> Arc<dyn StateBackend> {
    Arc::new(Instrumented::new(inner, "conformance"))
}

/// Every layer at once, in the recommended order.
fn full_stack(inner: Arc<dyn StateBackend>, ns: &str) -> Arc<dyn StateBackend> {
    let timed = Arc::new(Timeout::new(inner, Duration::from_secs(10)));
    let retried = Arc::new(Retry::new(timed));
    let observed = Arc::new(Instrumented::new(retried, "stack"));
    Arc::new(Namespaced::new(observed, ns).expect("a valid namespace"))
}

/// A fresh memory backend under a prefix.
fn namespaced(inner: Arc<dyn StateBackend>, ns: &str) -> Arc<dyn StateBackend> {
    Arc::new(Namespaced::new(inner, ns).expect("a valid namespace"))
}

/// Every namespace is a prefix on ONE Redis connection with an empty key prefix: isolation
/// between namespaces comes from `Namespaced` alone.
struct NamespacedOnSharedRedis;

#[async_trait::async_trait]
impl BackendFactory for NamespacedOnSharedRedis {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let shared = redis_at(&env("STATE_REDIS_URL"), "layers-ns:".into()).await?;
        Ok(Arc::new(Namespaced::new(shared, namespace)?))
    }

    async fn open_slowed(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let shared = redis_at(&env("STATE_REDIS_URL"), "layers-ns:".into()).await?;
        let slowed = state_testkit::Yielding::wrap(shared);
        Ok(Arc::new(Namespaced::new(slowed, namespace)?))
    }
}

mod namespaced_memory {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Memory,
        wrap: super::namespaced,
    });
}

mod namespaced_redis {
    state_testkit::conformance_suite!(super::NamespacedOnSharedRedis);
}

mod timeout_memory {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Memory,
        wrap: super::timeout,
    });
}

mod timeout_redis {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Redis,
        wrap: super::timeout,
    });
}

mod retry_memory {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Memory,
        wrap: super::retry,
    });
}

mod retry_redis {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Redis,
        wrap: super::retry,
    });
}

mod instrumented_memory {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Memory,
        wrap: super::instrumented,
    });
}

mod instrumented_redis {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Redis,
        wrap: super::instrumented,
    });
}

mod stack_memory {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Memory,
        wrap: super::full_stack,
    });
}

mod stack_redis {
    state_testkit::conformance_suite!(super::Layered {
        inner: super::Inner::Redis,
        wrap: super::full_stack,
    });
}
