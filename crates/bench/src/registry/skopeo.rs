//! skopeo copies between an OCI layout and a registry, timed.
//!
//! skopeo remembers in its blob-info cache (`/var/lib/containers/cache` for root) where it
//! has pushed each blob, and on a later push to the same registry mounts the blob from that
//! repository instead of uploading it. To time real uploads every copy runs in a private
//! mount namespace with an empty cache bound over that directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::servers::Registry;

/// Where c/image keeps the blob-info cache of a process running as root.
const ROOT_BLOB_INFO_CACHE: &str = "/var/lib/containers/cache";

/// Runs skopeo with a policy that accepts everything and, where it can, a fresh cache.
pub struct Skopeo {
    policy: PathBuf,
    /// Fresh caches are made under here; `None` when copies share the system cache.
    caches: Option<PathBuf>,
    copies: usize,
}

impl Skopeo {
    /// Sets skopeo up in `work`. Falls back to the shared cache, with a warning, if this
    /// process cannot make mount namespaces.
    pub async fn new(work: &Path) -> anyhow::Result<Skopeo> {
        let policy = work.join("policy.json");
        tokio::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .await?;
        let caches = work.join("skopeo-caches");
        tokio::fs::create_dir_all(&caches).await?;
        let isolated = tokio::fs::create_dir_all(ROOT_BLOB_INFO_CACHE)
            .await
            .is_ok()
            && Command::new("unshare")
                .args(["--mount", "--propagation", "private", "true"])
                .status()
                .await
                .is_ok_and(|s| s.success());
        if !isolated {
            eprintln!(
                "warning: cannot give skopeo an empty blob-info cache (needs root); \
                 repeated pushes to one registry may mount blobs instead of uploading them"
            );
        }
        Ok(Skopeo {
            policy,
            caches: isolated.then_some(caches),
            copies: 0,
        })
    }

    /// Copies the image at `source` (`oci:DIR:TAG`) to `repo:tag` on `registry`.
    pub async fn push(
        &mut self,
        source: &str,
        registry: &Registry,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<Duration> {
        let dest = format!("docker://{}/{repo}:{tag}", registry.host());
        self.copy(&["--dest-tls-verify=false", source, &dest]).await
    }

    /// Copies `repo:tag` on `registry` into a new layout at `dest`.
    pub async fn pull(
        &mut self,
        registry: &Registry,
        repo: &str,
        tag: &str,
        dest: &Path,
    ) -> anyhow::Result<Duration> {
        let source = format!("docker://{}/{repo}:{tag}", registry.host());
        let dest = format!("oci:{}:{tag}", dest.display());
        self.copy(&["--src-tls-verify=false", &source, &dest]).await
    }

    async fn copy(&mut self, args: &[&str]) -> anyhow::Result<Duration> {
        let mut cmd = match &self.caches {
            Some(caches) => {
                self.copies += 1;
                let cache = caches.join(self.copies.to_string());
                tokio::fs::create_dir(&cache).await?;
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        r#"mount --bind "$0" {ROOT_BLOB_INFO_CACHE} && exec skopeo "$@""#
                    ))
                    .arg(cache);
                cmd
            }
            None => Command::new("skopeo"),
        };
        cmd.arg("--policy")
            .arg(&self.policy)
            .args(["copy", "--quiet"])
            .args(args)
            .kill_on_drop(true);
        let started = Instant::now();
        let out = cmd.output().await.context("running skopeo")?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "skopeo copy {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    }
}
