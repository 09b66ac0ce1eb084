//! [`RedisConfig`] and its builder.

use std::fmt;
use std::time::Duration;

use state_core::{Limits, StateError, StateResult, redact_url};

/// Default key prefix: every key this backend writes starts with it.
pub const DEFAULT_KEY_PREFIX: &str = "state:";

/// How the backend reaches Redis.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://` or `rediss://` URL).
    Standalone(String),
    /// A Redis Cluster, reached through any of these nodes (`redis://host:port` each).
    Cluster(Vec<String>),
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Standalone(url) => {
                f.debug_tuple("Standalone").field(&redact_url(url)).finish()
            }
            Topology::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Validated settings for [`crate::RedisStateBackend`]; build one with
/// [`RedisConfig::builder`].
///
/// `Debug` output and every error redact passwords.
///
/// ```
/// use std::time::Duration;
/// use state_redis::RedisConfig;
///
/// let config = RedisConfig::builder()
///     .url("redis://:s3cret@localhost:6379")
///     .key_prefix("optimizer:")
///     .default_ttl(Duration::from_secs(3600))
///     .pool_size(10, 50)
///     .max_retries(3)
///     .build()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) topology: Topology,
    pub(crate) key_prefix: String,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) pool_min: usize,
    pub(crate) pool_max: usize,
    pub(crate) max_retries: u32,
    pub(crate) pipeline_batch_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) limits: Limits,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("key_prefix", &self.key_prefix)
            .field("default_ttl", &self.default_ttl)
            .field("pool_size", &(self.pool_min, self.pool_max))
            .field("max_retries", &self.max_retries)
            .field("pipeline_batch_size", &self.pipeline_batch_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("limits", &self.limits)
            .finish()
    }
}

impl RedisConfig {
    /// Starts a builder with the defaults: `redis://127.0.0.1:6379`, prefix `state:`, one
    /// connection (fred multiplexes commands on it), 3 retries, batches of 100 keys, 5 s
    /// connect and command timeouts.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder::default()
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Standalone server or Cluster.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The default TTL, if any.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }
}

/// Builds a [`RedisConfig`]; [`RedisConfigBuilder::build`] validates it.
#[derive(Clone)]
#[must_use]
pub struct RedisConfigBuilder {
    url: Option<String>,
    cluster_nodes: Vec<String>,
    key_prefix: String,
    default_ttl: Option<Duration>,
    pool_min: usize,
    pool_max: usize,
    max_retries: u32,
    pipeline_batch_size: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    username: Option<String>,
    password: Option<String>,
    limits: Limits,
}

impl fmt::Debug for RedisConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfigBuilder")
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .field("key_prefix", &self.key_prefix)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Default for RedisConfigBuilder {
    fn default() -> Self {
        Self {
            url: None,
            cluster_nodes: Vec::new(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            default_ttl: None,
            pool_min: 1,
            pool_max: 1,
            max_retries: 3,
            pipeline_batch_size: 100,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            limits: Limits::default(),
        }
    }
}

impl RedisConfigBuilder {
    /// The server URL: `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Cluster mode: the nodes to discover the cluster from (`redis://host:port`, or
    /// `rediss://` for TLS). Replaces `url`.
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Prefix of every key (default `state:`). `clear`, `count` and listing touch only keys
    /// under it, so two backends with different prefixes share a server safely. It must be
    /// non-empty: an empty prefix would make `clear` delete every key of the database.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// A TTL for every write that does not give its own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Connections to open. fred multiplexes concurrent commands on each connection, so one
    /// is usually enough (a pool of 4 did not beat one connection on 2 cores); `min`
    /// connections are opened and round-robined, `max` is what `pool_stats()` reports as the
    /// ceiling.
    pub fn pool_size(mut self, min: usize, max: usize) -> Self {
        self.pool_min = min;
        self.pool_max = max;
        self
    }

    /// How many times fred may write a command that is safe to send again (default 3; 0
    /// counts as 1), and how many `connect_timeout`s the first connection may take
    /// (`retries + 1`). fred reconnects forever in the background whatever this says.
    ///
    /// **Re-sent** when the connection drops with them in flight, up to this many writes in
    /// all: the reads (`GET`, `MGET`, `PTTL`, `EXISTS`, `SCAN`, the get-with-TTL script,
    /// `MEMORY USAGE`) and the plain writes `put`, `put_with_ttl` and `batch_put` (`SET`,
    /// `SET PX`, `MSET`). A plain write is only re-sent after its connection broke, so its
    /// first copy either landed before the re-send or never will: the value stored is the
    /// caller's either way, though a reader may see it, then another writer's value, then it
    /// again while the call is in flight. If it still fails, the error is
    /// [`state_core::ErrorKind::OutcomeUnknown`].
    ///
    /// **Never re-sent** (one write, whatever this says): `set_if_not_exists` (`SET NX`),
    /// `get_and_delete` (`GETDEL`), `compare_and_swap` (its Lua script), `delete`,
    /// `batch_delete`, `delete_prefix` and `clear` (`DEL`, whose count a re-send would
    /// falsify), and in `state-lock` the lock scripts (acquire, renew, release) and fenced
    /// writes. A copy that landed would make the re-send answer `false`, `None` or 0 for the
    /// caller's own write. When such a command's connection drops while it is in flight, or
    /// `command_timeout` passes after it was written, the call returns
    /// [`state_core::ErrorKind::OutcomeUnknown`]: read the key back to learn what happened.
    /// In a Cluster, fred counts a `MOVED`/`ASK` redirection as a write, so during a slot
    /// migration or a failover such a command can report `OutcomeUnknown` too.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Keys per `MGET`/`MSET`/`DEL` round trip in batch operations (default 100).
    pub fn pipeline_batch_size(mut self, n: usize) -> Self {
        self.pipeline_batch_size = n;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take before it fails (default 5 s): a retryable `Timeout` for
    /// a read, [`state_core::ErrorKind::OutcomeUnknown`] for a write (it was written and may
    /// still be applied).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Password (overrides one in the URL). Never printed.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Key and value size limits; keys are checked without the prefix.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> StateResult<RedisConfig> {
        let topology = if self.cluster_nodes.is_empty() {
            let url = self
                .url
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
            check_url(&url)?;
            Topology::Standalone(url)
        } else {
            for node in &self.cluster_nodes {
                check_url(node)?;
            }
            Topology::Cluster(self.cluster_nodes)
        };
        if self.key_prefix.is_empty() {
            return Err(StateError::config(
                "key_prefix must not be empty: clear() would delete every key of the database",
            ));
        }
        if self.key_prefix.len() > 256 {
            return Err(StateError::config("key_prefix must be at most 256 bytes"));
        }
        if self.pool_min == 0 || self.pool_max < self.pool_min || self.pool_min > 128 {
            return Err(StateError::config(
                "pool_size(min, max) needs 1 <= min <= max and min <= 128",
            ));
        }
        if self.pipeline_batch_size == 0 {
            return Err(StateError::config("pipeline_batch_size must be at least 1"));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StateError::config("timeouts must be greater than zero"));
        }
        if let Some(ttl) = self.default_ttl {
            Limits::check_ttl(ttl)
                .map_err(|_| StateError::config("default_ttl must be at least 1 ms"))?;
        }
        Ok(RedisConfig {
            topology,
            key_prefix: self.key_prefix,
            default_ttl: self.default_ttl,
            pool_min: self.pool_min,
            pool_max: self.pool_max,
            max_retries: self.max_retries,
            pipeline_batch_size: self.pipeline_batch_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            username: self.username,
            password: self.password,
            limits: self.limits,
        })
    }
}

fn check_url(url: &str) -> StateResult<()> {
    let ok = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ]
    .iter()
    .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if ok {
        Ok(())
    } else {
        Err(StateError::config(format!(
            "`{}` is not a Redis URL (expected redis://host:port or rediss://host:port)",
            redact_url(url)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        let config = RedisConfig::builder().build().unwrap();
        assert_eq!(config.key_prefix(), "state:");
        assert_eq!(
            config.topology(),
            &Topology::Standalone("redis://127.0.0.1:6379".into())
        );
    }

    #[test]
    fn bad_input_is_a_config_error() {
        for builder in [
            RedisConfig::builder().url("http://x"),
            RedisConfig::builder().key_prefix(""),
            RedisConfig::builder().pool_size(0, 1),
            RedisConfig::builder().pool_size(5, 2),
            RedisConfig::builder().pipeline_batch_size(0),
            RedisConfig::builder().command_timeout(Duration::ZERO),
            RedisConfig::builder().default_ttl(Duration::from_micros(10)),
        ] {
            let err = builder.build().unwrap_err();
            assert_eq!(err.kind(), state_core::ErrorKind::ConfigInvalid);
        }
    }

    #[test]
    fn passwords_never_show() {
        let config = RedisConfig::builder()
            .url("redis://user:hunter2@h:1")
            .password("s3cret")
            .build()
            .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        let err = RedisConfig::builder()
            .url("nope://u:hunter2@h")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let builder = RedisConfig::builder()
            .url("redis://:hunter2@h")
            .password("s3cret");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
