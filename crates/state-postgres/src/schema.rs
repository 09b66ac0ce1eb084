//! The table layout, its versioned migrations, and every SQL statement the backend prepares.
//!
//! ```sql
//! CREATE TABLE "state" (
//!     key        bytea PRIMARY KEY,     -- B-tree: point lookups and prefix ranges
//!     value      bytea NOT NULL,
//!     expires_at timestamptz            -- NULL: never expires
//! ) WITH (fillfactor = 90);             -- room for HOT updates of hot keys
//! CREATE INDEX "state_expires_idx" ON "state" (expires_at) WHERE expires_at IS NOT NULL;
//! ```
//!
//! Keys are `bytea`, so the primary key's B-tree orders them bytewise (no collation) and
//! serves `key >= $prefix AND key < $upper_bound` range scans directly; the seed's
//! `text_pattern_ops` index is only needed for `text` keys. The partial index's predicate
//! (`IS NOT NULL`) is immutable, unlike `expires_at > NOW()`, which PostgreSQL refuses in an
//! index predicate. Expiry is checked against `now()` in every read, so an expired row is
//! invisible before the sweeper deletes it.

use tokio_postgres::Client;

use crate::config::TableName;
use crate::error::map_pg;
use state_core::StateResult;

/// Advisory-lock class for this crate's locks (`'STAT'` as a big-endian `i32`).
pub(crate) const LOCK_CLASS: i32 = 0x5354_4154;
/// Advisory-lock object id serializing every migration of every table in a database.
const MIGRATION_LOCK: i32 = 1;

/// The live-row condition, inlined in every read.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
/// `expires_at` for a write whose TTL in milliseconds is parameter `$n` (NULL: no expiry).
fn expires(n: usize) -> String {
    format!("now() + ${n}::int8 * interval '1 millisecond'")
}
/// Milliseconds left (rounded up), `NULL` for rows without expiry.
const REMAINING_MS: &str = "ceil(extract(epoch from (expires_at - now())) * 1000)::int8";

/// One schema version: applied once, in order, recorded in `state_schema_migrations`.
struct Migration {
    version: i32,
    description: &'static str,
    sql: fn(&TableName) -> String,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "key/value table with expiry",
    sql: |t| {
        let schema = t
            .quoted_schema()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"))
            .unwrap_or_default();
        format!(
            "{schema}
                 CREATE TABLE IF NOT EXISTS {table} (
                     key bytea PRIMARY KEY,
                     value bytea NOT NULL,
                     expires_at timestamptz
                 ) WITH (fillfactor = 90);
                 CREATE INDEX IF NOT EXISTS {idx} ON {table} (expires_at)
                     WHERE expires_at IS NOT NULL;",
            table = t.quoted(),
            idx = t.index_name("_expires_idx"),
        )
    },
}];

/// The latest schema version this crate writes (recorded per table in `state_schema_migrations`).
pub const SCHEMA_VERSION: i32 = 1;

/// Brings `table` to [`SCHEMA_VERSION`].
///
/// Runs in one transaction holding a transaction-scoped advisory lock, so processes starting
/// at once apply each migration exactly once (the others wait, then find it recorded), and a
/// failed migration leaves nothing half-done. Returns the versions applied now.
pub(crate) async fn migrate(client: &mut Client, table: &TableName) -> StateResult<Vec<i32>> {
    let tx = client.transaction().await.map_err(map_pg)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &MIGRATION_LOCK],
    )
    .await
    .map_err(map_pg)?;
    let registry = match table.quoted_schema() {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {schema};"),
        None => String::new(),
    };
    let migrations_table = migrations_table(table);
    tx.batch_execute(&format!(
        "{registry}
         CREATE TABLE IF NOT EXISTS {migrations_table} (
             table_name text NOT NULL,
             version int4 NOT NULL,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (table_name, version)
         );"
    ))
    .await
    .map_err(map_pg)?;
    let name = table.to_string();
    let current: Option<i32> = tx
        .query_one(
            &format!("SELECT max(version) FROM {migrations_table} WHERE table_name = $1"),
            &[&name],
        )
        .await
        .map_err(map_pg)?
        .get(0);
    let current = current.unwrap_or(0);
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(&(migration.sql)(table))
            .await
            .map_err(map_pg)?;
        tx.execute(
            &format!(
                "INSERT INTO {migrations_table} (table_name, version, description) VALUES ($1, $2, $3)"
            ),
            &[&name, &migration.version, &migration.description],
        )
        .await
        .map_err(map_pg)?;
        applied.push(migration.version);
    }
    tx.commit().await.map_err(map_pg)?;
    if !applied.is_empty() {
        tracing::info!(table = %table, versions = ?applied, "state-postgres: applied migrations");
    }
    Ok(applied)
}

/// The registry of applied migrations, in the table's schema.
pub(crate) fn migrations_table(table: &TableName) -> String {
    match table.quoted_schema() {
        Some(schema) => format!("{schema}.\"state_schema_migrations\""),
        None => "\"state_schema_migrations\"".to_owned(),
    }
}

/// Every statement, formatted once with the quoted table name and prepared (and cached) per
/// connection on first use.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) get: String,
    pub(crate) get_with_ttl: String,
    pub(crate) contains: String,
    pub(crate) put: String,
    pub(crate) delete: String,
    pub(crate) batch_get: String,
    pub(crate) batch_put: String,
    pub(crate) batch_delete: String,
    pub(crate) ttl: String,
    pub(crate) insert_if_absent: String,
    pub(crate) swap: String,
    pub(crate) delete_if: String,
    pub(crate) absent: String,
    pub(crate) get_and_delete: String,
    pub(crate) list_all: String,
    pub(crate) list_from: String,
    pub(crate) list_range: String,
    pub(crate) count: String,
    pub(crate) clear: String,
    pub(crate) delete_all: String,
    pub(crate) delete_from: String,
    pub(crate) delete_range: String,
    /// Keyset pages: `(lower, inclusive?, upper?)` variants.
    pub(crate) page_from_incl: String,
    pub(crate) page_from_excl: String,
    pub(crate) page_range_incl: String,
    pub(crate) page_range_excl: String,
    pub(crate) sweep: String,
}

/// Rows per keyset page in `scan`.
pub(crate) const PAGE_ROWS: i64 = 1000;

impl Sql {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let page = |lower: &str, upper: bool| {
            let upper = if upper { " AND key < $2" } else { "" };
            format!(
                "SELECT key, value, {REMAINING_MS} FROM {t} WHERE key {lower} $1{upper} AND {LIVE} ORDER BY key LIMIT {PAGE_ROWS}"
            )
        };
        let deleted_live = |filter: &str| {
            format!(
                "WITH d AS (DELETE FROM {t} WHERE {filter} RETURNING expires_at) SELECT count(*) FROM d WHERE {LIVE}"
            )
        };
        Self {
            get: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE}"),
            get_with_ttl: format!(
                "SELECT value, {REMAINING_MS} FROM {t} WHERE key = $1 AND {LIVE}"
            ),
            contains: format!("SELECT 1 FROM {t} WHERE key = $1 AND {LIVE}"),
            put: format!(
                "INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, {e}) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
                e = expires(3)
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            batch_get: format!("SELECT key, value FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            batch_put: format!(
                "INSERT INTO {t} (key, value, expires_at) \
                 SELECT k, v, {e} FROM UNNEST($1::bytea[], $2::bytea[]) AS u(k, v) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
                e = expires(3)
            ),
            batch_delete: deleted_live("key = ANY($1)"),
            ttl: format!("SELECT {REMAINING_MS} FROM {t} WHERE key = $1 AND {LIVE}"),
            // Inserts when absent; replaces a row only when it has expired.
            insert_if_absent: format!(
                "INSERT INTO {t} AS cur (key, value, expires_at) VALUES ($1, $2, {e}) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at \
                 WHERE cur.expires_at IS NOT NULL AND cur.expires_at <= now()",
                e = expires(3)
            ),
            swap: format!(
                "UPDATE {t} SET value = $2, expires_at = {e} WHERE key = $1 AND value = $4 AND {LIVE}",
                e = expires(3)
            ),
            delete_if: format!("DELETE FROM {t} WHERE key = $1 AND value = $2 AND {LIVE}"),
            absent: format!("SELECT NOT EXISTS (SELECT 1 FROM {t} WHERE key = $1 AND {LIVE})"),
            get_and_delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING value, {LIVE}"),
            list_all: format!("SELECT key FROM {t} WHERE {LIVE}"),
            list_from: format!("SELECT key FROM {t} WHERE key >= $1 AND {LIVE}"),
            list_range: format!("SELECT key FROM {t} WHERE key >= $1 AND key < $2 AND {LIVE}"),
            count: format!("SELECT count(*) FROM {t} WHERE {LIVE}"),
            clear: format!("DELETE FROM {t}"),
            delete_all: deleted_live("true"),
            delete_from: deleted_live("key >= $1"),
            delete_range: deleted_live("key >= $1 AND key < $2"),
            page_from_incl: page(">=", false),
            page_from_excl: page(">", false),
            page_range_incl: page(">=", true),
            page_range_excl: page(">", true),
            // One bounded batch: up to $1 expired rows, found through the expiry index, locked
            // (rows a writer holds are skipped, not waited for) and deleted by their ctid in
            // the same statement, which is its own transaction.
            sweep: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} \
                 WHERE expires_at IS NOT NULL AND expires_at <= now() \
                 LIMIT $1 FOR UPDATE SKIP LOCKED)) \
                 AND expires_at IS NOT NULL AND expires_at <= now()"
            ),
        }
    }
}
