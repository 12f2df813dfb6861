//! Health checks: a [`Probe`] built from the service's [`HealthCheck`] and the instance's
//! address, [`probe`] to run it once under a timeout, the pure [`HealthTracker`] that turns
//! probe results into health transitions, and [`HealthChecker`], the task that probes one
//! instance every interval and reports its transitions.

mod checker;
#[cfg(test)]
mod tests;
mod tracker;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::spec::{HealthCheck, PortRef};
use berth_runtime::node::{Container, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use checker::{HealthChecker, HealthEvent};
pub use tracker::{Health, HealthPolicy, HealthTracker, Transition};

/// The longest HTTP response head a probe reads before it gives up on finding the status line.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// How much of an exec probe's output is kept in the result's detail.
const MAX_EXEC_DETAIL: usize = 256;

/// Runs a health command inside an instance. The real implementation is [`NodeExec`]; any
/// other only needs to produce a command whose exit status is the check's verdict.
pub trait Exec: Send + Sync {
    /// The command that runs `args` inside the instance.
    fn command(&self, args: &[String]) -> Result<Command, Box<dyn StdError + Send + Sync>>;
}

/// Runs health commands in a container of a [`Node`] (`runc exec`).
pub struct NodeExec {
    node: Arc<Node>,
    container: String,
}

impl NodeExec {
    /// Health commands for the container `name_or_id` of `node`.
    pub fn new(node: Arc<Node>, name_or_id: impl Into<String>) -> NodeExec {
        NodeExec {
            node,
            container: name_or_id.into(),
        }
    }
}

impl Exec for NodeExec {
    fn command(&self, args: &[String]) -> Result<Command, Box<dyn StdError + Send + Sync>> {
        Ok(self.node.exec_command(&self.container, args, &[])?)
    }
}

/// One health check, resolved against one instance.
#[derive(Clone)]
pub enum Probe {
    /// An HTTP/1.1 GET that must answer 2xx or 3xx.
    Http {
        /// The instance's address and port.
        addr: SocketAddr,
        /// The request path (starts with `/`).
        path: String,
    },
    /// A TCP connect that must succeed.
    Tcp {
        /// The instance's address and port.
        addr: SocketAddr,
    },
    /// A command run inside the instance that must exit 0.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
        /// What runs it.
        exec: Arc<dyn Exec>,
    },
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Http { addr, path } => write!(f, "Http(http://{addr}{path})"),
            Probe::Tcp { addr } => write!(f, "Tcp({addr})"),
            Probe::Exec { command, .. } => write!(f, "Exec({command:?})"),
        }
    }
}

/// Why a health check cannot be turned into a probe for an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The check names a port the service does not declare.
    #[error("health check port {0:?} is not one of the service's ports: declare it in `ports` or use a number")]
    UnknownPort(String),
    /// An HTTP or TCP check needs an address and the container has none.
    #[error("container {0} has no network address (network = \"none\"): use an exec health check")]
    NoAddress(String),
    /// The HTTP path cannot be sent in a request line.
    #[error(
        "health check path {0:?} must start with `/` and contain no spaces or control characters"
    )]
    InvalidPath(String),
    /// An exec check without a command.
    #[error("exec health check has no command")]
    EmptyCommand,
}

impl Probe {
    /// The probe for `check` against an instance at `ip` whose named ports are `ports`;
    /// exec checks run through `exec`.
    pub fn new(
        check: &HealthCheck,
        ports: &BTreeMap<String, u16>,
        ip: IpAddr,
        exec: Arc<dyn Exec>,
    ) -> Result<Probe, ProbeError> {
        let port = |port: &PortRef| match port {
            PortRef::Number(number) => Ok(*number),
            PortRef::Named(name) => ports
                .get(name)
                .copied()
                .ok_or_else(|| ProbeError::UnknownPort(name.clone())),
        };
        match check {
            HealthCheck::Http { port: p, path } => {
                let valid = path.starts_with('/')
                    && !path
                        .chars()
                        .any(|c| c.is_ascii_whitespace() || c.is_control());
                if !valid {
                    return Err(ProbeError::InvalidPath(path.clone()));
                }
                Ok(Probe::Http {
                    addr: SocketAddr::new(ip, port(p)?),
                    path: path.clone(),
                })
            }
            HealthCheck::Tcp { port: p } => Ok(Probe::Tcp {
                addr: SocketAddr::new(ip, port(p)?),
            }),
            HealthCheck::Exec(command) if command.is_empty() => Err(ProbeError::EmptyCommand),
            HealthCheck::Exec(command) => Ok(Probe::Exec {
                command: command.clone(),
                exec,
            }),
        }
    }

    /// The probe for `check` against `container` of `node`: HTTP and TCP checks go to the
    /// container's bridge address, exec checks run inside it.
    pub fn for_container(
        check: &HealthCheck,
        ports: &BTreeMap<String, u16>,
        node: Arc<Node>,
        container: &Container,
    ) -> Result<Probe, ProbeError> {
        let name = &container.record.name;
        let exec = Arc::new(NodeExec::new(node, name.clone()));
        let ip = match (&container.record.network, check) {
            (Some(attachment), _) => IpAddr::V4(attachment.ip),
            // An exec check never uses the address.
            (None, HealthCheck::Exec(_)) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            (None, _) => return Err(ProbeError::NoAddress(name.clone())),
        };
        Probe::new(check, ports, ip, exec)
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the check passed.
    pub ok: bool,
    /// What was seen: the status line, the exit status, or why it failed.
    pub detail: String,
    /// How long the probe took.
    pub took: Duration,
}

/// Runs `probe` once; it fails if it has not finished within `timeout`, whatever the other
/// side does (a server that accepts and never answers, a command that hangs: it is killed).
pub async fn probe(probe: &Probe, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, run(probe)).await;
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("no answer within {timeout:?}")),
    };
    ProbeResult {
        ok,
        detail,
        took: started.elapsed(),
    }
}

/// Runs the probe to its end: `Ok` with what passed, `Err` with why it failed.
async fn run(probe: &Probe) -> Result<String, String> {
    match probe {
        Probe::Tcp { addr } => {
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            Ok(format!("connected to {addr}"))
        }
        Probe::Http { addr, path } => http_get(*addr, path).await,
        Probe::Exec { command, exec } => run_command(exec.as_ref(), command).await,
    }
}

/// A minimal HTTP/1.1 GET on a fresh connection: no pooling, so every probe tests that the
/// instance still accepts connections. Only the status line is read.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let line_end = loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if head.len() > MAX_STATUS_LINE {
            return Err(format!(
                "{addr} sent no HTTP status line in {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the response from {addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr} closed the connection before answering"));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
    let status = parse_status_line(&line)
        .ok_or_else(|| format!("{addr} answered with no HTTP status line: {line:?}"))?;
    let detail = format!(
        "GET {path}: {}",
        line.trim_start_matches(|c| c != ' ').trim()
    );
    if (200..400).contains(&status) {
        Ok(detail)
    } else {
        Err(detail)
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

async fn run_command(exec: &dyn Exec, command: &[String]) -> Result<String, String> {
    let command_line = command.join(" ");
    let mut std_command = exec
        .command(command)
        .map_err(|e| format!("cannot run {command_line:?}: {e}"))?;
    std_command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(std_command);
    // A probe that times out is dropped: the command must not outlive it.
    child.kill_on_drop(true);
    let output = child
        .output()
        .await
        .map_err(|e| format!("cannot run {command_line:?}: {e}"))?;
    let mut detail = format!("{command_line:?} exited with {}", output.status);
    let said = if output.stderr.is_empty() {
        &output.stdout
    } else {
        &output.stderr
    };
    let said = String::from_utf8_lossy(said);
    let said = said.trim();
    if !said.is_empty() {
        let tail: String = said
            .chars()
            .rev()
            .take(MAX_EXEC_DETAIL)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        detail.push_str(": ");
        detail.push_str(&tail);
    }
    if output.status.success() {
        Ok(detail)
    } else {
        Err(detail)
    }
}
