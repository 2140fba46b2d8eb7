//! Live configuration reload on SIGHUP: re-read and validate `proxy.toml`,
//! build a new pipeline and swap it in (in-flight requests finish on the old
//! one); a broken file changes nothing. Also the pid file `reload` signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, Config};
use crate::metrics;
use crate::pipeline::Pipeline;
use crate::session::cache::SessionCache;

/// Builds a pipeline from a validated configuration (the same function the
/// server uses at start).
pub type Build = Box<dyn Fn(Config) -> Pipeline + Send + Sync>;

pub struct Reloader {
    path: PathBuf,
    pipeline: Arc<ArcSwap<Pipeline>>,
    build: Build,
    /// After a swap, the caches keep only the principals of profiles the
    /// reload left as they were (the rest were built by the old configuration).
    caches: Box<dyn Fn() -> Vec<Arc<SessionCache>> + Send + Sync>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        pipeline: Arc<ArcSwap<Pipeline>>,
        build: Build,
        caches: Box<dyn Fn() -> Vec<Arc<SessionCache>> + Send + Sync>,
    ) -> Reloader {
        Reloader {
            path,
            pipeline,
            build,
            caches,
        }
    }

    /// Re-reads the file; swaps in a new pipeline when it is valid, else keeps
    /// the running one and logs every problem. Returns whether it swapped.
    pub fn reload(&self) -> bool {
        let config = match config::load(&self.path) {
            Ok(config) => config,
            Err(errors) => {
                metrics::config_reload(false);
                tracing::error!(
                    file = %self.path.display(),
                    errors = errors.errors.len(),
                    "reload refused: the configuration is invalid; still running the previous one"
                );
                for line in errors.to_string().lines() {
                    tracing::error!("reload: {line}");
                }
                return false;
            }
        };
        let old = self.pipeline.load_full();
        if let Some(key) = cache_keys_changed(&old.config, &config) {
            metrics::config_reload(false);
            tracing::error!(
                key,
                "reload refused: `{key}` changed; the cache's invalidation listener watches the \
                 keys of the running configuration, so this needs a restart (or a binary upgrade)"
            );
            return false;
        }
        for key in restart_needed(&old.config, &config) {
            tracing::warn!(
                key,
                "reload: `{key}` changed, but it only takes effect after a restart (or a binary upgrade)"
            );
        }
        let routes = config.routes.len();
        let pipeline = (self.build)(config);
        self.pipeline.store(Arc::new(pipeline));
        // The sessions of profiles the reload left as they were stay cached.
        let keep: Vec<bool> = old
            .config
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| self.pipeline.load().config.profiles.get(i) == Some(p))
            .collect();
        for cache in (self.caches)() {
            cache.retain_profiles(&keep);
        }
        metrics::config_reload(true);
        tracing::info!(file = %self.path.display(), routes, "configuration reloaded");
        true
    }
}

/// The settings a running process cannot change: its sockets, runtimes and
/// Redis connections are made once, at start.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let checks = [
        ("server.listen", o.listen != n.listen),
        ("server.threads", o.threads != n.threads),
        ("server.grace_period", o.grace_period != n.grace_period),
        (
            "server.graceful_shutdown_timeout",
            o.graceful_shutdown_timeout != n.graceful_shutdown_timeout,
        ),
        ("server.pid_file", o.pid_file != n.pid_file),
        ("server.upgrade_sock", o.upgrade_sock != n.upgrade_sock),
        ("redis.url", old.redis.url != new.redis.url),
        ("redis.mode", old.redis.topology != new.redis.topology),
        (
            "redis.username/password",
            old.redis.username != new.redis.username || old.redis.password != new.redis.password,
        ),
        ("redis.tls", old.redis.tls != new.redis.tls),
        (
            "redis.command_timeout",
            old.redis.command_timeout != new.redis.command_timeout,
        ),
        (
            "redis.connect_timeout",
            old.redis.connect_timeout != new.redis.connect_timeout,
        ),
        ("cache", old.cache != new.cache),
        ("admin.listen", old.admin.listen != new.admin.listen),
    ];
    checks
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
}

/// A change of the session (or token) key pattern: the cache invalidator
/// filters notifications by the patterns it started with, so a reload with
/// new ones would leave revocations of the new keys unseen. Refused.
fn cache_keys_changed(old: &Config, new: &Config) -> Option<&'static str> {
    if old.session.key != new.session.key {
        return Some("session.key");
    }
    let jwt_key = |c: &Config| c.jwt.as_ref().map(|j| j.key.clone());
    if jwt_key(old) != jwt_key(new) {
        return Some("jwt.key");
    }
    // A profile's key (or bearer key) added, removed or changed.
    if old.cache.tracked_prefixes != new.cache.tracked_prefixes {
        return Some("a profile's key");
    }
    // A profile's own Redis: its store and channel were made when it first
    // appeared; a new profile gets its own at the reload, a changed one
    // needs a restart.
    let changed = old.profiles.iter().any(|o| {
        new.profiles.iter().any(|n| {
            n.name == o.name
                && (n.redis != o.redis || (n.redis.is_some() && n.session.key != o.session.key))
        })
    });
    changed.then_some("a profile's [redis]")
}

/// Reloads on every SIGHUP, on a thread of its own with a small runtime.
/// Returns once the handler is installed, so a SIGHUP sent after the gateway
/// printed its listen address never kills it (SIGHUP's default action).
pub fn watch_sighup(reloader: Reloader) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("sessiongate-reload".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hangups = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received, reloading the configuration");
                    // Reading the file and resolving upstream names block; this
                    // runtime runs nothing else.
                    reloader.reload();
                }
            });
        })?;
    ready_rx.recv().map_err(|_| {
        anyhow::anyhow!("the reload thread stopped before installing its handler")
    })??;
    Ok(())
}

/// The pid file `sessiongate reload` reads. Pingora writes one only when it
/// daemonizes, so the gateway writes its own; it is removed at exit unless
/// another process (the new binary of an upgrade) has written it since.
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let pid = std::process::id();
        // Never group- or other-writable, whatever the umask: `reload`
        // refuses a pid file others could have written.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)?
            .write_all(format!("{pid}\n").as_bytes())?;
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes the pid file, logging (not failing) when it cannot.
pub fn write_pid_file(path: &str) -> Option<PidFile> {
    match PidFile::write(Path::new(path)) {
        Ok(pid_file) => Some(pid_file),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot write the pid file; `sessiongate reload` will not find this process");
            None
        }
    }
}

/// Pingora's options: only `upgrade` (take the listening sockets over from
/// the old process through `upgrade_sock`); Pingora never parses our command line.
pub fn pingora_opt(upgrade: bool) -> Option<pingora::server::configuration::Opt> {
    upgrade.then(|| pingora::server::configuration::Opt {
        upgrade: true,
        ..Default::default()
    })
}

/// `sessiongate reload`: sends SIGHUP to the pid in `pid_file`, which must be
/// ours (or root's) in a directory no other user can write: otherwise anyone
/// could choose the process we signal.
pub fn signal_reload(pid_file: &str) -> anyhow::Result<u32> {
    crate::runtime_paths::check_pid_file(Path::new(pid_file))?;
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        anyhow::anyhow!("cannot read pid file {pid_file}: {e} (is the gateway running?)")
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| anyhow::anyhow!("pid file {pid_file} does not hold a process id"))?;
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let err = std::io::Error::last_os_error();
        anyhow::bail!("cannot signal process {pid} (from {pid_file}): {err}");
    }
    Ok(pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:0"]
[redis]
url = "redis://127.0.0.1:6379/0"
[session]
secrets = ["s"]
[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]
[[route]]
path_prefix = "/"
upstream = "app"
"#;

    fn parse(text: &str) -> Config {
        config::parse("proxy.toml", text, &|_| None).unwrap()
    }

    #[test]
    fn admin_reload_restart_keys() {
        let old = parse(BASE);
        assert!(restart_needed(&old, &parse(BASE)).is_empty());
        let changed = BASE
            .replace("127.0.0.1:0", "127.0.0.1:8081")
            .replace("6379/0", "6379/1")
            .replace("path_prefix = \"/\"", "path_prefix = \"/x\"")
            + "[admin]\nlisten = \"127.0.0.1:9100\"\naccess_log = false\n";
        assert_eq!(
            restart_needed(&old, &parse(&changed)),
            ["server.listen", "redis.url", "admin.listen"]
        );
    }

    #[test]
    fn admin_pid_file_is_removed_only_when_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.pid");
        let pid = PidFile::write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(pid);
        assert!(!path.exists());
        let pid = PidFile::write(&path).unwrap();
        std::fs::write(&path, "1\n").unwrap();
        drop(pid);
        assert!(path.exists());
        assert!(signal_reload(dir.path().join("none.pid").to_str().unwrap()).is_err());
    }
}
