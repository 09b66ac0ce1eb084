//! PostgreSQL locks: [`PostgresLock`] (a lease table, the default) and
//! [`PostgresAdvisoryLock`] (a session advisory lock on a dedicated connection).

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Object, Pool};
use state_core::{StateError, StateResult};
use state_postgres::{PostgresConfig, PostgresStateBackend};

use crate::error::{map_pg, map_pool};
use crate::lock::{
    DistributedLock, FencingToken, Lease, LockOptions, check_name, check_ttl, new_owner_token,
    within,
};
use crate::seed::{Held, seed_api};

/// Advisory-lock class of [`PostgresAdvisoryLock`]s (`'STAV'` as a big-endian `i32`); the
/// object is `hashtext(name)`. Kept apart from the workspace's internal locks (`'STAT'`:
/// migrations, object 1 for `state-postgres`, 2 for this crate; `'STAU'`: expiry sweeps), so
/// no lock name can collide with them.
pub const ADVISORY_CLASS: i32 = 0x5354_4156;
/// Class of the advisory lock serializing migrations (the workspace's `'STAT'`).
const MIGRATION_CLASS: i32 = 0x5354_4154;
const MIGRATION_LOCK: i32 = 2;

/// The lease table (in the connection's `search_path`).
pub const LEASE_TABLE: &str = "state_locks";
/// The sequence every PostgreSQL fencing token comes from.
pub const TOKEN_SEQUENCE: &str = "state_locks_token_seq";

const MIGRATE: &str = "
CREATE SEQUENCE IF NOT EXISTS state_locks_token_seq;
CREATE TABLE IF NOT EXISTS state_locks (
    name        text PRIMARY KEY,
    owner       text NOT NULL,
    token       int8 NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);";

/// Takes the lease when the row is absent or expired, with a token drawn *after* the row
/// lock is held (so tokens follow the order of acquisitions). Server clock only.
const ACQUIRE: &str = "
INSERT INTO state_locks AS cur (name, owner, token, expires_at, acquired_at)
VALUES ($1, $2, nextval('state_locks_token_seq'),
        clock_timestamp() + $3::int8 * interval '1 millisecond', clock_timestamp())
ON CONFLICT (name) DO UPDATE
   SET owner = EXCLUDED.owner,
       token = nextval('state_locks_token_seq'),
       expires_at = clock_timestamp() + $3::int8 * interval '1 millisecond',
       acquired_at = clock_timestamp()
 WHERE cur.expires_at <= clock_timestamp()
RETURNING token";

const RENEW: &str = "
UPDATE state_locks SET expires_at = clock_timestamp() + $3::int8 * interval '1 millisecond'
 WHERE name = $1 AND owner = $2 AND expires_at > clock_timestamp()";

const RELEASE: &str = "
UPDATE state_locks SET expires_at = clock_timestamp()
 WHERE name = $1 AND owner = $2 AND expires_at > clock_timestamp()";

const ADVISORY_TRY: &str = "
SELECT CASE WHEN pg_try_advisory_lock($1, hashtext($2))
            THEN nextval('state_locks_token_seq') END";

const ADVISORY_UNLOCK: &str = "SELECT pg_advisory_unlock($1, hashtext($2))";

/// A pool and where it points (redacted), shared by the PostgreSQL locks.
#[derive(Clone)]
struct Target {
    pool: Pool,
    server: String,
}

impl Target {
    /// A small pool of its own for `url`, with the TLS the URL asks for (`sslmode`,
    /// `sslrootcert`, as the PostgreSQL backend reads them).
    fn connect(url: &str, options: &LockOptions) -> StateResult<Self> {
        let config = PostgresConfig::builder()
            .url(url)
            .pool_size(4)
            .connect_timeout(options.timeout())
            .command_timeout(options.timeout())
            .sweep_interval(None)
            .build()?;
        Ok(Self {
            pool: config.primary_pool()?,
            server: config.redacted_url(),
        })
    }

    async fn client(&self) -> StateResult<Object> {
        self.pool.get().await.map_err(map_pool)
    }

    /// Creates the sequence and lease table once (under a transaction-scoped advisory lock,
    /// so concurrent starts do not race).
    async fn migrate(&self, timeout: Duration) -> StateResult<()> {
        within(timeout, "connect", async {
            let mut client = self.client().await?;
            let present: bool = client
                .query_one(
                    "SELECT to_regclass('state_locks') IS NOT NULL \
                     AND to_regclass('state_locks_token_seq') IS NOT NULL",
                    &[],
                )
                .await
                .map_err(map_pg)?
                .get(0);
            if present {
                return Ok(());
            }
            let tx = client.transaction().await.map_err(map_pg)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&MIGRATION_CLASS, &MIGRATION_LOCK],
            )
            .await
            .map_err(map_pg)?;
            tx.batch_execute(MIGRATE).await.map_err(map_pg)?;
            tx.commit().await.map_err(map_pg)
        })
        .await
        .map_err(|e| {
            StateError::new(
                e.kind(),
                format!("{} (lock server {})", e.message(), self.server),
            )
            .with_retryable(e.is_retryable())
            .with_operation("connect")
        })
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    // Rounded up: a lease never ends before the caller's TTL.
    ttl.as_micros().div_ceil(1000).clamp(1, i64::MAX as u128) as i64
}

fn token_of(value: i64) -> FencingToken {
    FencingToken::new(value.max(0) as u64)
}

pub(crate) struct LeaseCore {
    me: Weak<LeaseCore>,
    name: String,
    target: Target,
    options: LockOptions,
}

impl fmt::Debug for LeaseCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLock")
            .field("name", &self.name)
            .field("server", &self.target.server)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A distributed lock on a PostgreSQL lease table: one row per lock name with the owner,
/// the fencing token and `expires_at`.
///
/// - Acquire is one statement, `INSERT .. ON CONFLICT (name) DO UPDATE .. WHERE the lease
///   expired RETURNING token`, with the token from the sequence `state_locks_token_seq`
///   (never reused, including across server restarts). Expiry is judged by the server's
///   `clock_timestamp()` only: client clocks do not matter.
/// - Renew and release are `UPDATE .. WHERE owner = $me AND expires_at > clock_timestamp()`:
///   nobody else's lease is touched.
/// - A lease is data, not session state: it survives the loss of the connection that took it
///   (any pooled connection can renew or release it), and works through connection poolers
///   in transaction mode (PgBouncer), unlike advisory locks.
///
/// ```no_run
/// use std::time::Duration;
/// use state_lock::{DistributedLock, PostgresLock};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let lock = PostgresLock::new("postgres://app@localhost:5432/app", "nightly-report").await?;
/// let guard = lock.acquire(Duration::from_secs(30)).await?;
/// // ... work, passing guard.fence() with every write ...
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresLock {
    core: Arc<LeaseCore>,
    held: Held,
}

impl fmt::Debug for PostgresLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

seed_api!(PostgresLock);

impl PostgresLock {
    /// Connects to `url` with a pool of up to 4 connections of its own (TLS as the URL's
    /// `sslmode` asks, read as the PostgreSQL backend reads it) and creates the lease table
    /// if needed. Fails within about 2 s with a retryable error when
    /// the server is unreachable.
    pub async fn new(url: &str, name: &str) -> StateResult<Self> {
        check_name(name)?;
        let options = LockOptions::default();
        let target = Target::connect(url, &options)?;
        Self::open(target, name, options).await
    }

    /// The lock `name` on an existing backend's connection pool (TLS settings included).
    pub async fn from_backend(backend: &PostgresStateBackend, name: &str) -> StateResult<Self> {
        Self::from_pool(backend.pool().clone(), name).await
    }

    /// The lock `name` on a deadpool pool the caller built.
    pub async fn from_pool(pool: Pool, name: &str) -> StateResult<Self> {
        check_name(name)?;
        let target = Target {
            pool,
            server: "(caller's pool)".to_owned(),
        };
        Self::open(target, name, LockOptions::default()).await
    }

    async fn open(target: Target, name: &str, options: LockOptions) -> StateResult<Self> {
        target.migrate(options.timeout()).await?;
        Ok(Self {
            core: Arc::new_cyclic(|me| LeaseCore {
                me: me.clone(),
                name: name.to_owned(),
                target,
                options,
            }),
            held: Held::default(),
        })
    }

    /// The same lock with other renewal, polling and timeout settings.
    #[must_use]
    pub fn with_options(self, options: LockOptions) -> Self {
        Self {
            core: Arc::new_cyclic(|me| LeaseCore {
                me: me.clone(),
                name: self.core.name.clone(),
                target: self.core.target.clone(),
                options,
            }),
            held: Held::default(),
        }
    }
}

#[async_trait]
impl DistributedLock for LeaseCore {
    fn name(&self) -> &str {
        &self.name
    }

    fn options(&self) -> &LockOptions {
        &self.options
    }

    fn shared(&self) -> Arc<dyn DistributedLock> {
        self.me
            .upgrade()
            .expect("a LeaseCore is only reachable through its Arc")
    }

    async fn try_lease(&self, ttl: Duration) -> StateResult<Option<Lease>> {
        check_ttl(ttl)?;
        let owner = new_owner_token();
        let attempt = crate::lock::Attempt::new(self.shared(), &owner);
        let row = within(self.options.timeout(), "acquire", async {
            let client = self.target.client().await?;
            let stmt = client.prepare_cached(ACQUIRE).await.map_err(map_pg)?;
            client
                .query_opt(&stmt, &[&self.name, &owner, &ttl_ms(ttl)])
                .await
                .map_err(map_pg)
        })
        .await?;
        attempt.settled();
        Ok(row.map(|row| Lease::new(owner, token_of(row.get(0)))))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StateResult<bool> {
        check_ttl(ttl)?;
        let n = within(self.options.timeout(), "renew", async {
            let client = self.target.client().await?;
            let stmt = client.prepare_cached(RENEW).await.map_err(map_pg)?;
            client
                .execute(&stmt, &[&self.name, &lease.owner(), &ttl_ms(ttl)])
                .await
                .map_err(map_pg)
        })
        .await?;
        Ok(n == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<bool> {
        let n = within(self.options.timeout(), "release", async {
            let client = self.target.client().await?;
            let stmt = client.prepare_cached(RELEASE).await.map_err(map_pg)?;
            client
                .execute(&stmt, &[&self.name, &lease.owner()])
                .await
                .map_err(map_pg)
        })
        .await?;
        Ok(n == 1)
    }
}

/// The dedicated connection an advisory lease lives on. Dropping it closes the connection,
/// which makes the server release the advisory lock; a release the server confirmed
/// (`pg_advisory_unlock` returned true) takes the connection out first, to be reused.
struct AdvisorySession {
    client: std::sync::Mutex<Option<ClientWrapper>>,
}

impl AdvisorySession {
    fn client(&self) -> Option<ClientWrapper> {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    fn put_back(&self, client: ClientWrapper) {
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client);
    }
}

/// Dedicated connections whose advisory lock was released and confirmed by the server: they
/// hold no lock and are reused by the next acquisition through the same lock handle instead
/// of opening a new connection (they never go back to the shared pool).
const IDLE_SESSIONS: usize = 4;

/// Returns a checked-out connection to the pool only when told it is clean; dropped any
/// other way (an error, a timeout, a cancelled future) it detaches the connection from the
/// pool and closes it, so an advisory lock that may have been granted never stays behind on
/// a pooled connection.
struct Checkout(Option<Object>);

impl Checkout {
    fn clean(mut self) {
        drop(self.0.take());
    }

    fn dedicate(mut self) -> ClientWrapper {
        Object::take(self.0.take().expect("checkout holds its connection"))
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(Object::take(obj));
        }
    }
}

pub(crate) struct AdvisoryCore {
    me: Weak<AdvisoryCore>,
    name: String,
    target: Target,
    options: LockOptions,
    idle: std::sync::Mutex<Vec<ClientWrapper>>,
}

impl AdvisoryCore {
    fn lease(client: ClientWrapper, token: i64) -> Lease {
        let session: crate::lock::LeaseSession = Arc::new(AdvisorySession {
            client: std::sync::Mutex::new(Some(client)),
        });
        Lease::new(new_owner_token(), token_of(token)).with_session(session)
    }

    fn take_idle(&self) -> Option<ClientWrapper> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(client) = idle.pop() {
            if !client.is_closed() {
                return Some(client);
            }
        }
        None
    }

    fn keep_idle(&self, client: ClientWrapper) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_SESSIONS && !client.is_closed() {
            idle.push(client);
        }
    }
}

impl fmt::Debug for AdvisoryCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAdvisoryLock")
            .field("name", &self.name)
            .field("server", &self.target.server)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL session advisory lock (`pg_try_advisory_lock(class, hashtext(name))`) held on
/// a **dedicated connection** that the guard owns.
///
/// The connection is checked out of the pool and, once the lock is granted, detached from it
/// for good (`deadpool::managed::Object::take`): no other caller can ever run a query on it,
/// so the lock is never re-entrant for a stranger and is always unlocked on the session that
/// took it. When the guard is released the connection unlocks and closes; when the guard is
/// dropped, or the process dies, closing the connection releases the lock on the server.
///
/// Trade-offs against [`PostgresLock`]:
///
/// - The lock has no server-side expiry: it lasts exactly as long as the session. A paused
///   holder keeps it (no second holder while it is paused), but a hung holder keeps it until
///   its connection dies (TCP keepalive, `idle_session_timeout`). The TTL only sets how often
///   the guard checks that the session is alive and when it reports loss.
/// - One connection per held lock. After a release the server confirmed, the connection
///   (now holding no lock) is kept by the lock handle, up to 4, and reused by its next
///   acquisition; it never returns to the shared pool. A failed or unconfirmed release
///   closes it instead.
/// - It does not work through a pooler in transaction mode (PgBouncer `pool_mode =
///   transaction`): session state does not survive there. Use [`PostgresLock`] behind such
///   poolers.
/// - Names are hashed to 32 bits with the server's `hashtext`: two names may collide (they
///   then exclude each other, which is safe but slower). `hashtext` is PostgreSQL's own and
///   the same on every client, unlike Rust's `DefaultHasher`.
/// - Fencing tokens come from the same sequence as [`PostgresLock`]'s, drawn while the lock
///   is held, so they increase strictly.
#[derive(Clone)]
pub struct PostgresAdvisoryLock {
    core: Arc<AdvisoryCore>,
    held: Held,
}

impl fmt::Debug for PostgresAdvisoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.fmt(f)
    }
}

seed_api!(PostgresAdvisoryLock);

impl PostgresAdvisoryLock {
    /// Connects to `url` with a pool of its own (TLS as the URL's `sslmode` asks;
    /// connections are detached from it while a lock is held).
    pub async fn new(url: &str, name: &str) -> StateResult<Self> {
        check_name(name)?;
        let options = LockOptions::default();
        let target = Target::connect(url, &options)?;
        Self::open(target, name, options).await
    }

    /// The lock `name`, checking connections out of a backend's pool (TLS included).
    pub async fn from_backend(backend: &PostgresStateBackend, name: &str) -> StateResult<Self> {
        Self::from_pool(backend.pool().clone(), name).await
    }

    /// The lock `name`, checking connections out of a caller's pool.
    pub async fn from_pool(pool: Pool, name: &str) -> StateResult<Self> {
        check_name(name)?;
        let target = Target {
            pool,
            server: "(caller's pool)".to_owned(),
        };
        Self::open(target, name, LockOptions::default()).await
    }

    async fn open(target: Target, name: &str, options: LockOptions) -> StateResult<Self> {
        target.migrate(options.timeout()).await?;
        Ok(Self {
            core: Arc::new_cyclic(|me| AdvisoryCore {
                me: me.clone(),
                name: name.to_owned(),
                target,
                options,
                idle: std::sync::Mutex::new(Vec::new()),
            }),
            held: Held::default(),
        })
    }

    /// The same lock with other renewal, polling and timeout settings.
    #[must_use]
    pub fn with_options(self, options: LockOptions) -> Self {
        Self {
            core: Arc::new_cyclic(|me| AdvisoryCore {
                me: me.clone(),
                name: self.core.name.clone(),
                target: self.core.target.clone(),
                options,
                idle: std::sync::Mutex::new(Vec::new()),
            }),
            held: Held::default(),
        }
    }
}

fn session(lease: &Lease) -> StateResult<&AdvisorySession> {
    lease
        .session()
        .and_then(|s| s.downcast_ref::<AdvisorySession>())
        .ok_or_else(|| {
            StateError::invalid_input("this lease was not taken by a PostgresAdvisoryLock")
        })
}

#[async_trait]
impl DistributedLock for AdvisoryCore {
    fn name(&self) -> &str {
        &self.name
    }

    fn options(&self) -> &LockOptions {
        &self.options
    }

    fn shared(&self) -> Arc<dyn DistributedLock> {
        self.me
            .upgrade()
            .expect("an AdvisoryCore is only reachable through its Arc")
    }

    async fn try_lease(&self, ttl: Duration) -> StateResult<Option<Lease>> {
        check_ttl(ttl)?;
        within(self.options.timeout(), "acquire", async {
            // A connection that held this handle's lock before and released it cleanly.
            // Dropped on any error or cancellation (closing it releases whatever it holds).
            if let Some(client) = self.take_idle() {
                let token: Option<i64> = client
                    .query_one(ADVISORY_TRY, &[&ADVISORY_CLASS, &self.name])
                    .await
                    .map_err(map_pg)?
                    .get(0);
                return Ok(match token {
                    None => {
                        self.keep_idle(client);
                        None
                    }
                    Some(token) => Some(Self::lease(client, token)),
                });
            }
            let checkout = Checkout(Some(self.target.client().await?));
            let client = checkout.0.as_ref().expect("checked out");
            let token: Option<i64> = client
                .query_one(ADVISORY_TRY, &[&ADVISORY_CLASS, &self.name])
                .await
                .map_err(map_pg)?
                .get(0);
            match token {
                None => {
                    checkout.clean();
                    Ok(None)
                }
                Some(token) => Ok(Some(Self::lease(checkout.dedicate(), token))),
            }
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StateResult<bool> {
        // The session keeps the lock, so the TTL changes nothing on the server; it is still
        // checked, as every lock checks it, so a bad TTL fails the same way everywhere.
        check_ttl(ttl)?;
        let session = session(lease)?;
        let Some(client) = session.client() else {
            return Ok(false);
        };
        if client.is_closed() {
            return Ok(false);
        }
        let alive = within(self.options.timeout(), "renew", async {
            client.simple_query("SELECT 1").await.map_err(map_pg)
        })
        .await;
        let closed = client.is_closed();
        // Put it back for the release (or the next renewal); on cancellation above the
        // connection is dropped, which closes it and releases the lock on the server.
        session.put_back(client);
        match alive {
            Ok(_) => Ok(true),
            // The session is gone, and with it the lock.
            Err(_) if closed => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> StateResult<bool> {
        let session = session(lease)?;
        let Some(client) = session.client() else {
            return Ok(false);
        };
        if client.is_closed() {
            return Ok(false);
        }
        // On error or cancellation `client` is dropped: the connection closes and the server
        // releases the lock.
        let unlocked: bool = within(self.options.timeout(), "release", async {
            client
                .query_one(ADVISORY_UNLOCK, &[&ADVISORY_CLASS, &self.name])
                .await
                .map_err(map_pg)
        })
        .await?
        .get(0);
        if unlocked {
            // Verified clean: it holds no lock now, so this handle may reuse it.
            self.keep_idle(client);
        }
        Ok(unlocked)
    }
}
