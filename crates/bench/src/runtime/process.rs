//! Running the commands under test: timed from spawn to exit, with stdio on files so that
//! nothing a command leaves running (a container, a monitor, conmon) holds a pipe of ours.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// What a timed command did.
pub struct Timed {
    /// From spawning it until it exited.
    pub elapsed: Duration,
    /// Its stdout, trimmed.
    pub stdout: String,
}

/// Runs `command` with stdin on /dev/null and stdout and stderr on files in `scratch`, and
/// times it; fails unless it exits with 0.
pub async fn timed(command: &mut Command, scratch: &Path, what: &str) -> anyhow::Result<Timed> {
    let stdout_path = scratch.join("stdout");
    let stderr_path = scratch.join("stderr");
    let stdout = std::fs::File::create(&stdout_path)?;
    let stderr = std::fs::File::create(&stderr_path)?;
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    let started = Instant::now();
    let status = command
        .status()
        .await
        .with_context(|| format!("starting {what}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!(
            "{what} failed ({status}): {}",
            std::fs::read_to_string(&stderr_path)
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(Timed {
        elapsed,
        stdout: std::fs::read_to_string(&stdout_path)?.trim().to_owned(),
    })
}

/// Runs `command` (stdin on /dev/null) to its end and returns its trimmed stdout; fails
/// unless it exits with 0.
pub async fn output(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// For cleanup: runs `program args` with a time limit, ignoring how it went.
pub fn cleanup(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|_| std::process::Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
}
