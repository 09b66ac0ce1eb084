//! [`RedisConfig`] and its builder.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fred::types::config::{Config as FredConfig, Server, ServerConfig, TlsConnector};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use state_core::{Limits, StateError, StateResult, validate_namespace};

/// Default key prefix: every key this backend writes starts with it.
pub const DEFAULT_KEY_PREFIX: &str = "state:";

/// How the backend reaches Redis, as parsed from the URL(s): servers as `host:port`, never
/// with credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server (`redis://` or `rediss://` URL).
    Standalone(String),
    /// A Redis Cluster (`redis-cluster://` / `rediss-cluster://` URLs, or
    /// [`RedisConfigBuilder::cluster_nodes`]), discovered from these nodes.
    Cluster(Vec<String>),
    /// A primary found through Redis Sentinel (`redis-sentinel://` / `rediss-sentinel://`
    /// URLs with `sentinelServiceName`): the service name and the sentinels asked.
    Sentinel {
        /// The monitored service (`sentinelServiceName`).
        service: String,
        /// The sentinels, `host:port`.
        sentinels: Vec<String>,
    },
}

fn host_port(server: &Server) -> String {
    if server.host.contains(':') && !server.host.starts_with('[') {
        format!("[{}]:{}", server.host, server.port)
    } else {
        format!("{}:{}", server.host, server.port)
    }
}

/// Parses one URL with fred (so the cluster flag and TLS come from fred's own reading):
/// the config, its servers, and whether it names a Cluster. Errors never quote the URL.
fn parse_url(url: &str) -> StateResult<(FredConfig, Topology, bool)> {
    const SCHEMES: [&str; 12] = [
        "redis",
        "rediss",
        "redis-cluster",
        "rediss-cluster",
        "redis-sentinel",
        "rediss-sentinel",
        "valkey",
        "valkeys",
        "valkey-cluster",
        "valkeys-cluster",
        "valkey-sentinel",
        "valkeys-sentinel",
    ];
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !scheme.is_some_and(|s| SCHEMES.contains(&s.as_str())) {
        return Err(StateError::config(
            "not a Redis URL: expected redis://, rediss://, redis-cluster:// or \
             rediss-cluster:// (the URL is not shown because it may hold a password)",
        ));
    }
    let invalid = || {
        StateError::config(
            "invalid Redis URL: expected redis://, rediss://, redis-cluster:// or \
             rediss-cluster:// followed by [user[:password]@]host[:port][/db][?node=host:port]; \
             percent-encode `/ ? # @ :` in passwords (the URL is not shown because it may \
             hold a password)",
        )
    };
    // A `#` ends the URL for a URL parser: `redis://u:12#pw@h` would connect to host `u`
    // with the password's start as the port. Refused rather than half-read.
    match url::Url::parse(url) {
        Ok(parsed) if parsed.fragment().is_none() => {}
        _ => return Err(invalid()),
    }
    // fred's errors quote parts of the URL (a `node=` value): not passed on.
    let config = FredConfig::from_url(url).map_err(|_| invalid())?;
    match &config.server {
        ServerConfig::Centralized { server } => {
            let topology = Topology::Standalone(host_port(server));
            Ok((config, topology, false))
        }
        ServerConfig::Clustered { hosts, .. } => {
            let topology = Topology::Cluster(hosts.iter().map(host_port).collect());
            Ok((config, topology, true))
        }
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => {
            let topology = Topology::Sentinel {
                service: service_name.clone(),
                sentinels: hosts.iter().map(host_port).collect(),
            };
            Ok((config, topology, false))
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
    /// fred's parsed configuration: servers, credentials, database, TLS.
    pub(crate) fred: FredConfig,
    pub(crate) topology: Topology,
    pub(crate) key_prefix: String,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) pool_min: usize,
    pub(crate) pool_max: usize,
    pub(crate) max_retries: u32,
    pub(crate) pipeline_batch_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) limits: Limits,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("default_ttl", &self.default_ttl)
            .field("pool_size", &(self.pool_min, self.pool_max))
            .field("max_retries", &self.max_retries)
            .field("pipeline_batch_size", &self.pipeline_batch_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("limits", &self.limits)
            // `fred` (servers, credentials, TLS) is shown through `url` above.
            .finish_non_exhaustive()
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

    /// Standalone server or Cluster, with the servers as `host:port`.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether connections use TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.fred.tls.is_some()
    }

    /// Where this backend connects, rebuilt from the parsed configuration:
    /// `rediss-cluster://user@host:port,host:port` or `redis://host:port/db`. Never a
    /// password, never the URL as typed.
    pub fn redacted_url(&self) -> String {
        let scheme = match (self.tls(), &self.topology) {
            (false, Topology::Standalone(_)) => "redis",
            (true, Topology::Standalone(_)) => "rediss",
            (false, Topology::Cluster(_)) => "redis-cluster",
            (true, Topology::Cluster(_)) => "rediss-cluster",
            (false, Topology::Sentinel { .. }) => "redis-sentinel",
            (true, Topology::Sentinel { .. }) => "rediss-sentinel",
        };
        let user = match (&self.fred.username, &self.fred.password) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            // A user name alone may be a bare password (Redis before ACLs).
            (Some(_), None) => "***@".to_owned(),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        let (hosts, service) = match &self.topology {
            Topology::Standalone(server) => (server.clone(), String::new()),
            Topology::Cluster(nodes) => (nodes.join(","), String::new()),
            Topology::Sentinel { service, sentinels } => (
                sentinels.join(","),
                format!("?sentinelServiceName={service}"),
            ),
        };
        match self.fred.database {
            Some(db) if db != 0 => format!("{scheme}://{user}{hosts}/{db}{service}"),
            _ => format!("{scheme}://{user}{hosts}{service}"),
        }
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
    tls_ca_file: Option<PathBuf>,
    limits: Limits,
}

impl fmt::Debug for RedisConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown as parsed; URLs that do not parse are not shown at all.
        let shown = |url: &str| {
            RedisConfig::builder().url(url).build().map_or_else(
                |_| "<invalid URL, not shown>".to_owned(),
                |c| c.redacted_url(),
            )
        };
        f.debug_struct("RedisConfigBuilder")
            .field("url", &self.url.as_deref().map(shown))
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| shown(n))
                    .collect::<Vec<_>>(),
            )
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
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
            tls_ca_file: None,
            limits: Limits::default(),
        }
    }
}

impl RedisConfigBuilder {
    /// The server URL: `redis://[user[:password]@]host[:port][/db]`, `rediss://` for TLS,
    /// `redis-cluster://host:port[?node=host:port&node=...]` (or `rediss-cluster://`) for a
    /// Cluster, `redis-sentinel://sentinel:port[?node=sentinel2:port]&sentinelServiceName=name`
    /// (or `rediss-sentinel://`) for a primary found through Redis Sentinel. Parsed by fred: whether it is a Cluster and whether it uses TLS come from
    /// fred's reading of the URL. `rediss` verifies the server's certificate against the
    /// system's root certificates, or [`RedisConfigBuilder::tls_ca_file`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Cluster mode: the nodes to discover the cluster from, each in any URL form `url`
    /// takes (`redis://host:port`, `rediss://`, `redis-cluster://...?node=...`); every host
    /// named is used. Replaces `url`. All nodes must agree on TLS.
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }

    /// Namespace of every key (default `state:`). `clear`, `count` and listing touch only
    /// keys under it, so two backends with different prefixes share a server safely.
    ///
    /// A prefix is one segment of `A-Z a-z 0-9 _ - . { }` ended by `:` (`app` becomes `app:`),
    /// so no prefix can contain another (`app:` would otherwise see `app:b:`'s keys); see
    /// [`state_core::validate_namespace`]. Lock keys live under `@`-namespaces no data
    /// prefix can reach.
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

    /// Verifies `rediss://` servers against the CA certificates in this PEM file instead of
    /// the system's root certificates (the certificate's host name is still checked). Needs
    /// a `rediss` URL: it never turns TLS on by itself.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Key and value size limits; keys are checked without the prefix.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> StateResult<RedisConfig> {
        if self.url.is_some() && !self.cluster_nodes.is_empty() {
            return Err(StateError::config(
                "give either url or cluster_nodes, not both (a URL's TLS or credentials would \
                 otherwise be ignored)",
            ));
        }
        let (mut fred, topology) = if self.cluster_nodes.is_empty() {
            let url = self.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            let (fred, topology, _) = parse_url(url)?;
            (fred, topology)
        } else {
            let mut hosts = Vec::new();
            let mut first: Option<FredConfig> = None;
            for node in &self.cluster_nodes {
                let (parsed, topology, _) = parse_url(node)?;
                match &parsed.server {
                    ServerConfig::Centralized { server } => hosts.push(server.clone()),
                    ServerConfig::Clustered { hosts: h, .. } => hosts.extend(h.iter().cloned()),
                    ServerConfig::Sentinel { .. } => {
                        return Err(StateError::config(format!(
                            "cluster_nodes take Redis or Redis Cluster URLs, not a Sentinel \
                             ({topology:?})"
                        )));
                    }
                }
                if let Some(first) = &first {
                    if first.tls.is_some() != parsed.tls.is_some() {
                        return Err(StateError::config(
                            "cluster_nodes mix TLS (rediss) and plain (redis) URLs",
                        ));
                    }
                    if first.username != parsed.username || first.password != parsed.password {
                        return Err(StateError::config(
                            "cluster_nodes carry different credentials; give them once with \
                             username() / password()",
                        ));
                    }
                }
                first.get_or_insert(parsed);
            }
            let mut fred = first.expect("cluster_nodes is not empty");
            let topology = Topology::Cluster(hosts.iter().map(host_port).collect());
            fred.server = ServerConfig::new_clustered(
                hosts
                    .into_iter()
                    .map(|s| (s.host.to_string(), s.port))
                    .collect(),
            );
            (fred, topology)
        };
        if let Some(user) = &self.username {
            fred.username = Some(user.clone());
        }
        if let Some(password) = &self.password {
            fred.password = Some(password.clone());
        }
        if let Some(path) = &self.tls_ca_file {
            let Some(tls) = fred.tls.as_mut() else {
                return Err(StateError::config(
                    "tls_ca_file needs a rediss:// (TLS) URL; a CA file never turns TLS on by itself",
                ));
            };
            tls.connector = TlsConnector::from(rustls_config_with_ca(path)?);
        }
        let key_prefix = validate_namespace(&self.key_prefix)
            .map_err(|e| StateError::config(format!("key_prefix: {}", e.message())))?;
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
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        Ok(RedisConfig {
            fred,
            topology,
            key_prefix,
            default_ttl: self.default_ttl,
            pool_min: self.pool_min,
            pool_max: self.pool_max,
            max_retries: self.max_retries,
            pipeline_batch_size: self.pipeline_batch_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            limits: self.limits,
        })
    }
}

/// A rustls client config (ring) trusting only the CA certificates in `path`.
fn rustls_config_with_ca(path: &std::path::Path) -> StateResult<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| StateError::config(format!("cannot read CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| StateError::config(format!("bad CA file {}: {e}", path.display())))?;
        store
            .add(cert)
            .map_err(|e| StateError::config(format!("bad CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(StateError::config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StateError::config(format!("TLS setup: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth())
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
            &Topology::Standalone("127.0.0.1:6379".into())
        );
        assert!(!config.tls());
    }

    #[test]
    fn bad_input_is_a_config_error() {
        for builder in [
            RedisConfig::builder().url("http://x"),
            RedisConfig::builder().url("redis-sentinel://h:1"),
            RedisConfig::builder().key_prefix(""),
            RedisConfig::builder().key_prefix("app:b:"),
            RedisConfig::builder().key_prefix("@state-lock:"),
            RedisConfig::builder().key_prefix("a*"),
            RedisConfig::builder().pool_size(0, 1),
            RedisConfig::builder().pool_size(5, 2),
            RedisConfig::builder().pipeline_batch_size(0),
            RedisConfig::builder().command_timeout(Duration::ZERO),
            RedisConfig::builder().default_ttl(Duration::from_micros(10)),
            RedisConfig::builder().default_ttl(Duration::MAX),
            RedisConfig::builder().tls_ca_file("/nonexistent.pem"),
            RedisConfig::builder()
                .url("rediss://h:1")
                .tls_ca_file("/nonexistent.pem"),
            RedisConfig::builder().cluster_nodes(["redis://a:1", "rediss://b:2"]),
            RedisConfig::builder()
                .url("rediss://h:6380")
                .cluster_nodes(["redis://a:1", "redis://b:2"]),
            RedisConfig::builder().cluster_nodes(["redis://a:1", "redis://:pw@b:2"]),
            RedisConfig::builder().url("redis://user:1234#hunter2@h:1"),
        ] {
            let err = builder.build().unwrap_err();
            assert_eq!(err.kind(), state_core::ErrorKind::ConfigInvalid, "{err}");
        }
    }

    #[test]
    fn prefixes_are_one_segment_ending_in_a_colon() {
        for (given, kept) in [
            ("state", "state:"),
            ("app:", "app:"),
            ("a.b-c_d", "a.b-c_d:"),
        ] {
            let config = RedisConfig::builder().key_prefix(given).build().unwrap();
            assert_eq!(config.key_prefix(), kept);
        }
    }

    #[test]
    fn every_url_form_sets_cluster_and_tls_from_fred() {
        for (url, cluster, tls) in [
            ("redis://h:6379", false, false),
            ("rediss://h:6380/2", false, true),
            (
                "redis-cluster://h:7000?node=h:7001&node=h:7002",
                true,
                false,
            ),
            ("rediss-cluster://u:pw@h:7000", true, true),
        ] {
            let config = RedisConfig::builder().url(url).build().unwrap();
            assert_eq!(
                matches!(config.topology(), Topology::Cluster(_)),
                cluster,
                "{url}"
            );
            assert_eq!(config.tls(), tls, "{url}");
        }
        let config = RedisConfig::builder()
            .url("redis-cluster://h:7000?node=h:7001&node=h:7002")
            .build()
            .unwrap();
        let Topology::Cluster(nodes) = config.topology() else {
            panic!("not a cluster")
        };
        assert_eq!(nodes.len(), 3);
        // cluster_nodes accept every form, and every host named is used.
        let config = RedisConfig::builder()
            .cluster_nodes(["redis-cluster://a:1?node=b:2", "redis://c:3"])
            .build()
            .unwrap();
        let Topology::Cluster(nodes) = config.topology() else {
            panic!("not a cluster")
        };
        let mut nodes = nodes.clone();
        nodes.sort();
        assert_eq!(nodes, ["a:1", "b:2", "c:3"]);
    }

    /// Passwords with `/ # @ : % ' "`, spaces and non-ASCII, in the URL and set apart:
    /// never in `Debug`, `redacted_url` or errors.
    #[test]
    fn passwords_never_show() {
        for password in [
            "hunter2",
            "hunt/er2",
            "p#hunter2",
            "a@b",
            "x:y",
            "it's",
            "say \"hi\" now",
            "pässwörd",
        ] {
            let encoded: String =
                url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
            for url in [
                format!("redis://:{encoded}@h:1"),
                format!("redis://default:{encoded}@h:1/3"),
                format!("rediss-cluster://default:{encoded}@h:1?node=h:2"),
                // Unencoded, as users type them: refused or parsed, never shown.
                format!("redis://:{password}@h:1"),
                format!("redis://default:{password}@h:1"),
            ] {
                match RedisConfig::builder().url(&url).build() {
                    Ok(config) => {
                        let shown = format!("{config:?} {}", config.redacted_url());
                        assert!(!shown.contains(password), "{url} -> {shown}");
                    }
                    Err(err) => assert!(!err.to_string().contains(password), "{err}"),
                }
                let builder = RedisConfig::builder().url(&url).password(password);
                let shown = format!("{builder:?}");
                assert!(!shown.contains(password), "{shown}");
            }
        }
        let config = RedisConfig::builder()
            .url("redis://user:hunter2@h:1")
            .build()
            .unwrap();
        assert_eq!(config.redacted_url(), "redis://user:***@h:1");
        let err = RedisConfig::builder()
            .url("nope://u:hunter2@h")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        // Hostile review: fred quoted `node=` values; a bare token before `@`; `#`.
        for url in [
            "redis-cluster://u:pw@h:1?node=u:hunter2@h2:2",
            "redis://user:1234#hunter2@h:1",
        ] {
            let err = RedisConfig::builder().url(url).build().unwrap_err();
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let config = RedisConfig::builder()
            .url("redis://hunter2@h:1")
            .build()
            .unwrap();
        let shown = format!("{config:?} {}", config.redacted_url());
        assert!(!shown.contains("hunter2"), "{shown}");
        let config = RedisConfig::builder()
            .url("redis://[::1]:1")
            .build()
            .unwrap();
        assert_eq!(config.topology(), &Topology::Standalone("[::1]:1".into()));
    }
}
