//! Opening a [`BackendConfig`]: the backend, then the layers over it.

use std::sync::Arc;

use state_core::{StateBackend, StateError, StateResult};

use crate::config::{BackendConfig, Stack};

/// Opens the backend a URL names, with the layers its options ask for.
///
/// `memory://`, `sled:///path`, `redis://`, `rediss://`, `redis-cluster://`,
/// `postgres://...?table=...`; the crate's README lists every option.
///
/// # Errors
///
/// [`ErrorKind::ConfigInvalid`](state_core::ErrorKind::ConfigInvalid) for a bad URL, an
/// unknown option or a bad value (naming the option, never quoting the URL), or a kind or
/// layer whose cargo feature is off; otherwise what the backend's constructor returns
/// (connection, permission, I/O errors).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> state_core::StateResult<()> {
/// let backend = anystate::open("memory://?default_ttl=1h").await?;
/// backend.put(b"k", b"v").await?;
/// assert!(backend.ttl(b"k").await?.is_some());
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> StateResult<Arc<dyn StateBackend>> {
    BackendConfig::from_url(url)?.open().await
}

impl BackendConfig {
    /// Opens the backend and stacks the configured layers over it (innermost first:
    /// `namespace`, `cache`, `timeout`, `retry`).
    ///
    /// # Errors
    ///
    /// As [`open`]. Layer options are checked before any connection is made.
    pub async fn open(&self) -> StateResult<Arc<dyn StateBackend>> {
        let stack = self.stack();
        check_stack(&stack)?;
        let backend = match self {
            BackendConfig::Memory(o) => backends::memory(o)?,
            BackendConfig::Sled(o) => backends::sled(o)?,
            BackendConfig::Redis(o) => backends::redis(o).await?,
            BackendConfig::Postgres(o) => backends::postgres(o).await?,
        };
        wrap(backend, &stack).await
    }
}

/// `ConfigInvalid` naming the cargo feature a kind or layer needs.
pub(crate) fn missing_feature(what: &str, feature: &str) -> StateError {
    StateError::config(format!(
        "{what} needs the `{feature}` feature: this build of anystate was compiled without \
         feature `{feature}` (add it in Cargo.toml: anystate = {{ features = [\"{feature}\"] }})"
    ))
}

/// A backend's or layer's own configuration error, reworded to name the facade's option.
pub(crate) fn option_error(option: &str, err: &StateError) -> StateError {
    StateError::config(format!("option `{option}`: {}", err.message()))
}

fn check_stack(stack: &Stack<'_>) -> StateResult<()> {
    if let Some(namespace) = stack.namespace {
        if !cfg!(feature = "layers-namespace") {
            return Err(missing_feature("option `namespace`", "layers-namespace"));
        }
        state_core::validate_namespace(namespace).map_err(|e| option_error("namespace", &e))?;
    }
    if let Some(cache) = stack.cache {
        if !cfg!(feature = "layers-cache") {
            return Err(missing_feature("option `cache`", "layers-cache"));
        }
        if cache.max_items == Some(0) {
            return Err(StateError::config(
                "option `cache.max_items`: must be at least 1",
            ));
        }
        if cache.ttl.is_some_and(|t| t.is_zero()) {
            return Err(StateError::config(
                "option `cache.ttl`: must be greater than zero",
            ));
        }
    }
    if let Some(timeout) = stack.timeout {
        if !cfg!(feature = "layers-timeout") {
            return Err(missing_feature("option `timeout`", "layers-timeout"));
        }
        if timeout.is_zero() {
            return Err(StateError::config(
                "option `timeout`: must be greater than zero",
            ));
        }
    }
    if let Some(retry) = stack.retry {
        if !cfg!(feature = "layers-retry") {
            return Err(missing_feature("option `retry`", "layers-retry"));
        }
        if let (Some(min), Some(max)) = (retry.min_delay, retry.max_delay) {
            if min > max {
                return Err(StateError::config(
                    "option `retry.min_delay`: must not exceed `retry.max_delay`",
                ));
            }
        }
    }
    Ok(())
}

#[allow(clippy::unused_async)] // awaits only with the `layers-cache` feature
async fn wrap(
    backend: Arc<dyn StateBackend>,
    stack: &Stack<'_>,
) -> StateResult<Arc<dyn StateBackend>> {
    #[allow(unused_mut)]
    let mut backend = backend;
    #[cfg(feature = "layers-namespace")]
    if let Some(namespace) = stack.namespace {
        backend = Arc::new(
            state_layers::Namespaced::new(backend, namespace)
                .map_err(|e| option_error("namespace", &e))?,
        );
    }
    #[cfg(feature = "layers-cache")]
    if let Some(cache) = stack.cache {
        let mut builder = state_tiered::CachedStateBackend::builder(backend);
        if let Some(n) = cache.max_items {
            builder = builder.max_items(n);
        }
        if let Some(ttl) = cache.ttl {
            builder = builder.ttl(ttl);
        }
        backend = Arc::new(
            builder
                .build()
                .await
                .map_err(|e| option_error("cache", &e))?,
        );
    }
    #[cfg(feature = "layers-timeout")]
    if let Some(timeout) = stack.timeout {
        backend = Arc::new(state_layers::Timeout::new(backend, timeout));
    }
    #[cfg(feature = "layers-retry")]
    if let Some(retry) = stack.retry {
        let mut backoff = state_layers::backon::ExponentialBuilder::default()
            .with_min_delay(
                retry
                    .min_delay
                    .unwrap_or(std::time::Duration::from_millis(10)),
            )
            .with_max_delay(retry.max_delay.unwrap_or(std::time::Duration::from_secs(1)))
            .with_factor(2.0)
            .with_jitter();
        backoff = backoff.with_max_times(retry.max_times.unwrap_or(3));
        backend = Arc::new(state_layers::Retry::new(backend).with_backoff(backoff));
    }
    let _ = stack;
    Ok(backend)
}

/// One constructor per kind; each returns `ConfigInvalid` when its feature is off.
mod backends {
    #![allow(clippy::unnecessary_wraps, clippy::unused_async)] // per-feature bodies

    use std::sync::Arc;

    use state_core::{StateBackend, StateResult};

    #[allow(unused_imports)]
    use super::{missing_feature, option_error};
    use crate::config::{MemoryOptions, PostgresOptions, RedisOptions, SledOptions};

    pub(super) fn memory(o: &MemoryOptions) -> StateResult<Arc<dyn StateBackend>> {
        #[cfg(feature = "services-memory")]
        {
            let mut builder = state_memory::MemoryStateBackend::builder();
            if let Some(ttl) = o.default_ttl {
                state_core::Limits::check_ttl(ttl).map_err(|e| option_error("default_ttl", &e))?;
                builder = builder.ttl(ttl);
            }
            if let Some(n) = o.max_entries {
                builder = builder.max_entries(n);
            }
            if let Some(n) = o.max_bytes {
                builder = builder.max_bytes(n);
            }
            if let Some(every) = o.cleanup_interval {
                if every.is_zero() {
                    return Err(state_core::StateError::config(
                        "option `cleanup_interval`: must be greater than zero",
                    ));
                }
                builder = builder.cleanup_interval(every);
            }
            Ok(Arc::new(builder.build()))
        }
        #[cfg(not(feature = "services-memory"))]
        {
            let _ = o;
            Err(missing_feature("a memory:// backend", "services-memory"))
        }
    }

    pub(super) fn sled(o: &SledOptions) -> StateResult<Arc<dyn StateBackend>> {
        #[cfg(feature = "services-sled")]
        {
            let mut config = state_sled::SledStateBackend::builder(&o.path);
            if let Some(tree) = &o.tree {
                if tree.is_empty() || tree.len() > 128 || tree.starts_with("__") {
                    return Err(state_core::StateError::config(
                        "option `tree`: 1 to 128 bytes, not starting with `__` (reserved)",
                    ));
                }
                config = config.tree(tree.clone());
            }
            if let Some(bytes) = o.cache_capacity {
                config = config.cache_capacity(bytes);
            }
            if let Some(on) = o.compression {
                if on && !cfg!(feature = "services-sled-compression") {
                    return Err(missing_feature(
                        "option `compression`",
                        "services-sled-compression",
                    ));
                }
                config = config.compression(on);
            }
            if let Some(every) = o.flush_every {
                config = config.flush_every(Some(every));
            }
            if let Some(on) = o.sync_writes {
                config = config.sync_writes(on);
            }
            if let Some(on) = o.temporary {
                config = config.temporary(on);
            }
            if let Some(ttl) = o.default_ttl {
                config = config.default_ttl(ttl);
            }
            if let Some(every) = o.cleanup_interval {
                config = config.cleanup_interval(every);
            }
            Ok(Arc::new(config.build()?))
        }
        #[cfg(not(feature = "services-sled"))]
        {
            let _ = o;
            Err(missing_feature("a sled:// backend", "services-sled"))
        }
    }

    pub(super) async fn redis(o: &RedisOptions) -> StateResult<Arc<dyn StateBackend>> {
        #[cfg(feature = "services-redis")]
        {
            let mut o = o.clone();
            let url = std::mem::take(&mut o.url);
            o.url = crate::urls::take_redis_options(&mut o, &url)?;
            let mut builder = state_redis::RedisConfig::builder().url(o.url.clone());
            if let Some(prefix) = &o.prefix {
                state_core::validate_namespace(prefix).map_err(|e| option_error("prefix", &e))?;
                builder = builder.key_prefix(prefix.clone());
            }
            if let Some(ttl) = o.default_ttl {
                state_core::Limits::check_ttl(ttl).map_err(|e| option_error("default_ttl", &e))?;
                builder = builder.default_ttl(ttl);
            }
            if let Some(n) = o.pool_size {
                if !(1..=128).contains(&n) {
                    return Err(state_core::StateError::config(
                        "option `pool_size`: must be between 1 and 128",
                    ));
                }
                builder = builder.pool_size(n, n);
            }
            if let Some(n) = o.max_retries {
                builder = builder.max_retries(n);
            }
            if let Some(n) = o.batch_size {
                if n == 0 {
                    return Err(state_core::StateError::config(
                        "option `batch_size`: must be at least 1",
                    ));
                }
                builder = builder.pipeline_batch_size(n);
            }
            for (name, t) in [
                ("connect_timeout", o.connect_timeout),
                ("command_timeout", o.command_timeout),
            ] {
                if t.is_some_and(|t| t.is_zero()) {
                    return Err(state_core::StateError::config(format!(
                        "option `{name}`: must be greater than zero"
                    )));
                }
            }
            if let Some(t) = o.connect_timeout {
                builder = builder.connect_timeout(t);
            }
            if let Some(t) = o.command_timeout {
                builder = builder.command_timeout(t);
            }
            if let Some(path) = &o.tls_ca_file {
                builder = builder.tls_ca_file(path.clone());
            }
            let config = builder.build()?;
            Ok(Arc::new(state_redis::RedisStateBackend::new(config).await?))
        }
        #[cfg(not(feature = "services-redis"))]
        {
            let _ = o;
            Err(missing_feature("a redis backend", "services-redis"))
        }
    }

    pub(super) async fn postgres(o: &PostgresOptions) -> StateResult<Arc<dyn StateBackend>> {
        #[cfg(feature = "services-postgres")]
        {
            let mut o = o.clone();
            let url = std::mem::take(&mut o.url);
            o.url = crate::urls::take_postgres_options(&mut o, &url)?;
            let mut builder = state_postgres::PostgresConfig::builder().url(o.url.clone());
            if let Some(table) = &o.table {
                state_postgres::TableName::parse(table).map_err(|e| option_error("table", &e))?;
                builder = builder.table(table.clone());
            }
            if let Some(n) = o.pool_size {
                if n == 0 {
                    return Err(state_core::StateError::config(
                        "option `pool_size`: must be at least 1",
                    ));
                }
                builder = builder.pool_size(n);
            }
            for (name, t) in [
                ("connect_timeout", o.connect_timeout),
                ("command_timeout", o.command_timeout),
            ] {
                if t.is_some_and(|t| t.is_zero()) {
                    return Err(state_core::StateError::config(format!(
                        "option `{name}`: must be greater than zero"
                    )));
                }
            }
            if let Some(t) = o.connect_timeout {
                builder = builder.connect_timeout(t);
            }
            if let Some(t) = o.command_timeout {
                builder = builder.command_timeout(t);
            }
            if let Some(t) = o.statement_timeout {
                if t.as_millis() == 0 {
                    return Err(state_core::StateError::config(
                        "option `statement_timeout`: must be at least 1ms",
                    ));
                }
                builder = builder.statement_timeout(t);
            }
            if let Some(ttl) = o.default_ttl {
                state_core::Limits::check_ttl(ttl).map_err(|e| option_error("default_ttl", &e))?;
                builder = builder.default_ttl(ttl);
            }
            let config = builder.build()?;
            Ok(Arc::new(
                state_postgres::PostgresStateBackend::with_config(config).await?,
            ))
        }
        #[cfg(not(feature = "services-postgres"))]
        {
            let _ = o;
            Err(missing_feature("a postgres backend", "services-postgres"))
        }
    }
}
