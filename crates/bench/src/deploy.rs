//! `berth-bench deploy`: how long `berth server` takes to deploy, update and roll back an
//! app of busybox httpd instances with an HTTP health check, on this host, through the real
//! `berth deploy` and `berth rollback` clients, and how long a rollback takes until every
//! request through the proxy is answered by the old release: with the replaced instances
//! kept warm (frozen; the default) and, as the peer in the same run, with `keep_warm = "0s"`
//! (the old release is rolled out again, as berth did before).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use berth_e2e::server::{healthy_in, push_web, text, BerthServer};

/// What to run.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// berth binary to measure.
    #[arg(long, default_value = "target/release/berth")]
    berth_bin: PathBuf,
    /// Instances of the app.
    #[arg(long, default_value_t = 5)]
    replicas: usize,
    /// Timed rounds (deploy, update, rollback) of each kind, each on a new app; medians and
    /// the slowest (p99 of so few) are printed.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The rolling deploy's `max_surge` (instances replaced at a time).
    #[arg(long, default_value_t = 1)]
    max_surge: usize,
    /// The rolling deploy's `min_healthy_time`.
    #[arg(long, default_value = "1s")]
    min_healthy_time: String,
}

/// The `Host` of the bench app's route.
const HOST: &str = "bench.test";

/// Reads one of a round's times.
type Pick = fn(&Round) -> Duration;

/// The times of one round.
struct Round {
    deploy: Duration,
    update: Duration,
    rollback_live: Duration,
    /// From `berth rollback` until 50 requests in a row through the proxy answer v1.
    rollback_all_old: Duration,
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
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for run in 0..o.runs {
        // Alternating, so that neither kind always runs on a warmer machine.
        for keep_warm in [true, false] {
            let app = format!("bench{run}{}", if keep_warm { "w" } else { "c" });
            push_web(&registry, &format!("{app}/web"), "v1", "v1", 8080);
            push_web(&registry, &format!("{app}/web"), "v2", "v2", 8080);
            let round = time_round(&server, &app, o, keep_warm)?;
            eprintln!(
                "round {} ({}): deploy {:.2} s, update {:.2} s, all requests on v1 {:.3} s, live {:.2} s",
                run + 1,
                if keep_warm { "warm" } else { "keep_warm = 0s" },
                round.deploy.as_secs_f64(),
                round.update.as_secs_f64(),
                round.rollback_all_old.as_secs_f64(),
                round.rollback_live.as_secs_f64()
            );
            if keep_warm { &mut warm } else { &mut cold }.push(round);
        }
    }
    let stat = |rounds: &[Round], pick: Pick, q: f64| {
        let mut times: Vec<Duration> = rounds.iter().map(pick).collect();
        times.sort();
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index.min(times.len() - 1)]
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== berth server: {} busybox httpd instances behind the proxy, HTTP health check every \
         200 ms, rolling with max_surge {} and min_healthy_time {}, {} rounds of each kind ==\n",
        o.replicas, o.max_surge, o.min_healthy_time, o.runs
    );
    let _ = writeln!(
        out,
        "{:<62} {:>10} {:>10}",
        "workload (replaced instances kept warm, the default)", "p50", "p99"
    );
    let rows: [(&str, Pick); 4] = [
        ("first deploy, until all healthy (berth deploy)", |r| {
            r.deploy
        }),
        ("update to v2, until all healthy and v1 parked", |r| {
            r.update
        }),
        (
            "rollback to v1, until 100% of requests are on v1 (proxy)",
            |r| r.rollback_all_old,
        ),
        ("rollback to v1, until all healthy (berth rollback)", |r| {
            r.rollback_live
        }),
    ];
    for (label, pick) in rows {
        let _ = writeln!(
            out,
            "{label:<62} {:>8.3} s {:>8.3} s",
            stat(&warm, pick, 0.5).as_secs_f64(),
            stat(&warm, pick, 0.99).as_secs_f64()
        );
    }
    let all_old = |rounds: &[Round], q| stat(rounds, |r| r.rollback_all_old, q);
    let _ = writeln!(
        out,
        "\nrollback until 100% of requests are on the old release, through the proxy:\n\
         {:<34} {:>10} {:>10}\n{:<34} {:>8.3} s {:>8.3} s\n{:<34} {:>8.3} s {:>8.3} s\n{:<34} {:>9.1}x {:>9.1}x",
        "",
        "p50",
        "p99",
        "berth, warm instances (default)",
        all_old(&warm, 0.5).as_secs_f64(),
        all_old(&warm, 0.99).as_secs_f64(),
        "berth, keep_warm = \"0s\" (peer)",
        all_old(&cold, 0.5).as_secs_f64(),
        all_old(&cold, 0.99).as_secs_f64(),
        "speed-up (peer / warm)",
        all_old(&cold, 0.5).as_secs_f64() / all_old(&warm, 0.5).as_secs_f64(),
        all_old(&cold, 0.99).as_secs_f64() / all_old(&warm, 0.99).as_secs_f64(),
    );
    let p99 = all_old(&warm, 0.99);
    let _ = writeln!(
        out,
        "\nnote: issue #13 target: 100% of requests on the old release within 1 s of a rollback: {} (p99 {:.3} s)",
        if p99 <= Duration::from_secs(1) { "met" } else { "MISSED" },
        p99.as_secs_f64()
    );
    Ok(out)
}

fn spec(server: &BerthServer, app: &str, tag: &str, o: &Options, keep_warm: bool) -> String {
    let deploy = format!(
        "strategy = \"rolling\"\nmax_surge = {}\nmax_unavailable = 0\nmin_healthy_time = \"{}\"\nkeep_warm = \"{}\"",
        o.max_surge,
        o.min_healthy_time,
        if keep_warm { "5m" } else { "0s" }
    );
    berth_e2e::server::web_spec(server, app, tag, o.replicas, "200ms", &deploy).replace(
        "stop_grace = \"1s\"",
        &format!("stop_grace = \"1s\"\nroute = {{ host = \"{app}.{HOST}\", port = \"http\" }}"),
    )
}

/// Whether `n` requests in a row through the proxy are all answered by `content`.
fn all_answer(
    client: &reqwest::blocking::Client,
    server: &BerthServer,
    app: &str,
    content: &str,
    n: usize,
) -> bool {
    (0..n).all(|_| {
        client
            .get(format!("{}/index.html", server.proxy_url()))
            .header("Host", format!("{app}.{HOST}"))
            .send()
            .and_then(|r| r.text())
            .is_ok_and(|body| body.trim() == content)
    })
}

fn timed(what: &str, run: impl FnOnce() -> std::process::Output) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let out = run();
    let took = began.elapsed();
    ensure!(out.status.success(), "{what} failed:\n{}", text(&out));
    Ok(took)
}

fn time_round(
    server: &BerthServer,
    app: &str,
    o: &Options,
    keep_warm: bool,
) -> anyhow::Result<Round> {
    let replicas = o.replicas;
    let deploy = timed("deploy v1", || {
        server.deploy_text(
            &format!("{app}-v1"),
            &spec(server, app, "v1", o, keep_warm),
            true,
        )
    })?;
    let update = timed("deploy v2", || {
        server.deploy_text(
            &format!("{app}-v2"),
            &spec(server, app, "v2", o, keep_warm),
            true,
        )
    })?;
    let client = reqwest::blocking::Client::new();
    ensure!(
        all_answer(&client, server, app, "v2", 20),
        "release 2 does not answer through the proxy"
    );
    let began = Instant::now();
    let out = server.run(&["rollback", app, "--no-wait"]);
    ensure!(out.status.success(), "rollback failed:\n{}", text(&out));
    // Through the proxy: until 50 requests in a row are answered by v1.
    let rollback_all_old = loop {
        if all_answer(&client, server, app, "v1", 50) {
            break began.elapsed();
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "release 1 did not take all requests within 60 s"
        );
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
        rollback_live,
        rollback_all_old,
    })
}
