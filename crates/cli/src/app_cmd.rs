//! The app commands that talk to `berth server`: `berth ps APP`, `berth logs APP[/SERVICE]`,
//! `berth events`, `berth scale` and `berth promote`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};

use berth_runtime::node::NodeError;

use crate::container_cmd::LogsArgs;
use crate::server_cmd::{release, Client, ClientArgs};

/// `berth events`
#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// An app [default: every app].
    app: Option<String>,
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Only events after this sequence number (of APP).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    since: u64,
    /// One JSON object per event.
    #[arg(long)]
    json: bool,
}

/// `berth scale`
#[derive(Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app.
    app: String,
    /// The service.
    service: String,
    /// Its new number of instances.
    replicas: u32,
}

/// `berth app …`
#[derive(clap::Subcommand)]
pub enum AppCommand {
    /// Remove an app: stop its instances (drained first), remove its routes, DNS and catalog
    /// entries, its image pins, releases and events. Named volumes and secrets stay unless
    /// asked for.
    Rm(AppRmArgs),
}

/// `berth app rm`
#[derive(Args)]
pub struct AppRmArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app.
    app: String,
    /// Remove its named volumes too (their data is gone for good).
    #[arg(long)]
    volumes: bool,
    /// Return once the removal is under way instead of waiting until the app is gone.
    #[arg(long)]
    no_wait: bool,
}

/// Runs `berth app …`.
pub fn app(command: AppCommand, root: &Path) -> anyhow::Result<ExitCode> {
    match command {
        AppCommand::Rm(args) => remove(args, root),
    }
}

fn remove(args: AppRmArgs, root: &Path) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client, root)?;
    let app = &args.app;
    let query = if args.volumes { "?volumes=true" } else { "" };
    client.call(
        reqwest::Method::DELETE,
        &format!("/v1/apps/{app}{query}"),
        None,
    )?;
    println!(
        "removing {app}: its instances stop{}",
        if args.volumes {
            "; its named volumes go too"
        } else {
            "; its named volumes stay (berth app rm --volumes removes them)"
        }
    );
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let mut shown = None;
    loop {
        let apps = client.get("/v1/apps")?;
        let present = apps
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["app"].as_str() == Some(app.as_str()));
        if !present {
            println!("{app} removed in {:.1}s", started.elapsed().as_secs_f64());
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(view) = client.get(&format!("/v1/apps/{app}")) {
            let left = view["services"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
                .chain(view["orphans"].as_array().cloned().unwrap_or_default())
                .count();
            if shown != Some(left) {
                println!("  {left} instances left");
                shown = Some(left);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `berth promote`, `berth pause`, `berth resume`
#[derive(Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The app.
    app: String,
    /// The service [default: every service with a deploy under way].
    service: Option<String>,
}

/// The instances of an app, as `berth ps APP` shows them.
pub fn ps(client: &ClientArgs, root: &Path, app: &str, json_out: bool) -> anyhow::Result<()> {
    let client = Client::new(client, root)?;
    let view = client.get(&format!("/v1/apps/{app}"))?;
    let services = view["services"].as_array().cloned().unwrap_or_default();
    let orphans = view["orphans"].as_array().cloned().unwrap_or_default();
    let instances: Vec<Value> = services
        .iter()
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .chain(orphans)
        .collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&instances)?);
        return Ok(());
    }
    let now = berth_server::now().as_millis();
    println!(
        "{:<10} {:<14} {:<8} {:<9} {:<10} {:<16} UPTIME",
        "SERVICE", "INSTANCE", "RELEASE", "STATE", "HEALTH", "ADDRESS"
    );
    for instance in instances {
        let uptime = match (instance["state"].as_str(), instance["started_at"].as_u64()) {
            (Some("running"), Some(started)) => uptime(now.saturating_sub(started) / 1000),
            _ => "-".to_owned(),
        };
        println!(
            "{:<10} {:<14} {:<8} {:<9} {:<10} {:<16} {uptime}",
            instance["service"].as_str().unwrap_or_default(),
            instance["id"].as_str().unwrap_or_default(),
            release(&instance["release"]),
            instance["state"].as_str().unwrap_or_default(),
            instance["health"].as_str().unwrap_or_default(),
            instance["address"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

/// `42s`, `5m`, `3h`, `2d`: the largest whole unit.
pub fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// What `berth logs` asks the server for.
pub struct AppLogs<'a> {
    /// `APP` or `APP/SERVICE`.
    pub target: &'a str,
    /// Keep following.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines since this time (RFC 3339).
    pub since: Option<String>,
    /// Print each line's time.
    pub timestamps: bool,
}

/// The output of an app's (or a service's) instances, merged by time, each line after its
/// instance's name.
pub fn logs(client: &ClientArgs, root: &Path, request: &AppLogs<'_>) -> anyhow::Result<()> {
    let client = Client::new(client, root)?;
    let (app, service) = match request.target.split_once('/') {
        Some((app, service)) => (app, Some(service)),
        None => (request.target, None),
    };
    let mut query = vec![];
    if let Some(service) = service {
        query.push(("service", service.to_owned()));
    }
    if let Some(tail) = request.tail {
        query.push(("tail", tail.to_string()));
    }
    if let Some(since) = &request.since {
        query.push(("since", since.clone()));
    }
    if request.follow {
        query.push(("follow", "1".to_owned()));
    }
    let response = stream(&client, &format!("/v1/apps/{app}/logs"), &query)?;
    let mut stdout = std::io::stdout().lock();
    let mut print = |line: &Value| -> anyhow::Result<()> {
        if request.timestamps {
            write!(stdout, "{} ", line["time"].as_str().unwrap_or_default())?;
        }
        writeln!(
            stdout,
            "{} | {}",
            line["instance"].as_str().unwrap_or_default(),
            line["text"].as_str().unwrap_or_default()
        )?;
        stdout.flush()?;
        Ok(())
    };
    if request.follow {
        for line in ndjson(response) {
            print(&line?)?;
        }
    } else {
        let lines: Value = response.json().context("reading the logs")?;
        for line in lines.as_array().into_iter().flatten() {
            print(line)?;
        }
    }
    Ok(())
}

/// `berth logs NAME`: a container's output, or an app's (see [`LogsArgs`]).
pub fn logs_command(
    args: LogsArgs,
    config: Option<&Path>,
    root: &Path,
) -> anyhow::Result<ExitCode> {
    let of_app = |args: &LogsArgs| -> anyhow::Result<ExitCode> {
        let since = args
            .since
            .as_deref()
            .map(crate::container_cmd::parse_since)
            .transpose()?
            .map(|t| t.format(&time::format_description::well_known::Rfc3339))
            .transpose()?;
        let request = AppLogs {
            target: &args.container,
            follow: args.follow,
            tail: args.tail,
            since,
            timestamps: args.timestamps,
        };
        logs(&args.client, root, &request)?;
        Ok(ExitCode::SUCCESS)
    };
    if args.app || args.container.contains('/') {
        return of_app(&args);
    }
    let file = crate::config::ConfigFile::load(config)?;
    let node = crate::container_cmd::open_node(&file, root)?;
    match node.get(&args.container) {
        Err(NodeError::NotFound(_)) => of_app(&args).with_context(|| {
            format!(
                "no container named {:?} on this node, and as an app of berth server",
                args.container
            )
        }),
        _ => crate::container_cmd::logs(&node, args),
    }
}

/// `berth events [APP] [-f]`
pub fn events(args: EventsArgs, root: &Path) -> anyhow::Result<()> {
    let client = Client::new(&args.client, root)?;
    let path = match &args.app {
        Some(app) => format!("/v1/apps/{app}/events"),
        None => "/v1/events".to_owned(),
    };
    let mut query = vec![("since", args.since.to_string())];
    if args.follow {
        query.push(("follow", "1".to_owned()));
    }
    let response = stream(&client, &path, &query)?;
    let mut stdout = std::io::stdout().lock();
    let mut print = |event: &Value| -> anyhow::Result<()> {
        if args.json {
            writeln!(stdout, "{event}")?;
        } else {
            writeln!(stdout, "{}", event_line(event))?;
        }
        stdout.flush()?;
        Ok(())
    };
    if args.follow {
        for event in ndjson(response) {
            print(&event?)?;
        }
    } else {
        let events: Value = response.json().context("reading the events")?;
        for event in events.as_array().into_iter().flatten() {
            print(event)?;
        }
    }
    Ok(())
}

/// `2026-11-29T13:00:01.234Z shop#4 web-4-a instance_healthy: web-4-a is healthy: …`
pub fn event_line(event: &Value) -> String {
    let at = event["at"]
        .as_u64()
        .and_then(|ms| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        })
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut subject = event["app"].as_str().unwrap_or_default().to_owned();
    if let Some(release) = event["release"].as_u64() {
        subject.push_str(&format!("#{release}"));
    }
    if let Some(instance) = event["instance"].as_str() {
        subject.push_str(&format!(" {instance}"));
    } else if let Some(service) = event["service"].as_str() {
        subject.push_str(&format!(" {service}"));
    }
    format!(
        "{at} {subject} {}: {}",
        event["kind"].as_str().unwrap_or_default(),
        event["message"].as_str().unwrap_or_default()
    )
}

/// `berth scale APP SERVICE N`
pub fn scale(args: ScaleArgs, root: &Path) -> anyhow::Result<()> {
    let client = Client::new(&args.client, root)?;
    let answer = client.post(
        &format!("/v1/apps/{}/scale", args.app),
        json!({ "service": args.service, "replicas": args.replicas }),
    )?;
    println!(
        "{}/{}: {} -> {} replicas (until the next deploy or rollback)",
        args.app, args.service, answer["previous"], answer["replicas"]
    );
    Ok(())
}

/// `berth promote APP [SERVICE]`
pub fn promote(args: PromoteArgs, root: &Path) -> anyhow::Result<ExitCode> {
    deploy_op(
        args,
        root,
        "promote",
        "promoted",
        "promoted to the next step",
    )
}

/// `berth pause APP [SERVICE]`
pub fn pause(args: PromoteArgs, root: &Path) -> anyhow::Result<ExitCode> {
    deploy_op(
        args,
        root,
        "pause",
        "services",
        "deploy paused (its deadline stops; `berth resume` lets it go on)",
    )
}

/// `berth resume APP [SERVICE]`
pub fn resume(args: PromoteArgs, root: &Path) -> anyhow::Result<ExitCode> {
    deploy_op(args, root, "resume", "services", "deploy resumed")
}

/// POSTs `/v1/apps/APP/{op}` and prints `done` for each service in the answer's `field`.
fn deploy_op(
    args: PromoteArgs,
    root: &Path,
    op: &str,
    field: &str,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client, root)?;
    let answer = client.post(
        &format!("/v1/apps/{}/{op}", args.app),
        json!({ "service": args.service }),
    )?;
    for service in answer[field].as_array().into_iter().flatten() {
        println!(
            "{}/{}: {done}",
            args.app,
            service.as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A GET whose answer may be a stream; errors are the server's message.
fn stream(
    client: &Client,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<reqwest::blocking::Response> {
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()?
        .get(format!("{}{path}", client.base))
        .query(query)
        .bearer_auth(&client.token)
        .send()
        .with_context(|| {
            format!(
                "cannot reach the berth server at {} (is `berth server` running? --server / BERTH_SERVER)",
                client.base
            )
        })?;
    if !response.status().is_success() {
        let value: Value = response.json().unwrap_or(Value::Null);
        bail!("{}", value["error"].as_str().unwrap_or("no error message"));
    }
    Ok(response)
}

/// The objects of a newline-delimited JSON answer, as they arrive.
fn ndjson(response: reqwest::blocking::Response) -> impl Iterator<Item = anyhow::Result<Value>> {
    BufReader::new(response)
        .lines()
        .filter(|line| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| Ok(serde_json::from_str(&line.context("reading the stream")?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_the_largest_whole_unit() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(300), "5m");
        assert_eq!(uptime(7300), "2h");
        assert_eq!(uptime(200_000), "2d");
    }

    #[test]
    fn an_event_line_names_the_release_and_instance() {
        let event = json!({"seq": 3, "at": 0, "app": "shop", "kind": "instance_healthy",
            "service": "web", "instance": "web-4-a", "release": 4, "message": "web-4-a is healthy"});
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:00Z shop#4 web-4-a instance_healthy: web-4-a is healthy"
        );
    }
}

/// `berth routes`
#[derive(Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `berth routes`: the proxy's routes and what each release behind them served.
pub fn routes(args: RoutesArgs, root: &Path) -> anyhow::Result<()> {
    let client = Client::new(&args.client, root)?;
    let routes = client.get("/v1/routes")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&routes)?);
        return Ok(());
    }
    let routes = routes.as_array().cloned().unwrap_or_default();
    if routes.is_empty() {
        println!("no routes (start berth server with --proxy-listen, and give services a route)");
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:>7} {:>6} {:>9} {:>6} {:>8}  UPSTREAMS",
        "ROUTE", "HOST+PATH", "RELEASE", "WEIGHT", "REQUESTS", "5XX", "P99"
    );
    for route in &routes {
        let target = format!(
            "{}{}",
            route["host"].as_str().unwrap_or(""),
            route["path"].as_str().unwrap_or("")
        );
        let groups = route["groups"].as_array().cloned().unwrap_or_default();
        if groups.is_empty() {
            println!(
                "{:<20} {:<28} {:>7}",
                route["name"].as_str().unwrap_or(""),
                target,
                "-"
            );
        }
        for group in groups {
            let upstreams: Vec<&str> = group["upstreams"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "{:<20} {:<28} {:>7} {:>6} {:>9} {:>6} {:>8}  {}",
                route["name"].as_str().unwrap_or(""),
                target,
                group["release"].to_string(),
                group["weight"].to_string(),
                group["requests"].to_string(),
                group["errors_5xx"].to_string(),
                group["p99_ms"]
                    .as_u64()
                    .map_or("-".to_owned(), |ms| format!("{ms}ms")),
                upstreams.join(" ")
            );
        }
    }
    Ok(())
}
