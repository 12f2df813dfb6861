//! Support for berth's end-to-end tests: real processes, real clients, nothing faked.
//!
//! - [`BerthRegistry`] runs the `berth` binary (`berth registry serve`) on a free loopback
//!   port with its own data directory, and can SIGKILL and restart it for crash tests.
//! - [`DockerRegistry`] runs Debian's `docker-registry` (CNCF distribution 2.8), the peer to
//!   compare with.
//! - [`Podman`] runs podman, buildah and skopeo against a private, throw-away configuration
//!   and storage, and builds small busybox images FROM scratch to push around.
//! - [`server::BerthServer`] runs `berth server` with its built-in registry on its own bridge,
//!   for the deploy tests and `berth-bench deploy`.
//! - [`api`] speaks the distribution API directly, for what no client here can do (artifacts
//!   with a `subject`, the referrers API).
//!
//! The `berth` binary comes from the target directory (`cargo build --workspace` first, as
//! `scripts/test.sh` does) or from `$BERTH_BIN`; `E2E_BERTH_LOG=debug` makes it log every
//! request into the log printed when a test fails.
//!
//! Every helper panics with the full story (command, exit status, output, server log) when
//! something fails, and every guard cleans up on drop, also when a test panics. A missing tool
//! is a failure, never a skip: `scripts/install-deps.sh` installs them all.

pub mod api;
mod berth;
pub mod busybox;
mod distribution;
mod images;
pub mod podman;
pub mod process;
pub mod server;

use std::time::{Duration, Instant};

pub use berth::{berth_binary, BerthOptions, BerthRegistry, Tls};
pub use distribution::DockerRegistry;
pub use images::{MultiArch, MARKER};
pub use podman::Podman;

/// A registry server under test.
pub trait Registry {
    /// Base URL, `http://127.0.0.1:PORT` or `https://…`.
    fn url(&self) -> &str;

    /// `127.0.0.1:PORT`: the registry part of image references.
    fn host(&self) -> &str {
        let url = self.url();
        url.split_once("://").map_or(url, |(_, rest)| rest)
    }

    /// What the server has logged so far, for failure messages.
    fn log(&self) -> String;
}

/// How long a server may take to answer `GET /v2/` after it started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `GET {url}/v2/` until it answers 200 or 401 (`Err` with the last problem otherwise).
/// HTTPS goes through `curl --insecure`: the tests' certificates are self-signed.
fn wait_until_ready(url: &str, alive: &mut dyn FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let probe = format!("{url}/v2/");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("building an HTTP client: {e}"))?;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if !alive() {
            return Err(format!("the server exited while starting ({last})"));
        }
        let status = if url.starts_with("https://") {
            let mut curl = std::process::Command::new("curl");
            curl.args(["--insecure", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--max-time", "2", &probe]);
            let out = process::output(&mut curl, None, Duration::from_secs(10));
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u16>()
                .ok()
        } else {
            match http.get(&probe).send() {
                Ok(response) => Some(response.status().as_u16()),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        };
        match status {
            Some(200 | 401) => return Ok(()),
            Some(other) => last = format!("GET /v2/ answered {other}"),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "GET {probe} gave no 200 or 401 within {READY_TIMEOUT:?}: {last}"
    ))
}
