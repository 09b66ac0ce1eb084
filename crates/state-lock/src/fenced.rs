//! [`FencedWrite`]: writes that the store refuses when a newer fencing token has been seen.

use std::time::Duration;

use async_trait::async_trait;
use fred::types::scripts::Script;
use state_core::{Limits, StateBackend, StateError, StateResult};
use state_postgres::PostgresStateBackend;
use state_redis::RedisStateBackend;
use tokio_postgres::error::SqlState;

use crate::error::{map_pg, map_pool};
use crate::lock::Fence;

/// Prefix of the Redis hashes that remember the highest token per data key.
pub const REDIS_FENCE_PREFIX: &str = "@state-lock:fences:";

/// The PostgreSQL table that remembers the highest token per lock name (created in the
/// backend table's schema on first use).
pub const FENCE_TABLE: &str = "state_lock_fences";

/// A write guarded by a fencing token: applied only if no higher token has been seen, and
/// then recording this token, in one atomic step on the server.
///
/// `Ok(true)`: written. `Ok(false)`: refused because a newer holder has already written (the
/// caller's lock is stale and it must stop); nothing was changed. A token equal to the highest
/// seen is accepted, so one holder can write many times.
///
/// - **Redis**: one Lua call. The highest token is kept per data key, in a hash
///   `@state-lock:fences:{<slot tag>}` whose hash tag is the data key's own (or the data key,
///   when it has none), so the check and the write run on one Cluster slot. It lives outside
///   the backend's key prefix (never listed, counted or cleared by the backend). Every key
///   written with `put_fenced` must be written under one lock only: tokens of different locks
///   are not comparable.
/// - **PostgreSQL**: one statement. The highest token is kept per lock name in
///   `state_lock_fences`; a CTE raises it only when `token >= stored` and writes the row into
///   the backend's table only when that succeeded. Both are one transaction (the statement's).
///   It runs through the backend's own write path
///   ([`PostgresStateBackend::execute_write`]): its command timeout, `OutcomeUnknown` when
///   the reply is lost, and read-your-writes (a `get` through the same backend sees the
///   write even while replicas lag).
///
/// The write honours the backend's default TTL, like `put`.
///
/// ```no_run
/// use std::time::Duration;
/// use state_lock::{DistributedLock, FencedWrite, RedisLock};
/// use state_redis::{RedisConfig, RedisStateBackend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let backend = RedisStateBackend::new(RedisConfig::builder().url("redis://localhost:6379").build()?).await?;
/// let lock = RedisLock::from_backend(&backend, "account:42")?;
/// let guard = lock.acquire(Duration::from_secs(10)).await?;
/// if !backend.put_fenced(b"account:42:balance", b"100", &guard.fence()).await? {
///     // A newer holder has written: this one lost the lock while paused. Stop.
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait FencedWrite {
    /// Writes `value` under `key` unless a token newer than `fence`'s has been seen.
    async fn put_fenced(&self, key: &[u8], value: &[u8], fence: &Fence) -> StateResult<bool>;

    /// Like [`FencedWrite::put_fenced`], with its own TTL.
    async fn put_fenced_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        fence: &Fence,
    ) -> StateResult<bool>;
}

/// `KEYS[1]` fence hash, `KEYS[2]` data key; `ARGV[1]` field (the data key), `ARGV[2]` token
/// (decimal), `ARGV[3]` value, `ARGV[4]` TTL in ms or "". Tokens are compared as decimal
/// strings (length first), so all 64 bits count.
const PUT_FENCED: &str = r"
local seen = redis.call('HGET', KEYS[1], ARGV[1])
if seen then
  if #ARGV[2] < #seen or (#ARGV[2] == #seen and ARGV[2] < seen) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
";

/// The hash tag Redis Cluster hashes `key` by: the bytes between the first `{` and the next
/// `}` when non-empty, else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The fence hash for a full data key, in the data key's slot.
fn redis_fence_key(full_key: &[u8]) -> StateResult<Vec<u8>> {
    let tag = hash_tag(full_key);
    let mut fence = Vec::with_capacity(REDIS_FENCE_PREFIX.len() + tag.len() + 2);
    fence.extend_from_slice(REDIS_FENCE_PREFIX.as_bytes());
    fence.push(b'{');
    fence.extend_from_slice(tag);
    fence.push(b'}');
    if fred::util::redis_keyslot(&fence) != fred::util::redis_keyslot(full_key) {
        return Err(StateError::invalid_input(
            "put_fenced: this key cannot share a Cluster slot with its fence (a key without a \
             hash tag must not contain `}`)",
        ));
    }
    Ok(fence)
}

/// The backend's own configured limits, as its plain writes enforce them.
fn check(backend: &dyn StateBackend, key: &[u8], value: &[u8]) -> StateResult<()> {
    let limits: Limits = backend.capabilities().limits;
    limits.check_key(key)?;
    limits.check_value(value)
}

static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();

async fn redis_put(
    backend: &RedisStateBackend,
    key: &[u8],
    value: &[u8],
    ttl: Option<Duration>,
    fence: &Fence,
) -> StateResult<bool> {
    check(backend, key, value)?;
    let mut full = backend.config().key_prefix().as_bytes().to_vec();
    full.extend_from_slice(key);
    let fence_key = redis_fence_key(&full)?;
    let ttl = ttl
        .or(backend.config().default_ttl())
        .map_or_else(String::new, |t| t.as_millis().max(1).to_string());
    let script = SCRIPT.get_or_init(|| Script::from_lua(PUT_FENCED));
    let client = backend.pool().next();
    let full = bytes::Bytes::from(full);
    let keys = vec![bytes::Bytes::from(fence_key), full.clone()];
    let args = vec![
        full,
        bytes::Bytes::from(fence.token().get().to_string()),
        bytes::Bytes::copy_from_slice(value),
        bytes::Bytes::from(ttl),
    ];
    // One write: once a newer holder wrote, a re-send is refused (`false`, "stale token")
    // although its first copy landed.
    let written: i64 = state_redis::eval_once(client, script, keys, args)
        .await
        .map_err(|e| e.with_operation("put_fenced"))?;
    Ok(written == 1)
}

#[async_trait]
impl FencedWrite for RedisStateBackend {
    async fn put_fenced(&self, key: &[u8], value: &[u8], fence: &Fence) -> StateResult<bool> {
        redis_put(self, key, value, None, fence).await
    }

    async fn put_fenced_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        fence: &Fence,
    ) -> StateResult<bool> {
        Limits::check_ttl(ttl)?;
        redis_put(self, key, value, Some(ttl), fence).await
    }
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn fence_table(backend: &PostgresStateBackend) -> String {
    match backend.table().schema() {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(FENCE_TABLE)),
        None => quote_ident(FENCE_TABLE),
    }
}

async fn pg_put(
    backend: &PostgresStateBackend,
    key: &[u8],
    value: &[u8],
    ttl: Option<Duration>,
    fence: &Fence,
) -> StateResult<bool> {
    check(backend, key, value)?;
    let fences = fence_table(backend);
    let sql = format!(
        "WITH f AS (
             INSERT INTO {fences} AS cur (lock_name, token) VALUES ($1, $2)
             ON CONFLICT (lock_name) DO UPDATE SET token = EXCLUDED.token
              WHERE cur.token <= EXCLUDED.token
             RETURNING 1
         ), w AS (
             INSERT INTO {table} (key, value, expires_at)
             SELECT $3, $4, clock_timestamp() + $5::int8 * interval '1 millisecond' FROM f
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at
             RETURNING 1
         )
         SELECT count(*) FROM w",
        table = backend.table().quoted(),
    );
    let ttl_ms: Option<i64> = ttl
        .or(backend.config().default_ttl())
        .map(|t| t.as_millis().clamp(1, i64::MAX as u128) as i64);
    let token = i64::try_from(fence.token().get())
        .map_err(|_| StateError::invalid_input("PostgreSQL fencing tokens fit in an int8"))?;
    // Through the backend's own write path: its command timeout and cancellation, the
    // outcome-unknown rules, and read-your-writes (the write's WAL position is remembered,
    // so a `get` through this backend sees it even while replicas lag).
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&fence.lock(), &token, &key, &value, &ttl_ms];
    for attempt in 0..2 {
        match backend.execute_write("put_fenced", &sql, &params).await {
            Ok(rows) => {
                let written: i64 = rows.first().map_or(0, |row| row.get(0));
                return Ok(written == 1);
            }
            Err(err) if attempt == 0 && is_undefined_table(&err) => {
                // Refused at prepare, before anything was sent: create the table, retry.
                let client = backend.pool().get().await.map_err(map_pool)?;
                create_fence_table(&client, &fences).await?;
            }
            Err(err) => return Err(err),
        }
    }
    Err(
        StateError::backend("put_fenced: the fence table could not be created")
            .with_operation("put_fenced"),
    )
}

/// Whether `err` (or an error it wraps) is PostgreSQL's "relation does not exist".
fn is_undefined_table(err: &StateError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(pg) = current.downcast_ref::<tokio_postgres::Error>() {
            return pg.code() == Some(&SqlState::UNDEFINED_TABLE);
        }
        source = current.source();
    }
    false
}

async fn create_fence_table(client: &deadpool_postgres::Object, fences: &str) -> StateResult<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {fences} (lock_name text PRIMARY KEY, token int8 NOT NULL)"
        ))
        .await
        .or_else(|err| {
            // Two writers creating it at once: the loser sees a unique violation on the catalog.
            if err.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(map_pg(err).with_operation("put_fenced"))
            }
        })
}

#[async_trait]
impl FencedWrite for PostgresStateBackend {
    async fn put_fenced(&self, key: &[u8], value: &[u8], fence: &Fence) -> StateResult<bool> {
        pg_put(self, key, value, None, fence).await
    }

    async fn put_fenced_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        fence: &Fence,
    ) -> StateResult<bool> {
        Limits::check_ttl(ttl)?;
        pg_put(self, key, value, Some(ttl), fence).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag(b"plain"), b"plain");
        assert_eq!(hash_tag(b"a{tag}b"), b"tag");
        assert_eq!(hash_tag(b"a{}b"), b"a{}b");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
    }

    #[test]
    fn fence_keys_share_the_data_slot() {
        for key in [&b"state:k1"[..], b"state:{user:1}:x", b"{app}:k", b"a{b"] {
            let fence = redis_fence_key(key).unwrap();
            assert_eq!(
                fred::util::redis_keyslot(&fence),
                fred::util::redis_keyslot(key),
                "{key:?}"
            );
            assert!(fence.starts_with(REDIS_FENCE_PREFIX.as_bytes()));
        }
        assert!(redis_fence_key(b"state:a}b").is_err());
        assert!(redis_fence_key(b"x{}y").is_err());
    }
}
