//! Builds and runs the Pingora server from our own configuration: Pingora's
//! settings are embedded in `proxy.toml` and Pingora never parses the command line.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{ListenerConfig, TcpSocketOptions};
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::proxy::admin::{self, AdminApp};
use crate::proxy::full::Gateway;
use crate::proxy::h1::LeanHttp;
use crate::proxy::listen::prepare_listen;
use crate::proxy::reload::{self, Build, Reloader};
use crate::session::cache::SessionCache;
use crate::session::{RedisStore, SessionStore};

/// Per-connection read buffer of the public listener: none. Request heads are
/// read straight into Pingora's header buffer (see `idle`), bodies into body
/// buffers, so a buffer here would only add a copy and idle memory.
const READ_BUFFER_BYTES: usize = 0;

/// Redacts the password of a Redis URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{}{masked}{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Checks Redis, builds the server and serves until a shutdown signal.
/// `config_path` is re-read on SIGHUP; `upgrade` takes the listening sockets
/// over from a running old process (Pingora's graceful upgrade).
pub fn run(config: Config, config_path: &Path, upgrade: bool) -> anyhow::Result<()> {
    // Before Pingora binds or connects to the upgrade socket and before the
    // pid file is written: both must be out of other users' reach.
    crate::runtime_paths::prepare(
        Path::new(&config.server.pid_file),
        Path::new(&config.server.upgrade_sock),
    )
    .context("refusing to start")?;
    let store = RedisStore::new(&config.redis)?;
    let redis_url = redact_url(&config.redis.url);
    startup_check(&config)
        .with_context(|| format!("redis at {redis_url} did not answer PING; refusing to start"))?;

    let server_settings = config.server.clone();
    let tls_files = served_certificates(&config);
    let conf = ServerConf {
        threads: server_settings.threads,
        grace_period_seconds: Some(seconds(server_settings.grace_period)),
        graceful_shutdown_timeout_seconds: Some(seconds(server_settings.graceful_shutdown_timeout)),
        pid_file: server_settings.pid_file.clone(),
        upgrade_sock: server_settings.upgrade_sock.clone(),
        // One current-thread runtime per worker thread: a connection's tasks
        // stay on the thread that accepted it (no stealing, no cross-thread
        // wake-ups), which the lean path's per-thread upstream connections
        // are made for.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(reload::pingora_opt(upgrade), conf);
    server.bootstrap();

    let cache = SessionCache::new(config.cache.clone());
    crate::session::tracking::spawn(cache.clone(), config.redis.clone())?;
    // Profiles that keep their sessions in a Redis of their own: a store, a
    // cache and an invalidation channel each, kept across reloads.
    let profile_stores = Arc::new(std::sync::Mutex::new(profile_stores(&config, true)?));
    let index = crate::tls::CertIndex::load(&tls_files)
        .map_err(|why| anyhow::anyhow!("[[tls.certificates]]: {why}"))?;
    index.publish();
    let resolver = crate::tls::SniResolver::new(index);
    let build: Build = {
        let (store, cache) = (store.clone() as Arc<dyn SessionStore>, cache.clone());
        let profile_stores = profile_stores.clone();
        let resolver = resolver.clone();
        Box::new(move |config| {
            // A reload serves the certificate files anew to every new
            // handshake; the files were checked with the rest of the
            // configuration, and open connections keep theirs.
            match crate::tls::CertIndex::load(&served_certificates(&config)) {
                Ok(index) => {
                    index.publish();
                    resolver.swap(index);
                }
                Err(why) => tracing::error!(%why, "TLS certificates not reloaded"),
            }
            // A profile a reload added with a Redis of its own gets its
            // store, cache and channel now.
            let mut stores = profile_stores.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = add_profile_stores(&config, &mut stores) {
                tracing::error!(error = %e, "a new profile's Redis store could not be made");
            }
            Pipeline::with_profile_stores(config, store.clone(), cache.clone(), &stores)
        })
    };
    let (admin_settings, redis_settings) = (config.admin.clone(), config.redis.clone());
    let tls_watch = config.tls_watch;
    let pipeline = Arc::new(ArcSwap::from_pointee(build(config)));
    crate::live::serve_with(pipeline.clone());
    if !server_settings.listen_tls.is_empty() {
        let running = pipeline.clone();
        crate::tls::watch(resolver.clone(), tls_watch, move || {
            served_certificates(&running.load().config)
        })?;
    }
    if let Some(acme) = pipeline.load().config.acme.clone() {
        // A certificate issued (or renewed) is served from the next handshake.
        let (running, resolver) = (pipeline.clone(), resolver.clone());
        let install = Arc::new(move || {
            match crate::tls::CertIndex::load(&served_certificates(&running.load().config)) {
                Ok(index) => {
                    index.publish();
                    resolver.swap(index);
                }
                Err(why) => tracing::error!(%why, "ACME: the new certificate is not served"),
            }
        });
        crate::acme::spawn(acme, install)?;
    }
    crate::metrics::config_loaded();
    let caches = {
        let stores = profile_stores.clone();
        Box::new(move || {
            let mut all = vec![cache.clone()];
            let stores = stores.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(stores.values().map(|(_, cache)| cache.clone()));
            all
        })
    };
    let reloader = Reloader::new(config_path.to_owned(), pipeline.clone(), build, caches);
    reload::watch_sighup(reloader)?;
    let proxy = pingora::proxy::http_proxy(&server.configuration, Gateway::new(pipeline.clone()));
    let mut service = Service::new(
        "sessiongate".to_owned(),
        LeanHttp::new(proxy, pipeline.clone()),
    );
    let mut reserved = Vec::new();
    for addr in &server_settings.listen {
        let listen = prepare_listen(addr)?;
        let mut options = TcpSocketOptions::default();
        options.so_reuseport = Some(listen.reuse_port);
        // Pingora's default 64 KiB read buffer per connection would be most
        // of what an idle keep-alive connection costs.
        let buffers = L4BufferSettings {
            read: Some(READ_BUFFER_BYTES),
            write: None,
        };
        service.add_listener(
            ListenerConfig::tcp(listen.addr.to_string())
                .tcp_socket_options(options)
                .l4_buffer(buffers),
        );
        println!("sessiongate listening on http://{}", listen.addr);
        reserved.push(listen);
    }
    if !server_settings.listen_tls.is_empty() {
        let acme = &pipeline.load().config.acme;
        if acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01)
        {
            // Read before each handshake: the listeners' ALPN list cannot
            // also offer acme-tls/1.
            service
                .endpoints()
                .set_pre_tls_callback(Arc::new(crate::acme::TlsAlpnChallenges));
        }
        for addr in &server_settings.listen_tls {
            let listen = prepare_listen(addr)?;
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(listen.reuse_port);
            let callbacks = Box::new(crate::tls::Handshakes {
                resolver: resolver.clone(),
            });
            let mut tls = TlsSettings::with_callbacks(callbacks)?;
            tls.set_cert_resolver(resolver.clone());
            tls.enable_h2();
            let buffers = L4BufferSettings {
                read: Some(READ_BUFFER_BYTES),
                write: None,
            };
            service.add_listener(
                ListenerConfig::tcp(listen.addr.to_string())
                    .tcp_socket_options(options)
                    .l4_buffer(buffers)
                    .tls(tls),
            );
            println!("sessiongate listening on https://{}", listen.addr);
            reserved.push(listen);
        }
    }
    if let Some(addr) = &admin_settings.listen {
        let listen = prepare_listen(addr)?;
        let app = AdminApp::new(pipeline, RedisStore::new(&redis_settings)?);
        server.add_service(admin::service(&listen, app));
        println!("sessiongate admin listening on http://{}", listen.addr);
        reserved.push(listen);
    }
    let _pid_file = reload::write_pid_file(&server_settings.pid_file);
    tracing::info!(redis = %redis_url, "sessiongate starting");
    server.add_service(service);
    server.run(RunArgs::default());
    Ok(())
}

/// One real Redis round trip before serving, on a throwaway runtime.
fn startup_check(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = RedisStore::new(&config.redis)?;
    runtime.block_on(async { store.ping().await })?;
    for profile in &config.profiles {
        if let Some(redis) = &profile.redis {
            let store = RedisStore::new(redis)?;
            runtime
                .block_on(async { store.ping().await })
                .with_context(|| {
                    format!(
                        "profile {:?}: its redis at {} did not answer PING",
                        profile.name,
                        redact_url(&redis.url)
                    )
                })?;
        }
    }
    Ok(())
}

/// The certificates the TLS listeners serve: `[[tls.certificates]]`, and
/// the one `[acme]` issued when it is stored and valid (and names nothing a
/// configured one already names).
fn served_certificates(config: &Config) -> Vec<crate::tls::CertificateFiles> {
    let mut files = config.tls.clone();
    if let Some(acme) = &config.acme {
        let issued = crate::acme::files(acme);
        if let Ok(loaded) = crate::tls::load(&issued) {
            let taken = files
                .iter()
                .filter_map(|f| crate::tls::load(f).ok())
                .any(|l| l.names.iter().any(|n| loaded.names.contains(n)));
            if !taken {
                files.push(issued);
            }
        }
    }
    files
}

/// The stores and caches of the profiles with a `[profiles.<name>.redis]`
/// (with `track`, each cache listens to its Redis's invalidation channel;
/// without, as for `explain`, it serves nothing).
pub fn profile_stores(
    config: &crate::config::Config,
    track: bool,
) -> anyhow::Result<crate::pipeline::ProfileStores> {
    let mut out = crate::pipeline::ProfileStores::new();
    add_stores(config, &mut out, track)?;
    Ok(out)
}

/// [`profile_stores`] for the profiles `stores` has none for yet (a reload
/// that added one), with their invalidation channels.
fn add_profile_stores(
    config: &crate::config::Config,
    stores: &mut crate::pipeline::ProfileStores,
) -> anyhow::Result<()> {
    add_stores(config, stores, true)
}

fn add_stores(
    config: &crate::config::Config,
    out: &mut crate::pipeline::ProfileStores,
    track: bool,
) -> anyhow::Result<()> {
    for profile in &config.profiles {
        let Some(redis) = &profile.redis else {
            continue;
        };
        if out.contains_key(&profile.name) {
            continue;
        }
        let store = RedisStore::new(redis)?;
        let mut settings = config.cache.clone();
        settings.tracked_prefixes = crate::session::tracking::prefixes(
            &config.profiles,
            config.jwt.as_ref().map(|j| &j.key),
            Some(redis),
        );
        let cache = SessionCache::new(settings);
        if track {
            crate::session::tracking::spawn(cache.clone(), redis.clone())?;
        }
        out.insert(
            profile.name.clone(),
            (store as Arc<dyn SessionStore>, cache),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h/1"), "rediss://:***@h/1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn port_zero_is_reserved_and_reported() {
        let listen = prepare_listen("127.0.0.1:0").unwrap();
        assert_ne!(listen.addr.port(), 0);
        assert!(listen.reuse_port);
        let fixed = prepare_listen("127.0.0.1:8088").unwrap();
        assert_eq!(fixed.addr.port(), 8088);
        assert!(!fixed.reuse_port);
    }
}
