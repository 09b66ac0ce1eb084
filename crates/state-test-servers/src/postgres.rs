//! Isolated PostgreSQL servers: primaries, streaming replicas, crashes and restarts.
//!
//! ```no_run
//! use std::time::Duration;
//! use state_test_servers::postgres::PostgresServer;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut primary = PostgresServer::temp("primary")?; // initialised and started
//! let replica = PostgresServer::temp_replica(&primary, "replica")?;
//! primary.wait_replica_streaming(Duration::from_secs(30))?;
//! primary.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")?;
//! primary.kill(); // SIGKILL: a crash
//! primary.start()?; // crash recovery
//! assert_eq!(primary.psql("SELECT v FROM t")?, "1");
//! # drop(replica);
//! # Ok(())
//! # }
//! // Dropping a server stops it and deletes its data directory.
//! ```
//!
//! Every server listens on `127.0.0.1` only, trusts every local connection (user
//! `postgres`, no password) and logs to `<data dir>/postgres.log`. Durability settings
//! (`fsync`, `synchronous_commit`, `full_page_writes`) stay at PostgreSQL's defaults, so crash
//! tests see real crash recovery.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{self, RunAs};

/// Environment variable naming the directory holding `initdb`, `postgres`, `pg_basebackup`,
/// `psql` and `pg_isready`; when set, [`PgBinaries::find`] uses it and nothing else.
pub const BIN_DIR_ENV: &str = "STATE_POSTGRES_BIN_DIR";

/// Environment variable that, when set to anything but `0` or empty, keeps data directories
/// of dropped servers for post-mortems (like [`PostgresServer::set_keep`]).
pub const KEEP_ENV: &str = "STATE_TEST_SERVERS_KEEP";

/// The binaries the harness runs; all must sit in one directory (one PostgreSQL version).
const REQUIRED: [&str; 5] = ["initdb", "postgres", "pg_basebackup", "psql", "pg_isready"];

/// How long [`PostgresServer::start`] waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`PostgresServer::stop`] waits for a fast shutdown before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix socket paths are limited to 107 bytes (`sun_path` is 108 with the NUL).
const MAX_SOCKET_PATH: usize = 107;

const HBA: &str = "\
# Written by state-test-servers: a throwaway test server, trusting loopback only.
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
";

/// Where PostgreSQL's binaries are: one directory holding `initdb`, `postgres`,
/// `pg_basebackup`, `psql` and `pg_isready` of the same version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries:
    ///
    /// 1. `$STATE_POSTGRES_BIN_DIR` ([`BIN_DIR_ENV`]) when set (and only it);
    /// 2. a `PATH` directory holding all of them, or the real directory of a `postgres` on
    ///    `PATH` (a symlink such as `/usr/local/bin/postgres`) when that holds all of them;
    /// 3. the highest version of `/usr/lib/postgresql/*/bin` (Debian, Ubuntu) holding all.
    ///
    /// When none is found and this process is root on a machine with `/usr/bin/apt-get`, it
    /// runs `apt-get update && apt-get install -y postgresql` and searches again; otherwise
    /// it fails with an error naming the command to run. It never skips silently.
    pub fn find() -> io::Result<Self> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::in_dir(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{BIN_DIR_ENV} is set, but {e}")));
        }
        if let Some(found) = Self::search() {
            return Ok(found);
        }
        let install = "apt-get update && apt-get install -y postgresql";
        if sys::is_root() && Path::new("/usr/bin/apt-get").exists() {
            eprintln!(
                "state-test-servers: PostgreSQL ({}) not found; installing it\n$ {install}",
                REQUIRED.join(", ")
            );
            let mut failure = None;
            for args in [&["update"][..], &["install", "-y", "postgresql"][..]] {
                let status = std::process::Command::new("/usr/bin/apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        failure = Some(format!("`apt-get {}` failed ({s})", args.join(" ")));
                        break;
                    }
                    Err(e) => {
                        failure = Some(format!("could not run apt-get: {e}"));
                        break;
                    }
                }
            }
            // Search even after a failure: a concurrent test process may have installed it.
            if let Some(found) = Self::search() {
                return Ok(found);
            }
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "PostgreSQL is not installed and installing it did not work ({}); run: \
                     {install}, or set {BIN_DIR_ENV} to a directory holding {}",
                    failure.unwrap_or_else(|| "binaries still not found".to_owned()),
                    REQUIRED.join(", ")
                ),
            ));
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "PostgreSQL server binaries ({}) not found on PATH or under \
                 /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: `sudo apt-get install -y \
                 postgresql`, macOS: `brew install postgresql`) or set {BIN_DIR_ENV} to the \
                 directory holding them",
                REQUIRED.join(", ")
            ),
        ))
    }

    /// Uses `dir`, failing when one of the required binaries is missing from it.
    pub fn in_dir(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let bin_dir = std::path::absolute(dir.into())?;
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|b| !sys::has_file(&bin_dir, b))
            .collect();
        if missing.is_empty() {
            Ok(Self { bin_dir })
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no {}", bin_dir.display(), missing.join(", ")),
            ))
        }
    }

    fn search() -> Option<Self> {
        let complete = |dir: &Path| REQUIRED.iter().all(|b| sys::has_file(dir, b));
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return Self::in_dir(dir).ok();
            }
            if let Ok(real) = fs::canonicalize(dir.join("postgres"))
                && let Some(real_dir) = real.parent()
                && complete(real_dir)
            {
                return Self::in_dir(real_dir).ok();
            }
        }
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
                    .ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        versions
            .into_iter()
            .rev()
            .find(|(_, dir)| complete(dir))
            .and_then(|(_, dir)| Self::in_dir(dir).ok())
    }

    /// The directory holding the binaries (what to export as [`BIN_DIR_ENV`]).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The path of binary `name` in [`bin_dir`](Self::bin_dir) (`"psql"`, `"pg_ctl"`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`.
    pub fn version(&self) -> io::Result<String> {
        let out = sys::run(
            sys::client_command(&self.path("postgres")).arg("--version"),
            "postgres --version",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// One PostgreSQL server: a data directory and, while started, its postmaster process.
///
/// Dropping it stops the server (fast shutdown, SIGKILL after 10 s) and deletes the data
/// directory unless [`set_keep`](Self::set_keep) or [`KEEP_ENV`] says otherwise.
#[derive(Debug)]
pub struct PostgresServer {
    bins: PgBinaries,
    data_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    child: Option<Child>,
    keep: bool,
    /// Made by `temp` / `temp_replica` (its parent directory is removed when empty).
    temp: bool,
}

impl PostgresServer {
    /// Initialises (but does not start) a primary in `dir` (created; must be empty if it
    /// exists) listening on `127.0.0.1:port`: `initdb -A trust -U postgres --no-sync -E UTF8
    /// --locale=C`, then replication-ready settings (`wal_level=replica`, 10 WAL senders and
    /// slots, `hot_standby=on`, `max_connections=500`, `shared_buffers=128MB`,
    /// `wal_retrieve_retry_interval=500ms` so replicas reconnect to a restarted primary within
    /// a second instead of five) and a `pg_hba.conf` trusting `127.0.0.1` for normal and
    /// replication connections.
    pub fn init_primary(dir: &Path, port: u16) -> io::Result<Self> {
        let bins = PgBinaries::find()?;
        let run_as = sys::server_user()?;
        let data_dir = sys::prepare_data_dir(dir, run_as.as_ref())?;
        let server = Self {
            bins,
            data_dir,
            port,
            run_as,
            child: None,
            keep: false,
            temp: false,
        };
        let mut initdb = server.server_command("initdb");
        initdb.arg("-D").arg(&server.data_dir).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        sys::run(
            &mut initdb,
            &format!("initdb -D {}", server.data_dir.display()),
        )?;
        server.append_config(&format!(
            "wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             max_connections = 500\n\
             shared_buffers = 128MB\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             wal_retrieve_retry_interval = '500ms'\n\
             {}",
            server.address_config()
        ))?;
        fs::write(server.data_dir.join("pg_hba.conf"), HBA)?;
        Ok(server)
    }

    /// Initialises (but does not start) a streaming replica of the running `primary` in `dir`
    /// on `127.0.0.1:port`: `pg_basebackup -h 127.0.0.1 -p <primary port> -U postgres -D dir
    /// -R -X stream -c fast` with a physical replication slot (`-C -S state_replica_...`, so
    /// the primary keeps the WAL the replica still needs), then its own port and socket
    /// directory. The replica is a hot standby: it answers read-only queries.
    pub fn init_replica(primary: &PostgresServer, dir: &Path, port: u16) -> io::Result<Self> {
        static SLOTS: AtomicU32 = AtomicU32::new(0);
        let run_as = primary.run_as.clone();
        let data_dir = sys::prepare_data_dir(dir, run_as.as_ref())?;
        let server = Self {
            bins: primary.bins.clone(),
            data_dir,
            port,
            run_as,
            child: None,
            keep: false,
            temp: false,
        };
        let slot = format!(
            "state_replica_{}_{}_{}",
            port,
            std::process::id(),
            SLOTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut basebackup = server.server_command("pg_basebackup");
        basebackup
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(&server.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-C", "-S"])
            .arg(&slot);
        sys::run(
            &mut basebackup,
            &format!(
                "pg_basebackup of :{} into {}",
                primary.port,
                server.data_dir.display()
            ),
        )?;
        // The copy carries the primary's log and socket lock file; start clean.
        let _ = fs::remove_file(server.log_path());
        let _ = fs::remove_file(
            server
                .data_dir
                .join(format!(".s.PGSQL.{}.lock", primary.port)),
        );
        server.append_config(&server.address_config())?;
        Ok(server)
    }

    /// A fresh primary on a free port with its data under the workspace's
    /// `target/test-servers/<pid>/<name>-<n>/` (or the system temp directory when there is
    /// no workspace or the server user cannot reach it), initialised and started.
    ///
    /// Directories left there by test processes that died without cleaning up are removed
    /// first (and servers still running from them stopped). Retries with another port when
    /// the picked one was taken in the meantime.
    pub fn temp(name: &str) -> io::Result<Self> {
        Self::temp_with(name, Self::init_primary)
    }

    /// Like [`temp`](Self::temp), for a streaming replica of `primary`, started (it
    /// streams shortly after; see [`wait_replica_streaming`](Self::wait_replica_streaming)).
    pub fn temp_replica(primary: &PostgresServer, name: &str) -> io::Result<Self> {
        Self::temp_with(name, |dir, port| Self::init_replica(primary, dir, port))
    }

    fn temp_with(name: &str, init: impl Fn(&Path, u16) -> io::Result<Self>) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = temp_base()?;
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = base.join(std::process::id().to_string()).join(format!(
                "{name}-{}",
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let mut server = init(&dir, crate::free_port()?)?;
            server.temp = true;
            match server.start() {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 3 && e.to_string().contains("already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the server: spawns `postgres -D <data dir>` (the child is the postmaster
    /// itself) with its output appended to [`log_path`](Self::log_path), and waits up to
    /// 30 s until it accepts connections (a replica: read-only ones). Fails with the log's
    /// last lines when the server exits or does not get ready.
    pub fn start(&mut self) -> io::Result<()> {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            return Err(io::Error::other(format!(
                "postgres on :{} is already running (pid {})",
                self.port,
                child.id()
            )));
        }
        self.child = None;
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        sys::chown_to(&log_path, self.run_as.as_ref())?;
        writeln!(
            log,
            "--- state-test-servers: starting postgres on :{}",
            self.port
        )?;
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.data_dir)
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "could not start {}: {e}",
                    self.bins.path("postgres").display()
                ),
            )
        })?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(self.start_error(&format!("postgres exited at start ({status})")));
            }
            if self.accepts_connections(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(self.start_error(&format!(
                    "postgres did not accept connections within {START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_error(&self, what: &str) -> io::Error {
        io::Error::other(format!(
            "{what} on 127.0.0.1:{} with data in {}; last lines of {}:\n{}",
            self.port,
            self.data_dir.display(),
            self.log_path().display(),
            self.log_tail(30)
        ))
    }

    /// Whether the postmaster `pid` of this data directory is ready (`postmaster.pid` says
    /// `ready` or `standby`) and answers `pg_isready` on the TCP port (so it is ours, not
    /// another process that took the port).
    fn accepts_connections(&self, pid: u32) -> bool {
        let Ok(pidfile) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pidfile.lines().map(str::trim).collect();
        if lines.first() != Some(&pid.to_string().as_str())
            || !matches!(lines.get(7), Some(&("ready" | "standby")))
        {
            return false;
        }
        sys::client_command(&self.bins.path("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Fast shutdown: SIGINT (sent with `kill`), then SIGKILL of the server's processes if
    /// it has not exited within 10 s; waits for it. A no-op when not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        sys::signal(&[child.id()], "INT");
        if !sys::wait_child(&mut child, STOP_TIMEOUT) {
            eprintln!(
                "state-test-servers: postgres on :{} ignored a fast shutdown for {STOP_TIMEOUT:?}; killing it",
                self.port
            );
            sys::kill_tree(&mut child);
        }
    }

    /// A crash: SIGKILL to the postmaster and its processes at once (no shutdown
    /// checkpoint; the next [`start`](Self::start) runs crash recovery). Waits until they are
    /// gone, so the server can be restarted right away. A no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::kill_tree(&mut child);
        }
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.start()
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id while started (it may have exited on its own since; see
    /// [`is_running`](Self::is_running)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the postmaster started by [`start`](Self::start) still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log: its stdout and stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("postgres.log")
    }

    /// The last `lines` lines of the server log (empty when there is none).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The binaries this server runs.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// Keeps (`true`) or deletes (`false`, the default) the data directory on drop.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Runs `psql -X -q -h 127.0.0.1 -p <port> -U postgres -d postgres -v ON_ERROR_STOP=1
    /// -tAc <sql>` and returns its output without trailing whitespace: unaligned rows, one
    /// per line, columns separated by `|` (e.g. `"t"` for `SELECT true`). Several
    /// `;`-separated statements run in one transaction. Fails with psql's error message.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let mut cmd = sys::client_command(&self.bins.path("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-tA", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGCLIENTENCODING", "UTF8");
        let out = sys::run(&mut cmd, &format!("psql on :{} running {sql:?}", self.port))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// On a primary: waits until at least one replica streams from it
    /// (`pg_stat_replication.state = 'streaming'`), up to `timeout`.
    pub fn wait_replica_streaming(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last =
                self.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
            if let Ok(count) = &last
                && count.parse::<u32>().is_ok_and(|n| n >= 1)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no replica streaming from 127.0.0.1:{} after {timeout:?} (last answer: \
                         {last:?}); see the logs in the replica's data directory and {}",
                        self.port,
                        self.log_path().display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server_command(&self, binary: &str) -> std::process::Command {
        sys::server_command(&self.bins.path(binary), self.run_as.as_ref())
    }

    /// `listen_addresses`, `port` and `unix_socket_directories` (the data directory, or none
    /// when the socket path would exceed the 107-byte limit).
    fn address_config(&self) -> String {
        let socket_name = format!(".s.PGSQL.{}", self.port);
        let socket_dir = self
            .data_dir
            .to_str()
            .filter(|d| d.len() + 1 + socket_name.len() <= MAX_SOCKET_PATH)
            .map_or_else(String::new, |d| d.replace('\'', "''"));
        format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{socket_dir}'\n",
            self.port
        )
    }

    /// Appends settings to `postgresql.conf` (later lines win over earlier ones).
    /// Turns TLS on (`ssl = on` with `certs`' server certificate and key, copied into the
    /// data directory and owned by the server's user). Plain connections keep working; a
    /// replica initialised from this primary afterwards inherits the setting and the files.
    /// Takes effect at the next start (or restart).
    pub fn enable_tls(&self, certs: &crate::tls::TestCerts) -> io::Result<()> {
        let cert = self.data_dir.join("server.crt");
        let key = self.data_dir.join("server.key");
        fs::copy(&certs.server_cert, &cert)?;
        crate::tls::write_private(&key, &fs::read(&certs.server_key)?)?;
        sys::chown_to(&cert, self.run_as.as_ref())?;
        sys::chown_to(&key, self.run_as.as_ref())?;
        self.append_config("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
    }

    fn append_config(&self, settings: &str) -> io::Result<()> {
        let mut conf = OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        write!(conf, "\n# --- state-test-servers ---\n{settings}")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let keep_env = std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        if self.keep || keep_env {
            if !self.data_dir.exists() {
                return;
            }
            eprintln!(
                "state-test-servers: kept {} (port {})",
                self.data_dir.display(),
                self.port
            );
        } else {
            let _ = fs::remove_dir_all(&self.data_dir);
            if self.temp {
                // The per-process directory of `temp`, once its last server is gone.
                if let Some(parent) = self.data_dir.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
        }
    }
}

/// `target/test-servers` of the workspace, or `<temp>/state-test-servers` when there is no
/// workspace or the server user cannot reach it; stale directories in it removed.
fn temp_base() -> io::Result<PathBuf> {
    let run_as = sys::server_user()?;
    let reachable = |dir: &Path| {
        run_as
            .as_ref()
            .is_none_or(|u| sys::blocked_ancestor(dir, u).is_none())
    };
    let base = sys::target_dir().filter(|t| reachable(t)).map_or_else(
        || std::env::temp_dir().join("state-test-servers"),
        |t| t.join("test-servers"),
    );
    sys::create_dirs(&base, run_as.as_ref())?;
    if let Err(e) = sys::remove_stale_dirs(&base, "") {
        eprintln!(
            "state-test-servers: could not remove stale directories in {}: {e}",
            base.display()
        );
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &str, port: u16) -> PostgresServer {
        PostgresServer {
            bins: PgBinaries {
                bin_dir: PathBuf::from("/nonexistent"),
            },
            data_dir: PathBuf::from(dir),
            port,
            run_as: None,
            child: None,
            keep: true,
            temp: false,
        }
    }

    #[test]
    fn socket_dir_is_the_data_dir_when_short_enough() {
        let s = server("/tmp/pg-'x", 5433);
        assert!(
            s.address_config()
                .contains("unix_socket_directories = '/tmp/pg-''x'")
        );
        // 107 bytes in all: dir + '/' + ".s.PGSQL.54321" (14).
        let exact = format!("/{}", "a".repeat(107 - 1 - 14 - 1));
        assert!(
            server(&exact, 54321)
                .address_config()
                .contains(&format!("'{exact}'"))
        );
        let long = format!("{exact}b");
        assert!(
            server(&long, 54321)
                .address_config()
                .contains("unix_socket_directories = ''")
        );
    }

    #[test]
    fn url_names_the_port() {
        assert_eq!(
            server("/x", 6543).url(),
            "postgres://postgres@127.0.0.1:6543/postgres"
        );
    }
}
