//! TLS on the public listeners: the certificates of `[[tls.certificates]]`,
//! each chosen by the SNI a client sends from its SAN names (exact names,
//! then `*.example.com` wildcards of one label, then the default certificate
//! for clients that name none or an unknown one; without a default their
//! handshake is refused), and what a request learns of its connection's
//! handshake: the names the connection's certificate is authoritative for,
//! so a request for any other host is answered 421 (domain fronting).
//!
//! TLS 1.2 and 1.3 only, rustls's modern cipher suites, ALPN `h2` and
//! `http/1.1`, no 0-RTT (rustls's defaults, with the `ring` provider).

pub mod upstream;

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// One `[[tls.certificates]]` entry as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// `cert`: the PEM chain, leaf first.
    pub cert: String,
    /// `key`: the PEM private key.
    pub key: String,
    /// `default`: served to clients whose SNI no certificate covers.
    pub default: bool,
}

/// A certificate loaded and checked.
pub struct Loaded {
    /// Its DNS SAN names, lower case (`*.example.com` for wildcards).
    pub names: Vec<String>,
    /// When it starts being valid.
    pub not_before: SystemTime,
    /// When it stops being valid.
    pub not_after: SystemTime,
    key: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Reads a certificate chain and its key, and checks them: the PEM parses,
/// the key matches the leaf, the leaf is valid now and names at least one
/// DNS name. The error says which, for `check` and a reload to show.
pub fn load(files: &CertificateFiles) -> Result<Loaded, String> {
    for path in [&files.cert, &files.key] {
        std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let (chain, key) = pingora::tls::load_certs_and_key_files(&files.cert, &files.key)
        .map_err(|e| format!("cannot read {} or {}: {e}", files.cert, files.key))?
        .ok_or_else(|| {
            format!(
                "no certificate in {} or no private key in {} (PEM expected)",
                files.cert, files.key
            )
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("no certificate in {}", files.cert))?
        .clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{}: the certificate does not parse: {e}", files.cert))?;
    let validity = parsed.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(format!("{}: the certificate is not valid yet", files.cert));
    }
    if now >= not_after {
        return Err(format!("{}: the certificate has expired", files.cert));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let dns = dns.trim_end_matches('.').to_ascii_lowercase();
                if !dns.is_empty() {
                    names.push(dns);
                }
            }
        }
    }
    if names.is_empty() {
        return Err(format!(
            "{}: the certificate names no DNS name (subjectAltName)",
            files.cert
        ));
    }
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no TLS crypto provider".to_owned())?;
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "{} does not match {} or cannot be used: {e}",
            files.key, files.cert
        )
    })?;
    Ok(Loaded {
        names,
        not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(not_before.max(0) as u64),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
        key: Arc::new(key),
    })
}

/// The loaded certificates, indexed for the handshake.
#[derive(Debug, Default)]
pub struct CertIndex {
    certs: Vec<Loaded>,
    exact: HashMap<String, usize>,
    /// `*.example.com` by `example.com`.
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
}

impl CertIndex {
    /// Loads every certificate; the first problem is the error. Two
    /// certificates claiming one exact name are refused (which one a client
    /// got would depend on the order).
    pub fn load(files: &[CertificateFiles]) -> Result<CertIndex, String> {
        let mut index = CertIndex::default();
        for (i, entry) in files.iter().enumerate() {
            let loaded = load(entry)?;
            for name in &loaded.names {
                let (table, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut index.wildcard, suffix.to_owned()),
                    None => (&mut index.exact, name.clone()),
                };
                if let Some(&earlier) = table.get(&key) {
                    return Err(format!(
                        "{name} is named by {} and {}",
                        files[earlier].cert, entry.cert
                    ));
                }
                table.insert(key, i);
            }
            if entry.default {
                index.default = Some(i);
            }
            index.certs.push(loaded);
        }
        Ok(index)
    }

    /// The certificate for a client's SNI: exact, then one-label wildcard,
    /// then the default.
    fn choose(&self, sni: Option<&str>) -> Option<usize> {
        let Some(sni) = sni else {
            return self.default;
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&sni)
            .or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .copied()
            .or(self.default)
    }

    /// Publishes the certificates' expiry (`sessiongate_tls_certificate_expiry_seconds`).
    pub fn publish(&self) {
        let certs: Vec<_> = self
            .certs
            .iter()
            .map(|c| (c.names.clone(), c.not_after))
            .collect();
        crate::metrics::tls_certificates(&certs);
    }
}

/// Whether a certificate naming `names` is authoritative for `host` (lower
/// case, no port, no trailing dot): an exact name, or a wildcard covering
/// exactly one more label.
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|name| match name.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && parent == suffix),
        None => name == host,
    })
}

/// Chooses each handshake's certificate from the current index; a reload
/// swaps the index, and connections already open keep theirs.
#[derive(Debug)]
pub struct SniResolver {
    index: ArcSwap<CertIndex>,
}

impl SniResolver {
    pub fn new(index: CertIndex) -> Arc<SniResolver> {
        Arc::new(SniResolver {
            index: ArcSwap::from_pointee(index),
        })
    }

    /// Serves `index` to every handshake from now on.
    pub fn swap(&self, index: CertIndex) {
        self.index.store(Arc::new(index));
    }

    pub fn index(&self) -> Arc<CertIndex> {
        self.index.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.index.load();
        let chosen = index.choose(hello.server_name())?;
        Some(index.certs[chosen].key.clone())
    }
}

/// What the files look like on disk: a renewal (certbot, cert-manager)
/// changes one of these, whether it rewrites a file or renames a new one
/// into place.
fn stamp(files: &[CertificateFiles]) -> Vec<Option<(SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

/// Looks at the certificate files every `interval` (from a thread of its
/// own) and serves them anew when they change on disk; files that do not
/// load keep the certificates served and say why, once per change.
/// `files` gives the running configuration's list (a reload may change it).
pub fn watch(
    resolver: Arc<SniResolver>,
    interval: Duration,
    files: impl Fn() -> Vec<CertificateFiles> + Send + 'static,
) -> std::io::Result<()> {
    if interval.is_zero() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("sessiongate-certificates".into())
        .spawn(move || {
            let mut seen = stamp(&files());
            loop {
                std::thread::sleep(interval);
                let current = files();
                let now = stamp(&current);
                if now == seen {
                    continue;
                }
                seen = now;
                match CertIndex::load(&current) {
                    Ok(index) => {
                        index.publish();
                        resolver.swap(index);
                        tracing::info!("TLS certificate files changed on disk: now served");
                    }
                    Err(why) => tracing::error!(
                        %why,
                        "TLS certificate files changed on disk but do not load; still serving the previous ones"
                    ),
                }
            }
        })
        .map(|_| ())
}

/// What a request learns of its connection's TLS handshake (in the
/// connection digest's extension).
#[derive(Debug, Clone)]
pub struct ConnectionTls {
    /// The SNI the client sent, lower case.
    pub sni: Option<String>,
    /// The names of the certificate chosen for it: the hosts this
    /// connection may carry requests for.
    pub names: Arc<[String]>,
}

/// Records each handshake's SNI and certificate names for the requests the
/// connection carries.
pub struct Handshakes {
    pub resolver: Arc<SniResolver>,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let sni = tls
            .server_name()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let index = self.resolver.index.load();
        let names: Arc<[String]> = match index.choose(sni.as_deref()) {
            Some(chosen) => index.certs[chosen].names.clone().into(),
            None => Arc::from(Vec::new()),
        };
        Some(Arc::new(ConnectionTls { sni, names }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let n = names(&["*.example.com", "example.org"]);
        assert!(covers(&n, "a.example.com"));
        assert!(!covers(&n, "example.com"));
        assert!(!covers(&n, "a.b.example.com"));
        assert!(!covers(&n, ".example.com"));
        assert!(covers(&n, "example.org"));
        assert!(!covers(&n, "www.example.org"));
        assert!(!covers(&n, "evil-example.com"));
    }
}
