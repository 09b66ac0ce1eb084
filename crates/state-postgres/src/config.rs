//! [`PostgresConfig`], its builder, and table-name validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use state_core::{Limits, StateError, StateResult};

use crate::conninfo::{ConnTarget, RootCerts, SslModeRequest};

/// Where reads go when read replicas are configured.
///
/// Writes, atomic operations (`compare_and_swap`, `set_if_not_exists`, `get_and_delete`) and
/// transactions always run on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// Every read on the primary: linearizable, replicas unused (the default).
    #[default]
    Primary,
    /// Reads spread round-robin over the replicas: fastest, but a read may miss writes made
    /// less than the replication lag ago (stale reads, bounded by the lag). A replica that
    /// cannot be reached is skipped and the read goes to the primary.
    Replica,
    /// Reads go to a replica only when it has replayed every write this backend handle has
    /// made (checked by WAL position in the same round trip as the read); otherwise the read
    /// goes to the primary. A handle always sees its own writes; writes made by other
    /// processes are seen as in [`ReadConsistency::Replica`].
    ReadYourWrites,
}

/// How connections are encrypted, on top of what each connection string asks.
///
/// TLS is decided per connection (primary, each replica, each LISTEN connection) from that
/// connection's own parsed `sslmode` and `sslrootcert`, with libpq's meanings:
///
/// | sslmode | TLS | certificate check |
/// |---|---|---|
/// | `disable` | never | - |
/// | `allow`, `prefer` (the default when absent, as libpq) | when the server offers it | none |
/// | `require` | always | none, or the chain against `sslrootcert` when given |
/// | `verify-ca` | always | the chain, against `sslrootcert` or the system store |
/// | `verify-full` | always | the chain and the host name |
///
/// A mode set here can only make a connection stricter: no setting ever turns off TLS that
/// a connection string asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// Each connection string's own `sslmode` (the default).
    #[default]
    FromUrl,
    /// No TLS. A connection string that asks for TLS (`require`, `verify-ca`,
    /// `verify-full`) makes [`PostgresConfigBuilder::build`] fail rather than be downgraded.
    Disable,
    /// `verify-full` on every connection: TLS always, chain and host name verified against
    /// the connection's `sslrootcert`, or the system's root certificates.
    Require,
    /// `verify-full` on every connection against the CA certificates in this PEM file.
    RequireWithCa(PathBuf),
}

impl TlsMode {
    /// Combines this mode with one connection string's request; never weaker than either.
    fn apply(&self, target: &mut ConnTarget) -> StateResult<()> {
        let tls = &mut target.tls;
        match self {
            TlsMode::FromUrl => {}
            TlsMode::Disable if tls.mode.requires_tls() => {
                return Err(StateError::config(format!(
                    "a connection string asks for sslmode={} but the configuration sets \
                     TlsMode::Disable; TLS is never turned off silently: remove one of them",
                    tls.mode.as_str()
                )));
            }
            TlsMode::Disable => tls.mode = SslModeRequest::Disable,
            TlsMode::Require => tls.mode = SslModeRequest::VerifyFull,
            TlsMode::RequireWithCa(path) => {
                tls.mode = SslModeRequest::VerifyFull;
                tls.roots = Some(RootCerts::File(path.clone()));
            }
        }
        target.pg.ssl_mode(match tls.mode {
            SslModeRequest::Disable => tokio_postgres::config::SslMode::Disable,
            SslModeRequest::Allow | SslModeRequest::Prefer => {
                tokio_postgres::config::SslMode::Prefer
            }
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(())
    }
}

/// Table names the companion crates use for their own state (state-lock's leases, tokens
/// and fences; the migrations' record): a data table of that name could `clear` them.
pub const RESERVED_TABLE_NAMES: [&str; 3] = [
    "state_locks",
    "state_lock_fences",
    "state_schema_migrations",
];

/// A validated table name, optionally schema-qualified, quoted wherever it reaches SQL.
///
/// Each part must match `[A-Za-z_][A-Za-z0-9_]*` and be at most 48 bytes (so the names of the
/// indexes derived from it stay under PostgreSQL's 63-byte identifier limit). Anything else,
/// including quotes, semicolons, spaces and dots beyond one schema separator, is rejected
/// with [`state_core::ErrorKind::InvalidInput`]: a table name never becomes SQL.
#[derive(Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

/// Longest accepted table or schema name, in bytes.
pub const MAX_TABLE_NAME_LEN: usize = 48;

fn valid_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && part.len() <= MAX_TABLE_NAME_LEN
}

impl TableName {
    /// Parses `table` or `schema.table`.
    pub fn parse(name: &str) -> StateResult<Self> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        if !valid_identifier(table) || schema.is_some_and(|s| !valid_identifier(s)) {
            return Err(StateError::invalid_input(format!(
                "invalid table name {name:?}: use [A-Za-z_][A-Za-z0-9_]* (at most {MAX_TABLE_NAME_LEN} bytes), optionally as schema.table"
            )));
        }
        // PostgreSQL folds nothing here (names are always quoted), but a reserved name in
        // any case would still confuse an operator reading the catalog.
        let lower = table.to_ascii_lowercase();
        if RESERVED_TABLE_NAMES.contains(&lower.as_str()) || lower.starts_with("state_locks_") {
            return Err(StateError::invalid_input(format!(
                "table name {name:?} is reserved for state-lock and the migrations' record; \
                 pick another name"
            )));
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    /// The table part, unquoted.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema part, unquoted (`None`: the connection's `search_path`, usually `public`).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// `"schema"."table"` or `"table"`, ready for SQL.
    pub fn quoted(&self) -> String {
        self.quoted_with_suffix("")
    }

    /// A sibling object's quoted name: the table name plus `suffix`, in the same schema.
    pub(crate) fn quoted_with_suffix(&self, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}{suffix}\"", self.table),
            None => format!("\"{}{suffix}\"", self.table),
        }
    }

    /// The quoted schema, or `None`.
    pub(crate) fn quoted_schema(&self) -> Option<String> {
        self.schema.as_ref().map(|s| format!("\"{s}\""))
    }

    /// An unquoted index name derived from the table (`<table><suffix>`), for `CREATE INDEX`.
    pub(crate) fn index_name(&self, suffix: &str) -> String {
        format!("\"{}{suffix}\"", self.table)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// Validated settings for [`crate::PostgresStateBackend`]; build one with
/// [`PostgresConfig::builder`].
///
/// `Debug` output and every error redact passwords.
///
/// ```
/// use std::time::Duration;
/// use state_postgres::{PostgresConfig, ReadConsistency};
///
/// let config = PostgresConfig::builder()
///     .url("postgres://app:s3cret@db-primary:5432/state")
///     .table("optimizer_state")
///     .pool_size(16)
///     .statement_timeout(Duration::from_secs(5))
///     .replica_urls(["postgres://app:s3cret@db-replica-1:5432/state"])
///     .read_consistency(ReadConsistency::ReadYourWrites)
///     .build()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) primary: ConnTarget,
    pub(crate) replicas: Vec<ConnTarget>,
    pub(crate) table: TableName,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) tls: TlsMode,
    pub(crate) read_consistency: ReadConsistency,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) sweep_batch_rows: usize,
    pub(crate) listen_heartbeat: Option<Duration>,
    pub(crate) batch_chunk_rows: usize,
    pub(crate) limits: Limits,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.primary.describe())
            .field(
                "replicas",
                &self
                    .replicas
                    .iter()
                    .map(ConnTarget::describe)
                    .collect::<Vec<_>>(),
            )
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
            .field("read_consistency", &self.read_consistency)
            .field("default_ttl", &self.default_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .field("sweep_batch_rows", &self.sweep_batch_rows)
            .field("listen_heartbeat", &self.listen_heartbeat)
            .field("batch_chunk_rows", &self.batch_chunk_rows)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where the server-side `statement_timeout` comes from; see
/// [`PostgresConfigBuilder::statement_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatementTimeout {
    /// The command timeout (the default).
    FollowCommand,
    /// A fixed value.
    Fixed(Duration),
    /// None: statements run until they finish or the client cancels them.
    Off,
}

impl PostgresConfig {
    /// Starts a builder; see [`PostgresConfigBuilder`] for the defaults.
    pub fn builder() -> PostgresConfigBuilder {
        PostgresConfigBuilder::default()
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The primary as `postgres://user@host:port/db?sslmode=...`, rebuilt from the parsed
    /// configuration: never the password, never the text as typed.
    pub fn redacted_url(&self) -> String {
        self.primary.describe()
    }

    /// The replicas, shown as [`PostgresConfig::redacted_url`] shows the primary.
    pub fn redacted_replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(ConnTarget::describe).collect()
    }

    /// A pool of [`PostgresConfigBuilder::pool_size`] connections to the primary, with this
    /// configuration's TLS, timeouts and keepalives, and no migrations: for companion crates
    /// (state-lock) that keep tables of their own.
    pub fn primary_pool(&self) -> StateResult<deadpool_postgres::Pool> {
        let connector = crate::tls::Connector::new(&self.primary.tls)?;
        crate::backend::build_pool(self, &self.primary, &connector)
    }

    /// The read routing.
    pub fn read_consistency(&self) -> ReadConsistency {
        self.read_consistency
    }

    /// The default TTL, if any.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// The client-side deadline for one operation.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The server-side `statement_timeout` every connection sets at connect, if any (by
    /// default the command timeout; see [`PostgresConfigBuilder::statement_timeout`]).
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// The `LISTEN` connections' heartbeat interval, if any (see
    /// [`PostgresConfigBuilder::listen_heartbeat`]).
    pub fn listen_heartbeat(&self) -> Option<Duration> {
        self.listen_heartbeat
    }
}

/// The seed's pool sizing rule, `cores * 2 + 1`.
fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(4, std::num::NonZero::get) * 2 + 1
}

/// Builds a [`PostgresConfig`]; [`PostgresConfigBuilder::build`] validates it.
///
/// Defaults: `postgres://postgres@localhost:5432/postgres`, table `state`, a pool of
/// `cores * 2 + 1` connections (the seed's rule), 5 s connect timeout, 30 s command timeout
/// (client side, covers a hung network), a server-side statement timeout equal to the command
/// timeout, TLS from the URL's `sslmode`, reads on the primary, no default TTL, expired rows
/// swept every 60 s in batches of 1,000, a `LISTEN` heartbeat every 5 s, batches written
/// 10,000 rows per statement, the default [`Limits`].
#[derive(Clone)]
#[must_use]
pub struct PostgresConfigBuilder {
    url: String,
    replica_urls: Vec<String>,
    table: String,
    pool_size: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    statement_timeout: StatementTimeout,
    tls: TlsMode,
    read_consistency: ReadConsistency,
    default_ttl: Option<Duration>,
    sweep_interval: Option<Duration>,
    sweep_batch_rows: usize,
    listen_heartbeat: Option<Duration>,
    batch_chunk_rows: usize,
    limits: Limits,
}

impl fmt::Debug for PostgresConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |url: &str| {
            ConnTarget::parse(url).map_or_else(
                |_| "<unparseable connection string, not shown>".to_owned(),
                |t| t.describe(),
            )
        };
        f.debug_struct("PostgresConfigBuilder")
            .field("url", &shown(&self.url))
            .field(
                "replica_urls",
                &self
                    .replica_urls
                    .iter()
                    .map(|u| shown(u))
                    .collect::<Vec<_>>(),
            )
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl Default for PostgresConfigBuilder {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@localhost:5432/postgres".to_owned(),
            replica_urls: Vec::new(),
            table: "state".to_owned(),
            pool_size: default_pool_size(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            statement_timeout: StatementTimeout::FollowCommand,
            tls: TlsMode::FromUrl,
            read_consistency: ReadConsistency::Primary,
            default_ttl: None,
            sweep_interval: Some(Duration::from_secs(60)),
            sweep_batch_rows: 1_000,
            listen_heartbeat: Some(Duration::from_secs(5)),
            batch_chunk_rows: 10_000,
            limits: Limits::default(),
        }
    }
}

/// Largest key PostgreSQL's B-tree can index (a third of an 8 KiB page, minus overhead).
const MAX_INDEXABLE_KEY: usize = 2600;

impl PostgresConfigBuilder {
    /// The primary's URL (`postgres://user:password@host:port/db?sslmode=...`) or libpq
    /// key/value string.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Read replica URLs; see [`PostgresConfigBuilder::read_consistency`].
    pub fn replica_urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replica_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The table (`name` or `schema.name`); created by the migrations when missing.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Connections per pool (the primary's, and each replica's).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Time allowed to open a connection (and to wait for a free pooled one).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Client-side deadline for one operation, including waiting for a connection: a hung
    /// server or network becomes a retryable `Timeout` error after it for reads and for
    /// writes not yet sent; a write already sent becomes `OutcomeUnknown` (it may have been
    /// applied; see `state_core::ErrorKind::OutcomeUnknown`).
    ///
    /// A statement still running when the deadline passes is cancelled on the server (the
    /// driver's cancel request) and its connection is closed rather than handed to the next
    /// caller. Unless set otherwise with [`PostgresConfigBuilder::statement_timeout`] or
    /// [`PostgresConfigBuilder::no_statement_timeout`], the server-side `statement_timeout`
    /// is this value too, so the server stops a statement by itself even when the client's
    /// cancel request cannot reach it.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Server-side `statement_timeout` for every connection (sent at connect as
    /// `options=-c statement_timeout=<ms>`): a statement running longer is cancelled by
    /// PostgreSQL and surfaces as a retryable `Timeout` error. By default it follows
    /// [`PostgresConfigBuilder::command_timeout`]; this sets a value of its own.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = StatementTimeout::Fixed(timeout);
        self
    }

    /// No server-side `statement_timeout` (the server's own setting applies): statements
    /// run until they finish, or until the client cancels them when `command_timeout`
    /// passes. For long maintenance statements run through [`PostgresConfig::primary_pool`].
    pub fn no_statement_timeout(mut self) -> Self {
        self.statement_timeout = StatementTimeout::Off;
        self
    }

    /// Encryption; see [`TlsMode`].
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Where reads go when replicas are configured; see [`ReadConsistency`].
    pub fn read_consistency(mut self, consistency: ReadConsistency) -> Self {
        self.read_consistency = consistency;
        self
    }

    /// TTL applied by every plain `put` and batch write.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often expired rows are deleted in the background (by one instance at a time,
    /// elected with an advisory lock); `None` disables the sweep. Expired rows are invisible
    /// to every read either way.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Expired rows the sweep deletes per batch. Each batch is one `DELETE` statement in its
    /// own transaction, under `command_timeout`, holding its rows' locks only while it runs:
    /// a write to an expired key waits at most for one batch (about 10 ms for 1,000 rows),
    /// never for the whole backlog. Default 1,000.
    pub fn sweep_batch_rows(mut self, rows: usize) -> Self {
        self.sweep_batch_rows = rows;
        self
    }

    /// How often a `LISTEN` connection ([`crate::PostgresStateBackend::subscribe`]) checks
    /// that the server still answers, with a `SELECT 1` that must be answered within the
    /// same interval. A half-open connection (a server or network that stopped answering
    /// without closing it, which TCP keepalives may not notice for minutes) is therefore
    /// detected within twice this interval (plus a few milliseconds of timer and scheduling
    /// slack): the subscription then yields its retryable `Connection` error and
    /// reconnects. Default 5 s (detection within 10 s); `None` leaves detection to TCP
    /// keepalives alone.
    pub fn listen_heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.listen_heartbeat = interval;
        self
    }

    /// Rows per `INSERT .. SELECT FROM UNNEST` statement in batch writes (larger batches run
    /// several statements in one transaction).
    pub fn batch_chunk_rows(mut self, rows: usize) -> Self {
        self.batch_chunk_rows = rows;
        self
    }

    /// Key and value size limits. Keys above 2,600 bytes cannot be indexed by PostgreSQL's
    /// B-tree and are refused by [`PostgresConfigBuilder::build`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> StateResult<PostgresConfig> {
        let parse = |url: &str, what: &str| {
            let mut target = ConnTarget::parse(url)
                .map_err(|e| StateError::config(format!("{what}: {}", e.message())))?;
            self.tls
                .apply(&mut target)
                .map_err(|e| StateError::config(format!("{what}: {}", e.message())))?;
            Ok::<_, StateError>(target)
        };
        let primary = parse(&self.url, "primary")?;
        let replicas = self
            .replica_urls
            .iter()
            .enumerate()
            .map(|(i, u)| parse(u, &format!("replica {}", i + 1)))
            .collect::<StateResult<Vec<_>>>()?;
        let table = TableName::parse(&self.table)?;
        if self.pool_size == 0 {
            return Err(StateError::config("pool_size must be at least 1"));
        }
        if self.batch_chunk_rows == 0 {
            return Err(StateError::config("batch_chunk_rows must be at least 1"));
        }
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(StateError::config("timeouts must be greater than zero"));
        }
        if matches!(self.statement_timeout, StatementTimeout::Fixed(t) if t.as_millis() == 0) {
            return Err(StateError::config(
                "statement_timeout must be at least 1 ms (PostgreSQL reads 0 as no timeout)",
            ));
        }
        if let Some(ttl) = self.default_ttl {
            Limits::check_ttl(ttl).map_err(|e| StateError::config(e.message().to_owned()))?;
        }
        if self.sweep_batch_rows == 0 {
            return Err(StateError::config("sweep_batch_rows must be at least 1"));
        }
        if self.listen_heartbeat.is_some_and(|i| i.as_millis() == 0) {
            return Err(StateError::config(
                "listen_heartbeat must be at least 1 ms (None disables it)",
            ));
        }
        if self.sweep_interval.is_some_and(|i| i.is_zero()) {
            return Err(StateError::config(
                "sweep_interval must be greater than zero (None disables the sweep)",
            ));
        }
        if self.limits.max_key_size > MAX_INDEXABLE_KEY {
            return Err(StateError::config(format!(
                "max_key_size {} exceeds {MAX_INDEXABLE_KEY} bytes, the largest key a PostgreSQL B-tree index can hold",
                self.limits.max_key_size
            )));
        }
        if self.read_consistency != ReadConsistency::Primary && replicas.is_empty() {
            return Err(StateError::config(
                "read_consistency other than Primary needs at least one replica URL",
            ));
        }
        Ok(PostgresConfig {
            primary,
            replicas,
            table,
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            statement_timeout: match self.statement_timeout {
                // At least 1 ms: PostgreSQL reads 0 as "no timeout".
                StatementTimeout::FollowCommand => {
                    Some(self.command_timeout.max(Duration::from_millis(1)))
                }
                StatementTimeout::Fixed(t) => Some(t),
                StatementTimeout::Off => None,
            },
            tls: self.tls,
            read_consistency: self.read_consistency,
            default_ttl: self.default_ttl,
            sweep_interval: self.sweep_interval,
            sweep_batch_rows: self.sweep_batch_rows,
            listen_heartbeat: self.listen_heartbeat,
            batch_chunk_rows: self.batch_chunk_rows,
            limits: self.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn hostile_table_names_are_invalid_input() {
        for name in [
            "",
            "1abc",
            "a b",
            "a;DROP TABLE x",
            "a\"b",
            "x\"; DROP TABLE users; --",
            "a.b.c",
            ".a",
            "a.",
            "tab\0le",
            "tablé",
            &"x".repeat(MAX_TABLE_NAME_LEN + 1),
        ] {
            let err = TableName::parse(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
            let err = PostgresConfig::builder().table(name).build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn reserved_table_names_are_refused() {
        for name in [
            "state_locks",
            "STATE_LOCKS",
            "app.state_lock_fences",
            "state_schema_migrations",
            "state_locks_token_seq",
        ] {
            let err = TableName::parse(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}");
        }
        assert!(TableName::parse("state_lockers").is_ok());
    }

    #[test]
    fn good_names_are_quoted() {
        assert_eq!(TableName::parse("state").unwrap().quoted(), "\"state\"");
        assert_eq!(
            TableName::parse("app.State_1").unwrap().quoted(),
            "\"app\".\"State_1\""
        );
        assert_eq!(
            TableName::parse("_x")
                .unwrap()
                .quoted_with_suffix("_expires_idx"),
            "\"_x_expires_idx\""
        );
    }

    #[test]
    fn passwords_stay_out_of_debug_and_errors() {
        let config = PostgresConfig::builder()
            .url("postgres://app:hunter2@db:5432/state")
            .replica_urls(["postgres://app:hunter2@replica:5432/state"])
            .build()
            .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db"), "{shown}");
        let err = PostgresConfig::builder()
            .url("postgres://app:hunter2@db:notaport/state")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn statement_timeout_follows_the_command_timeout_unless_set() {
        let build = |b: PostgresConfigBuilder| b.build().unwrap().statement_timeout();
        let command = Duration::from_millis(1500);
        assert_eq!(
            build(PostgresConfig::builder().command_timeout(command)),
            Some(command)
        );
        assert_eq!(
            build(
                PostgresConfig::builder()
                    .command_timeout(command)
                    .statement_timeout(Duration::from_millis(200))
            ),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            build(
                PostgresConfig::builder()
                    .command_timeout(command)
                    .no_statement_timeout()
            ),
            None
        );
        assert_eq!(
            build(PostgresConfig::builder().command_timeout(Duration::from_micros(10))),
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        let bad = [
            PostgresConfig::builder().pool_size(0),
            PostgresConfig::builder().batch_chunk_rows(0),
            PostgresConfig::builder().sweep_batch_rows(0),
            PostgresConfig::builder().listen_heartbeat(Some(Duration::ZERO)),
            PostgresConfig::builder().statement_timeout(Duration::from_micros(10)),
            PostgresConfig::builder().command_timeout(Duration::ZERO),
            PostgresConfig::builder().sweep_interval(Some(Duration::ZERO)),
            PostgresConfig::builder().default_ttl(Duration::MAX),
            PostgresConfig::builder().read_consistency(ReadConsistency::Replica),
            PostgresConfig::builder().limits(Limits {
                max_key_size: 4096,
                ..Limits::default()
            }),
        ];
        for builder in bad {
            let err = builder.clone().build().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{builder:?}: {err}");
        }
    }
}
