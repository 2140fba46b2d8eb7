//! TLS towards the apps: an `[[upstream]]` with `tls = true` is spoken to
//! over TLS, its certificate verified against the system roots or its own
//! `ca` file for the `sni` name (never off unless `insecure_skip_verify`
//! says so), optionally with a client certificate (mTLS) and HTTP/2 (`h2`,
//! for gRPC backends). Both engines and the health checks build their peer
//! here, so they speak to an upstream alike.
//!
//! Pingora turns verification off for a TLS peer whose SNI is empty; the
//! config check refuses such an upstream, and [`UpstreamTls::peer`] never
//! builds one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::protocols::tls::ALPN;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

/// The TLS settings of one upstream, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTlsFiles {
    /// `sni`: the name sent and verified.
    pub sni: String,
    /// `ca`: verify against this PEM file instead of the system roots.
    pub ca: Option<String>,
    /// `insecure_skip_verify`: accept any certificate.
    pub insecure_skip_verify: bool,
    /// `client_cert` and `client_key`: a client certificate (mTLS).
    pub client: Option<(String, String)>,
    /// `h2`: HTTP/2 to the upstream (ALPN h2 only).
    pub h2: bool,
}

/// An upstream's TLS settings, their files loaded.
#[derive(Clone)]
pub struct UpstreamTls {
    pub files: UpstreamTlsFiles,
    ca: Option<Arc<[WrappedX509]>>,
    client: Option<Arc<CertKey>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Loads and checks the files: the CA file holds at least one
    /// certificate that parses, the client certificate matches its key.
    /// The error names the key (`sni`, `ca`, `client_cert`) and says what
    /// is wrong with its file.
    pub fn load(files: UpstreamTlsFiles) -> Result<UpstreamTls, (&'static str, String)> {
        if files.sni.is_empty() {
            return Err(("sni", "must not be empty".to_owned()));
        }
        let ca = match &files.ca {
            None => None,
            Some(path) => Some(load_ca(path).map_err(|e| ("ca", e))?),
        };
        let client = match &files.client {
            None => None,
            Some((cert, key)) => Some(Arc::new(
                load_client(cert, key).map_err(|e| ("client_cert", e))?,
            )),
        };
        Ok(UpstreamTls { files, ca, client })
    }

    /// Pingora's peer for `addr`: TLS with this SNI, verified unless
    /// `insecure_skip_verify`, ALPN h2 or http/1.1.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.files.sni.clone());
        peer.options.verify_cert = !self.files.insecure_skip_verify;
        peer.options.verify_hostname = !self.files.insecure_skip_verify;
        peer.options.alpn = if self.files.h2 { ALPN::H2 } else { ALPN::H1 };
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer
    }
}

/// The certificates of a PEM file, for a per-upstream root store.
fn load_ca(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&data) {
        let pem = pem.map_err(|e| format!("{path}: not a PEM file: {e}"))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| format!("{path}: a certificate does not parse: {e}"))?;
        out.push(WrappedX509::new(pem.contents, parse_x509));
    }
    if out.is_empty() {
        return Err(format!("{path}: no certificate in it (PEM expected)"));
    }
    Ok(out.into())
}

/// A client certificate chain and its key, checked to match.
fn load_client(cert: &str, key: &str) -> Result<CertKey, String> {
    for path in [cert, key] {
        std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let (chain, private) = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot read {cert} or {key}: {e}"))?
        .ok_or_else(|| {
            format!("no certificate in {cert} or no private key in {key} (PEM expected)")
        })?;
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no TLS crypto provider".to_owned())?;
    pingora::tls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider)
        .map_err(|e| format!("{key} does not match {cert} or cannot be used: {e}"))?;
    let chain = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    Ok(CertKey::new(chain, private.secret_der().to_vec()))
}

/// Opens a TLS connection to `addr` as `tls` says (verified, with ALPN),
/// within `timeout` for TCP and handshake alike.
pub async fn connect(
    tls: &UpstreamTls,
    addr: SocketAddr,
    timeout: Duration,
) -> pingora::Result<Stream> {
    // One connector for the process: its own pool is not used, and its
    // default root store (the system's) is loaded once.
    static CONNECTOR: OnceLock<TransportConnector> = OnceLock::new();
    let connector = CONNECTOR.get_or_init(|| TransportConnector::new(None));
    let mut peer = tls.peer(addr);
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    connector.new_stream(&peer).await
}
