//! Configuration of [`crate::SledStateBackend`].

use std::path::PathBuf;
use std::time::Duration;

use state_core::{Limits, StateError, StateResult};

use crate::SledStateBackend;

/// The tree a backend uses unless told otherwise.
pub const DEFAULT_TREE: &str = "state";

/// How often the sweeper removes expired entries by default.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(30);

/// Settings for [`SledStateBackend`]; start from [`SledStateBackend::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use state_sled::SledStateBackend;
///
/// let backend = SledStateBackend::builder("/var/lib/optimizer/state")
///     .cache_capacity(256 * 1024 * 1024)
///     .flush_every(Some(Duration::from_millis(200)))
///     .sync_writes(false)
///     .default_ttl(Duration::from_secs(86_400))
///     .build()?;
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SledConfig {
    pub(crate) path: PathBuf,
    pub(crate) tree: String,
    pub(crate) cache_capacity: u64,
    pub(crate) compression: bool,
    pub(crate) compression_factor: i32,
    pub(crate) flush_every: Option<Duration>,
    pub(crate) sync_writes: bool,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) cleanup_interval: Duration,
    pub(crate) limits: Limits,
    pub(crate) temporary: bool,
    pub(crate) high_throughput: bool,
    pub(crate) latency_sample_rate: u32,
}

impl SledConfig {
    /// Settings for a database in the folder `path` (created if missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            tree: DEFAULT_TREE.to_owned(),
            cache_capacity: 256 * 1024 * 1024,
            compression: false,
            compression_factor: 5,
            flush_every: Some(Duration::from_millis(500)),
            sync_writes: false,
            default_ttl: None,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            limits: Limits::default(),
            temporary: false,
            high_throughput: false,
            latency_sample_rate: 4,
        }
    }

    /// The sled tree (namespace) this backend reads and writes (default `"state"`). Several
    /// backends can share one database with different trees; see
    /// [`SledStateBackend::open_tree`]. Names starting with `__` are reserved.
    pub fn tree(mut self, name: impl Into<String>) -> Self {
        self.tree = name.into();
        self
    }

    /// Bytes of sled's page cache (default 256 MiB; sled's own default is 1 GiB).
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// zstd-compresses sled's pages. Needs this crate's `compression` feature; without it
    /// `build()` returns a `ConfigInvalid` error rather than silently storing uncompressed.
    pub fn compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// zstd level, 1 (fast) to 22 (small); default 5.
    pub fn compression_factor(mut self, level: i32) -> Self {
        self.compression_factor = level;
        self
    }

    /// How often sled flushes its write buffers in the background (default 500 ms; `None`
    /// turns the background flush off). Acknowledged writes not yet flushed are lost in a
    /// crash unless `sync_writes` is on.
    pub fn flush_every(mut self, every: Option<Duration>) -> Self {
        self.flush_every = every;
        self
    }

    /// Flushes sled's write buffers before every write is acknowledged (about 15k writes/s on
    /// a 2-core VM, against ~200k without). A write acknowledged with this on survives the
    /// process being killed. On Linux sled's flush uses `sync_file_range`, a weaker promise
    /// than `fsync`: it does not flush file metadata or ask the drive to empty its write
    /// cache, so surviving a power loss depends on the file system and the drive.
    pub fn sync_writes(mut self, enabled: bool) -> Self {
        self.sync_writes = enabled;
        self
    }

    /// A TTL applied to every write that does not give its own; 1 ms to
    /// [`state_core::MAX_TTL`] (100 years), or `build()` returns `ConfigInvalid`.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often expired entries are removed from disk (default 30 s). Reads never return an
    /// expired entry, whenever the sweep runs.
    pub fn cleanup_interval(mut self, every: Duration) -> Self {
        self.cleanup_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Deletes the database when the backend is dropped (tests, scratch state).
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// sled's `HighThroughput` mode (more space, faster writes) instead of `LowSpace`.
    pub fn high_throughput(mut self, enabled: bool) -> Self {
        self.high_throughput = enabled;
        self
    }

    /// Times one operation in `n` for the latency figures (default 4).
    pub fn latency_sample_rate(mut self, n: u32) -> Self {
        self.latency_sample_rate = n.max(1);
        self
    }

    pub(crate) fn validate(&self) -> StateResult<()> {
        validate_tree_name(&self.tree)?;
        if self.compression && !cfg!(feature = "compression") {
            return Err(StateError::config(
                "compression was requested but state-sled was built without its `compression` feature",
            ));
        }
        if !(1..=22).contains(&self.compression_factor) {
            return Err(StateError::config(
                "compression_factor must be between 1 and 22",
            ));
        }
        if let Some(ttl) = self.default_ttl {
            Limits::check_ttl(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        if self.path.as_os_str().is_empty() {
            return Err(StateError::config("the database path must not be empty"));
        }
        Ok(())
    }

    pub(crate) fn sled_config(&self) -> sled::Config {
        sled::Config::new()
            .path(&self.path)
            .cache_capacity(self.cache_capacity)
            .use_compression(self.compression)
            .compression_factor(self.compression_factor)
            .flush_every_ms(self.flush_every.map(|d| d.as_millis().max(1) as u64))
            .temporary(self.temporary)
            .mode(if self.high_throughput {
                sled::Mode::HighThroughput
            } else {
                sled::Mode::LowSpace
            })
    }

    /// Opens the database and the tree.
    pub fn build(self) -> StateResult<SledStateBackend> {
        SledStateBackend::from_config(&self)
    }
}

pub(crate) fn validate_tree_name(name: &str) -> StateResult<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(StateError::invalid_input(
            "a sled tree name must be 1 to 128 bytes long",
        ));
    }
    if name.starts_with("__") {
        return Err(StateError::invalid_input(
            "sled tree names starting with `__` are reserved (sled's default tree and this crate's expiry index)",
        ));
    }
    Ok(())
}
