//! `berth info`: what this host offers containers, and which OCI runtime berth uses.

use std::path::Path;

use berth_runtime::host::{choose, nofile_limits, CgroupLayout, RuntimeBinary, RuntimeKind};
use clap::Args;
use serde::Serialize;

use crate::config::RuntimeName;

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Show the choice as if this runtime were configured (else the config file's
    /// `[node] runtime`).
    #[arg(long, value_enum, env = "BERTH_RUNTIME")]
    runtime: Option<RuntimeName>,
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    cgroups: CgroupLayout,
    runc: Option<RuntimeBinary>,
    crun: Option<RuntimeBinary>,
    selection: berth_runtime::host::Selection,
    nofile_hard_limit: Option<u64>,
}

pub fn run(args: InfoArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let configured = crate::config::ConfigFile::load(config)?.node.runtime;
    let search = std::env::var("PATH").unwrap_or_default();
    let search = format!("{search}:/usr/sbin:/usr/bin:/sbin:/bin");
    let cgroups = CgroupLayout::detect(Path::new("/sys/fs/cgroup"));
    let runc = RuntimeBinary::find(RuntimeKind::Runc, &search);
    let crun = RuntimeBinary::find(RuntimeKind::Crun, &search);
    let preferred = args.runtime.or(configured).map(RuntimeKind::from);
    let selection = choose(&cgroups, runc.clone(), crun.clone(), preferred);
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        cgroups,
        runc,
        crun,
        selection,
        nofile_hard_limit: nofile_limits().map(|(_, hard)| hard),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let binary = |b: &Option<RuntimeBinary>| match b {
        Some(b) => format!("{} ({})", b.path.display(), b.version),
        None => "not installed".to_owned(),
    };
    println!("berth     {}", info.version);
    println!("cgroups   {}", info.cgroups.describe());
    println!("runc      {}", binary(&info.runc));
    println!("crun      {}", binary(&info.crun));
    match &info.selection.runtime {
        Some(r) => println!(
            "runtime   {}{}: {}",
            r.kind.name(),
            if info.selection.private_cgroup_namespace {
                " (in a private mount namespace)"
            } else {
                ""
            },
            info.selection.reason
        ),
        None => println!("runtime   none: {}", info.selection.reason),
    }
    if let Some(hard) = info.nofile_hard_limit {
        println!("nofile    hard limit {hard}: containers get at most this many open files");
    }
    anyhow::ensure!(
        info.selection.runtime.is_some(),
        "{}",
        info.selection.reason
    );
    Ok(())
}
