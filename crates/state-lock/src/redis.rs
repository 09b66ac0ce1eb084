//! [`RedisLock`]: `SET NX PX` leases with a fencing counter, owner-checked Lua release and
//! renewal, on Redis or Redis Cluster.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use state_core::{StateError, StateResult};
use state_redis::{RedisConfig, RedisStateBackend, eval_once};

use crate::lock::{
    DistributedLock, FencingToken, Lease, LockOptions, check_name, new_owner_token, within,
};
use crate::seed::{Held, seed_api};

/// Default prefix of the lock keys: `@state-lock:{<name>}:owner` and
/// `@state-lock:{<name>}:fence`. Lock namespaces start with `@`, which no data backend's key
/// prefix may contain, so no data backend's `clear` or `delete_prefix` can reach them.
pub const DEFAULT_LOCK_PREFIX: &str = "@state-lock:";

/// `KEYS[1]` owner key, `KEYS[2]` fence counter; `ARGV[1]` owner token, `ARGV[2]` TTL in ms.
/// Takes the lease and the next fencing token in one step, or returns nil.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
";

/// `KEYS[1]` owner key; `ARGV[1]` owner token, `ARGV[2]` TTL in ms. 1 when extended.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `KEYS[1]` owner key; `ARGV[1]` owner token. 1 when it deleted the caller's own lease.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Scripts {
    fn get() -> Arc<Scripts> {
        static SCRIPTS: std::sync::OnceLock<Arc<Scripts>> = std::sync::OnceLock::new();
        Arc::clone(SCRIPTS.get_or_init(|| {
            Arc::new(Scripts {
                acquire: Script::from_lua(ACQUIRE),
                renew: Script::from_lua(RENEW),
                release: Script::from_lua(RELEASE),
            })
        }))
    }
}

pub(crate) struct RedisCore {
    me: std::sync::Weak<RedisCore>,
    name: String,
    pool: Pool,
    owner_key: String,
    fence_key: String,
    scripts: Arc<Scripts>,
    options: LockOptions,
    server: String,
}

impl fmt::Debug for RedisCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("owner_key", &self.owner_key)
            .field("fence_key", &self.fence_key)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A distributed lock on Redis or Redis Cluster.
///
/// - **Acquire** is one Lua script: `SET <owner key> <random owner> NX PX <ttl>` and, only
///   when that succeeded, `INCR <fence key>`, whose result is the fencing token.
/// - **Release** and **renewal** are Lua scripts that compare the stored owner with the
///   caller's before `DEL` / `PEXPIRE`: a holder whose lease expired and was taken over can
///   neither release nor extend the new holder's lease.
/// - Both keys are `<prefix>{<name>}:owner` and `<prefix>{<name>}:fence`: the hash tag keeps
///   them in one Cluster slot, so the scripts work on a Cluster.
/// - The fence counter has no TTL. It survives a restart only as far as Redis persists it
///   (AOF with `appendfsync everysec` can lose the last second); see the crate docs.
///
/// ```no_run
/// use std::time::Duration;
/// use state_lock::RedisLock;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let lock = RedisLock::new("redis://localhost:6379", "my_resource").await?;
/// if lock.try_lock(Duration::from_secs(30)).await? {
///     // critical section
///     lock.unlock().await?;
/// }
/// lock.with_lock(Duration::from_secs(30), || async {
///     // critical section
///     Ok::<_, state_core::StateError>(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLock {
    core: Arc<RedisCore>,
    held: Held,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

seed_api!(RedisLock);

impl RedisLock {
    /// Connects to `url` (`redis://`, `rediss://`) and returns the lock `name` on it, as in
    /// the seed. Connecting gives up after about 4 s with a retryable `Connection` or
    /// `Timeout` error; every lock operation after that has a 2 s deadline.
    ///
    /// Each call opens a connection: share one with [`RedisLock::from_backend`] when a
    /// process uses many locks.
    pub async fn new(url: &str, name: &str) -> StateResult<Self> {
        check_name(name)?;
        let config = RedisConfig::builder()
            .url(url)
            .connect_timeout(Duration::from_secs(2))
            .command_timeout(Duration::from_secs(2))
            .max_retries(1)
            .build()?;
        let server = config.redacted_url();
        let backend = RedisStateBackend::new(config).await.map_err(|e| {
            StateError::new(e.kind(), format!("{} (lock server {server})", e.message()))
                .with_retryable(e.is_retryable())
                .with_operation("connect")
        })?;
        Self::from_backend(&backend, name)
    }

    /// The lock `name` on the connections of an existing backend (standalone or Cluster).
    /// The lock keys live outside the backend's key prefix, so they never show in its
    /// `list_keys` or `count`, and `clear` leaves them alone.
    pub fn from_backend(backend: &RedisStateBackend, name: &str) -> StateResult<Self> {
        let server = format!("{:?}", backend.config().topology());
        Self::with_pool(backend.pool().clone(), name, DEFAULT_LOCK_PREFIX, server)
    }

    /// The lock `name` on a fred pool the caller built, with its keys under `prefix` (a
    /// reserved namespace: `@`, one segment, `:`; `locks` becomes `@locks:`, see
    /// [`state_core::validate_reserved_namespace`]). The
    /// pool should have a `default_command_timeout` and a reconnect policy (fred otherwise
    /// waits forever for a dead server); operations are also bounded by
    /// [`LockOptions::op_timeout`].
    pub fn with_pool(
        pool: Pool,
        name: &str,
        prefix: &str,
        server: impl Into<String>,
    ) -> StateResult<Self> {
        check_name(name)?;
        let prefix = state_core::validate_reserved_namespace(prefix)?;
        let owner_key = format!("{prefix}{{{name}}}:owner");
        let fence_key = format!("{prefix}{{{name}}}:fence");
        if fred::util::redis_keyslot(owner_key.as_bytes())
            != fred::util::redis_keyslot(fence_key.as_bytes())
        {
            return Err(StateError::invalid_input(format!(
                "lock prefix `{prefix}` breaks the keys' shared hash tag (an empty `{{}}`?)"
            )));
        }
        Ok(Self {
            core: Arc::new_cyclic(|me| RedisCore {
                me: me.clone(),
                name: name.to_owned(),
                pool,
                owner_key,
                fence_key,
                scripts: Scripts::get(),
                options: LockOptions::default(),
                server: server.into(),
            }),
            held: Held::default(),
        })
    }

    /// The same lock with other renewal, polling and timeout settings.
    #[must_use]
    pub fn with_options(self, options: LockOptions) -> Self {
        let core = &self.core;
        Self {
            core: Arc::new_cyclic(|me| RedisCore {
                me: me.clone(),
                name: core.name.clone(),
                pool: core.pool.clone(),
                owner_key: core.owner_key.clone(),
                fence_key: core.fence_key.clone(),
                scripts: Arc::clone(&core.scripts),
                options,
                server: core.server.clone(),
            }),
            held: Held::default(),
        }
    }

    /// The Redis key holding the current owner (`<prefix>{<name>}:owner`).
    pub fn owner_key(&self) -> &str {
        &self.core.owner_key
    }

    /// The Redis key holding the fencing counter (`<prefix>{<name>}:fence`).
    pub fn fence_key(&self) -> &str {
        &self.core.fence_key
    }
}

/// A key or argument of a lock script, as bytes.
fn key(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

fn ttl_ms(ttl: Duration) -> i64 {
    // Rounded up: a lease never ends before the caller's TTL.
    ttl.as_micros().div_ceil(1000).clamp(1, i64::MAX as u128) as i64
}

#[async_trait]
impl DistributedLock for RedisCore {
    fn name(&self) -> &str {
        &self.name
    }

    fn options(&self) -> &LockOptions {
        &self.options
    }

    fn shared(&self) -> Arc<dyn DistributedLock> {
        self.me
            .upgrade()
            .expect("a RedisCore is only reachable through its Arc")
    }

    async fn try_lease(&self, ttl: Duration) -> StateResult<Option<Lease>> {
        crate::lock::check_ttl(ttl)?;
        let owner = new_owner_token();
        let client = self.pool.next();
        let attempt = crate::lock::Attempt::new(self.shared(), &owner);
        let token: Option<i64> = within(self.options.timeout(), "acquire", async {
            eval_once(
                client,
                &self.scripts.acquire,
                vec![key(&self.owner_key), key(&self.fence_key)],
                vec![key(&owner), key(&ttl_ms(ttl).to_string())],
            )
            .await
        })
        .await?;
        attempt.settled();
        Ok(token.map(|t| Lease::new(owner, FencingToken::new(t.max(0) as u64))))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StateResult<bool> {
        crate::lock::check_ttl(ttl)?;
        let client = self.pool.next();
        let n: i64 = within(self.options.timeout(), "renew", async {
            eval_once(
                client,
                &self.scripts.renew,
                vec![key(&self.owner_key)],
                vec![key(lease.owner()), key(&ttl_ms(ttl).to_string())],
            )
            .await
        })
        .await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<bool> {
        let client = self.pool.next();
        let n: i64 = within(self.options.timeout(), "release", async {
            eval_once(
                client,
                &self.scripts.release,
                vec![key(&self.owner_key)],
                vec![key(lease.owner())],
            )
            .await
        })
        .await?;
        Ok(n == 1)
    }
}
