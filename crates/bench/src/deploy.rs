//! `berth-bench deploy`: how long `berth server` takes to deploy, update and roll back an
//! app of busybox httpd instances with an HTTP health check, on this host, through the real
//! `berth deploy` and `berth rollback` clients. There is no peer here: the figures stand on
//! their own (issue #5's target is the rollback: the old release serving again within 1 s
//! when its image is still on the node).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use berth_e2e::server::{healthy_in, http_get, instances_in, push_web, text, BerthServer};

/// What to run.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Instances of the app.
    #[arg(long, default_value_t = 10)]
    replicas: usize,
    /// Timed rounds (deploy, update, rollback), each on a new app; the median is printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Reads one of a round's times.
type Pick = fn(&Round) -> Duration;

/// The times of one round.
struct Round {
    deploy: Duration,
    update: Duration,
    rollback_serving: Duration,
    rollback_live: Duration,
}

/// Runs the benchmark.
pub async fn run(options: Options) -> anyhow::Result<()> {
    crate::at_least_one(&[("--replicas", options.replicas), ("--runs", options.runs)])?;
    if !crate::runtime::is_root() {
        bail!("berth-bench deploy starts containers and makes a bridge: run it as root");
    }
    ensure!(
        options.berth_bin.is_file(),
        "{} is missing: cargo build --release -p berth",
        options.berth_bin.display()
    );
    let report = tokio::task::spawn_blocking(move || measure(&options)).await??;
    println!("{report}");
    Ok(())
}

fn measure(o: &Options) -> anyhow::Result<String> {
    let server = BerthServer::start_with(&o.berth_bin);
    let registry = server.registry_url();
    let mut rounds = Vec::new();
    for run in 0..o.runs {
        let app = format!("bench{run}");
        push_web(&registry, &format!("{app}/web"), "v1", "v1", 8080);
        push_web(&registry, &format!("{app}/web"), "v2", "v2", 8080);
        let round = time_round(&server, &app, o.replicas)?;
        eprintln!(
            "round {}: deploy {:.2} s, update {:.2} s, rollback serving {:.3} s, live {:.2} s",
            run + 1,
            round.deploy.as_secs_f64(),
            round.update.as_secs_f64(),
            round.rollback_serving.as_secs_f64(),
            round.rollback_live.as_secs_f64()
        );
        rounds.push(round);
    }
    let median = |pick: Pick| {
        let mut times: Vec<Duration> = rounds.iter().map(pick).collect();
        times.sort();
        times[times.len() / 2]
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== berth server: {} busybox httpd instances, HTTP health check every 200 ms, rolling \
         with max_surge {}, median of {} (no peer) ==\n",
        o.replicas, o.replicas, o.runs
    );
    let _ = writeln!(out, "{:<58} {:>9}", "workload", "median");
    let rows: [(&str, Pick); 4] = [
        ("first deploy, until all healthy (berth deploy)", |r| {
            r.deploy
        }),
        ("update to v2, until all healthy and v1 gone", |r| r.update),
        ("rollback to v1, until a v1 instance answers HTTP", |r| {
            r.rollback_serving
        }),
        ("rollback to v1, until all healthy (berth rollback)", |r| {
            r.rollback_live
        }),
    ];
    for (label, pick) in rows {
        let _ = writeln!(out, "{label:<58} {:>7.3} s", median(pick).as_secs_f64());
    }
    let serving = median(|r| r.rollback_serving);
    let _ = writeln!(
        out,
        "\nnote: issue #5 target: the old release serving within 1 s of a rollback when its \
         image is still on the node: {} ({:.3} s)",
        if serving <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        serving.as_secs_f64()
    );
    Ok(out)
}

fn spec(server: &BerthServer, app: &str, tag: &str, replicas: usize) -> String {
    let deploy = format!(
        "strategy = \"rolling\"\nmax_surge = {replicas}\nmax_unavailable = 0\nmin_healthy_time = \"0s\""
    );
    berth_e2e::server::web_spec(server, app, tag, replicas, "200ms", &deploy)
}

fn timed(what: &str, run: impl FnOnce() -> std::process::Output) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let out = run();
    let took = began.elapsed();
    ensure!(out.status.success(), "{what} failed:\n{}", text(&out));
    Ok(took)
}

fn time_round(server: &BerthServer, app: &str, replicas: usize) -> anyhow::Result<Round> {
    let deploy = timed("deploy v1", || {
        server.deploy_text(
            &format!("{app}-v1"),
            &spec(server, app, "v1", replicas),
            true,
        )
    })?;
    let update = timed("deploy v2", || {
        server.deploy_text(
            &format!("{app}-v2"),
            &spec(server, app, "v2", replicas),
            true,
        )
    })?;
    let began = Instant::now();
    let out = server.run(&["rollback", app, "--no-wait"]);
    ensure!(out.status.success(), "rollback failed:\n{}", text(&out));
    let rollback_serving = loop {
        let view = server.status(app);
        let serving = instances_in(&view)
            .iter()
            .filter(|i| i["release"] == 1 && i["state"] == "running")
            .filter_map(|i| i["address"].as_str())
            .any(|address| {
                http_get(&format!("http://{address}:8080/index.html"))
                    .is_ok_and(|body| body.trim() == "v1")
            });
        if serving {
            break began.elapsed();
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "release 1 did not serve within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rollback_live = loop {
        let view = server.status(app);
        let healthy = healthy_in(&view);
        if view["desired_status"] == "live"
            && healthy.len() == replicas
            && healthy.iter().all(|(_, release, _)| *release == 1)
        {
            break began.elapsed();
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "release 1 was not live within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Round {
        deploy,
        update,
        rollback_serving,
        rollback_live,
    })
}
