//! Finding binaries, free ports, child processes that die with their owner.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Finds `name` on PATH or in `extra` folders.
pub(crate) fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Finds `name`, installing the Debian `packages` when missing and allowed (root on a
/// Debian/Ubuntu machine); otherwise fails naming the command to run.
pub(crate) fn require_binary(
    name: &str,
    packages: &[&str],
    extra: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    if let Some(found) = find_binary(name, extra) {
        return Ok(found);
    }
    let install = format!("apt-get install -y {}", packages.join(" "));
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if is_root && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: `{name}` is missing; installing it\n$ apt-get update && {install}");
        run_quiet(Command::new("apt-get").arg("update"))?;
        run_quiet(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(packages),
        )?;
        if let Some(found) = find_binary(name, extra) {
            return Ok(found);
        }
    }
    bail!("`{name}` is not installed and xtask cannot install it here; run: sudo {install}")
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// A free loopback port whose `port + offset` is free too (Redis Cluster's bus port is
/// `port + 10000`).
pub(crate) fn free_port(offset: u16) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if offset == 0 {
            return Ok(port);
        }
        if let Some(other) = port.checked_add(offset)
            && TcpListener::bind(("127.0.0.1", other)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free loopback port pair found")
}

/// Process ids of every running server, so a signal handler can stop them.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Registers a server process the signal handler must kill (servers not spawned through
/// [`Guarded`], such as the PostgreSQL postmasters the `state-test-servers` harness starts).
pub(crate) fn register_child(pid: u32) {
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(pid);
    }
}

/// Forgets a server process registered with [`register_child`] once it has stopped.
pub(crate) fn unregister_child(pid: u32) {
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.retain(|p| *p != pid);
    }
}

/// Stops every registered server and exits when xtask gets SIGINT, SIGTERM or SIGHUP, so an
/// interrupted run never leaves servers behind (drop handlers do not run on a signal).
pub(crate) fn stop_children_on_signal() {
    let _ = ctrlc::set_handler(|| {
        let pids = CHILDREN.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        eprintln!("xtask: interrupted; stopped the servers it started");
        std::process::exit(130);
    });
}

/// A child process killed (and waited for) when dropped, so servers never outlive a failed or
/// panicking test run.
pub(crate) struct Guarded {
    pub(crate) name: String,
    child: Option<Child>,
}

impl Guarded {
    pub(crate) fn spawn(name: impl Into<String>, cmd: &mut Command) -> anyhow::Result<Self> {
        let name = name.into();
        eprintln!("$ {cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        register_child(child.id());
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    /// Whether the process already exited.
    pub(crate) fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            eprintln!("xtask: stopping {}", self.name);
            let _ = child.kill();
            let _ = child.wait();
            unregister_child(child.id());
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub(crate) fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Runs a command and returns its stdout, or None when it fails.
pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
