//! Certificates made in the test (rcgen, ECDSA P-256) and `curl` as the TLS
//! and HTTP/2 client: what it sent, what it got, which protocol it spoke.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and key written as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate for `names`, valid now (or, with `expired`,
/// for a year that has passed), written into `dir` as `<stem>.pem` and
/// `<stem>.key`.
pub fn certificate(dir: &Path, stem: &str, names: &[&str], expired: bool) -> CertFiles {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).expect("certificate params");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let files = CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

/// What curl saw.
#[derive(Debug)]
pub struct Curl {
    /// 0 when no HTTP exchange happened (e.g. the handshake failed).
    pub status: u16,
    /// "1.1" or "2".
    pub version: String,
    pub body: String,
    pub headers: String,
}

/// `curl` to `https://<name>:<port><path>` resolved to `addr`, trusting
/// `ca` (its certificate must be the one the gateway serves for `name`),
/// with `--http2` or `--http1.1`.
pub fn curl(
    addr: SocketAddr,
    name: &str,
    path: &str,
    ca: Option<&Path>,
    h2: bool,
    extra: &[&str],
) -> Curl {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .arg("-D")
    .arg(&headers)
    .arg(if h2 { "--http2" } else { "--http1.1" });
    match ca {
        Some(ca) => {
            cmd.arg("--cacert").arg(ca);
        }
        None => {
            cmd.arg("-k");
        }
    }
    let host_is_ip = name.parse::<std::net::IpAddr>().is_ok();
    if !host_is_ip {
        cmd.arg("--resolve")
            .arg(format!("{name}:{}:{}", addr.port(), addr.ip()));
    }
    cmd.args(extra);
    cmd.arg(format!("https://{name}:{}{path}", addr.port()));
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut parts = last.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = parts.next().unwrap_or("").to_owned();
    Curl {
        status,
        version,
        body: body.to_owned(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}

/// The echo upstream's view of the request in a curl body: its headers,
/// lower-cased names.
pub fn echoed(body: &str, name: &str) -> Vec<String> {
    let doc: serde_json::Value = match serde_json::from_str(body) {
        Ok(doc) => doc,
        Err(_) => return Vec::new(),
    };
    doc["headers"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
                .filter_map(|p| p[1].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
