//! Running commands, printed first.

use std::process::Command;

use anyhow::{Context, bail};

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `cargo ARGS` in the workspace root, failing when it fails.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// Runs `cargo ARGS` with extra environment variables.
pub(crate) fn cargo_with_env(args: &[&str], envs: &[(String, String)]) -> anyhow::Result<()> {
    let mut words: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    words.push("cargo".to_owned());
    words.extend(args.iter().map(|a| (*a).to_owned()));
    let line = words.join(" ");
    eprintln!("\n$ {line}");
    let status = Command::new(cargo_bin())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("could not run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// The workspace root (the parent of this crate's folder).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), std::path::Path::to_path_buf)
}
