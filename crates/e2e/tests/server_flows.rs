//! `berth server`'s deploy strategies end to end, on real containers: blue/green with
//! `keep_old`, canary steps with a timed pause, `depends_on` ordering, and SIGKILLs of the
//! server in the middle of a rolling deploy and of a scale-up. Each test watches the app all
//! along through `berth status --json` and `berth ps -a --json` (a sample every ~100 ms).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_e2e::server::{healthy_in, http_get, instances_in, push_web, text, BerthServer};
use serde_json::Value;

/// What one sample saw.
struct Sample {
    /// Since the sampler started.
    at: Duration,
    /// `berth status APP --json`; `None` while the server is down.
    status: Option<Value>,
    /// The app's containers that are not exited, by name (`berth ps -a --json`).
    live_containers: Vec<String>,
}

impl Sample {
    /// The live instances of `release` in the status view.
    fn instances_of(&self, release: u64) -> Vec<Value> {
        self.status
            .as_ref()
            .map(instances_in)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i["release"] == release && i["state"] != "exited" && i["state"] != "failed")
            .collect()
    }

    fn healthy_of(&self, release: u64) -> usize {
        self.status
            .as_ref()
            .map(healthy_in)
            .unwrap_or_default()
            .iter()
            .filter(|(_, r, _)| *r == release)
            .count()
    }

    /// Live containers of `release` on the node (`<app>.<service>-<release>-<suffix>`).
    fn containers_of(&self, release: u64) -> usize {
        let infix = format!("-{release}-");
        self.live_containers
            .iter()
            .filter(|name| name.contains(&infix))
            .count()
    }
}

/// Samples an app in the background until `stop`.
struct Sampler {
    running: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: JoinHandle<()>,
}

impl Sampler {
    fn start(server: &BerthServer, app: &str) -> Sampler {
        let running = Arc::new(AtomicBool::new(true));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let command = server.berth();
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
        let url = server.url();
        let app = app.to_owned();
        let thread = {
            let (running, samples) = (running.clone(), samples.clone());
            std::thread::spawn(move || {
                let began = Instant::now();
                let berth = |extra: &[&str]| {
                    Command::new(&program)
                        .args(&args)
                        .args(extra)
                        .env("BERTH_SERVER", &url)
                        .env("BERTH_LOG", "error")
                        .output()
                        .unwrap()
                };
                let prefix = format!("{app}.");
                while running.load(Ordering::SeqCst) {
                    let at = began.elapsed();
                    let status = berth(&["status", &app, "--json"]);
                    let status = serde_json::from_slice::<Value>(&status.stdout).ok();
                    let ps = berth(&["ps", "-a", "--json"]);
                    let live_containers = serde_json::from_slice::<Value>(&ps.stdout)
                        .ok()
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| {
                            let state = c["state"].to_string().to_lowercase();
                            !state.contains("exited") && !state.contains("stopped")
                        })
                        .filter_map(|c| c["record"]["name"].as_str().map(ToOwned::to_owned))
                        .filter(|name| name.starts_with(&prefix))
                        .collect();
                    samples.lock().unwrap().push(Sample {
                        at,
                        status,
                        live_containers,
                    });
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler {
            running,
            samples,
            thread,
        }
    }

    fn stop(self) -> Vec<Sample> {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// A spec of one busybox httpd service `web` serving /index.html on 8080, checked every
/// 300 ms, with `deploy` as its deploy table and `extra` appended.
/// These tests count the node's live containers against the strategies' limits: replaced
/// instances stop rather than stay warm (`keep_warm = "0s"`; warm rollbacks have their own
/// test in server_deploys.rs).
fn web_spec(server: &BerthServer, app: &str, tag: &str, replicas: usize, deploy: &str) -> String {
    let deploy = format!("{deploy}\nkeep_warm = \"0s\"");
    berth_e2e::server::web_spec(server, app, tag, replicas, "300ms", &deploy)
}

fn push(server: &BerthServer, app: &str, tags: &[&str]) {
    let registry = server.registry_url();
    for tag in tags {
        push_web(&registry, &format!("{app}/web"), tag, tag, 8080);
    }
}

#[track_caller]
fn deploy_ok(server: &BerthServer, name: &str, spec: &str) {
    let out = server.deploy_text(name, spec, true);
    assert!(
        out.status.success(),
        "{name}:\n{}\n{}",
        text(&out),
        server.log()
    );
}

/// Waits for `replicas` healthy instances, all of `release`, each serving `content`, and no
/// other containers of the app on the node.
#[track_caller]
fn assert_converged(server: &BerthServer, app: &str, release: u64, replicas: usize, content: &str) {
    server.wait_for(app, "the app to converge", Duration::from_secs(60), || {
        let healthy = healthy_in(&server.status(app));
        healthy.len() == replicas
            && healthy.iter().all(|(_, r, _)| *r == release)
            && server.containers(app).len() == replicas
    });
    for (container, _, address) in healthy_in(&server.status(app)) {
        let body = http_get(&format!("http://{address}:8080/index.html"))
            .unwrap_or_else(|e| panic!("{container} at {address}: {e}"));
        assert_eq!(body.trim(), content, "{container} at {address}");
    }
}

#[test]
fn blue_green_switches_when_the_new_set_is_healthy_and_keeps_the_old_one_for_keep_old() {
    const R: usize = 2;
    let server = BerthServer::start();
    push(&server, "bg", &["v1", "v2"]);
    let deploy = r#"strategy = "blue_green"
healthy_deadline = "30s"
keep_old = "4s""#;
    deploy_ok(&server, "v1", &web_spec(&server, "bg", "v1", R, deploy));

    let sampler = Sampler::start(&server, "bg");
    deploy_ok(&server, "v2", &web_spec(&server, "bg", "v2", R, deploy));
    assert_converged(&server, "bg", 2, R, "v2");
    let samples = sampler.stop();

    // The old set is whole and healthy until every new instance is healthy...
    let all_new_healthy = samples
        .iter()
        .position(|s| s.healthy_of(2) == R)
        .expect("never saw all of release 2 healthy");
    for s in &samples[..all_new_healthy] {
        assert_eq!(
            s.healthy_of(1),
            R,
            "release 1 lost an instance before the switch at {:?}",
            s.at
        );
    }
    // ...and keeps running for keep_old after that.
    let first_old_stop = samples
        .iter()
        .position(|s| {
            s.instances_of(1).iter().any(|i| i["state"] == "stopping") || s.containers_of(1) < R
        })
        .expect("never saw release 1 stop");
    let kept = samples[first_old_stop].at - samples[all_new_healthy].at;
    assert!(
        kept >= Duration::from_millis(3500),
        "release 1 kept only {kept:?} after the switch (keep_old = 4s)"
    );
    let most = samples
        .iter()
        .map(|s| s.live_containers.len())
        .max()
        .unwrap();
    assert!(most <= 2 * R, "{most} live containers (at most {})", 2 * R);
    eprintln!("blue/green: old set kept {kept:?} after all new instances were healthy");
}

#[test]
fn canary_steps_add_new_instances_step_by_step_with_a_pause() {
    const R: usize = 4;
    let server = BerthServer::start();
    push(&server, "canary", &["v1", "v2"]);
    let deploy = r#"strategy = "canary"
steps = ["1", "50%", "100%"]
pause = "3s"
min_healthy_time = "0s"
healthy_deadline = "30s""#;
    deploy_ok(&server, "v1", &web_spec(&server, "canary", "v1", R, deploy));

    let sampler = Sampler::start(&server, "canary");
    deploy_ok(&server, "v2", &web_spec(&server, "canary", "v2", R, deploy));
    assert_converged(&server, "canary", 2, R, "v2");
    let samples = sampler.stop();

    // When release 2 first reached 1, 2 and 4 instances.
    let reached = |count: usize| {
        samples
            .iter()
            .find(|s| s.instances_of(2).len() >= count)
            .unwrap_or_else(|| panic!("release 2 never had {count} instances"))
            .at
    };
    let (one, half, all) = (reached(1), reached(2), reached(R));
    eprintln!("canary: 1 instance at {one:?}, 2 at {half:?}, 4 at {all:?}");
    assert!(
        half - one >= Duration::from_millis(2500),
        "step 2 began {:?} after step 1 (pause 3s)",
        half - one
    );
    assert!(
        all - half >= Duration::from_millis(2500),
        "step 3 began {:?} after step 2 (pause 3s)",
        all - half
    );
    // Step 1 holds exactly one new instance, step 2 two.
    assert!(samples
        .iter()
        .filter(|s| s.at < half)
        .all(|s| s.instances_of(2).len() <= 1));
    assert!(samples
        .iter()
        .filter(|s| s.at < all)
        .all(|s| s.instances_of(2).len() <= 2));
    // Never fewer than R ready, never more than R + the largest step increase live.
    for s in samples.iter().filter(|s| s.status.is_some()) {
        let ready = s.healthy_of(1) + s.healthy_of(2);
        assert!(ready >= R, "{ready} ready instances at {:?}", s.at);
        assert!(
            s.live_containers.len() <= R + 2,
            "{:?} at {:?}",
            s.live_containers,
            s.at
        );
    }
}

#[test]
fn a_service_starts_only_after_the_one_it_depends_on_is_healthy() {
    let server = BerthServer::start();
    push(&server, "dep", &["v1"]);
    // db answers its health check 2 s after it starts.
    let spec = format!(
        r#"app = "dep"

[services.db]
image = "{registry}/dep/web:v1"
command = ["sh", "-c", "sleep 2; exec httpd -f -p 8080 -h /www"]
ports = {{ http = 8080 }}
stop_grace = "1s"
health = {{ http = {{ port = "http", path = "/index.html" }}, interval = "300ms", timeout = "1s", start_period = "5s" }}

[services.web]
image = "{registry}/dep/web:v1"
replicas = 2
ports = {{ http = 8080 }}
stop_grace = "1s"
depends_on = {{ db = "healthy" }}
health = {{ http = {{ port = "http", path = "/index.html" }}, interval = "300ms", timeout = "1s" }}
"#,
        registry = server.registry()
    );
    deploy_ok(&server, "dep", &spec);
    let view = server.status("dep");
    let instances = instances_in(&view);
    let started = |service: &str| -> Vec<u64> {
        instances
            .iter()
            .filter(|i| i["service"] == service)
            .map(|i| i["started_at"].as_u64().unwrap())
            .collect()
    };
    let (db, web) = (started("db"), started("web"));
    assert_eq!((db.len(), web.len()), (1, 2), "{view:#}");
    let first_web = *web.iter().min().unwrap();
    assert!(
        first_web >= db[0] + 2000,
        "web started {} ms after db, before db could be healthy (2 s):\n{view:#}",
        first_web as i64 - db[0] as i64
    );
    eprintln!("depends_on: web started {} ms after db", first_web - db[0]);
}

/// Surge 1, none unavailable, for the crash tests.
const CRASH_DEPLOY: &str = r#"strategy = "rolling"
max_surge = 1
max_unavailable = 0
min_healthy_time = "1s"
healthy_deadline = "60s""#;

/// Runs `change` (a deploy or a scale that makes `app` run `replicas` instances of `release`,
/// serving `content`), SIGKILLs the server as soon as the first new instance exists, restarts
/// it, and checks that it converges with no duplicates and never more than replicas + 1
/// instances (the surge) alive at any sample, the killed server's leftovers included.
fn kill_server_during(
    server: &mut BerthServer,
    app: &str,
    release: u64,
    replicas: usize,
    content: &str,
    change: impl FnOnce(&BerthServer),
) {
    let before = server.containers(app);
    let sampler = Sampler::start(server, app);
    change(server);
    server.wait_for(
        app,
        "the first new instance to start",
        Duration::from_secs(30),
        || {
            let infix = format!("{app}.web-{release}-");
            server
                .containers(app)
                .iter()
                .any(|c| c.starts_with(&infix) && !before.contains(c))
        },
    );
    server.kill9();
    std::thread::sleep(Duration::from_secs(2));
    server.spawn();
    assert_converged(server, app, release, replicas, content);
    std::thread::sleep(Duration::from_secs(2));
    let samples = sampler.stop();
    assert!(
        samples.iter().any(|s| s.status.is_none()),
        "no sample while the server was down"
    );
    for s in &samples {
        assert!(
            s.live_containers.len() <= replicas + 1,
            "{} live containers at {:?} (at most {}): {:?}\nserver log:\n{}",
            s.live_containers.len(),
            s.at,
            replicas + 1,
            s.live_containers,
            server.log()
        );
    }
    let names = server.containers(app);
    assert_eq!(names.len(), replicas, "{names:?}");
    let view = server.status(app);
    assert_eq!(view["desired_release"], release, "{view:#}");
    assert_eq!(view["desired_status"], "live", "{view:#}");
}

#[test]
fn a_server_killed_during_a_rolling_deploy_converges_without_duplicates() {
    let mut server = BerthServer::start();
    push(&server, "crash", &["v1", "v2"]);
    deploy_ok(
        &server,
        "v1",
        &web_spec(&server, "crash", "v1", 3, CRASH_DEPLOY),
    );
    let spec = web_spec(&server, "crash", "v2", 3, CRASH_DEPLOY);
    kill_server_during(&mut server, "crash", 2, 3, "v2", |server| {
        let out = server.deploy_text("v2", &spec, false);
        assert!(out.status.success(), "{}", text(&out));
    });
}

/// `berth scale` from 2 to 4 instances (surge 1), with the server SIGKILLed midway.
#[test]
fn a_server_killed_during_a_scale_converges_without_duplicates() {
    let mut server = BerthServer::start();
    push(&server, "scale", &["v1"]);
    deploy_ok(
        &server,
        "v1",
        &web_spec(&server, "scale", "v1", 2, CRASH_DEPLOY),
    );
    kill_server_during(&mut server, "scale", 1, 4, "v1", |server| {
        server.ok(&["scale", "scale", "web", "4"]);
    });
}
