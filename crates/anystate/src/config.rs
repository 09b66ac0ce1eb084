//! [`BackendConfig`]: a backend and the layers over it, from serde (TOML, JSON, ...), a URL
//! or the environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use state_core::{StateError, StateResult, redact_url};

use crate::value::{self, serde_duration};

/// The moka L1 cache stacked over the backend (`cache = { max_items, ttl }`; URL options
/// `cache.max_items`, `cache.ttl`). Needs the `layers-cache` feature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOptions {
    /// Most entries the cache holds (default 10,000); least recently used ones are evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u64>,
    /// How long an entry stays cached after it was loaded or written (default: until evicted
    /// or invalidated by a write through this stack).
    #[serde(
        default,
        with = "serde_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

/// Retries with exponential backoff and jitter for errors a retry can help
/// (`retry = { max_times, min_delay, max_delay }`; URL options `retry.max_times`, ...).
/// Only idempotent operations are retried, and never after an outcome-unknown error. Needs the
/// `layers-retry` feature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOptions {
    /// Retries after the first attempt (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_times: Option<usize>,
    /// Delay before the first retry, doubled each time (default 10 ms).
    #[serde(
        default,
        with = "serde_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_delay: Option<Duration>,
    /// Longest delay between two attempts (default 1 s).
    #[serde(
        default,
        with = "serde_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay: Option<Duration>,
}

/// The options every kind takes, borrowed from one of the option structs.
pub(crate) struct Stack<'a> {
    pub(crate) namespace: Option<&'a str>,
    pub(crate) cache: Option<&'a CacheOptions>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<&'a RetryOptions>,
}

/// Declares an option struct with its own fields plus the options every kind shares
/// (`default_ttl` and the layers), so the names and docs stay the same everywhere.
macro_rules! options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// A TTL for every write that does not give its own (option `default_ttl`).
            #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
            pub default_ttl: Option<Duration>,
            /// Keys live under this namespace (one segment of `A-Z a-z 0-9 _ - . { }`), so
            /// several users share one backend; `clear` and `count` see only it. Needs the
            /// `layers-namespace` feature.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub namespace: Option<String>,
            /// An L1 cache over the backend ([`CacheOptions`]).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub cache: Option<CacheOptions>,
            /// A deadline for every operation; a write whose deadline passes reports
            /// outcome-unknown. Needs the `layers-timeout` feature.
            #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
            pub timeout: Option<Duration>,
            /// Retries of idempotent operations ([`RetryOptions`]).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub retry: Option<RetryOptions>,
        }

        impl $name {
            pub(crate) fn stack(&self) -> Stack<'_> {
                Stack {
                    namespace: self.namespace.as_deref(),
                    cache: self.cache.as_ref(),
                    timeout: self.timeout,
                    retry: self.retry.as_ref(),
                }
            }

            /// Sets a shared option from text; `Ok(false)` when `key` is not one.
            pub(crate) fn set_shared(&mut self, key: &str, text: &str) -> StateResult<bool> {
                match key {
                    "default_ttl" => {
                        set_once(&mut self.default_ttl, key, value::duration(key, text)?)?;
                    }
                    "namespace" => set_once(&mut self.namespace, key, text.to_owned())?,
                    "timeout" => set_once(&mut self.timeout, key, value::duration(key, text)?)?,
                    "cache.max_items" => set_once(
                        &mut self.cache.get_or_insert_with(Default::default).max_items,
                        key,
                        value::integer(key, text)?,
                    )?,
                    "cache.ttl" => set_once(
                        &mut self.cache.get_or_insert_with(Default::default).ttl,
                        key,
                        value::duration(key, text)?,
                    )?,
                    "retry.max_times" => set_once(
                        &mut self.retry.get_or_insert_with(Default::default).max_times,
                        key,
                        value::integer(key, text)?,
                    )?,
                    "retry.min_delay" => set_once(
                        &mut self.retry.get_or_insert_with(Default::default).min_delay,
                        key,
                        value::duration(key, text)?,
                    )?,
                    "retry.max_delay" => set_once(
                        &mut self.retry.get_or_insert_with(Default::default).max_delay,
                        key,
                        value::duration(key, text)?,
                    )?,
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

/// Options every kind takes, as they are spelled in URLs and by [`BackendConfig::from_env`].
pub(crate) const SHARED_OPTIONS: [&str; 8] = [
    "default_ttl",
    "namespace",
    "timeout",
    "cache.max_items",
    "cache.ttl",
    "retry.max_times",
    "retry.min_delay",
    "retry.max_delay",
];

/// Sets `slot` unless it already holds a value: an option given twice (in the URL and in the
/// config or the environment) is an error, not a silent override.
pub(crate) fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> StateResult<()> {
    if slot.is_some() {
        return Err(StateError::config(format!(
            "option `{key}` is given twice (in the URL and in the config or environment): \
             keep one"
        )));
    }
    *slot = Some(value);
    Ok(())
}

options! {
    /// An in-process [`MemoryStateBackend`](state_memory::MemoryStateBackend)
    /// (`kind = "memory"`, URL `memory://`). Nothing survives the process.
    #[derive(Debug, Default)]
    pub struct MemoryOptions {
        /// Most live entries; a write beyond it fails with `CapacityExceeded` (option
        /// `max_entries`; default unbounded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_entries: Option<usize>,
        /// Most bytes of keys, values and per-entry overhead (option `max_bytes`; default
        /// unbounded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_bytes: Option<usize>,
        /// How often expired entries are swept (option `cleanup_interval`; default 60 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub cleanup_interval: Option<Duration>,
    }
}

options! {
    /// An embedded [`SledStateBackend`](state_sled::SledStateBackend) in the folder `path`
    /// (`kind = "sled"`, URL `sled:///absolute/path` or `sled://relative/path`).
    #[derive(Debug, Default)]
    pub struct SledOptions {
        /// The database folder, created when missing.
        pub path: PathBuf,
        /// The tree (namespace inside the database) this backend uses (option `tree`;
        /// default `state`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tree: Option<String>,
        /// sled's page cache in bytes (option `cache_capacity`; default 256 MiB).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cache_capacity: Option<u64>,
        /// zstd compression of pages (option `compression`; needs the
        /// `services-sled-compression` feature).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub compression: Option<bool>,
        /// How often sled flushes to disk in the background (option `flush_every`; default
        /// 500 ms).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub flush_every: Option<Duration>,
        /// Flush (sync_file_range) after every write before it returns (option
        /// `sync_writes`; default false).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sync_writes: Option<bool>,
        /// Delete the database when the backend is dropped (option `temporary`; default
        /// false).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub temporary: Option<bool>,
        /// How often expired entries are swept (option `cleanup_interval`; default 30 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub cleanup_interval: Option<Duration>,
    }
}

options! {
    /// A [`RedisStateBackend`](state_redis::RedisStateBackend) (`kind = "redis"`): standalone
    /// (`redis://`, `rediss://` for TLS), Cluster (`redis-cluster://`, `rediss-cluster://`)
    /// or Sentinel (`redis-sentinel://`), as the URL says.
    #[derive(Default)]
    pub struct RedisOptions {
        /// The server URL; facade options in its query are read and removed, the driver's
        /// own (`node`, `sentinelServiceName`, `sentinelUsername`, `sentinelPassword`) stay.
        pub url: String,
        /// Namespace of every key on the server (option `prefix`; default `state:`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub prefix: Option<String>,
        /// Connections opened and round-robined (option `pool_size`; default 1: fred
        /// multiplexes commands on each).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pool_size: Option<usize>,
        /// How many times a command safe to re-send may be written (option `max_retries`;
        /// default 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_retries: Option<u32>,
        /// Keys per `MGET`/`MSET`/`DEL` round trip in batches (option `batch_size`; default
        /// 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub batch_size: Option<usize>,
        /// How long connecting may take (option `connect_timeout`; default 5 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub connect_timeout: Option<Duration>,
        /// How long one command may take (option `command_timeout`; default 5 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub command_timeout: Option<Duration>,
        /// PEM file of the CA certificates a `rediss://` server is verified against (option
        /// `tls_ca_file`; default the system's roots).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tls_ca_file: Option<PathBuf>,
    }
}

options! {
    /// A [`PostgresStateBackend`](state_postgres::PostgresStateBackend) (`kind = "postgres"`,
    /// URL `postgres://` or `postgresql://`, or a libpq `key=value` string in `url`).
    #[derive(Default)]
    pub struct PostgresOptions {
        /// The primary's connection string; facade options in a URL's query are read and
        /// removed, libpq's own (`sslmode`, `sslrootcert`, `application_name`, ...) stay.
        pub url: String,
        /// The table, optionally `schema.table`, created by the migrations (option `table`;
        /// default `state`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub table: Option<String>,
        /// Pooled connections (option `pool_size`; default 2 x CPUs + 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pool_size: Option<usize>,
        /// How long connecting may take (option `connect_timeout`; default 5 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub connect_timeout: Option<Duration>,
        /// How long one operation may take, pool wait included (option `command_timeout`;
        /// default 30 s).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub command_timeout: Option<Duration>,
        /// The server-side `statement_timeout` (option `statement_timeout`; default the
        /// command timeout).
        #[serde(default, with = "serde_duration", skip_serializing_if = "Option::is_none")]
        pub statement_timeout: Option<Duration>,
    }
}

/// Shows the URL through [`redact_url`]: never a password.
macro_rules! debug_with_url {
    ($name:ident { $($field:ident),* }) => {
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("url", &redact_url(&self.url))
                    $(.field(stringify!($field), &self.$field))*
                    .field("default_ttl", &self.default_ttl)
                    .field("namespace", &self.namespace)
                    .field("cache", &self.cache)
                    .field("timeout", &self.timeout)
                    .field("retry", &self.retry)
                    .finish()
            }
        }
    };
}

debug_with_url!(RedisOptions {
    prefix,
    pool_size,
    max_retries,
    batch_size,
    connect_timeout,
    command_timeout,
    tls_ca_file
});
debug_with_url!(PostgresOptions {
    table,
    pool_size,
    connect_timeout,
    command_timeout,
    statement_timeout
});

/// A backend and the layers over it: what [`crate::open`] reads from a URL, and what a
/// config file, JSON or the environment describe. Tagged by `kind`.
///
/// Every option has the same name here, in URL query parameters and (for the shared ones)
/// in the environment; the crate's README has the table. `Debug` never shows a password
/// (`Serialize` writes the URL as given, secrets included: it is the config itself).
///
/// Layers are stacked in one fixed order, innermost first: the backend, `namespace`,
/// `cache`, `timeout` (each attempt), `retry`.
///
/// ```
/// use anystate::BackendConfig;
///
/// let config: BackendConfig = serde_json::from_str(
///     r#"{ "kind": "memory", "default_ttl": "1h", "max_entries": 100000 }"#,
/// )?;
/// assert_eq!(config, BackendConfig::from_url("memory://?default_ttl=1h&max_entries=100000")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendConfig {
    /// `kind = "memory"`: [`MemoryOptions`].
    Memory(MemoryOptions),
    /// `kind = "sled"`: [`SledOptions`].
    Sled(SledOptions),
    /// `kind = "redis"`: [`RedisOptions`].
    Redis(RedisOptions),
    /// `kind = "postgres"`: [`PostgresOptions`].
    Postgres(PostgresOptions),
}

impl BackendConfig {
    /// The kind's name as written in `kind = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Memory(_) => "memory",
            BackendConfig::Sled(_) => "sled",
            BackendConfig::Redis(_) => "redis",
            BackendConfig::Postgres(_) => "postgres",
        }
    }

    /// Reads a URL: the scheme picks the kind, facade options in the query fill the
    /// options, the driver's own stay in the URL. See the crate's README for the table.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::ConfigInvalid`](state_core::ErrorKind::ConfigInvalid) for an unknown
    /// scheme, an unknown option or a bad value, naming the option; the URL itself is never
    /// quoted.
    pub fn from_url(url: &str) -> StateResult<Self> {
        crate::urls::parse(url)
    }

    /// Reads `STATE_URL` as [`BackendConfig::from_url`] does, then the shared options from
    /// `STATE_DEFAULT_TTL`, `STATE_NAMESPACE`, `STATE_TIMEOUT`, `STATE_CACHE_MAX_ITEMS`,
    /// `STATE_CACHE_TTL`, `STATE_RETRY_MAX_TIMES`, `STATE_RETRY_MIN_DELAY` and
    /// `STATE_RETRY_MAX_DELAY` (backend options go in the URL's query).
    ///
    /// # Errors
    ///
    /// `ConfigInvalid` when `STATE_URL` is missing, as for [`BackendConfig::from_url`], and
    /// when an option is set both in the URL and in its variable.
    pub fn from_env() -> StateResult<Self> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`BackendConfig::from_env`] with variables read through `var` (for tests, or another
    /// source of settings).
    ///
    /// # Errors
    ///
    /// As [`BackendConfig::from_env`].
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> StateResult<Self> {
        let url = var("STATE_URL").ok_or_else(|| {
            StateError::config(
                "STATE_URL is not set: give a backend URL such as memory://, sled:///path, \
                 redis://host:6379 or postgres://user@host/db?table=state",
            )
        })?;
        let mut config = Self::from_url(&url)?;
        for option in SHARED_OPTIONS {
            let name = format!("STATE_{}", option.replace('.', "_").to_ascii_uppercase());
            if let Some(text) = var(&name) {
                config.set_shared(option, &text)?;
            }
        }
        Ok(config)
    }

    pub(crate) fn set_shared(&mut self, key: &str, text: &str) -> StateResult<bool> {
        match self {
            BackendConfig::Memory(o) => o.set_shared(key, text),
            BackendConfig::Sled(o) => o.set_shared(key, text),
            BackendConfig::Redis(o) => o.set_shared(key, text),
            BackendConfig::Postgres(o) => o.set_shared(key, text),
        }
    }

    pub(crate) fn stack(&self) -> Stack<'_> {
        match self {
            BackendConfig::Memory(o) => o.stack(),
            BackendConfig::Sled(o) => o.stack(),
            BackendConfig::Redis(o) => o.stack(),
            BackendConfig::Postgres(o) => o.stack(),
        }
    }
}
