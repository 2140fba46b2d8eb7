//! `[[tls.certificates]]`: each certificate is loaded and checked here, so
//! `check`, start and reload refuse the same files for the same reasons.

use super::checker::Checker;
use super::file;
use super::keypath::{idx, sub, Seg};
use super::model::{AcmeChallenge, AcmeKeyType};
use crate::tls::upstream::{UpstreamTls, UpstreamTlsFiles};
use crate::tls::CertificateFiles;

use std::time::Duration;

/// How often certificate files are looked at for a change on disk.
const DEFAULT_WATCH: Duration = Duration::from_secs(10);

impl Checker<'_, '_> {
    /// The certificates, loaded once to check them; `listen_tls` says
    /// whether the server has TLS listeners that need them.
    pub(super) fn tls(&mut self, listen_tls: bool) -> Option<(Vec<CertificateFiles>, Duration)> {
        let path = [Seg::Key("tls".to_owned())];
        let cert_path = sub(&path, "certificates");
        if self.lookup(&path).is_none() {
            if listen_tls {
                self.missing(
                    &cert_path,
                    "[server] listen_tls needs at least one [[tls.certificates]]",
                );
                return None;
            }
            return Some((Vec::new(), DEFAULT_WATCH));
        }
        let f: file::Tls = self.section(&path)?;
        let watch = self.duration(
            &sub(&path, "watch_interval"),
            f.watch_interval.as_deref(),
            DEFAULT_WATCH,
            true,
        );
        let entries = f.certificates.unwrap_or_default();
        if listen_tls && entries.is_empty() {
            self.error(
                &cert_path,
                "[server] listen_tls needs at least one [[tls.certificates]]",
            );
        }
        let mut out = Vec::new();
        let mut ok = true;
        let mut defaults = 0;
        for (i, entry) in entries.into_iter().enumerate() {
            let at = idx(&cert_path, i);
            let (Some(cert), Some(key)) = (entry.cert, entry.key) else {
                for (name, missing) in [("cert", true), ("key", true)] {
                    if missing && self.lookup(&sub(&at, name)).is_none() {
                        self.missing_key(&sub(&at, name));
                    }
                }
                ok = false;
                continue;
            };
            let default = entry.default.unwrap_or(false);
            defaults += usize::from(default);
            if defaults > 1 && default {
                self.error(
                    &sub(&at, "default"),
                    "only one certificate may be the default",
                );
                ok = false;
            }
            let files = CertificateFiles { cert, key, default };
            if let Err(why) = crate::tls::load(&files) {
                self.error(&sub(&at, "cert"), why);
                ok = false;
                continue;
            }
            out.push(files);
        }
        if ok {
            if let Err(why) = crate::tls::CertIndex::load(&out) {
                self.error(&cert_path, why);
                ok = false;
            }
        }
        ok.then_some((out, watch))
    }
}

impl Checker<'_, '_> {
    /// An `[[upstream]]`'s TLS keys (`entry` is its path): `Some(None)` for
    /// plain TCP, `None` when they are invalid (and reported).
    pub(super) fn upstream_tls(
        &mut self,
        entry: &[Seg],
        f: &file::Upstream,
    ) -> Option<Option<UpstreamTls>> {
        let tls = f.tls.unwrap_or(false);
        if !tls {
            let mut ok = true;
            for (key, set) in [
                ("sni", f.sni.is_some()),
                ("ca", f.ca.is_some()),
                ("insecure_skip_verify", f.insecure_skip_verify.is_some()),
                ("client_cert", f.client_cert.is_some()),
                ("client_key", f.client_key.is_some()),
                ("h2", f.h2 == Some(true)),
            ] {
                if set {
                    self.error(&sub(entry, key), "only applies with tls = true");
                    ok = false;
                }
            }
            return ok.then_some(None);
        }
        // Pingora verifies no certificate for a peer without SNI: a name is
        // required, from `sni` or from the host of the addresses.
        let sni = match &f.sni {
            Some(sni) => Some(sni.trim_end_matches('.').to_ascii_lowercase()),
            None => dns_host(f.addrs.as_deref().unwrap_or_default()),
        };
        let Some(sni) = sni.filter(|s| !s.is_empty()) else {
            self.error(
                &sub(entry, "tls"),
                "tls = true needs `sni`, the name the upstream's certificate is verified \
                 for (its addrs name no single DNS host); without one no certificate \
                 would be verified",
            );
            return None;
        };
        if pingora::tls::ServerName::try_from(sni.clone()).is_err() {
            self.error(&sub(entry, "sni"), format!("{sni:?} is not a DNS name"));
            return None;
        }
        let client = match (&f.client_cert, &f.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => {
                self.error(&sub(entry, "client_key"), "client_cert needs client_key");
                return None;
            }
            (None, Some(_)) => {
                self.error(&sub(entry, "client_cert"), "client_key needs client_cert");
                return None;
            }
        };
        let files = UpstreamTlsFiles {
            sni,
            ca: f.ca.clone(),
            insecure_skip_verify: f.insecure_skip_verify.unwrap_or(false),
            client,
            h2: f.h2.unwrap_or(false),
        };
        match UpstreamTls::load(files) {
            Ok(tls) => Some(Some(tls)),
            Err((key, why)) => {
                self.error(&sub(entry, key), why);
                None
            }
        }
    }
}

/// The one DNS host every address names (`app.internal:443`), if they do;
/// `None` for IP addresses or hosts that differ.
fn dns_host(addrs: &[String]) -> Option<String> {
    let mut host: Option<String> = None;
    for addr in addrs {
        let name = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        match &host {
            Some(h) if *h != name => return None,
            _ => host = Some(name),
        }
    }
    host
}

/// Let's Encrypt's production directory, `[acme] directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Checker<'_, '_> {
    /// `[acme]`: certificates for the TLS listeners from an ACME server.
    pub(super) fn acme(
        &mut self,
        server: Option<&super::model::ServerSettings>,
        routes: &[super::model::Route],
    ) -> Option<Option<super::model::AcmeSettings>> {
        let path = [Seg::Key("acme".to_owned())];
        if self.lookup(&path).is_none() {
            return Some(None);
        }
        let f: file::Acme = self.section(&path)?;
        let mut ok = true;
        if f.terms_agreed != Some(true) {
            self.error(
                &sub(&path, "terms_agreed"),
                "must be true: ordering certificates accepts the ACME server's terms of service",
            );
            ok = false;
        }
        let Some(storage) = f.storage else {
            self.missing_key(&sub(&path, "storage"));
            return None;
        };
        let challenge = self.choice(
            &sub(&path, "challenge"),
            f.challenge.as_deref(),
            AcmeChallenge::Http01,
            &[
                ("http-01", AcmeChallenge::Http01),
                ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
            ],
        );
        let key_type = self.choice(
            &sub(&path, "key_type"),
            f.key_type.as_deref(),
            AcmeKeyType::EcdsaP256,
            &[
                ("ecdsa-p256", AcmeKeyType::EcdsaP256),
                ("ecdsa-p384", AcmeKeyType::EcdsaP384),
            ],
        );
        ok &= challenge.is_some() && key_type.is_some();
        let challenge = challenge.unwrap_or(AcmeChallenge::Http01);
        let key_type = key_type.unwrap_or(AcmeKeyType::EcdsaP256);
        if let Some(server) = server {
            if challenge == AcmeChallenge::Http01 && server.listen.is_empty() {
                self.error(
                    &sub(&path, "challenge"),
                    "HTTP-01 is answered on a plain [server] listen address: add one, or use \"tls-alpn-01\"",
                );
                ok = false;
            }
            if server.listen_tls.is_empty() {
                self.error(
                    &path,
                    "[acme] certifies the TLS listeners: set [server] listen_tls",
                );
                ok = false;
            }
        }
        let names = match f.names {
            Some(names) => names,
            None => {
                let mut names: Vec<String> = routes.iter().filter_map(|r| r.host.clone()).collect();
                names.sort();
                names.dedup();
                names
            }
        };
        if names.is_empty() {
            self.error(
                &sub(&path, "names"),
                "no names to certify: list them, or give routes a `host`",
            );
            ok = false;
        }
        for (i, name) in names.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                self.error(
                    &idx(&sub(&path, "names"), i),
                    format!("{name:?} is not a DNS name"),
                );
                ok = false;
            }
        }
        let directory = f.directory.unwrap_or_else(|| LETS_ENCRYPT.to_owned());
        if !directory.starts_with("https://") {
            self.error(&sub(&path, "directory"), "must be an https:// URL");
            ok = false;
        }
        let ca = f.ca.map(|ca| self.base.join(ca));
        if let Some(ca) = &ca {
            if std::fs::metadata(ca).is_err() {
                self.error(&sub(&path, "ca"), format!("cannot read {}", ca.display()));
                ok = false;
            }
        }
        let share_key = match f.share_key.as_deref() {
            None => None,
            Some(text) => {
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                {
                    Some(key) => Some(key),
                    None => {
                        // The key itself is never echoed.
                        self.error(
                            &sub(&path, "share_key"),
                            "must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)",
                        );
                        ok = false;
                        None
                    }
                }
            }
        };
        let redis_prefix = f
            .redis_prefix
            .unwrap_or_else(|| "sessiongate:acme:".to_owned());
        if redis_prefix.is_empty() {
            self.error(&sub(&path, "redis_prefix"), "must not be empty");
            ok = false;
        }
        ok.then(|| {
            Some(super::model::AcmeSettings {
                directory,
                contact: f.contact.unwrap_or_default(),
                names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                storage: self.base.join(&storage),
                ca,
                share_key,
                redis_prefix,
                redis_url: String::new(),
                challenge,
                key_type,
            })
        })
    }
}

impl Checker<'_, '_> {
    /// `[acme] share_key`: the fleet's state is in `[redis]` (standalone),
    /// under a prefix no session or token key can reach.
    pub(super) fn acme_shared(
        &mut self,
        acme: &super::model::AcmeSettings,
        redis: &super::model::RedisSettings,
        profiles: &[super::model::Profile],
    ) {
        if acme.share_key.is_none() {
            return;
        }
        let path = [Seg::Key("acme".to_owned())];
        if redis.topology != super::model::RedisTopology::Standalone {
            self.error(
                &sub(&path, "share_key"),
                "sharing through Redis needs [redis] in standalone mode (a `url`)",
            );
        }
        let Some(ours) =
            super::model::KeyTemplate::parse(&format!("{}{{id}}", acme.redis_prefix), "{id}")
        else {
            return;
        };
        let meets = profiles
            .iter()
            .filter(|p| p.redis.is_none())
            .flat_map(|p| std::iter::once(&p.session.key).chain(p.session.bearer_key.as_ref()))
            .any(|k| k.overlaps(&ours));
        if meets {
            self.error(
                &sub(&path, "redis_prefix"),
                "can name the same Redis keys as a session `key`: give it a prefix of its own",
            );
        }
    }
}
