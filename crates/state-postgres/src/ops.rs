//! Maintenance and statistics: `vacuum`, `analyze`, table figures, replica health and lag.

use state_core::StateResult;

use crate::PostgresStateBackend;
use crate::conn::Conn;
use crate::error::map_pg;

/// The table's figures from PostgreSQL's statistics views, as the seed's "Statistics:
/// database size, table size, dead tuples".
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TableStats {
    /// `pg_database_size(current_database())`.
    pub database_size_bytes: u64,
    /// `pg_total_relation_size(table)`: heap, TOAST and indexes.
    pub table_size_bytes: u64,
    /// Estimated live rows (`pg_stat_user_tables.n_live_tup`; expired rows not yet swept
    /// count as live here).
    pub live_tuples: u64,
    /// Dead row versions waiting for vacuum (`n_dead_tup`).
    pub dead_tuples: u64,
    /// Share of the table's heap block reads served from shared buffers
    /// (`pg_statio_user_tables`); `None` before any read.
    pub cache_hit_rate: Option<f64>,
    /// When autovacuum or `vacuum()` last ran on the table, as text.
    pub last_vacuum: Option<String>,
}

/// One replica's state as seen from the primary (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicationStatus {
    /// The replica's `application_name`.
    pub application_name: String,
    /// The replica's address, when it connects over TCP.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// Bytes of WAL written on the primary that the replica has not replayed yet.
    pub replay_lag_bytes: i64,
    /// `replay_lag` as reported by the primary, in milliseconds (`None` when idle).
    pub replay_lag_ms: Option<f64>,
}

impl PostgresStateBackend {
    /// `VACUUM (ANALYZE)` on the table: makes dead rows' space reusable and refreshes planner
    /// statistics. Autovacuum does this too; run it after large deletes or on a schedule, as
    /// the seed's tuning notes show.
    pub async fn vacuum(&self) -> StateResult<()> {
        self.maintenance("vacuum", "VACUUM (ANALYZE)").await
    }

    /// `ANALYZE` on the table: refreshes planner statistics.
    pub async fn analyze(&self) -> StateResult<()> {
        self.maintenance("analyze", "ANALYZE").await
    }

    async fn maintenance(&self, op: &'static str, command: &str) -> StateResult<()> {
        let table = self.table().quoted();
        self.timed(op, async {
            let client = self.primary().await?;
            // VACUUM cannot run inside a transaction block; a simple query is its own.
            client
                .batch_execute(&format!("{command} {table}"))
                .await
                .map_err(map_pg)
        })
        .await
    }

    /// Database size, table size, live and dead tuples, buffer hit rate.
    pub async fn table_stats(&self) -> StateResult<TableStats> {
        let table = self.table().quoted();
        self.timed("table_stats", async {
            let client = self.primary().await?;
            let row = client
                .query_one(
                    "SELECT pg_database_size(current_database()),
                            pg_total_relation_size(c.oid),
                            coalesce(s.n_live_tup, 0),
                            coalesce(s.n_dead_tup, 0),
                            io.heap_blks_hit,
                            io.heap_blks_read,
                            greatest(s.last_vacuum, s.last_autovacuum)::text
                     FROM pg_class c
                     LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                     LEFT JOIN pg_statio_user_tables io ON io.relid = c.oid
                     WHERE c.oid = $1::text::regclass",
                    &[&table],
                )
                .await
                .map_err(map_pg)?;
            let hit: Option<i64> = row.get(4);
            let read: Option<i64> = row.get(5);
            let cache_hit_rate = match (hit, read) {
                (Some(h), Some(r)) if h + r > 0 => Some(h as f64 / (h + r) as f64),
                _ => None,
            };
            Ok(TableStats {
                database_size_bytes: row.get::<_, i64>(0).max(0) as u64,
                table_size_bytes: row.get::<_, i64>(1).max(0) as u64,
                live_tuples: row.get::<_, i64>(2).max(0) as u64,
                dead_tuples: row.get::<_, i64>(3).max(0) as u64,
                cache_hit_rate,
                last_vacuum: row.get(6),
            })
        })
        .await
    }

    /// Whether each configured replica answers `SELECT 1` and is in recovery (a replica
    /// promoted to primary reports `false`), in configuration order.
    pub async fn replica_health(&self) -> Vec<bool> {
        let mut out = Vec::new();
        for replica in self.inner().replicas() {
            let ok = self
                .timed("replica_health", async {
                    let client = Conn::checkout(&replica.pool, &replica.connector).await?;
                    let row = client
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .map_err(map_pg)?;
                    Ok(row.get::<_, bool>(0))
                })
                .await;
            out.push(ok.unwrap_or(false));
        }
        out
    }

    /// The primary's view of its replicas and their lag: the seed's troubleshooting query
    /// (`pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)` from `pg_stat_replication`).
    /// Needs the `pg_monitor` role (or superuser) to see other roles' replication rows.
    pub async fn replication_status(&self) -> StateResult<Vec<ReplicationStatus>> {
        self.timed("replication_status", async {
            let client = self.primary().await?;
            let rows = client
                .query(
                    "SELECT application_name, client_addr::text, state,
                            coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::int8,
                            extract(epoch from replay_lag)::float8 * 1000
                     FROM pg_stat_replication ORDER BY application_name",
                    &[],
                )
                .await
                .map_err(map_pg)?;
            Ok(rows
                .iter()
                .map(|r| ReplicationStatus {
                    application_name: r.get(0),
                    client_addr: r.get(1),
                    state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    replay_lag_bytes: r.get(3),
                    replay_lag_ms: r.get(4),
                })
                .collect())
        })
        .await
    }
}
