//! `berth volume`: an app's named volumes on the server.

use std::path::Path;

use clap::Subcommand;

use crate::server_cmd::{Client, ClientArgs};

/// `berth volume`
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// List an app's named volumes, their directories and the containers that mount them.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
    },
    /// Remove a named volume and its data (refused while a container mounts it).
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
        /// The volume.
        name: String,
    },
}

/// Runs a `berth volume` command.
pub fn run(command: VolumeCommand, root: &Path) -> anyhow::Result<()> {
    match command {
        VolumeCommand::Ls { client, app } => {
            let client = Client::new(&client, root)?;
            let volumes = client.get(&format!("/v1/apps/{app}/volumes"))?;
            println!("{:<24} {:<48} USED BY", "NAME", "PATH");
            for volume in volumes.as_array().into_iter().flatten() {
                let used_by: Vec<&str> = volume["used_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                println!(
                    "{:<24} {:<48} {}",
                    volume["name"].as_str().unwrap_or_default(),
                    volume["path"].as_str().unwrap_or_default(),
                    used_by.join(",")
                );
            }
        }
        VolumeCommand::Rm { client, app, name } => {
            let client = Client::new(&client, root)?;
            client.call(
                reqwest::Method::DELETE,
                &format!("/v1/apps/{app}/volumes/{name}"),
                None,
            )?;
            println!("volume {name} of {app} removed");
        }
    }
    Ok(())
}
