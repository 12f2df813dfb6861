use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use berth_core::spec::{HealthCheck, PortRef};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs health commands on the host: a real process, as a container's would be.
struct HostExec;

impl Exec for HostExec {
    fn command(&self, args: &[String]) -> Result<Command, Box<dyn StdError + Send + Sync>> {
        let (program, args) = args.split_first().ok_or("no command")?;
        let mut command = Command::new(program);
        command.args(args);
        Ok(command)
    }
}

/// A real HTTP server on loopback: `/healthz` answers with the status in the returned cell,
/// `/slow` answers after a minute, anything else is 404.
async fn http_server() -> (SocketAddr, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(|State(status): State<Arc<AtomicU16>>| async move {
                StatusCode::from_u16(status.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .with_state(status.clone());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, status)
}

/// A listener that accepts connections and never reads or writes on them.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    listener.local_addr().expect("local addr")
}

fn http(addr: SocketAddr, path: &str) -> Probe {
    Probe::Http {
        addr,
        path: path.into(),
    }
}

fn exec(args: &[&str]) -> Probe {
    Probe::Exec {
        command: args.iter().map(|a| a.to_string()).collect(),
        exec: Arc::new(HostExec),
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn http_passes_on_2xx_and_3xx() {
    let (addr, status) = http_server().await;
    let result = probe(&http(addr, "/healthz"), TIMEOUT).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.detail, "GET /healthz: 200 OK");
    status.store(302, Ordering::SeqCst);
    let result = probe(&http(addr, "/healthz"), TIMEOUT).await;
    assert!(result.ok, "{result:?}");
}

#[tokio::test]
async fn http_fails_on_5xx_and_4xx() {
    let (addr, status) = http_server().await;
    status.store(500, Ordering::SeqCst);
    let result = probe(&http(addr, "/healthz"), TIMEOUT).await;
    assert!(!result.ok);
    assert_eq!(result.detail, "GET /healthz: 500 Internal Server Error");
    let result = probe(&http(addr, "/nope"), TIMEOUT).await;
    assert!(!result.ok);
    assert!(result.detail.contains("404"), "{result:?}");
}

#[tokio::test]
async fn http_times_out_on_a_server_that_never_answers() {
    for (addr, path) in [
        (silent_server().await, "/"),
        (http_server().await.0, "/slow"),
    ] {
        let timeout = Duration::from_millis(300);
        let result = probe(&http(addr, path), timeout).await;
        assert!(!result.ok);
        assert_eq!(result.detail, "no answer within 300ms");
        assert!(
            result.took >= timeout && result.took < timeout * 3,
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn http_fails_on_a_closed_port_and_on_a_non_http_answer() {
    let result = probe(&http(closed_port().await, "/"), TIMEOUT).await;
    assert!(!result.ok);
    assert!(result.detail.contains("refused"), "{result:?}");

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n").await;
        }
    });
    let result = probe(&http(addr, "/"), TIMEOUT).await;
    assert!(!result.ok);
    assert!(result.detail.contains("no HTTP status line"), "{result:?}");
}

#[tokio::test]
async fn tcp_passes_when_the_port_accepts_and_fails_when_closed() {
    let result = probe(
        &Probe::Tcp {
            addr: silent_server().await,
        },
        TIMEOUT,
    )
    .await;
    assert!(result.ok, "{result:?}");
    let result = probe(
        &Probe::Tcp {
            addr: closed_port().await,
        },
        TIMEOUT,
    )
    .await;
    assert!(!result.ok);
    assert!(result.detail.contains("refused"), "{result:?}");
}

#[tokio::test]
async fn exec_follows_the_exit_status() {
    let result = probe(&exec(&["sh", "-c", "exit 0"]), TIMEOUT).await;
    assert!(result.ok, "{result:?}");
    let result = probe(
        &exec(&["sh", "-c", "echo database down >&2; exit 3"]),
        TIMEOUT,
    )
    .await;
    assert!(!result.ok);
    assert!(result.detail.contains("exit status: 3"), "{result:?}");
    assert!(result.detail.ends_with(": database down"), "{result:?}");
    let result = probe(&exec(&["/nonexistent/health"]), TIMEOUT).await;
    assert!(!result.ok);
    assert!(result.detail.starts_with("cannot run"), "{result:?}");
}

#[tokio::test]
async fn exec_is_killed_when_it_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("finished");
    let script = format!("sleep 2; touch {}", marker.display());
    let timeout = Duration::from_millis(300);
    let result = probe(&exec(&["sh", "-c", &script]), timeout).await;
    assert!(!result.ok);
    assert!(result.took < Duration::from_secs(1), "{result:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the timed-out command kept running");
}

#[test]
fn probes_are_built_from_the_check_and_the_instance_address() {
    let ports = BTreeMap::from([("web".to_string(), 8080)]);
    let exec: Arc<dyn Exec> = Arc::new(HostExec);
    let check = HealthCheck::Http {
        port: PortRef::Named("web".into()),
        path: "/healthz".into(),
    };
    let probe = Probe::new(&check, &ports, LOCALHOST, exec.clone()).expect("probe");
    assert_eq!(format!("{probe:?}"), "Http(http://127.0.0.1:8080/healthz)");

    let check = HealthCheck::Tcp {
        port: PortRef::Number(5432),
    };
    let probe = Probe::new(&check, &ports, LOCALHOST, exec.clone()).expect("probe");
    assert_eq!(format!("{probe:?}"), "Tcp(127.0.0.1:5432)");

    let check = HealthCheck::Tcp {
        port: PortRef::Named("admin".into()),
    };
    let err = Probe::new(&check, &ports, LOCALHOST, exec.clone()).expect_err("unknown port");
    assert!(matches!(err, ProbeError::UnknownPort(name) if name == "admin"));

    let check = HealthCheck::Http {
        port: PortRef::Number(80),
        path: "/a b\r\nX-Injected: 1".into(),
    };
    let err = Probe::new(&check, &ports, LOCALHOST, exec.clone()).expect_err("bad path");
    assert!(matches!(err, ProbeError::InvalidPath(_)));

    let err = Probe::new(&HealthCheck::Exec(vec![]), &ports, LOCALHOST, exec).expect_err("empty");
    assert!(matches!(err, ProbeError::EmptyCommand));
}

#[test]
fn status_lines_parse() {
    assert_eq!(parse_status_line("HTTP/1.1 204 No Content"), Some(204));
    assert_eq!(parse_status_line("HTTP/1.0 301"), Some(301));
    assert_eq!(parse_status_line("HTTP/2 200 OK"), None);
    assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
    assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
}

async fn next(events: &mut mpsc::Receiver<HealthEvent>) -> (Health, Health) {
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a transition within 5s")
        .expect("the checker is running");
    (event.transition.from, event.transition.to)
}

#[tokio::test]
async fn the_checker_reports_transitions_and_stops_when_dropped() {
    let (addr, status) = http_server().await;
    let policy = HealthPolicy {
        healthy_after: 2,
        unhealthy_after: 2,
        start_period: Duration::ZERO,
    };
    let (tx, mut events) = mpsc::channel(8);
    let checker = HealthChecker::spawn(
        http(addr, "/healthz"),
        policy,
        Duration::from_millis(20),
        Duration::from_millis(500),
        tx,
    );
    assert_eq!(next(&mut events).await, (Health::Starting, Health::Healthy));
    status.store(503, Ordering::SeqCst);
    assert_eq!(
        next(&mut events).await,
        (Health::Healthy, Health::Unhealthy)
    );
    status.store(200, Ordering::SeqCst);
    assert_eq!(
        next(&mut events).await,
        (Health::Unhealthy, Health::Healthy)
    );
    drop(checker);
    let end = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(matches!(end, Ok(None)), "the checker kept running: {end:?}");
}

#[tokio::test]
async fn the_checker_stops_on_request_and_reports_the_failing_probe() {
    let policy = HealthPolicy {
        healthy_after: 1,
        unhealthy_after: 1,
        start_period: Duration::ZERO,
    };
    let (tx, mut events) = mpsc::channel(8);
    let checker = HealthChecker::spawn(
        Probe::Tcp {
            addr: closed_port().await,
        },
        policy,
        Duration::from_millis(20),
        Duration::from_millis(500),
        tx,
    );
    let event = events.recv().await.expect("an event");
    assert_eq!(event.transition.to, Health::Unhealthy);
    assert!(!event.result.ok);
    assert!(
        event.result.detail.contains("refused"),
        "{:?}",
        event.result
    );
    checker.stop().await;
    assert!(events.recv().await.is_none());
}
