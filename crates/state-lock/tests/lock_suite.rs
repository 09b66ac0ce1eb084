//! The shared lock suite (`state_lock::lock_suite!`) on every lock backend: `RedisLock` on
//! a standalone Redis and on a Redis Cluster, `PostgresLock` (the lease table) and
//! `PostgresAdvisoryLock`, against the servers `cargo xtask test` starts.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::env;
use fred::prelude::KeysInterface;
use state_core::{StateError, StateResult};
use state_lock::testing::LockFactory;
use state_lock::{
    ADVISORY_CLASS, DistributedLock, LockOptions, PostgresAdvisoryLock, PostgresLock, RedisLock,
};
use state_redis::{RedisConfig, RedisStateBackend};

/// `RedisLock` on the standalone server, or on the Cluster.
struct OnRedis {
    cluster: bool,
}

impl OnRedis {
    async fn backend(&self) -> StateResult<RedisStateBackend> {
        let config = if self.cluster {
            RedisConfig::builder().cluster_nodes(
                env("STATE_REDIS_CLUSTER_URLS")
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            )
        } else {
            RedisConfig::builder().url(env("STATE_REDIS_URL"))
        };
        RedisStateBackend::new(config.key_prefix("lock-suite:").build()?).await
    }
}

#[async_trait]
impl LockFactory for OnRedis {
    async fn lock(
        &self,
        name: &str,
        options: LockOptions,
    ) -> StateResult<Arc<dyn DistributedLock>> {
        let backend = self.backend().await?;
        Ok(Arc::new(
            RedisLock::from_backend(&backend, name)?.with_options(options),
        ))
    }

    async fn revoke(&self, name: &str) -> StateResult<()> {
        let backend = self.backend().await?;
        let lock = RedisLock::from_backend(&backend, name)?;
        let deleted: i64 = backend
            .pool()
            .next()
            .del(lock.owner_key())
            .await
            .map_err(|e| StateError::backend(e.to_string()))?;
        assert_eq!(deleted, 1, "no lease of {name} to revoke");
        Ok(())
    }
}

/// A direct connection for what the suite does behind a lock's back.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&env("STATE_POSTGRES_URL"), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// `PostgresLock`: the lease table.
struct OnPostgresLease;

#[async_trait]
impl LockFactory for OnPostgresLease {
    async fn lock(
        &self,
        name: &str,
        options: LockOptions,
    ) -> StateResult<Arc<dyn DistributedLock>> {
        let lock = PostgresLock::new(&env("STATE_POSTGRES_URL"), name).await?;
        Ok(Arc::new(lock.with_options(options)))
    }

    async fn revoke(&self, name: &str) -> StateResult<()> {
        let expired = admin()
            .await
            .execute(
                "UPDATE state_locks SET expires_at = clock_timestamp() - interval '1 second' \
                 WHERE name = $1 AND expires_at > clock_timestamp()",
                &[&name],
            )
            .await
            .map_err(|e| StateError::backend(e.to_string()))?;
        assert_eq!(expired, 1, "no lease of {name} to revoke");
        Ok(())
    }
}

/// `PostgresAdvisoryLock`: a session lock, so an unrenewed lease does not expire.
struct OnPostgresAdvisory;

#[async_trait]
impl LockFactory for OnPostgresAdvisory {
    async fn lock(
        &self,
        name: &str,
        options: LockOptions,
    ) -> StateResult<Arc<dyn DistributedLock>> {
        let lock = PostgresAdvisoryLock::new(&env("STATE_POSTGRES_URL"), name).await?;
        Ok(Arc::new(lock.with_options(options)))
    }

    /// Terminates the session holding the advisory lock, and waits until the server has
    /// let the lock go.
    async fn revoke(&self, name: &str) -> StateResult<()> {
        let admin = admin().await;
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND classid = $1::int4::oid \
                   AND objid = hashtext($2)::oid AND granted",
                &[&ADVISORY_CLASS, &name],
            )
            .await
            .map_err(|e| StateError::backend(e.to_string()))?
            .get(0);
        assert_eq!(killed, 1, "no session holding {name} to terminate");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let held: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND classid = $1::int4::oid AND objid = hashtext($2)::oid AND granted",
                    &[&ADVISORY_CLASS, &name],
                )
                .await
                .map_err(|e| StateError::backend(e.to_string()))?
                .get(0);
            if held == 0 {
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the terminated session still holds {name}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn leases_expire(&self) -> bool {
        false
    }
}

mod redis {
    state_lock::lock_suite!(super::OnRedis { cluster: false });
}

mod redis_cluster {
    state_lock::lock_suite!(super::OnRedis { cluster: true });
}

mod postgres_lease {
    state_lock::lock_suite!(super::OnPostgresLease);
}

mod postgres_advisory {
    state_lock::lock_suite!(super::OnPostgresAdvisory);
}
