//! `berth-bench`: benchmarks that run berth and a named peer side by side in one run, with
//! the same clients and the same content, and print the ratio.

mod gc;
mod registry;
mod servers;

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Registry(options) => runtime.block_on(registry::run(options)),
        Command::Gc(options) => runtime.block_on(gc::run(options)),
    }
}
