//! Throwaway database servers for integration tests (std only), and a fault-injecting TCP
//! proxy (tokio) to put in front of them.
//!
//! Each server runs as a child process on a free loopback port with its data under the
//! workspace's `target/test-servers/` (or a directory the caller picks), and is stopped and
//! deleted when dropped. `cargo xtask services up` / `cargo xtask test` use the same harness
//! for the long-lived servers the whole suite shares; tests use it directly for servers they
//! want to crash, restart or reconfigure.
//!
//! - [`postgres`]: PostgreSQL primaries and streaming replicas ([`postgres::PostgresServer`]).
//! - [`proxy`]: a fault-injecting TCP proxy (tokio) to put in front of any of them; with the
//!   `chaos` feature, a `FaultProxy` is a `state_testkit::chaos::FaultInjector`, so the chaos
//!   soak can drive it.
//!
//! Running as root (CI containers): PostgreSQL refuses to run as root, so the server
//! processes run as the `postgres` system user (created as `state-pg` when missing), and
//! their directories are handed to that user.
//!
//! Unix only (it signals processes with `kill` and reads `/proc` where available).

use std::io;
use std::net::TcpListener;
use std::path::Path;

pub mod postgres;
pub mod proxy;
mod sys;
pub mod tls;

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, release it).
///
/// Another process may take it before the caller binds it; servers started with it report
/// "address already in use" in that case, and [`postgres::PostgresServer::temp`] retries.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Removes directories `parent/<prefix><pid>` left by processes that no longer run (a test
/// binary or `cargo xtask` killed before it could clean up).
///
/// A PostgreSQL server still running from such a directory (`<dir>/*/postmaster.pid` names a
/// live `postgres` process started on that data directory) is shut down first. Directories
/// of running processes, and names that do not match, are left alone. A missing `parent` is
/// not an error.
pub fn remove_stale_dirs(parent: &Path, prefix: &str) -> io::Result<()> {
    sys::remove_stale_dirs(parent, prefix)
}
