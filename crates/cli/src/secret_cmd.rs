//! `berth secret`: an app's secrets on the server (values go in on stdin, never come out).

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use crate::server_cmd::{Client, ClientArgs};

/// `berth secret`
#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret (a new version) from stdin; releases deployed from now on use it.
    Set {
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
        /// The secret: an environment variable name.
        name: String,
    },
    /// List an app's secrets and their versions (never the values).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
    },
    /// Delete every version of a secret.
    Rm {
        #[command(flatten)]
        client: ClientArgs,
        /// The app.
        app: String,
        /// The secret.
        name: String,
    },
}

/// Runs a `berth secret` command.
pub fn run(command: SecretCommand, root: &Path) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set { client, app, name } => {
            let client = Client::new(&client, root)?;
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("value of {name} (end with Ctrl-D):");
            }
            let mut value = Vec::new();
            stdin
                .read_to_end(&mut value)
                .context("reading the secret's value from stdin")?;
            // `echo value |` adds a newline that is not part of the secret.
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            if value.is_empty() {
                bail!("no value on stdin: pipe it in, e.g. `printf %s \"$VALUE\" | berth secret set {app} {name}`");
            }
            let answer = client.send(
                reqwest::Method::PUT,
                &format!("/v1/apps/{app}/secrets/{name}"),
                |request| request.body(value),
            )?;
            println!(
                "secret {name} of {app} set (version {}); deploy to use it",
                answer["version"]
            );
        }
        SecretCommand::List { client, app } => {
            let client = Client::new(&client, root)?;
            let secrets = client.get(&format!("/v1/apps/{app}/secrets"))?;
            println!("{:<32} VERSIONS", "NAME");
            for secret in secrets.as_array().into_iter().flatten() {
                let versions: Vec<String> = secret["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.to_string())
                    .collect();
                println!(
                    "{:<32} {}",
                    secret["name"].as_str().unwrap_or_default(),
                    versions.join(",")
                );
            }
        }
        SecretCommand::Rm { client, app, name } => {
            let client = Client::new(&client, root)?;
            let answer = client.call(
                reqwest::Method::DELETE,
                &format!("/v1/apps/{app}/secrets/{name}"),
                None,
            )?;
            println!(
                "secret {name} of {app} deleted ({} versions)",
                answer["versions"]
            );
        }
    }
    Ok(())
}
