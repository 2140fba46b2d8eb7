//! The `sessiongate` command: run the gateway, or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use sessiongate::config;
use sessiongate::manage::{self, Lifetime, ManageError, Manager};

// jemalloc: less fragmentation than glibc malloc under many threads and
// many small, short-lived allocations (request heads, header values).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Return freed memory to the OS within a second (a background thread purges),
// so RSS follows load down after a burst instead of staying at its peak.
// Keep 64 KiB blocks in the per-thread caches (the default stops at 32 KiB):
// Pingora's HTTP/1 client takes a 64 KiB body buffer for every response
// with a body, which otherwise costs a trip to the arena each way.
// A thin reference: jemalloc reads the symbol as a `const char *`.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 77] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_max:65536\0";

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "Session-enforcing reverse proxy for Redis-backed app sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with the given configuration.
    Run {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
        /// Take the listening sockets over from a running sessiongate (binary
        /// upgrade): start this, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration, then tell the running gateway (the pid in
    /// `[server] pid_file`) to reload it (SIGHUP).
    Reload {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Validate a configuration, print every problem, and exit non-zero if any.
    Check {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Show what the gateway decides for one request and why, stage by stage,
    /// against the configured Redis, without forwarding it or changing anything.
    Explain {
        #[arg(short, long, default_value = "proxy.toml")]
        config: PathBuf,
        /// The request's URL, e.g. `https://app.example.com/admin/users`.
        #[arg(long)]
        url: String,
        /// The session cookie's value, or `name=value` pairs as in a `Cookie` header.
        #[arg(long, conflicts_with = "bearer")]
        cookie: Option<String>,
        /// A bearer token (`Authorization: Bearer ...`).
        #[arg(long)]
        bearer: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// More request headers, e.g. `--header 'Accept: text/html'`.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create, show, list or revoke sessions in the configured Redis.
    Session {
        #[arg(short, long, default_value = "proxy.toml", global = true)]
        config: PathBuf,
        /// The session profile to act on (`[profiles.<name>]`; default: `[session]`).
        #[arg(long, global = true)]
        profile: Option<String>,
        #[command(subcommand)]
        action: SessionAction,
    },
}

#[derive(Subcommand)]
enum SessionAction {
    /// Write a session the gateway (and an express-session app) accepts; print its cookie.
    Create {
        /// The user id, stored as `user.id`.
        #[arg(long)]
        user: String,
        /// Extra `user.<key>` fields, e.g. `--field role=admin`.
        #[arg(long = "field", value_name = "KEY=VALUE")]
        fields: Vec<String>,
        /// How long the session lives.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print a session and its remaining lifetime.
    Show { id: String },
    /// Delete a session; it is refused from the next request on.
    Revoke { id: String },
    /// End every session (and token) of a user, found through `user_sessions_key`.
    RevokeUser {
        /// The user id, as stored at `user_field`.
        user: String,
    },
    /// List a user's session (and token) ids with their remaining lifetime.
    List {
        /// The user id, as stored at `user_field`.
        #[arg(long)]
        user: String,
    },
}

/// Logs on stderr, filtered by `RUST_LOG` (default `info`). Whatever
/// `RUST_LOG` says, other crates never log below `info`: at debug Pingora
/// prints request and upstream headers (cookies, `Authorization`) and raw
/// request buffers, and Redis clients print commands whose keys hold session
/// ids. sessiongate's own events never carry a credential at any level.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Dependencies that log through the `log` crate (Pingora) are capped at
    // `info` below, so their `debug!`/`trace!` calls can stop at `log`'s own
    // level check instead of reaching the filters on every request.
    let log_level = match env.max_level_hint().unwrap_or(LevelFilter::TRACE) {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    let dependencies_capped = Targets::new()
        .with_target("sessiongate", LevelFilter::TRACE)
        .with_default(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(env)
                .with_filter(dependencies_capped),
        )
        .init();
    log::set_max_level(log_level);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                for warning in config::warnings(&cfg) {
                    eprintln!("{}: warning: {warning}", config.display());
                }
                println!(
                    "{}: ok ({} routes, {} upstreams, {} identity headers)",
                    config.display(),
                    cfg.routes.len(),
                    cfg.upstreams.len(),
                    cfg.identity.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Explain {
            config,
            url,
            cookie,
            bearer,
            method,
            headers,
            json,
        } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            let mut request = sessiongate::explain::ExplainRequest {
                url,
                method: Some(method),
                cookie,
                bearer,
                ..Default::default()
            };
            for header in &headers {
                let Some((name, value)) = header.split_once(':') else {
                    eprintln!("sessiongate: --header {header:?}: expected `NAME: VALUE`");
                    return ExitCode::from(2);
                };
                request
                    .headers
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
            match explain_command(cfg, &request, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sessiongate: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Session {
            config,
            profile,
            action,
        } => {
            let mut cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            // A profile's sessions: its table, in its Redis.
            if let Some(name) = profile {
                let Some(p) = cfg.profiles.iter().find(|p| p.name == name).cloned() else {
                    let known: Vec<&str> = cfg.profiles.iter().map(|p| p.name.as_str()).collect();
                    eprintln!(
                        "sessiongate: no profile {name:?} (the config has {})",
                        known.join(", ")
                    );
                    return ExitCode::from(2);
                };
                cfg.session = p.session;
                if let Some(redis) = p.redis {
                    cfg.redis = redis;
                }
            }
            match session_command(&cfg, action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sessiongate: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Reload { config } => match config::load(&config) {
            Ok(cfg) => match sessiongate::proxy::reload::signal_reload(&cfg.server.pid_file) {
                Ok(pid) => {
                    println!("{}: ok; sent SIGHUP to process {pid}", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sessiongate: {e:#}");
                    ExitCode::from(1)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, upgrade } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            for warning in config::warnings(&cfg) {
                tracing::warn!("{warning}");
            }
            match sessiongate::proxy::service::run(cfg, &config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sessiongate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Explains one request against the configured Redis, with a pipeline of
/// its own (and an empty cache: every lookup goes to Redis).
fn explain_command(
    cfg: config::Config,
    request: &sessiongate::explain::ExplainRequest,
    json: bool,
) -> anyhow::Result<()> {
    use std::sync::Arc;

    let (parts, target) = request
        .head(&cfg.session.cookie)
        .map_err(anyhow::Error::msg)?;
    let store = sessiongate::session::RedisStore::new(&cfg.redis)?;
    let cache = sessiongate::session::cache::SessionCache::new(cfg.cache.clone());
    let profile_stores = sessiongate::proxy::service::profile_stores(&cfg, false)?;
    let pipeline = sessiongate::pipeline::Pipeline::with_profile_stores(
        cfg,
        store as Arc<dyn sessiongate::session::SessionStore>,
        cache,
        &profile_stores,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut explained = runtime.block_on(pipeline.explain(&parts, target.as_bytes()));
    explained
        .notes
        .push("this command has no cache: sessions are read from redis, not a gateway's cache");
    if json {
        println!("{}", serde_json::to_string_pretty(&explained)?);
    } else {
        print!("{explained}");
    }
    Ok(())
}

fn session_command(cfg: &config::Config, action: SessionAction) -> Result<(), ManageError> {
    // A configuration problem is reported as such even when Redis is down.
    match &action {
        SessionAction::RevokeUser { .. } => manage::user_sessions(cfg, "revoke-user").map(drop)?,
        SessionAction::List { .. } => manage::user_sessions(cfg, "list").map(drop)?,
        _ => {}
    }
    let mut manager = Manager::connect(cfg)?;
    match action {
        SessionAction::Create { user, fields, ttl } => {
            let fields = fields
                .iter()
                .map(|f| manage::parse_field(f))
                .collect::<Result<Vec<_>, _>>()?;
            let created = manager.create(&user, &fields, manage::parse_ttl(&ttl)?)?;
            let base = cfg
                .server
                .listen
                .first()
                .map(|l| l.replace("0.0.0.0", "127.0.0.1"))
                .unwrap_or_else(|| "127.0.0.1:8080".into());
            println!("session: {}", created.id);
            println!("cookie:  {}", created.cookie);
            println!("curl -H 'Cookie: {}' http://{base}/", created.cookie);
        }
        SessionAction::Show { id } => {
            let (doc, ttl) = manager.show(&id)?;
            let doc = serde_json::to_string_pretty(&doc).unwrap_or_default();
            println!("{doc}");
            println!("ttl: {ttl}s");
        }
        SessionAction::Revoke { id } => {
            manager.revoke(&id)?;
            println!("revoked");
        }
        SessionAction::RevokeUser { user } => {
            let revoked = manager.revoke_user(&user)?;
            if cfg.session.user_tokens_key.is_some() && cfg.jwt.is_some() {
                println!(
                    "ended {} sessions and {} tokens",
                    revoked.sessions, revoked.tokens
                );
            } else {
                println!("ended {} sessions", revoked.sessions);
            }
        }
        SessionAction::List { user } => {
            let listed = manager.list(&user)?;
            let stale = listed
                .iter()
                .filter(|l| l.lifetime == Lifetime::Stale)
                .count();
            for item in &listed {
                let lifetime = match item.lifetime {
                    Lifetime::Expires(ms) => format!("ttl {}s", ms.div_ceil(1000)),
                    Lifetime::Persistent => "no expiry".to_owned(),
                    Lifetime::Stale => "stale (its key is gone; left in the set)".to_owned(),
                };
                println!("{:<7} {}  {lifetime}", item.kind.as_str(), item.id);
            }
            println!("{} live, {stale} stale", listed.len() - stale);
        }
    }
    Ok(())
}
