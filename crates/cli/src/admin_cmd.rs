//! Commands that talk to a running registry's admin API.

use anyhow::{bail, Context as _};
use berth_units::human_bytes;
use serde_json::Value;

/// A blocking client of `/admin/`.
pub struct AdminClient {
    url: String,
    credentials: Option<(String, String)>,
    http: reqwest::blocking::Client,
}

impl AdminClient {
    pub fn new(url: String, credentials: Option<(String, String)>) -> AdminClient {
        AdminClient {
            url: url.trim_end_matches('/').to_owned(),
            credentials,
            http: reqwest::blocking::Client::builder()
                .timeout(None)
                .build()
                .unwrap_or_default(),
        }
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.request(method, &url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().with_context(|| {
            format!(
                "cannot reach the registry at {} (is it running? --url)",
                self.url
            )
        })?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        if text.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&text).context("the registry answered with invalid JSON")?,
        ))
    }
}

pub fn gc(client: &AdminClient, dry_run: bool, delete_untagged: bool) -> anyhow::Result<()> {
    let path = format!("/admin/gc?dry_run={dry_run}&delete_untagged={delete_untagged}");
    eprintln!(
        "collecting garbage{}…",
        if dry_run { " (dry run)" } else { "" }
    );
    let report = client
        .send(reqwest::Method::POST, &path, None)?
        .context("empty garbage-collection report")?;
    let verb = if dry_run { "would free" } else { "freed" };
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    for tag in list("expired_tags") {
        println!(
            "tag       {}:{}  ({})",
            tag["repository"].as_str().unwrap_or("?"),
            tag["tag"].as_str().unwrap_or("?"),
            tag["reason"].as_str().unwrap_or("")
        );
    }
    for manifest in list("untagged_manifests") {
        println!(
            "manifest  {}@{}  ({})",
            manifest["repository"].as_str().unwrap_or("?"),
            manifest["digest"].as_str().unwrap_or("?"),
            manifest["reason"].as_str().unwrap_or("")
        );
    }
    println!(
        "{verb} {}: {} unreferenced blobs ({}), {} orphaned files ({}); {} tags expired, {} untagged manifests, {} abandoned uploads; {} pinned digests kept; {:.2}s",
        human_bytes(count("blob_bytes") + count("orphan_bytes")),
        count("blobs"),
        human_bytes(count("blob_bytes")),
        count("orphan_files"),
        human_bytes(count("orphan_bytes")),
        list("expired_tags").len(),
        list("untagged_manifests").len(),
        count("uploads"),
        count("pinned"),
        report["seconds"].as_f64().unwrap_or(0.0),
    );
    if dry_run && !list("untagged_manifests").is_empty() {
        println!(
            "(the blobs of the manifests listed above are freed by the same run, not counted here)"
        );
    }
    Ok(())
}

pub fn du(client: &AdminClient) -> anyhow::Result<()> {
    let usage = client
        .send(reqwest::Method::GET, "/admin/usage", None)?
        .context("empty usage report")?;
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>12}",
        "REPOSITORY", "SIZE", "EXCLUSIVE", "SHARED", "QUOTA"
    );
    for repo in usage["repositories"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let bytes = |key: &str| human_bytes(repo[key].as_u64().unwrap_or(0));
        let quota = repo["quota"].as_u64().map_or("-".to_owned(), human_bytes);
        println!(
            "{:<40} {:>12} {:>12} {:>12} {:>12}",
            repo["repository"].as_str().unwrap_or("?"),
            bytes("bytes"),
            bytes("exclusive"),
            bytes("shared"),
            quota
        );
    }
    println!(
        "stored on disk: {}",
        human_bytes(usage["stored_bytes"].as_u64().unwrap_or(0))
    );
    Ok(())
}

pub fn pin(client: &AdminClient, digest: &str, reason: &str) -> anyhow::Result<()> {
    client.send(
        reqwest::Method::PUT,
        &format!("/admin/pins/{digest}"),
        Some(serde_json::json!({"reason": reason})),
    )?;
    println!("pinned {digest}");
    Ok(())
}

pub fn unpin(client: &AdminClient, digest: &str, force: bool) -> anyhow::Result<()> {
    let query = if force { "?force=true" } else { "" };
    client.send(
        reqwest::Method::DELETE,
        &format!("/admin/pins/{digest}{query}"),
        None,
    )?;
    println!("unpinned {digest}");
    Ok(())
}

pub fn pins(client: &AdminClient) -> anyhow::Result<()> {
    let pins = client
        .send(reqwest::Method::GET, "/admin/pins", None)?
        .context("empty answer")?;
    println!("{:<72} {:<14} REASON", "DIGEST", "OWNER");
    for pin in pins["pins"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<72} {:<14} {}",
            pin["digest"].as_str().unwrap_or("?"),
            pin["owner"].as_str().unwrap_or("-"),
            pin["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
