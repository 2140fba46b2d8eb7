//! The checks of `[rate_limit]`: failed-authentication and per-user buckets.

use std::time::Duration;

use super::checker::Checker;
use super::file;
use super::keypath::{idx, sub, Seg};

impl<'r, 't> Checker<'r, 't> {
    /// `[rate_limit]`: two optional buckets and the trusted proxies.
    pub(super) fn rate_limit(&mut self) -> Option<super::model::RateLimitSettings> {
        let path = [Seg::Key("rate_limit".to_owned())];
        if self.lookup(&path).is_none() {
            return Some(Default::default());
        }
        let f: file::RateLimit = self.section(&path)?;
        let has_failed_auth = f.failed_auth_per_ip.is_some();
        let failed_auth_per_ip =
            self.bucket(&sub(&path, "failed_auth_per_ip"), f.failed_auth_per_ip);
        let requests_per_user = self.bucket(&sub(&path, "requests_per_user"), f.requests_per_user);
        let proxies_path = sub(&path, "trusted_proxies");
        let mut trusted_proxies = Vec::new();
        let mut ok = true;
        for (i, text) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match super::model::Cidr::parse(text) {
                Some(cidr) => trusted_proxies.push(cidr),
                None => {
                    self.error(
                        &idx(&proxies_path, i),
                        format!("invalid network {text:?}; write e.g. \"10.0.0.0/8\" or \"127.0.0.1/32\""),
                    );
                    ok = false;
                }
            }
        }
        let shared = f.shared.unwrap_or(false);
        if shared && !has_failed_auth {
            self.error(
                &sub(&path, "shared"),
                "shares `failed_auth_per_ip`, which is not set",
            );
        }
        Some(super::model::RateLimitSettings {
            failed_auth_per_ip: failed_auth_per_ip?,
            requests_per_user: requests_per_user?,
            trusted_proxies,
            shared,
        })
        .filter(|_| ok)
    }

    /// `{ burst = N, per = "1m" }`; `Some(None)` when absent.
    pub(super) fn bucket(
        &mut self,
        path: &[Seg],
        f: Option<file::Bucket>,
    ) -> Option<Option<super::model::RateLimit>> {
        let Some(f) = f else { return Some(None) };
        let burst_path = sub(path, "burst");
        let burst = match f.burst {
            None => {
                self.missing_key(&burst_path);
                None
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    self.error(&burst_path, "must be between 1 and 4294967295");
                    None
                }
            },
        };
        let per_path = sub(path, "per");
        let per = match f.per {
            None => {
                self.missing_key(&per_path);
                None
            }
            Some(text) => {
                let before = self.errors.len();
                let d = self.duration(&per_path, Some(&text), Duration::ZERO, false);
                (self.errors.len() == before).then_some(d)
            }
        };
        Some(Some(super::model::RateLimit {
            burst: burst?,
            per: per?,
        }))
    }
}
