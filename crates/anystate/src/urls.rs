//! URLs to [`BackendConfig`]: the scheme picks the kind, facade options leave the query.

use std::borrow::Cow;
use std::path::PathBuf;

use state_core::{StateError, StateResult};

use crate::config::{
    BackendConfig, MemoryOptions, PostgresOptions, RedisOptions, SHARED_OPTIONS, SledOptions,
    set_once,
};
use crate::value;

/// Schemes the Redis backend reads (fred's).
const REDIS_SCHEMES: [&str; 12] = [
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

/// Query parameters fred reads itself; they stay in the URL.
const REDIS_DRIVER_OPTIONS: [&str; 4] = [
    "node",
    "sentinelServiceName",
    "sentinelUsername",
    "sentinelPassword",
];

/// libpq parameters the PostgreSQL driver reads itself (tokio-postgres' and the backend's TLS
/// ones); they stay in the URL.
const POSTGRES_DRIVER_OPTIONS: [&str; 21] = [
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslrootcert",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "replication",
    "sslcert",
];

const POSTGRES_OPTIONS: [&str; 5] = [
    "table",
    "pool_size",
    "connect_timeout",
    "command_timeout",
    "statement_timeout",
];

const MEMORY_OPTIONS: [&str; 3] = ["max_entries", "max_bytes", "cleanup_interval"];
const SLED_OPTIONS: [&str; 7] = [
    "tree",
    "cache_capacity",
    "compression",
    "flush_every",
    "sync_writes",
    "temporary",
    "cleanup_interval",
];
const REDIS_OPTIONS: [&str; 7] = [
    "prefix",
    "pool_size",
    "max_retries",
    "batch_size",
    "connect_timeout",
    "command_timeout",
    "tls_ca_file",
];
pub(crate) fn parse(url: &str) -> StateResult<BackendConfig> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(StateError::config(
            "not a backend URL: expected memory://, sled:///path, redis://, rediss://, \
             redis-cluster:// or postgres:// (the text is not shown because it may hold a \
             password)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let (base, query) = split_query(url);
    let pairs = query_pairs(query);
    match scheme.as_str() {
        "memory" => {
            if base.len() > "memory://".len() {
                return Err(StateError::config(
                    "memory:// takes no host or path, only options (memory://?default_ttl=1h)",
                ));
            }
            let mut options = MemoryOptions::default();
            for (key, text) in &pairs {
                set_memory(&mut options, key, text)?;
            }
            Ok(BackendConfig::Memory(options))
        }
        "sled" => {
            let path = percent_decode(&base["sled://".len()..])?;
            if path.is_empty() {
                return Err(StateError::config(
                    "sled:// needs a database folder: sled:///absolute/path or \
                     sled://relative/path",
                ));
            }
            let mut options = SledOptions {
                path: PathBuf::from(path),
                ..SledOptions::default()
            };
            for (key, text) in &pairs {
                set_sled(&mut options, key, text)?;
            }
            Ok(BackendConfig::Sled(options))
        }
        s if REDIS_SCHEMES.contains(&s) => {
            let mut options = RedisOptions::default();
            options.url = take_redis_options(&mut options, url)?;
            Ok(BackendConfig::Redis(options))
        }
        "postgres" | "postgresql" => {
            let mut options = PostgresOptions::default();
            options.url = take_postgres_options(&mut options, url)?;
            Ok(BackendConfig::Postgres(options))
        }
        _ => Err(StateError::config(format!(
            "unknown URL scheme `{}`: expected memory, sled, redis, rediss, redis-cluster, \
             rediss-cluster, redis-sentinel or postgres",
            truncate(&scheme)
        ))),
    }
}

/// Reads the facade options out of a Redis URL into `options` and returns the URL the driver
/// gets: the same text with only its own query parameters left.
pub(crate) fn take_redis_options(options: &mut RedisOptions, url: &str) -> StateResult<String> {
    let (base, query) = split_query(url);
    let mut kept = Vec::new();
    for (key, text) in query_pairs(query) {
        if REDIS_DRIVER_OPTIONS.contains(&key.as_ref()) {
            kept.push((key, text));
            continue;
        }
        if options.set_shared(&key, &text)? {
            continue;
        }
        match key.as_ref() {
            "prefix" => set_once(&mut options.prefix, &key, text.into_owned())?,
            "pool_size" => set_once(&mut options.pool_size, &key, value::integer(&key, &text)?)?,
            "max_retries" => {
                set_once(&mut options.max_retries, &key, value::integer(&key, &text)?)?;
            }
            "batch_size" => set_once(&mut options.batch_size, &key, value::integer(&key, &text)?)?,
            "connect_timeout" => set_once(
                &mut options.connect_timeout,
                &key,
                value::duration(&key, &text)?,
            )?,
            "command_timeout" => set_once(
                &mut options.command_timeout,
                &key,
                value::duration(&key, &text)?,
            )?,
            "tls_ca_file" => set_once(&mut options.tls_ca_file, &key, text.into_owned().into())?,
            _ => {
                return Err(unknown(
                    "redis",
                    &key,
                    &REDIS_OPTIONS,
                    &REDIS_DRIVER_OPTIONS,
                ));
            }
        }
    }
    Ok(rebuild(base, &kept))
}

/// Reads the facade options out of a PostgreSQL URL; libpq's parameters stay, anything else is
/// an unknown option. A libpq `key=value` string is returned unchanged.
pub(crate) fn take_postgres_options(
    options: &mut PostgresOptions,
    url: &str,
) -> StateResult<String> {
    if !url.contains("://") {
        return Ok(url.to_owned());
    }
    let (base, query) = split_query(url);
    let mut kept = Vec::new();
    for (key, text) in query_pairs(query) {
        if options.set_shared(&key, &text)? {
            continue;
        }
        match key.as_ref() {
            "table" => set_once(&mut options.table, &key, text.into_owned())?,
            "pool_size" => set_once(&mut options.pool_size, &key, value::integer(&key, &text)?)?,
            "connect_timeout" => set_once(
                &mut options.connect_timeout,
                &key,
                value::duration(&key, &text)?,
            )?,
            "command_timeout" => set_once(
                &mut options.command_timeout,
                &key,
                value::duration(&key, &text)?,
            )?,
            "statement_timeout" => set_once(
                &mut options.statement_timeout,
                &key,
                value::duration(&key, &text)?,
            )?,
            _ if POSTGRES_DRIVER_OPTIONS.contains(&key.as_ref()) => kept.push((key, text)),
            _ => {
                return Err(unknown(
                    "postgres",
                    &key,
                    &POSTGRES_OPTIONS,
                    &POSTGRES_DRIVER_OPTIONS,
                ));
            }
        }
    }
    Ok(rebuild(base, &kept))
}

fn set_memory(options: &mut MemoryOptions, key: &str, text: &str) -> StateResult<()> {
    if options.set_shared(key, text)? {
        return Ok(());
    }
    match key {
        "max_entries" => set_once(&mut options.max_entries, key, value::integer(key, text)?),
        "max_bytes" => set_once(&mut options.max_bytes, key, value::integer(key, text)?),
        "cleanup_interval" => set_once(
            &mut options.cleanup_interval,
            key,
            value::duration(key, text)?,
        ),
        _ => Err(unknown("memory", key, &MEMORY_OPTIONS, &[])),
    }
}

fn set_sled(options: &mut SledOptions, key: &str, text: &str) -> StateResult<()> {
    if options.set_shared(key, text)? {
        return Ok(());
    }
    match key {
        "tree" => set_once(&mut options.tree, key, text.to_owned()),
        "cache_capacity" => set_once(&mut options.cache_capacity, key, value::integer(key, text)?),
        "compression" => set_once(&mut options.compression, key, value::boolean(key, text)?),
        "flush_every" => set_once(&mut options.flush_every, key, value::duration(key, text)?),
        "sync_writes" => set_once(&mut options.sync_writes, key, value::boolean(key, text)?),
        "temporary" => set_once(&mut options.temporary, key, value::boolean(key, text)?),
        "cleanup_interval" => set_once(
            &mut options.cleanup_interval,
            key,
            value::duration(key, text)?,
        ),
        _ => Err(unknown("sled", key, &SLED_OPTIONS, &[])),
    }
}

/// An unknown option: named (shortened), with the ones the kind takes.
fn unknown(kind: &str, key: &str, own: &[&str], driver: &[&str]) -> StateError {
    let mut known: Vec<&str> = own.to_vec();
    known.extend(SHARED_OPTIONS);
    known.extend(driver);
    StateError::config(format!(
        "unknown option `{}` for a {kind} URL; it takes: {}",
        truncate(key),
        known.join(", ")
    ))
}

/// At most 64 characters of a user-typed name, so an error never carries a pasted secret
/// whole.
fn truncate(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(64) {
        Some((end, _)) => Cow::Owned(format!("{}...", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// The URL before its query, and the query (without `?`; a `#` is left to the drivers,
/// which refuse it). The query starts at the first `?`: a `?` in a password must be written
/// `%3F`, as the drivers' URL parsers require too.
fn split_query(url: &str) -> (&str, &str) {
    url.split_once('?').unwrap_or((url, ""))
}

fn query_pairs(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    url::form_urlencoded::parse(query.as_bytes()).collect()
}

fn rebuild(base: &str, kept: &[(Cow<'_, str>, Cow<'_, str>)]) -> String {
    if kept.is_empty() {
        return base.to_owned();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{base}?{query}")
}

fn percent_decode(text: &str) -> StateResult<String> {
    url::form_urlencoded::parse(format!("p={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| StateError::config("the sled path could not be read"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facade_options_leave_the_url_and_driver_options_stay() {
        let BackendConfig::Redis(o) =
            parse("redis-cluster://:pw@h1:7000?node=h2:7001&prefix=app&pool_size=4&node=h3:7002")
                .unwrap()
        else {
            panic!("not redis")
        };
        assert_eq!(
            o.url,
            "redis-cluster://:pw@h1:7000?node=h2%3A7001&node=h3%3A7002"
        );
        assert_eq!(o.prefix.as_deref(), Some("app"));
        assert_eq!(o.pool_size, Some(4));

        let BackendConfig::Postgres(o) =
            parse("postgres://u:p@db/x?sslmode=disable&table=t1&application_name=a").unwrap()
        else {
            panic!("not postgres")
        };
        assert_eq!(
            o.url,
            "postgres://u:p@db/x?sslmode=disable&application_name=a"
        );
        assert_eq!(o.table.as_deref(), Some("t1"));
    }

    #[test]
    fn sled_paths_are_absolute_or_relative_and_decoded() {
        let BackendConfig::Sled(o) = parse("sled:///var/lib/my%20state?tree=a").unwrap() else {
            panic!("not sled")
        };
        assert_eq!(o.path, PathBuf::from("/var/lib/my state"));
        let BackendConfig::Sled(o) = parse("sled://data/a+b").unwrap() else {
            panic!("not sled")
        };
        assert_eq!(o.path, PathBuf::from("data/a+b"));
    }
}
