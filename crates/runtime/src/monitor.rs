//! The per-container monitor (berth's conmon): a small process that outlives the `berth`
//! command that started it. It starts the container through the OCI runtime with its stdout
//! and stderr on pipes it owns, writes them to the log, becomes the container init's parent
//! (child subreaper) to learn its exit status, records exits and OOM kills in `state.json`,
//! and applies the restart policy with backoff. Because it keeps running on its own, a
//! container's logs and exit code are recorded even while no other berth process runs.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::container::{
    read_json, restart_delay, write_json_fast, ContainerRecord, ContainerState, Exit, Status,
    RECORD_FILE, STATE_FILE, STOP_FILE,
};
use crate::logs::{LogWriter, Stream};
use crate::oci_runtime::OciRuntime;

/// Why the monitor could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Reading or writing the container's files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The container could not start.
    #[error("{0}")]
    Start(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MonitorError {
    let what = what.into();
    move |source| MonitorError::Io { what, source }
}

/// The first line the monitor writes to `ready`: the container runs with this pid, or could
/// not start.
pub fn ready_line(result: &Result<i32, String>) -> String {
    match result {
        Ok(pid) => format!("running {pid}\n"),
        Err(e) => format!("error {}\n", e.replace('\n', " ")),
    }
}

/// What the starter sends on the monitor's stdin once the container's bundle is ready.
pub const GO: &str = "go";

/// Runs the monitor for the container in `dir` until the container exits for good. It first
/// waits for a [`GO`] line on `go` (the starter spawns it early, while it still prepares the
/// bundle; end of input without it means the container was not created: nothing to do). The
/// first start's outcome is written to `ready` as a [`ready_line`].
pub fn run(
    dir: &Path,
    go: impl std::io::BufRead,
    mut ready: impl Write,
) -> Result<(), MonitorError> {
    match go.lines().next() {
        Some(Ok(line)) if line == GO => {}
        _ => return Ok(()),
    }
    let record: ContainerRecord =
        read_json(&dir.join(RECORD_FILE)).map_err(io("reading the container record"))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| io("becoming the containers' subreaper")(e.into()))?;
    let runtime = record.runtime.driver();
    let log =
        LogWriter::open(&dir.join("logs"), record.request.log).map_err(io("opening the log"))?;
    let _ = std::fs::remove_file(dir.join(STOP_FILE));
    let mut state = ContainerState {
        monitor_pid: Some(std::process::id()),
        ..read_json(&dir.join(STATE_FILE)).unwrap_or_default()
    };
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        let started = Instant::now();
        let pid = match start(&runtime, dir, &record, &log) {
            Ok((pid, pumps)) => {
                state.status = Status::Running;
                state.pid = Some(pid);
                state.started_at = Some(now());
                state.error = None;
                save(dir, &state)?;
                if first {
                    let _ = ready.write_all(ready_line(&Ok(pid)).as_bytes());
                    let _ = ready.flush();
                }
                (pid, pumps)
            }
            Err(message) => {
                state.status = Status::Exited;
                state.pid = None;
                state.monitor_pid = None;
                state.error = Some(message.clone());
                state.exit = Some(Exit {
                    code: 127,
                    ..Exit::default()
                });
                state.finished_at = Some(now());
                save(dir, &state)?;
                if first {
                    let _ = ready.write_all(ready_line(&Err(message.clone())).as_bytes());
                }
                let _ = runtime.delete(&record.id);
                return Err(MonitorError::Start(message));
            }
        };
        first = false;
        let (pid, pumps) = pid;
        let mut exit = wait_for(pid);
        let ran_for = started.elapsed();
        exit.oom_killed = oom_kills(&record.id) > 0;
        // All output is in the log before the exit is recorded.
        for pump in pumps {
            let _ = pump.join();
        }
        let _ = runtime.delete(&record.id);
        failures = if ran_for >= crate::container::BACKOFF_RESET {
            0
        } else {
            failures + 1
        };
        state.pid = None;
        state.exit = Some(exit);
        state.finished_at = Some(now());
        let delay = restart_delay(
            record.request.restart,
            exit,
            state.restart_count,
            failures.saturating_sub(1),
            ran_for,
            dir.join(STOP_FILE).exists(),
        );
        let Some(delay) = delay else {
            state.status = Status::Exited;
            state.monitor_pid = None;
            return save(dir, &state);
        };
        state.status = Status::Restarting;
        save(dir, &state)?;
        tracing::info!(id = %record.id, code = exit.code, ?delay, "restarting container");
        if !sleep_unless_stopped(dir, delay) {
            state.status = Status::Exited;
            state.monitor_pid = None;
            return save(dir, &state);
        }
        state.restart_count += 1;
    }
}

type Pumps = Vec<std::thread::JoinHandle<()>>;

/// Starts the container with fresh output pipes; returns its init pid and the log pumps.
fn start(
    runtime: &dyn OciRuntime,
    dir: &Path,
    record: &ContainerRecord,
    log: &LogWriter,
) -> Result<(i32, Pumps), String> {
    let pipe = || std::io::pipe().map_err(|e| format!("creating an output pipe: {e}"));
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let pid_file = dir.join("container.pid");
    let _ = std::fs::remove_file(&pid_file);
    let result = runtime.run_detached(
        &record.id,
        &dir.join("bundle"),
        &pid_file,
        Stdio::from(out_write),
        Stdio::from(err_write),
    );
    // Our copies of the write ends are gone: the pumps end when the container's processes do.
    let pumps = [(out_read, Stream::Stdout), (err_read, Stream::Stderr)]
        .into_iter()
        .map(|(reader, stream)| {
            let log = log.clone();
            std::thread::spawn(move || {
                if let Err(e) = log.pump(stream, reader) {
                    tracing::warn!(error = %e, "writing the container log");
                }
            })
        })
        .collect();
    result.map_err(|e| e.to_string())?;
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| "the runtime started the container but wrote no pid".to_owned())?;
    Ok((pid, pumps))
}

/// Reaps children until `pid` exits (the runtime's own processes and orphans are reaped too).
fn wait_for(pid: i32) -> Exit {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => {
                return Exit {
                    code,
                    ..Exit::default()
                }
            }
            Ok(WaitStatus::Signaled(p, signal, _)) if p.as_raw() == pid => {
                return Exit {
                    code: 128 + signal as i32,
                    signal: Some(signal as i32),
                    oom_killed: false,
                }
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // No children left: the init was not ours to reap (it should be, as subreaper).
                tracing::warn!(error = %e, pid, "cannot wait for the container");
                return Exit {
                    code: 255,
                    ..Exit::default()
                };
            }
        }
    }
}

/// How many processes the kernel OOM-killed in the container's memory cgroup.
fn oom_kills(id: &str) -> u64 {
    let cgroup = crate::spec::cgroup_path(id);
    let candidates = [
        format!("/sys/fs/cgroup/memory{cgroup}/memory.oom_control"),
        format!("/sys/fs/cgroup{cgroup}/memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sleeps `delay` unless a stop is asked for meanwhile; false if it was.
fn sleep_unless_stopped(dir: &Path, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if dir.join(STOP_FILE).exists() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn save(dir: &Path, state: &ContainerState) -> Result<(), MonitorError> {
    write_json_fast(&dir.join(STATE_FILE), state).map_err(io("writing the container state"))
}

/// Now, RFC 3339.
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}
