//! `berth-bench`: benchmarks that run berth and a named peer side by side in one run, with
//! the same clients and the same content, and print the ratio.

mod deploy;
mod dns;
mod flood;
mod gc;
mod proxy;
mod registry;
mod runtime;
mod servers;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

/// berth's benchmarks.
#[derive(Parser)]
#[command(name = "berth-bench", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// berth's registry vs Debian's docker-registry (CNCF distribution 2.8).
    Registry(registry::Options),
    /// berth's online garbage collection vs docker-registry's offline garbage-collect.
    Gc(gc::Options),
    /// berth's node: container starts vs bare runc and podman, pulls vs skopeo + umoci.
    Runtime(runtime::Options),
    /// berth's reverse proxy vs Debian's nginx in front of the same upstream, under wrk.
    Proxy(proxy::Options),
    /// berth server: deploy, update and rollback times of a 10-replica app (no peer).
    Deploy(deploy::Options),
    /// berth's DNS server vs dnsmasq answering the same names: questions/s and latency.
    Dns(dns::Options),
    /// Every listener of berth server flooded with slow clients (and the registry with
    /// password guesses): a normal client's latency during the flood next to idle.
    Flood(flood::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bench = async {
            match cli.command {
                Command::Registry(options) => registry::run(options).await,
                Command::Gc(options) => gc::run(options).await,
                Command::Runtime(options) => runtime::run(options).await,
                Command::Deploy(options) => deploy::run(options).await,
                Command::Dns(options) => dns::run(options).await,
                Command::Proxy(options) => proxy::run(options).await,
                Command::Flood(options) => flood::run(options).await,
            }
        };
        // On SIGINT or SIGTERM the benchmark's future is dropped, and with it the guards
        // that kill the registries and remove their data.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = bench => result,
            _ = interrupt.recv() => Err(anyhow!("interrupted")),
            _ = terminate.recv() => Err(anyhow!("terminated")),
        }
    })
}

/// Refuses a zero for any of these count flags.
pub fn at_least_one(flags: &[(&str, usize)]) -> anyhow::Result<()> {
    match flags.iter().find(|(_, value)| *value == 0) {
        Some((flag, _)) => anyhow::bail!("{flag} must be at least 1"),
        None => Ok(()),
    }
}
