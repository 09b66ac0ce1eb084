//! Operating-system plumbing: who the servers run as, their directories, process signals.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unprivileged account server processes run as when the harness runs as root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Name of the account created when running as root and no `postgres` account exists.
const FALLBACK_USER: &str = "state-pg";

/// The effective user id of this process (`/proc/self/status`, else `id -u`).
pub(crate) fn euid() -> io::Result<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(uids) = status.lines().find_map(|l| l.strip_prefix("Uid:"))
        && let Some(effective) = uids.split_whitespace().nth(1)
        && let Ok(uid) = effective.parse()
    {
        return Ok(uid);
    }
    let out = run(Command::new("id").arg("-u"), "id -u")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| io::Error::other(format!("`id -u` printed no user id: {e}")))
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    euid().is_ok_and(|uid| uid == 0)
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, name])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(RunAs {
        name: name.to_owned(),
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// `None` when not running as root (servers run as the current user); otherwise the
/// `postgres` account, or `state-pg` (created with `useradd` when missing). Computed once.
pub(crate) fn server_user() -> io::Result<Option<RunAs>> {
    static USER: OnceLock<Result<Option<RunAs>, String>> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() {
            return Ok(None);
        }
        if let Some(user) = lookup_user("postgres").or_else(|| lookup_user(FALLBACK_USER)) {
            return Ok(Some(user));
        }
        let args = [
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_USER,
        ];
        let line = format!("useradd {}", args.join(" "));
        eprintln!(
            "state-test-servers: running as root and no `postgres` account exists; \
             creating one for the servers\n$ {line}"
        );
        let _ = Command::new("useradd")
            .args(args)
            .stdout(Stdio::null())
            .status();
        match lookup_user(FALLBACK_USER) {
            Some(user) => Ok(Some(user)),
            None => Err(format!(
                "PostgreSQL refuses to run as root and there is no unprivileged account to run \
                 it as; create one: {line}"
            )),
        }
    })
    .clone()
    .map_err(io::Error::other)
}

/// Changes the owner of `path` to `user` (no-op when `user` is `None`).
pub(crate) fn chown_to(path: &Path, user: Option<&RunAs>) -> io::Result<()> {
    if let Some(user) = user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not chown {} to {}: {e}", path.display(), user.name),
            )
        })?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents; the ones created here are handed to `user`.
pub(crate) fn create_dirs(dir: &Path, user: Option<&RunAs>) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for path in missing.into_iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => chown_to(path, user)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("could not create {}: {e}", path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// The first ancestor of `path` (itself included) that `user` cannot traverse, if any.
/// Supplementary groups are ignored: the servers run without them.
pub(crate) fn blocked_ancestor(path: &Path, user: &RunAs) -> Option<PathBuf> {
    path.ancestors()
        .filter_map(|a| fs::metadata(a).ok().map(|m| (a, m)))
        .find(|(_, m)| {
            let mode = m.mode();
            let bit = if m.uid() == user.uid {
                0o100
            } else if m.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            mode & bit == 0
        })
        .map(|(a, _)| a.to_path_buf())
}

/// Makes an empty, absolute data directory with mode 0700 owned by the server user, after
/// checking that user can reach it.
pub(crate) fn prepare_data_dir(dir: &Path, user: Option<&RunAs>) -> io::Result<PathBuf> {
    let dir = std::path::absolute(dir)?;
    if dir.exists() && fs::read_dir(&dir)?.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "data directory {} already exists and is not empty",
                dir.display()
            ),
        ));
    }
    // Twice: a concurrent drop of a sibling server may remove the (then empty) parent.
    for attempt in 1..=2 {
        if let Some(parent) = dir.parent() {
            create_dirs(parent, user)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 1 => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("could not create {}: {e}", dir.display()),
                ));
            }
        }
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    chown_to(&dir, user)?;
    if let Some(user) = user
        && let Some(blocked) = blocked_ancestor(&dir, user)
    {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the PostgreSQL server runs as `{}` (uid {}), which cannot reach {}: {} is not \
                 traversable by it; pick a directory it can reach (e.g. under {}) or run \
                 `chmod o+x {}`",
                user.name,
                user.uid,
                dir.display(),
                blocked.display(),
                std::env::temp_dir().display(),
                blocked.display()
            ),
        ));
    }
    Ok(dir)
}

/// Prepares a command for a server-side binary: runs it as `user` and without the caller's
/// `PG*` variables (they would redirect the tools to another server or data directory).
pub(crate) fn server_command(program: &Path, user: Option<&RunAs>) -> Command {
    let mut cmd = client_command(program);
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// A client command (psql, pg_isready) without the caller's `PG*` variables.
pub(crate) fn client_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; fails with its status and output when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> io::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("could not run {what}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// Sends `signal` (`INT`, `KILL`, `STOP`, ...) to `pids` with the `kill` command.
pub(crate) fn signal(pids: &[u32], signal: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `/proc/<pid>/stat` fields after the command name: state, ppid, ...
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn have_proc() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether `pid` runs (a zombie counts as gone).
pub(crate) fn is_alive(pid: u32) -> bool {
    if have_proc() {
        return proc_stat(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"));
    }
    signal(&[pid], "0")
}

/// Direct children of `pid` (empty without `/proc`).
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = pid.to_string();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat(*p).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// Waits until none of `pids` runs, up to `timeout`; whether they all stopped.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pids.iter().any(|p| is_alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `child` until it exits or `timeout` passes; whether it exited (and was reaped).
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `child` and its direct children together (a crash of the whole server: the
/// postmaster cannot fork between the snapshot and the kill because it is stopped first),
/// reaps it and waits for the children to go, so the data directory can be reused at once.
pub(crate) fn kill_tree(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = child.id();
    signal(&[pid], "STOP");
    let mut pids = children_of(pid);
    pids.push(pid);
    if !signal(&pids, "KILL") {
        let _ = child.kill();
    }
    let _ = child.wait();
    pids.pop();
    if !wait_gone(&pids, Duration::from_secs(5)) {
        signal(&pids, "KILL");
        wait_gone(&pids, Duration::from_secs(5));
    }
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else `target/` next to the `Cargo.lock`
/// found above `CARGO_MANIFEST_DIR` or the current directory.
pub(crate) fn target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return std::path::absolute(dir).ok();
    }
    let starts = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    starts.into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .find(|a| a.join("Cargo.lock").is_file())
            .map(|root| root.join("target"))
    })
}

/// Whether `/proc/<pid>/cmdline` is a postgres started on `data_dir`.
fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Ok(dir) = fs::canonicalize(data_dir) else {
        return false;
    };
    args.first().is_some_and(|a| a.ends_with(b"postgres"))
        && args.windows(2).any(|w| {
            w[0] == b"-D"
                && std::str::from_utf8(w[1])
                    .ok()
                    .and_then(|d| fs::canonicalize(d).ok())
                    .is_some_and(|d| d == dir)
        })
}

pub(crate) fn remove_stale_dirs(parent: &Path, prefix: &str) -> io::Result<()> {
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || is_alive(pid) || !entry.path().is_dir() {
            continue;
        }
        stop_orphaned_servers(&entry.path());
        fs::remove_dir_all(entry.path())?;
    }
    Ok(())
}

/// Shuts down PostgreSQL servers still running from data directories directly under `dir`.
fn stop_orphaned_servers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for data_dir in entries.flatten().map(|e| e.path()) {
        let Ok(pidfile) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
            continue;
        };
        let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse().ok()) else {
            continue;
        };
        if is_alive(pid) && is_postmaster_of(pid, &data_dir) {
            eprintln!(
                "state-test-servers: stopping orphaned postgres {pid} on {}",
                data_dir.display()
            );
            signal(&[pid], "INT");
            if !wait_gone(&[pid], Duration::from_secs(10)) {
                signal(&[pid], "KILL");
                wait_gone(&[pid], Duration::from_secs(5));
            }
        }
    }
}

/// `true` when `name` is a file in `dir`.
pub(crate) fn has_file(dir: &Path, name: impl AsRef<OsStr>) -> bool {
    dir.join(name.as_ref()).is_file()
}
