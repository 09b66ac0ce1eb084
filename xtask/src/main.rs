//! `cargo xtask`: the project's own automation, runnable on a fresh machine.
//!
//! - `cargo xtask test`: format check, clippy, then every test (unit, conformance,
//!   integration, doc tests, benches in smoke mode) with the servers the tests need.
//! - `cargo xtask bench [ARGS]`: the criterion benches (`cargo bench -p state-benches`).
//! - `cargo xtask package`: `cargo package` of every publishable crate.
//! - `cargo xtask services up|down|status`: the test servers, for manual runs, with fault
//!   proxies in front of Redis standalone and the PostgreSQL primary.
//! - `cargo xtask proxy [status | <redis|postgres> <fault> [arg]]`: switches a fault proxy of a
//!   running `services up` (see `proxy.rs` for the faults).
//!
//! Every command is printed before it runs, so a CI log can be replayed by hand.

use std::process::ExitCode;

mod cmd;
mod postgres;
mod proc;
mod proxy;
mod redis;
mod services;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    proc::stop_children_on_signal();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("services") => services::command(&args[1..]),
        Some("proxy") => proxy::command(&args[1..]),
        Some("package") => package(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--no-lint] | bench [NAME] [criterion args] | package | services up|down|status | proxy [status | <redis|postgres> <none|latency MS|reply-lost|reply-lost-on TEXT|blackhole|reset-after BYTES>]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let lint = !args.iter().any(|a| a == "--no-lint");
    if lint {
        cmd::cargo(&["fmt", "--all", "--check"])?;
        cmd::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    let running = services::Running::start_for_tests()?;
    let envs = running.env();
    // Unit, integration and conformance tests, plus benches in criterion's smoke (test) mode.
    cmd::cargo_with_env(
        &[
            "test",
            "--workspace",
            "--all-features",
            "--all-targets",
            "--no-fail-fast",
        ],
        &envs,
    )?;
    cmd::cargo_with_env(&["test", "--workspace", "--all-features", "--doc"], &envs)?;
    running.stop();
    package()
}

/// Every publishable crate packages (together, so path dependencies between them resolve).
fn package() -> anyhow::Result<()> {
    cmd::cargo(&[
        "package",
        "--allow-dirty",
        "--no-verify",
        "-p",
        "state-core",
        "-p",
        "state-testkit",
        "-p",
        "state-memory",
        "-p",
        "state-sled",
        "-p",
        "state-redis",
        "-p",
        "state-postgres",
        "-p",
        "state-tiered",
        "-p",
        "state-lock",
        "-p",
        "state-layers",
        "-p",
        "anystate",
    ])
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    let running = services::Running::start_for_tests()?;
    let mut cmd_args = vec!["bench", "-p", "state-benches"];
    let mut rest = args;
    // `cargo xtask bench memory` runs one bench binary; anything else goes to criterion.
    if let Some(name) = args.first().filter(|a| !a.starts_with('-')) {
        cmd_args.extend(["--bench", name.as_str()]);
        rest = &args[1..];
    }
    if !rest.is_empty() {
        cmd_args.push("--");
        cmd_args.extend(rest.iter().map(String::as_str));
    }
    let result = cmd::cargo_with_env(&cmd_args, &running.env());
    running.stop();
    result
}
