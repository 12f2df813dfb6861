//! Running external tools with a deadline, failing loudly with everything they printed.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long one client command (a push, a pull, a build) may take before it counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion and returns its output whatever its exit status; `stdin` is fed
/// to it (or it reads an empty stdin). Panics if the program cannot be started (with a hint
/// to install it) or if it runs longer than `timeout` (it is killed first).
#[track_caller]
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    try_output(cmd, stdin, timeout).unwrap_or_else(|problem| panic!("{problem}"))
}

/// [`output`] that returns the problem instead of panicking, for cleanup code in `Drop`.
pub fn try_output(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {}: {e}; scripts/install-deps.sh installs the tools the tests need",
            describe(cmd)
        )
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        if let Err(e) = pipe.write_all(input) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("writing stdin of {}: {e}", describe(cmd)));
        }
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let grace = Instant::now() + Duration::from_secs(2);
                let (out, err) = (finish(stdout, grace), finish(stderr, grace));
                return Err(format!(
                    "{} did not finish within {timeout:?} and was killed\nstdout:\n{}\nstderr:\n{}",
                    describe(cmd),
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&err)
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", describe(cmd))),
        }
    };
    // A daemon the command left behind (conmon, say) may hold the pipes open: read what is
    // there, but don't wait for their end past a short grace period.
    let grace = Instant::now() + Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: finish(stdout, grace),
        stderr: finish(stderr, grace),
    })
}

/// Runs `cmd` and panics, showing its output, unless it exits 0.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    run_with_stdin(cmd, None)
}

/// [`run`] with `stdin` fed to the command.
#[track_caller]
pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    let out = output(cmd, stdin, COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", report(cmd, &out));
    out
}

/// Runs `cmd` and returns its trimmed stdout; panics unless it exits 0.
#[track_caller]
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_owned()
}

/// Runs `cmd`, which must fail: panics, showing its output, if it exits 0. Returns stdout and
/// stderr joined, for asserting on the reason.
#[track_caller]
pub fn run_failing(cmd: &mut Command, stdin: Option<&[u8]>) -> String {
    let out = output(cmd, stdin, COMMAND_TIMEOUT);
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        report(cmd, &out)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `program arg arg…` as one line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// What a command did, for an assertion message.
pub fn report(cmd: &Command, out: &Output) -> String {
    let mut text = format!("{} exited with {}", describe(cmd), exit(out.status));
    let _ = write!(
        text,
        "\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Whether `program` can be found on PATH (or is a path that exists).
pub fn on_path(program: impl AsRef<OsStr>) -> bool {
    let program = std::path::Path::new(program.as_ref());
    if program.components().count() > 1 {
        return program.exists();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("status {code}"),
        None => format!("{status}"),
    }
}

type Collected = mpsc::Receiver<Vec<u8>>;

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Collected {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

fn finish(rx: Collected, until: Instant) -> Vec<u8> {
    let wait = until.saturating_duration_since(Instant::now());
    rx.recv_timeout(wait)
        .unwrap_or_else(|_| b"(output not collected: a child process kept the pipe open)".to_vec())
}

/// For cleanup: kills (SIGKILL, by pid) every process whose command line names `dir`, a
/// temporary directory only the caller's own processes can name.
pub fn kill_processes_naming(dir: &std::path::Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = try_output(
                Command::new("kill").args(["-KILL", &pid.to_string()]),
                None,
                Duration::from_secs(10),
            );
        }
    }
}

/// For cleanup: unmounts (lazily) whatever is mounted under `dir`, deepest first.
pub fn unmount_under(dir: &std::path::Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = try_output(
            Command::new("umount").args(["--lazy", point]),
            None,
            Duration::from_secs(10),
        );
    }
}

/// Tears down a test node: `rm -f` of every container `berth` (a command with the node's
/// `--root` and config) lists, then the node's bridge.
pub fn remove_node(berth: impl Fn() -> Command, bridge: &str) {
    if let Ok(out) = berth().args(["ps", "-aq"]).output() {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = berth().args(["rm", "-f", id]).output();
        }
    }
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
}
