//! The checks of `[redis]`: the URL, timeouts, the circuit breaker and the topology.

use std::time::Duration;

use super::checker::Checker;
use super::file;
use super::keypath::{sub, Seg};
use super::model::{RedisSettings, RedisTopology};

impl<'r, 't> Checker<'r, 't> {
    pub(super) fn redis(&mut self) -> Option<RedisSettings> {
        self.redis_at(&[Seg::Key("redis".to_owned())])
    }

    /// A Redis table (`[redis]`, or a profile's) at `path`.
    pub(super) fn redis_at(&mut self, path: &[Seg]) -> Option<RedisSettings> {
        let path = path.to_vec();
        if self.lookup(&path).is_none() {
            self.missing(&path, "missing required table [redis]");
            return None;
        }
        let f: file::Redis = self.section(&path)?;

        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Mode {
            Standalone,
            Sentinel,
            Cluster,
        }
        let mode = self.choice(
            &sub(&path, "mode"),
            f.mode.as_deref(),
            Mode::Standalone,
            &[
                ("standalone", Mode::Standalone),
                ("sentinel", Mode::Sentinel),
                ("cluster", Mode::Cluster),
            ],
        );
        let url_path = sub(&path, "url");
        // The URL may hold a password: never echo it.
        let url = match f.url {
            None if mode == Some(Mode::Standalone) => {
                self.missing_key(&url_path);
                None
            }
            None => None,
            Some(_) if mode != Some(Mode::Standalone) => {
                if mode.is_some() {
                    self.error(
                        &url_path,
                        "not used with this mode: list the servers in `sentinels` (sentinel) or `nodes` (cluster), credentials in `username`/`password`",
                    );
                }
                None
            }
            Some(url) => {
                const SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];
                let scheme = SCHEMES.iter().find(|s| {
                    url.get(..s.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(s))
                });
                match scheme {
                    None => {
                        self.error(
                            &url_path,
                            "must start with redis://, rediss://, unix:// or redis+unix://",
                        );
                        None
                    }
                    Some(s) if url.len() == s.len() => {
                        self.error(&url_path, format!("has nothing after {s}"));
                        None
                    }
                    Some(_) => Some(url),
                }
            }
        };
        let only = |this: &mut Self, key: &str, given: bool, modes: &str| {
            if given {
                this.error(&sub(&path, key), format!("only with mode = {modes}"));
            }
        };
        let topology = match mode {
            None => None,
            Some(Mode::Standalone) => {
                only(self, "sentinels", f.sentinels.is_some(), "\"sentinel\"");
                only(self, "master", f.master.is_some(), "\"sentinel\"");
                only(self, "nodes", f.nodes.is_some(), "\"cluster\"");
                only(
                    self,
                    "tls",
                    f.tls.is_some(),
                    "\"sentinel\" or \"cluster\" (standalone: use a rediss:// url)",
                );
                Some(RedisTopology::Standalone)
            }
            Some(Mode::Sentinel) => {
                only(self, "nodes", f.nodes.is_some(), "\"cluster\"");
                let sentinels = self.servers(&sub(&path, "sentinels"), f.sentinels, "sentinel");
                let master_path = sub(&path, "master");
                let master = match f.master {
                    None => {
                        self.missing_key(&master_path);
                        None
                    }
                    Some(m) if m.trim().is_empty() => {
                        self.error(&master_path, "must not be empty");
                        None
                    }
                    Some(m) => Some(m),
                };
                match (sentinels, master) {
                    (Some(sentinels), Some(master)) => {
                        Some(RedisTopology::Sentinel { sentinels, master })
                    }
                    _ => None,
                }
            }
            Some(Mode::Cluster) => {
                only(self, "sentinels", f.sentinels.is_some(), "\"sentinel\"");
                only(self, "master", f.master.is_some(), "\"sentinel\"");
                self.servers(&sub(&path, "nodes"), f.nodes, "node")
                    .map(|nodes| RedisTopology::Cluster { nodes })
            }
        };
        let username = match f.username {
            Some(u) if u.is_empty() => {
                self.error(&sub(&path, "username"), "must not be empty");
                None
            }
            other => other,
        };
        let password = match (f.password, f.password_file) {
            (Some(_), Some(_)) => {
                self.error(
                    &sub(&path, "password_file"),
                    "set either `password` or `password_file`, not both",
                );
                None
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => self.key_file(&sub(&path, "password_file"), &file, |bytes| {
                // Never echo the contents: they are a secret.
                let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8".to_owned())?;
                let text = text.trim_end_matches(['\r', '\n']);
                if text.is_empty() {
                    return Err("is empty".to_owned());
                }
                Ok(text.to_owned())
            }),
            (None, None) => None,
        };
        let tls = f.tls.unwrap_or(false);
        // What logs, errors and reloads name the servers by (no credentials).
        let url = match &topology {
            Some(RedisTopology::Sentinel { sentinels, master }) => Some(format!(
                "{}://{}/{master}",
                if tls {
                    "rediss+sentinel"
                } else {
                    "redis+sentinel"
                },
                sentinels.join(",")
            )),
            Some(RedisTopology::Cluster { nodes }) => Some(format!(
                "{}://{}",
                if tls {
                    "rediss+cluster"
                } else {
                    "redis+cluster"
                },
                nodes.join(",")
            )),
            _ => url,
        };
        let command_timeout = self.duration(
            &sub(&path, "command_timeout"),
            f.command_timeout.as_deref(),
            Duration::from_millis(100),
            false,
        );
        let connect_timeout = self.duration(
            &sub(&path, "connect_timeout"),
            f.connect_timeout.as_deref(),
            Duration::from_secs(1),
            false,
        );
        let breaker_failures = match f.breaker_failures {
            None => 5,
            Some(n) => match u32::try_from(n) {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    self.error(
                        &sub(&path, "breaker_failures"),
                        "must be between 1 and 10000",
                    );
                    5
                }
            },
        };
        let cooldown_path = sub(&path, "breaker_cooldown");
        let breaker_cooldown = self.duration(
            &cooldown_path,
            f.breaker_cooldown.as_deref(),
            Duration::from_secs(1),
            false,
        );
        if breaker_cooldown > Duration::from_secs(60) {
            self.error(&cooldown_path, "must be at most \"60s\"");
        }
        Some(RedisSettings {
            url: url?,
            topology: topology?,
            username,
            password,
            tls,
            command_timeout,
            connect_timeout,
            breaker_failures,
            breaker_cooldown,
        })
    }
}
