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
    let tls_files = config.tls.clone();
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
    let index = crate::tls::CertIndex::load(&tls_files)
        .map_err(|why| anyhow::anyhow!("[[tls.certificates]]: {why}"))?;
    index.publish();
    let resolver = crate::tls::SniResolver::new(index);
    let build: Build = {
        let (store, cache) = (store.clone() as Arc<dyn SessionStore>, cache.clone());
        let resolver = resolver.clone();
        Box::new(move |config| {
            // A reload serves the certificate files anew to every new
            // handshake; the files were checked with the rest of the
            // configuration, and open connections keep theirs.
            match crate::tls::CertIndex::load(&config.tls) {
                Ok(index) => {
                    index.publish();
                    resolver.swap(index);
                }
                Err(why) => tracing::error!(%why, "TLS certificates not reloaded"),
            }
            Pipeline::new(config, store.clone(), cache.clone())
        })
    };
    let (admin_settings, redis_settings) = (config.admin.clone(), config.redis.clone());
    let tls_watch = config.tls_watch;
    let pipeline = Arc::new(ArcSwap::from_pointee(build(config)));
    crate::live::serve_with(pipeline.clone());
    if !server_settings.listen_tls.is_empty() {
        let running = pipeline.clone();
        crate::tls::watch(resolver.clone(), tls_watch, move || {
            running.load().config.tls.clone()
        })?;
    }
    crate::metrics::config_loaded();
    let reloader = Reloader::new(config_path.to_owned(), pipeline.clone(), build, Some(cache));
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
