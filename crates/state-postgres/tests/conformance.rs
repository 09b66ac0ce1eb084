//! The shared conformance suite against a real PostgreSQL primary (`STATE_POSTGRES_URL`,
//! started by `cargo xtask test`), and again with every read routed through the streaming
//! replica in read-your-writes mode (`STATE_POSTGRES_REPLICA_URLS`). Without the servers
//! these tests fail: they never skip.

use std::sync::Arc;

use state_core::{StateBackend, StateResult};
use state_postgres::{PostgresConfig, PostgresStateBackend, ReadConsistency};
use state_testkit::BackendFactory;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `cargo xtask test` (it starts PostgreSQL) or point {name} at a server"
        )
    })
}

/// Each namespace is a table on the shared primary.
struct Primary;

#[async_trait::async_trait]
impl BackendFactory for Primary {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        Ok(Arc::new(
            PostgresStateBackend::new(env("STATE_POSTGRES_URL"), namespace).await?,
        ))
    }
}

/// Each namespace is a table; reads go to the replica when it has replayed this handle's
/// writes, else to the primary.
struct ReadYourWrites;

#[async_trait::async_trait]
impl BackendFactory for ReadYourWrites {
    async fn open(&self, namespace: &str) -> StateResult<Arc<dyn StateBackend>> {
        let replicas = env("STATE_POSTGRES_REPLICA_URLS");
        let config = PostgresConfig::builder()
            .url(env("STATE_POSTGRES_URL"))
            .replica_urls(replicas.split(','))
            .read_consistency(ReadConsistency::ReadYourWrites)
            .table(namespace)
            .pool_size(4)
            .build()?;
        Ok(Arc::new(PostgresStateBackend::with_config(config).await?))
    }

    /// Documented: another task's write may be missed by a replica read (observed by the
    /// linearizability case: a `get` started after another `get` had returned a value
    /// answered the older state).
    fn reads_may_be_stale(&self) -> bool {
        true
    }
}

mod primary {
    state_testkit::conformance_suite!(super::Primary);
}

mod read_your_writes {
    state_testkit::conformance_suite!(super::ReadYourWrites);
}
