//! `[[tls.certificates]]`: each certificate is loaded and checked here, so
//! `check`, start and reload refuse the same files for the same reasons.

use super::checker::Checker;
use super::file;
use super::keypath::{idx, sub, Seg};
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
