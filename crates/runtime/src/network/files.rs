//! The per-container `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`, written into a
//! directory for the caller to bind-mount into the container.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::NetworkError;

/// Writes `<dir>/hosts`: the localhost lines, the container's own name on `ip`, then `extra`.
pub fn write_hosts(
    dir: &Path,
    hostname: &str,
    ip: IpAddr,
    extra: &[(String, IpAddr)],
) -> Result<PathBuf, NetworkError> {
    check_hostname(hostname)?;
    for (name, _) in extra {
        check_hostname(name)?;
    }
    write(dir, "hosts", &render_hosts(hostname, ip, extra))
}

/// Writes `<dir>/resolv.conf` with these nameservers and search domains (none is fine: the
/// container then resolves nothing but `/etc/hosts`).
pub fn write_resolv_conf(
    dir: &Path,
    nameservers: &[IpAddr],
    search: &[String],
) -> Result<PathBuf, NetworkError> {
    for domain in search {
        check_hostname(domain)?;
    }
    write(dir, "resolv.conf", &render_resolv_conf(nameservers, search))
}

/// Writes `<dir>/hostname`.
pub fn write_hostname(dir: &Path, name: &str) -> Result<PathBuf, NetworkError> {
    check_hostname(name)?;
    write(dir, "hostname", &format!("{name}\n"))
}

/// The nameservers in a host's resolv.conf that work from a container's own network
/// namespace: loopback resolvers (127.0.0.53 and the like, ::1) are left out, since inside
/// the namespace they would be the container itself.
pub fn host_nameservers(resolv_conf: &Path) -> Vec<IpAddr> {
    fs::read_to_string(resolv_conf)
        .map(|text| usable_nameservers(&text))
        .unwrap_or_default()
}

pub(super) fn usable_nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                // A scoped IPv6 address (fe80::1%eth0) names a host interface: useless inside.
                .and_then(|word| word.parse::<IpAddr>().ok())
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}

pub(super) fn render_hosts(hostname: &str, ip: IpAddr, extra: &[(String, IpAddr)]) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    let _ = writeln!(text, "{ip}\t{hostname}");
    for (name, ip) in extra {
        let _ = writeln!(text, "{ip}\t{name}");
    }
    text
}

pub(super) fn render_resolv_conf(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut text = String::new();
    if !search.is_empty() {
        let _ = writeln!(text, "search {}", search.join(" "));
    }
    for ip in nameservers {
        let _ = writeln!(text, "nameserver {ip}");
    }
    text
}

/// Host names go into line-based files: keep them to what DNS allows.
pub(super) fn check_hostname(name: &str) -> Result<(), NetworkError> {
    let reason = if name.is_empty() || name.len() > 253 {
        Some("it must be 1 to 253 characters long")
    } else if name.split('.').any(|label| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        Some("use dot-separated labels of letters, digits and inner '-' (at most 63 each)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetworkError::InvalidHostname {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn write(dir: &Path, file: &str, text: &str) -> Result<PathBuf, NetworkError> {
    let path = dir.join(file);
    fs::write(&path, text).map_err(|source| NetworkError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
