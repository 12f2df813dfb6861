//! A berth node of the benchmark's own: a root dir, the host's choice of OCI runtime (or runc,
//! for comparison), and a bridge network with its own bridge and subnet. On drop its containers are removed, whatever is left of
//! them killed and unmounted, and the bridge deleted.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::process;

/// The subnet of the benchmark's bridge network.
const SUBNET: &str = "10.231.7.0/24";

/// How a container is run: its network and the OCI runtime.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `--network none`: a new empty network namespace; the runtime `berth info` chooses.
    None,
    /// `--network none` with runc configured.
    NoneRunc,
    /// The node's bridge network (veth, address lease, /etc/hosts); the chosen runtime.
    Bridge,
}

/// The node.
pub struct BerthNode {
    binary: PathBuf,
    root: PathBuf,
    bridge: String,
}

impl BerthNode {
    /// A node rooted in a new dir under `work`.
    pub fn new(binary: &Path, work: &Path) -> anyhow::Result<BerthNode> {
        let root = work.join("berth-root");
        std::fs::create_dir_all(&root)?;
        // Its own bridge name, so that it never meets a node's or a test's.
        let bridge = format!("bb{:04x}", std::process::id() & 0xffff);
        std::fs::write(root.join("none.toml"), "")?;
        std::fs::write(root.join("runc.toml"), "[node]\nruntime = \"runc\"\n")?;
        std::fs::write(
            root.join("bridge.toml"),
            format!(
                "[node.network]\nname = \"{bridge}\"\n\
                 bridge = \"{bridge}\"\nsubnet = \"{SUBNET}\"\nmasquerade = false\n"
            ),
        )?;
        Ok(BerthNode {
            binary: binary.to_owned(),
            root,
            bridge,
        })
    }

    /// The bridge's name and subnet, for the report.
    pub fn bridge(&self) -> String {
        format!("{} {SUBNET}", self.bridge)
    }

    /// `berth --root ROOT --config CONFIG` for containers on `network`.
    pub fn command(&self, network: Network) -> Command {
        let config = match network {
            Network::None => "none.toml",
            Network::NoneRunc => "runc.toml",
            Network::Bridge => "bridge.toml",
        };
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(self.root.join(config));
        command
    }

    /// `berth run -d --network ... REFERENCE sleep 1000`'s arguments.
    pub fn run_args(network: Network, reference: &str) -> Vec<&str> {
        let network = match network {
            Network::None | Network::NoneRunc => "none",
            Network::Bridge => "bridge",
        };
        vec![
            "run",
            "-d",
            "--network",
            network,
            reference,
            "sleep",
            "1000",
        ]
    }

    /// Removes a container, with the config it was run with (the network's teardown
    /// follows the config).
    pub async fn remove(&self, network: Network, id: &str) -> anyhow::Result<()> {
        process::output(self.command(network).args(["rm", "-f", id]), "berth rm -f").await?;
        Ok(())
    }

    /// The container's directory (`inspect`'s `[0].dir`).
    pub async fn container_dir(&self, id: &str) -> anyhow::Result<PathBuf> {
        let json = process::output(
            self.command(Network::None).args(["inspect", id]),
            "berth inspect",
        )
        .await?;
        let value: serde_json::Value = serde_json::from_str(&json)?;
        let dir = value[0]["dir"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("berth inspect {id} gave no [0].dir"))?;
        Ok(PathBuf::from(dir))
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let root = self.root.to_string_lossy();
        let config = self.root.join("bridge.toml");
        let config = config.to_string_lossy();
        let mut all = vec!["--root", &root, "--config", &config];
        all.extend_from_slice(args);
        process::cleanup(&self.binary.to_string_lossy(), &all)
    }
}

impl Drop for BerthNode {
    fn drop(&mut self) {
        let ids = self.cli(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let removed = self.cli(&["rm", "-f", id]);
            if !removed.status.success() {
                eprintln!(
                    "cleanup: berth rm -f {id}: {}",
                    String::from_utf8_lossy(&removed.stderr).trim()
                );
            }
        }
        berth_e2e::process::kill_processes_naming(&self.root);
        berth_e2e::process::unmount_under(&self.root);
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            process::cleanup("ip", &["link", "del", &self.bridge]);
        }
    }
}
