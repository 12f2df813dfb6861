//! HTTPS with a certificate per host name chosen by SNI, from `openssl`-made PEM files.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_proxy::{CertSpec, Proxy, ProxyConfig, ProxyError, TlsError};
use support::{group, route, TestProxy, Upstream};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("openssl is installed by scripts/install-deps.sh");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A test CA in `dir`, and a leaf certificate signed by it for `host`.
fn make_ca(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=berth test ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    dir.join("ca.pem")
}

fn make_leaf(dir: &Path, host: &str) -> CertSpec {
    let (key, csr, cert, ext) = (
        format!("{host}.key"),
        format!("{host}.csr"),
        format!("{host}.pem"),
        format!("{host}.ext"),
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={host}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    CertSpec {
        hosts: vec![host.to_owned()],
        cert_path: dir.join(cert),
        key_path: dir.join(key),
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_for_each_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let shop = make_leaf(dir.path(), "shop.example");
    let blog = make_leaf(dir.path(), "blog.example");
    let shop_up = Upstream::start("shop").await;
    let blog_up = Upstream::start("blog").await;
    let proxy = TestProxy::start_with(ProxyConfig {
        https: vec!["127.0.0.1:0".parse().unwrap()],
        certs: vec![shop, blog],
        ..ProxyConfig::default()
    })
    .await;
    proxy
        .proxy
        .set_routes(vec![
            route(
                "shop",
                "shop.example",
                "/",
                vec![group("r1", 1, &[&shop_up])],
            ),
            route(
                "blog",
                "blog.example",
                "/",
                vec![group("r1", 1, &[&blog_up])],
            ),
        ])
        .unwrap();
    let addr = proxy.proxy.https_addrs()[0];
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .resolve("shop.example", addr)
        .resolve("blog.example", addr)
        .resolve("other.example", addr)
        .build()
        .unwrap();
    // The client checks the certificate against the name it asked for, so a success
    // means the proxy presented that name's certificate.
    for (host, name) in [("shop.example", "shop"), ("blog.example", "blog")] {
        let url = format!("https://{host}:{}/", addr.port());
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), name);
    }
    let headers = client
        .get(format!("https://blog.example:{}/headers", addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(headers.contains("x-forwarded-proto: https\n"), "{headers}");
    // HTTP/2 by ALPN: the request has no Host header, only :authority, and still routes,
    // and the upstream (HTTP/1.1) gets the Host.
    let resolve = format!("blog.example:{}:127.0.0.1", addr.port());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-w",
            "\nversion=%{http_version}",
            "--resolve",
            &resolve,
        ])
        .arg("--cacert")
        .arg(dir.path().join("ca.pem"))
        .arg(format!("https://blog.example:{}/headers", addr.port()))
        .output()
        .await
        .expect("curl is installed by scripts/install-deps.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("version=2"), "{text}");
    assert!(
        text.contains(&format!("host: blog.example:{}\n", addr.port())),
        "{text}"
    );
    // An unknown name gets the default (first) certificate, which is not valid for it.
    let unknown = client
        .get(format!("https://other.example:{}/", addr.port()))
        .send()
        .await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn https_without_a_certificate_or_with_a_bad_file_is_refused() {
    let refused = Proxy::bind(ProxyConfig {
        https: vec!["127.0.0.1:0".parse().unwrap()],
        ..ProxyConfig::default()
    })
    .await;
    assert!(matches!(
        refused,
        Err(ProxyError::Tls(TlsError::NoCertificate))
    ));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let refused = Proxy::bind(ProxyConfig {
        https: vec!["127.0.0.1:0".parse().unwrap()],
        certs: vec![CertSpec {
            hosts: vec!["shop.example".into()],
            cert_path: dir.path().join("empty.pem"),
            key_path: dir.path().join("missing.key"),
        }],
        ..ProxyConfig::default()
    })
    .await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("empty.pem"), "{message}");
}
