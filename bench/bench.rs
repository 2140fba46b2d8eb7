//! The sessiongate benchmark: starts redis-server, a fast upstream and the
//! release gateway, and measures in one run, in alternating rounds, what an
//! auth check costs against a pass-through baseline; then how fast a
//! revocation takes effect under load, and the memory a full cache costs.
//! Run it with `bench/run.sh` (it builds in release and installs wrk).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

const COOKIE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
const SESSION_KEY: &str = "sess:f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
const SESSION_VALUE: &str = r#"{"cookie":{"originalMaxAge":86400000,"expires":"2026-11-23T06:09:29.370Z","secure":false,"httpOnly":true,"path":"/","sameSite":"lax"},"user":{"id":"1001","email":"alice@example.test","role":"admin","name":"Alice Example"}}"#;

struct Opts {
    mode: String,
    duration: u64,
    rounds: usize,
    connections: usize,
    trials: usize,
    sessions: usize,
    idle: usize,
    soak: u64,
    target: String,
}

fn opts() -> Opts {
    let mut o = Opts {
        mode: "all".into(),
        duration: 5,
        rounds: 3,
        connections: 64,
        trials: 200,
        sessions: 100_000,
        idle: 10_000,
        soak: 60,
        target: "nocache".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--mode" => o.mode = value,
            "--duration" => o.duration = value.parse().expect("--duration seconds"),
            "--rounds" => o.rounds = value.parse().expect("--rounds N"),
            "--connections" => o.connections = value.parse().expect("--connections N"),
            "--trials" => o.trials = value.parse().expect("--trials N"),
            "--sessions" => o.sessions = value.parse().expect("--sessions N"),
            "--idle" => o.idle = value.parse().expect("--idle N"),
            "--soak" => o.soak = value.parse().expect("--soak seconds"),
            "--target" => o.target = value,
            other => panic!("unknown argument {other}; see bench/run.sh"),
        }
        i += 2;
    }
    o
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills its process on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(cpu: &str, program: &str) -> Command {
    if cpus() > 1 && Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", cpu, program]);
        c
    } else {
        Command::new(program)
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn start_redis(dir: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let child = pinned("1", "redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get_connection().is_err() {
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), url)
}

/// A minimal keep-alive HTTP/1.1 upstream answering "ok" on a tokio runtime.
fn start_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut filled = 0;
                    loop {
                        match sock.read(&mut buf[filled..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => filled += n,
                        }
                        // An upgrade (the live-memory mode's WebSockets): 101, then echo.
                        if buf[..filled].to_ascii_lowercase().windows(18).any(|w| w == b"upgrade: websocket") {
                            let resp = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
                            if sock.write_all(resp).await.is_err() {
                                return;
                            }
                            let (mut r, mut w) = sock.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            return;
                        }
                        // Answer every complete request head in the buffer (no bodies in this bench).
                        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                            let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                            if sock.write_all(resp).await.is_err() {
                                return;
                            }
                            buf.copy_within(end + 4..filled, 0);
                            filled -= end + 4;
                        }
                        if filled == buf.len() {
                            return;
                        }
                    }
                });
            }
        });
    });
    addr
}

fn gateway_config(
    redis_url: &str,
    upstream: SocketAddr,
    cache: bool,
    max_entries: usize,
    dir: &std::path::Path,
    tag: &str,
) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
threads = 1
# Every benchmark client comes from 127.0.0.1: the per-IP and total limits
# (256, 4096 and 512 by default) would close most of 10k connections at accept.
max_connections = 0
max_connections_per_ip = 0
max_streams_per_ip = 0
# Neither server ends a keep-alive connection after N requests (nginx is
# given keepalive_requests 1000000): the clients here keep theirs.
keepalive_requests = 0
pid_file = "{dir}/{tag}.pid"
upgrade_sock = "{dir}/{tag}.sock"

[redis]
url = "{redis_url}"
command_timeout = "500ms"

[session]
cookie = "connect.sid"
cookie_format = "express"
secrets = ["fixture-secret-current", "fixture-secret-previous"]
bearer = "opaque"
bearer_key = "api:{{id}}"
key = "sess:{{id}}"

[cache]
enabled = {cache}
max_entries = {max_entries}

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Email" = "user.email"
"X-User-Role" = "user.role"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "public"
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        dir = dir.display()
    )
}

struct Gateway {
    proc: Proc,
    addr: SocketAddr,
    /// The first `listen_tls` address, when the config has one.
    tls: Option<SocketAddr>,
}

fn start_gateway(bin: &str, config: &str, dir: &std::path::Path, tag: &str) -> Gateway {
    launch(pinned("0", bin), config, dir, tag)
}

/// Runs `program` (the gateway binary, or a wrapper before it) with
/// `run -c <config>` and waits until it listens.
fn launch(mut program: Command, config: &str, dir: &std::path::Path, tag: &str) -> Gateway {
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = program
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        // Clients closing mid-request at the end of a wrk run are logged;
        // keep them out of the report.
        .stderr(std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap())
        .spawn()
        .expect("start sessiongate");
    let stdout = child.stdout.take().unwrap();
    let mut addr = None;
    let mut tls = None;
    let wants_tls = config.contains("listen_tls");
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        let text = line.trim_end();
        if let Some(a) = text.strip_prefix("sessiongate listening on http://") {
            addr = Some(a.parse().unwrap());
        } else if let Some(a) = text.strip_prefix("sessiongate listening on https://") {
            tls = tls.or(Some(a.parse().unwrap()));
        }
        if addr.is_some() && (tls.is_some() || !wants_tls) {
            break;
        }
        line.clear();
    }
    // The access log goes on on stdout: keep reading it, as a log shipper
    // would, so its cost is part of every figure.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let addr: SocketAddr = addr.expect("gateway did not start");
    // Under valgrind, starting takes a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gateway not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Gateway {
        proc: Proc(child),
        addr,
        tls,
    }
}

/// Debian's nginx as a reverse proxy to the same upstream, one process
/// pinned like the gateway (`master_process off`, so its CPU is one PID's),
/// keep-alive upstream connections, an access log like the gateway's. With
/// `lua_redis`, a Lua access phase does one Redis GET of the session per
/// request (a cosocket, kept alive): the closest peer that checks Redis.
/// `None` when nginx is not installed.
fn start_nginx(
    dir: &std::path::Path,
    upstream: SocketAddr,
    redis_url: &str,
    lua_redis: bool,
    tls: Option<&TlsFiles>,
) -> Option<(Proc, SocketAddr)> {
    Command::new("nginx").arg("-v").output().ok()?;
    let tag = match (lua_redis, tls.is_some()) {
        (true, _) => "nginx-lua",
        (false, true) => "nginx-tls",
        (false, false) => "nginx",
    };
    let prefix = dir.join(tag);
    std::fs::create_dir_all(prefix.join("logs")).ok()?;
    let port = free_port();
    let lua_module = "/usr/share/nginx/modules/ngx_http_lua_module.so";
    let (modules, access) = if lua_redis {
        if !std::path::Path::new(lua_module).exists() {
            return None;
        }
        let redis = redis_url.trim_start_matches("redis://");
        let (host, port) = redis.split_once(':')?;
        let port: String = port.chars().take_while(char::is_ascii_digit).collect();
        (
            format!(
                "load_module /usr/share/nginx/modules/ndk_http_module.so;\nload_module {lua_module};\n"
            ),
            format!(
                r#"access_by_lua_block {{
                local sock = ngx.socket.tcp()
                sock:settimeout(500)
                local ok = sock:connect("{host}", {port})
                if not ok then return ngx.exit(503) end
                local key = "{SESSION_KEY}"
                sock:send("*2\r\n$3\r\nGET\r\n$" .. #key .. "\r\n" .. key .. "\r\n")
                local line = sock:receive("*l")
                if not line or line == "$-1" then return ngx.exit(401) end
                local body = sock:receive(tonumber(string.sub(line, 2)) + 2)
                if not body then return ngx.exit(503) end
                sock:setkeepalive(10000, 64)
                ngx.req.set_header("X-User-Id", "1001")
            }}"#
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let conf = format!(
        r#"{modules}daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log {prefix}/logs/access.log combined buffer=64k;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream app {{ server {upstream}; keepalive 64; }}
    {keepalive_requests}
    server {{
        listen 127.0.0.1:{port}{listen_tls};
        {tls_files}
        location / {{
            {access}
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
        prefix = prefix.display(),
        listen_tls = if tls.is_some() { " ssl http2" } else { "" },
        // Neither server ends a connection after its default 1000 requests
        // (over TLS that would cost handshakes, and h2load counts the
        // streams a GOAWAY cuts off as errors).
        keepalive_requests = "keepalive_requests 1000000;",
        tls_files = tls.map_or(String::new(), |t| format!(
            "ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;",
            t.cert.display(),
            t.key.display()
        )),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let child = pinned("0", "nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(prefix.join("stderr.log")).ok()?)
        .spawn()
        .ok()?;
    let proc = Proc(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            eprintln!(
                "{tag} did not start: {}",
                std::fs::read_to_string(prefix.join("stderr.log")).unwrap_or_default()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((proc, addr))
}

/// (utime, stime) of a process, in seconds: its own code versus the kernel's
/// work for it (syscalls, and waking the peers it sends to).
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0.0) };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
    /// The part of `cpu_us` spent in the gateway's own (user-space) code.
    user_us: f64,
    rss_mb: f64,
    errors: u64,
}

fn parse_ms(text: &str) -> f64 {
    let text = text.trim();
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, headers: &[&str], o: &Opts, pid: Option<u32>) -> Sample {
    let cpu_before = pid.map(cpu_split);
    let mut cmd = pinned("1", "wrk");
    cmd.args([
        "-t1",
        "-c",
        &o.connections.to_string(),
        "-d",
        &format!("{}s", o.duration),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let cpu = pid.map(|p| {
        let (user, system) = cpu_split(p);
        let (user0, system0) = cpu_before.unwrap_or((0.0, 0.0));
        (user - user0, system - system0)
    });
    let mut s = Sample::default();
    let mut total = 0.0;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            s.p50_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            s.p99_ms = parse_ms(v);
        } else if t.contains("requests in") {
            total = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            s.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            s.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if let (Some((user, system)), true) = (cpu, total > 0.0) {
        s.cpu_us = (user + system) * 1e6 / total;
        s.user_us = user * 1e6 / total;
    }
    if let Some(p) = pid {
        s.rss_mb = rss_mb(p);
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn throughput(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let cached = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, true, 100_000, dir, "cached"),
        dir,
        "cached",
    );
    let uncached = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, false, 1, dir, "uncached"),
        dir,
        "uncached",
    );
    let nginx = start_nginx(dir, upstream, redis_url, false, None);
    let nginx_lua = start_nginx(dir, upstream, redis_url, true, None);
    if nginx.is_none() {
        eprintln!(
            "nginx is not installed: no proxy-hop floor in this run (bench/run.sh installs it)"
        );
    }
    let cookie = format!("Cookie: {COOKIE}");
    let mut cases: Vec<(&str, String, Vec<&str>, Option<u32>)> = vec![(
        "direct to upstream",
        format!("http://{upstream}/public/x"),
        vec![cookie.as_str()],
        None,
    )];
    if let Some((proc, addr)) = &nginx {
        cases.push((
            "nginx pass-through",
            format!("http://{addr}/public/x"),
            vec![cookie.as_str()],
            Some(proc.0.id()),
        ));
    }
    if let Some((proc, addr)) = &nginx_lua {
        cases.push((
            "nginx + Lua, Redis GET",
            format!("http://{addr}/app"),
            vec![cookie.as_str()],
            Some(proc.0.id()),
        ));
    }
    let public = cases.len();
    cases.extend([
        (
            "gateway, public route",
            format!("http://{}/public/x", cached.addr),
            vec![cookie.as_str()],
            Some(cached.proc.0.id()),
        ),
        (
            "gateway, auth + cache",
            format!("http://{}/app", cached.addr),
            vec![cookie.as_str()],
            Some(cached.proc.0.id()),
        ),
        (
            "gateway, auth, no cache",
            format!("http://{}/app", uncached.addr),
            vec![cookie.as_str()],
            Some(uncached.proc.0.id()),
        ),
    ]);
    let (auth_cache, auth_nocache) = (public + 1, public + 2);
    // Every target gets the same request bytes (the session cookie included),
    // so the ratios isolate what the auth check itself costs.
    // Warm up each target once (connections, cache) before measuring.
    let warm = Opts {
        duration: 1,
        mode: String::new(),
        target: String::new(),
        ..*o
    };
    for (_, url, headers, pid) in &cases {
        wrk(url, headers, &warm, *pid);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        // Every other round runs the targets in reverse order, so a drift
        // in the machine's speed during a round favours no target over the
        // rounds (an ABBA order).
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (name, url, headers, pid) = &cases[i];
            let s = wrk(url, headers, o, *pid);
            eprintln!("round {}: {name:<24} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  cpu {:.1} us/req  errors {}", round + 1, s.rps, s.p50_ms, s.p99_ms, s.cpu_us, s.errors);
            samples[i].push(s);
        }
    }
    println!("\n## Throughput ({} rounds x {} s, {} connections, each proxy on 1 thread pinned to CPU 0; wrk, upstream and redis on CPU 1)", o.rounds, o.duration, o.connections);
    println!("| target | req/s | p50 ms | p99 ms | proxy CPU us/req | of which user-space | proxy RSS MB | non-2xx/errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, ..)) in cases.iter().enumerate() {
        let col = |f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        let measured = |v: f64| {
            if i == 0 {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {errors} |",
            col(|s| s.rps),
            col(|s| s.p50_ms),
            col(|s| s.p99_ms),
            measured(col(|s| s.cpu_us)),
            measured(col(|s| s.user_us)),
            measured(col(|s| s.rss_mb)),
        );
    }
    // Each round measures every target back to back, so a ratio taken within
    // a round compares like with like even when the machine's speed drifts
    // between rounds; the medians of those per-round ratios are the result.
    let per_round = |num: usize, base: usize, f: fn(&Sample) -> f64| -> (f64, f64, f64) {
        let ratios: Vec<f64> = samples[num]
            .iter()
            .zip(&samples[base])
            .map(|(a, b)| f(a) / f(b))
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(ratios), lo, hi)
    };
    let report = |base: usize, targets: &[(usize, &str)]| {
        println!(
            "\nper-round ratios to {} (median [min..max] over {} rounds):",
            cases[base].0, o.rounds
        );
        for (i, target) in targets {
            let (r, rlo, rhi) = per_round(*i, base, |s| s.rps);
            let (c, clo, chi) = per_round(*i, base, |s| s.cpu_us);
            let (u, ulo, uhi) = per_round(*i, base, |s| s.user_us);
            println!(
                "- {:<28} {r:.3}x req/s [{rlo:.3}..{rhi:.3}], {c:.3}x CPU per request [{clo:.3}..{chi:.3}], {u:.3}x user-space CPU [{ulo:.3}..{uhi:.3}]  ({target})",
                format!("{}:", cases[*i].0)
            );
        }
    };
    if nginx.is_some() {
        report(
            1,
            &[
                (public, "-"),
                (auth_cache, "target >= 0.55x req/s, <= 1.9x CPU per request"),
                (auth_nocache, "-"),
            ],
        );
    }
    if nginx_lua.is_some() {
        let lua = if nginx.is_some() { 2 } else { 1 };
        report(
            lua,
            &[(public, "-"), (auth_cache, "-"), (auth_nocache, "-")],
        );
    }
    report(
        public,
        &[
            (auth_cache, "target >= 0.95x req/s"),
            (auth_nocache, "target >= 0.85x req/s"),
        ],
    );
}

/// Instructions per request of one target (`--target public|cache|nocache|jwt|jwt-nocache|profile`),
/// counted by callgrind: repeatable where wall-clock figures drift. The
/// gateway runs under `valgrind --tool=callgrind`; after a warm-up the
/// counters are zeroed, `--trials` requests are sent on 8 keep-alive
/// connections, and the counters are dumped.
/// The `jwt` targets' secret and token key.
const JWT_SECRET: &str = "bench-jwt-secret-of-thirty-two-bytes!";

/// `config` with bearer JWTs (HS256) in place of opaque API tokens.
fn with_jwt(config: String) -> String {
    config.replace(
        "bearer = \"opaque\"\nbearer_key = \"api:{id}\"\n",
        "bearer = \"jwt\"\n",
    ) + &format!("\n[jwt]\nalgorithms = [\"HS256\"]\nsecret = \"{JWT_SECRET}\"\n")
}

/// `config` with a second session profile, `other` (express-session too,
/// its own cookie and keys), serving `/other/`: the `profile` target.
fn with_profile(config: String) -> String {
    config.replace(
        "[[route]]\nname = \"public\"",
        "[profiles.other]\ncookie = \"other.sid\"\nsecrets = [\"fixture-secret-current\"]\nkey = \"other:{id}\"\n\n[profiles.other.identity.headers]\n\"X-User-Id\" = \"user.id\"\n\"X-User-Email\" = \"user.email\"\n\"X-User-Role\" = \"user.role\"\n\n[[route]]\nname = \"other\"\npath_prefix = \"/other/\"\nupstream = \"app\"\nprofile = \"other\"\n\n[[route]]\nname = \"public\"",
    )
}

/// The `profile` target's session (the benchmark's session under the
/// other profile's key) and its cookie.
fn profile_cookie(redis_url: &str) -> String {
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let id = SESSION_KEY.strip_prefix("sess:").unwrap();
    let _: () = conn
        .set_ex(format!("other:{id}"), SESSION_VALUE, 3600)
        .unwrap();
    COOKIE.replacen("connect.sid=", "other.sid=", 1)
}

/// A bearer JWT for the `jwt` targets, its token key set in Redis.
fn bench_token(redis_url: &str) -> String {
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = conn
        .set_ex(
            "token:bench",
            r#"{"user":{"id":"1001","role":"admin"}}"#,
            3600,
        )
        .unwrap();
    let claims = serde_json::json!({
        "tokenId": "bench",
        "sub": "1001",
        "email": "alice@example.test",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn instructions(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let cache = !o.target.ends_with("nocache");
    let jwt = o.target.starts_with("jwt");
    let mut config = gateway_config(redis_url, upstream, cache, 100_000, dir, "counted");
    let profile = o.target == "profile";
    let credential = if jwt {
        config = with_jwt(config);
        format!("Authorization: Bearer {}", bench_token(redis_url))
    } else if profile {
        config = with_profile(config);
        format!("Cookie: {}", profile_cookie(redis_url))
    } else {
        format!("Cookie: {COOKIE}")
    };
    let out = dir.join("callgrind.out");
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin);
    let gw = launch(valgrind, &config, dir, "counted");
    let (addr, pid) = (gw.addr, gw.proc.0.id());
    let url_path = match o.target.as_str() {
        "public" => "/public/x",
        "profile" => "/other/app",
        _ => "/app",
    };
    let mut conns: Vec<Conn> = (0..8).map(|_| Conn::open(addr)).collect();
    let mut send = |n: usize| {
        for i in 0..n {
            let n_conns = conns.len();
            let status = conns[i % n_conns].request(url_path, &credential);
            assert_eq!(status, 200, "request {i} was not forwarded");
        }
    };
    send(400);
    let control = |flag: &str| {
        let status = Command::new("callgrind_control")
            .args([flag, &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("callgrind_control");
        assert!(status.success(), "callgrind_control {flag} failed");
    };
    control("-z");
    send(o.trials);
    control("-d");
    // The dump after zeroing is the newest file callgrind wrote.
    let mut total = 0u64;
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("callgrind.out") {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap();
        if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, entry.path()));
        }
    }
    if let Some((_, file)) = newest {
        // Kept for a closer look: callgrind_annotate target/bench-callgrind.out
        let _ = std::fs::copy(&file, "target/bench-callgrind.out");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    println!(
        "## Instructions of target {}: {:.0} per request ({} requests, all threads)",
        o.target,
        total as f64 / o.trials as f64,
        o.trials
    );
}

/// Loads one target (`--target public|cache|nocache`) for `--duration`
/// seconds under `perf record`, then prints where the gateway's CPU went.
fn profile(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let cache = o.target != "nocache";
    let gw = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, cache, 100_000, dir, "profiled"),
        dir,
        "profiled",
    );
    let path = if o.target == "public" {
        "/public/x"
    } else {
        "/app"
    };
    let url = format!("http://{}{path}", gw.addr);
    let cookie = format!("Cookie: {COOKIE}");
    let warm = Opts {
        duration: 1,
        mode: String::new(),
        target: String::new(),
        ..*o
    };
    wrk(&url, &[&cookie], &warm, None);
    // Kept after the run for a closer look: perf report -i target/bench-perf.data
    let data = std::path::PathBuf::from("target/bench-perf.data");
    // BENCH_PERF_STAT=<events> counts events (e.g. syscalls:sys_enter_sendto)
    // instead of sampling.
    let counted = std::env::var("BENCH_PERF_STAT").ok();
    let mut perf = Command::new("perf");
    match &counted {
        Some(events) => perf.args(["stat", "-e", events]).stderr(Stdio::inherit()),
        None => perf
            // BENCH_PERF_CALLGRAPH=dwarf for whole user-space stacks (slower).
            .args(["record", "-F", "2999", "--call-graph"])
            .arg(std::env::var("BENCH_PERF_CALLGRAPH").unwrap_or_else(|_| "fp".into()))
            .arg("-o")
            .arg(&data)
            .stderr(Stdio::null()),
    };
    let mut perf = perf
        .args(["-p", &gw.proc.0.id().to_string()])
        .spawn()
        .expect("perf (apt-get install linux-perf)");
    let s = wrk(&url, &[&cookie], o, Some(gw.proc.0.id()));
    // SIGINT makes perf write its data and exit.
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
    println!(
        "## Profile of target {} ({:.0} req/s, {:.1} us CPU per request)",
        o.target, s.rps, s.cpu_us
    );
    if counted.is_some() {
        println!("requests: {:.0}", s.rps * o.duration as f64);
        return;
    }
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--stdio",
            "-g",
            "none",
            "--percent-limit",
            "0.7",
            "--max-stack",
            "0",
            "-i",
        ])
        .arg(&data)
        .output()
        .expect("perf report");
    print!("{}", String::from_utf8_lossy(&report.stdout));
}

/// A keep-alive client for precise single requests.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }
    fn get(&mut self, path: &str, cookie: &str) -> u16 {
        self.request(path, &format!("Cookie: {cookie}"))
    }

    /// A GET with one more header line (`Name: value`).
    fn request(&mut self, path: &str, header: &str) -> u16 {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: b\r\nAccept: application/json\r\n{header}\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

fn revocation(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let gw = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, true, 100_000, dir, "revocation"),
        dir,
        "revocation",
    );
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_connection().unwrap();
    // Background load on another session for the whole measurement.
    let load_url = format!("http://{}/app", gw.addr);
    let cookie = format!("Cookie: {COOKIE}");
    let mut load = pinned("1", "wrk")
        .args([
            "-t1",
            "-c",
            &o.connections.to_string(),
            "-d",
            "3600s",
            "-H",
            &cookie,
            &load_url,
        ])
        .stdout(Stdio::null())
        .spawn()
        .map(Proc)
        .expect("wrk");
    std::thread::sleep(Duration::from_millis(500));
    let mut http = Conn::open(gw.addr);
    // What one request costs under this load, to tell queueing from invalidation.
    let mut baseline = Vec::new();
    for _ in 0..o.trials {
        let started = Instant::now();
        http.get("/app", COOKIE);
        baseline.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // Three ways to end a session: DEL, an overwrite (SET of a value that
    // no longer decodes to a session) and FLUSHDB (everyone logged out).
    let kinds = ["DEL", "SET (overwrite)", "FLUSHDB"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for i in 0..o.trials {
        for (k, kind) in kinds.iter().enumerate() {
            let id = format!("rev{i}k{k}");
            let key = format!("sess:{id}");
            let _: () = conn.set_ex(&key, SESSION_VALUE, 600).unwrap();
            let signed = sign(&id);
            let mut ok = 0;
            let deadline = Instant::now() + Duration::from_secs(2);
            while ok < 3 && Instant::now() < deadline {
                if http.get("/app", &signed) == 200 {
                    ok += 1;
                }
            }
            let started = Instant::now();
            match k {
                0 => {
                    let _: () = conn.del(&key).unwrap();
                }
                1 => {
                    let _: () = conn.set_ex(&key, "logged out", 600).unwrap();
                }
                _ => {
                    let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap();
                }
            }
            loop {
                let status = http.get("/app", &signed);
                if status != 200 {
                    times[k].push(started.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if started.elapsed() > Duration::from_secs(5) {
                    times[k].push(f64::INFINITY);
                    break;
                }
            }
            if *kind == "FLUSHDB" {
                // The background load's session went too.
                let _: () = conn.set_ex(SESSION_KEY, SESSION_VALUE, 86_400).unwrap();
            }
        }
    }
    let _ = load.0.kill();
    drop(load);
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[((v.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    println!(
        "\n## Revocation under load ({} trials per command, {} background connections on another session)",
        o.trials, o.connections
    );
    println!("time from the command issued to the first refusal of the revoked session's cookie (one keep-alive connection polling):");
    for (kind, times) in kinds.iter().zip(&mut times) {
        println!(
            "- {kind}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms  (target p99 <= 10 ms)",
            pct(times, 0.50),
            pct(times, 0.99),
            pct(times, 1.0)
        );
    }
    println!(
        "- for comparison, one ordinary request under the same load: p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut baseline, 0.50),
        pct(&mut baseline, 0.99)
    );
}

/// The express cookie for `id`, signed with the bench config's first secret.
fn sign(id: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"fixture-secret-current").unwrap();
    mac.update(id.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(mac.finalize().into_bytes());
    let value = format!("s:{id}.{sig}");
    let encoded = percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    format!("connect.sid={encoded}")
}

fn memory(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let gw = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, true, o.sessions + 1000, dir, "memory"),
        dir,
        "memory",
    );
    let pid = gw.proc.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let start_rss = rss_mb(pid);
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_connection().unwrap();
    for chunk in (0..o.sessions).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set_ex(format!("sess:mem{i:06}"), SESSION_VALUE, 3600)
                .ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
    }
    // Resolve every session once through the gateway so each is cached.
    let threads = 4;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = gw.addr;
            let n = o.sessions;
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut ok = 0;
                for i in (t..n).step_by(threads) {
                    if c.get("/app", &sign(&format!("mem{i:06}"))) == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    std::thread::sleep(Duration::from_secs(3));
    let cached_rss = rss_mb(pid);
    // Idle connections: first just open, then each having made one request
    // (keep-alive).
    let mut idle = Vec::with_capacity(o.idle);
    for _ in 0..o.idle {
        match TcpStream::connect(gw.addr) {
            Ok(s) => idle.push(s),
            Err(e) => {
                eprintln!("stopped opening connections at {}: {e}", idle.len());
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let opened_rss = rss_mb(pid);
    for s in &mut idle {
        let _ = s.write_all(b"GET /public/x HTTP/1.1\r\nHost: b\r\n\r\n");
    }
    for s in &mut idle {
        let mut buf = [0u8; 512];
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.read(&mut buf);
    }
    // Let the allocator return what the burst of 10k proxied requests freed.
    std::thread::sleep(Duration::from_secs(3));
    let final_rss = rss_mb(pid);
    println!("\n## Memory");
    println!("- gateway RSS at start: {start_rss:.1} MB");
    println!(
        "- after {ok} distinct sessions resolved and cached ({:.1} s): {cached_rss:.1} MB",
        started.elapsed().as_secs_f64()
    );
    println!(
        "- plus {} open connections that have sent nothing yet: {opened_rss:.1} MB",
        idle.len()
    );
    println!(
        "- once each has made one request and sits idle (keep-alive): {final_rss:.1} MB  (target <= 64 MB)"
    );
}

/// Sustained mixed load (authenticated with many sessions, public, and
/// unknown ids) with the gateway's RSS sampled every 5 s: it should stay flat.
fn soak(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let gw = start_gateway(
        bin,
        &gateway_config(redis_url, upstream, true, 100_000, dir, "soak"),
        dir,
        "soak",
    );
    let pid = gw.proc.0.id();
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.set_ex(format!("sess:soak{i:04}"), SESSION_VALUE, 3600)
            .ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();
    let seconds = o.soak.to_string() + "s";
    let cookie = format!("Cookie: {COOKIE}");
    let loads = [
        vec![
            "-H".to_string(),
            cookie.clone(),
            format!("http://{}/app", gw.addr),
        ],
        vec![format!("http://{}/public/x", gw.addr)],
        vec![
            "-H".to_string(),
            "Cookie: connect.sid=s%3Anope.bad".to_string(),
            format!("http://{}/app", gw.addr),
        ],
    ];
    let mut procs: Vec<Proc> = loads
        .iter()
        .map(|args| {
            pinned("1", "wrk")
                .args(["-t1", "-c16", "-d", &seconds])
                .args(args)
                .stdout(Stdio::null())
                .spawn()
                .map(Proc)
                .expect("wrk")
        })
        .collect();
    // Meanwhile, one client walks through 1000 distinct sessions and rewrites
    // every tenth (each SET evicts its cache entry).
    let addr = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let walker = {
        let stop = stop.clone();
        let redis_url = redis_url.to_owned();
        std::thread::spawn(move || {
            let mut c = Conn::open(addr);
            let mut conn = redis::Client::open(redis_url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("soak{:04}", i % 1000);
                c.get("/app", &sign(&id));
                if i.is_multiple_of(10) {
                    let _: () = conn
                        .set_ex(format!("sess:{id}"), SESSION_VALUE, 3600)
                        .unwrap();
                }
                i += 1;
            }
        })
    };
    println!("\n## Soak ({} s of mixed load: authenticated, public, bad cookies, 1000 rotating sessions)", o.soak);
    println!("| t (s) | gateway RSS MB |");
    println!("|---|---|");
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(o.soak) {
        let rss = rss_mb(pid);
        samples.push(rss);
        println!("| {} | {rss:.1} |", started.elapsed().as_secs());
        std::thread::sleep(Duration::from_secs(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = walker.join();
    for p in &mut procs {
        let _ = p.0.wait();
    }
    let half = samples.len() / 2;
    let first = samples[1..half.max(2)].iter().cloned().fold(0.0, f64::max);
    let last = samples[half..].iter().cloned().fold(0.0, f64::max);
    println!(
        "- peak RSS, first half (after warm-up) {first:.1} MB, second half {last:.1} MB: growth {:.1} MB",
        last - first
    );
}

fn main() {
    let o = opts();
    let bin =
        std::env::var("SESSIONGATE_BIN").unwrap_or_else(|_| "target/release/sessiongate".into());
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_url) = start_redis(dir.path());
    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = conn.set_ex(SESSION_KEY, SESSION_VALUE, 3600).unwrap();
    let upstream = start_upstream();
    println!("# sessiongate benchmark ({} CPUs, binary {bin})", cpus());
    if o.mode == "all" || o.mode == "throughput" {
        throughput(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "all" || o.mode == "revocation" {
        revocation(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "profile" {
        profile(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "instructions" {
        instructions(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "soak" {
        soak(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "all" || o.mode == "memory" {
        memory(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "live-memory" {
        live_memory(&o, &bin, dir.path(), &redis_url, upstream);
    }
    if o.mode == "all" || o.mode == "tls" || o.mode == "tls-memory" {
        tls(&o, &bin, dir.path(), &redis_url, upstream);
    }
}

/// A self-signed ECDSA P-256 certificate for `bench.test`, as PEM files, and
/// its DER for clients to trust.
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: Vec<u8>,
}

fn tls_files(dir: &std::path::Path) -> TlsFiles {
    let params = rcgen::CertificateParams::new(vec!["bench.test".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = TlsFiles {
        cert: dir.join("bench.test.pem"),
        key: dir.join("bench.test.key"),
        der: cert.der().to_vec(),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// h2load (HTTP/2 over TLS) against `url` for `--duration`, on
/// `--connections` connections with 10 streams each; its figures as a
/// `Sample` (h2load reports no percentiles: `p50_ms` is its mean, `p99_ms`
/// its max).
fn h2load(url: &str, headers: &[&str], o: &Opts, pid: Option<u32>) -> Sample {
    let cpu_before = pid.map(cpu_split);
    let mut cmd = pinned("1", "h2load");
    cmd.args([
        "-t1",
        "-m10",
        "-c",
        &o.connections.to_string(),
        "-D",
        &o.duration.to_string(),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let cpu = pid.map(|p| {
        let (user, system) = cpu_split(p);
        let (user0, system0) = cpu_before.unwrap_or((0.0, 0.0));
        (user - user0, system - system0)
    });
    let mut s = Sample::default();
    let mut done = 0.0;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
            s.rps = rest
                .split(',')
                .nth(1)
                .and_then(|v| v.trim().strip_suffix(" req/s"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("requests:") {
            // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            let n = |label: &str| -> f64 {
                rest.split(',')
                    .find(|p| p.trim().ends_with(label))
                    .and_then(|p| p.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0.0)
            };
            done = n("done");
            s.errors += (n("failed") + n("errored") + n("timeout")) as u64;
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            // "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let n: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                if matches!(words.next(), Some("4xx" | "5xx")) {
                    s.errors += n;
                }
            }
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // "time for request: min max mean sd +/- sd"
            let cols: Vec<f64> = rest.split_whitespace().take(3).map(parse_ms).collect();
            if cols.len() == 3 {
                s.p50_ms = cols[2];
                s.p99_ms = cols[1];
            }
        }
    }
    if done == 0.0 {
        eprintln!(
            "h2load served nothing: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let (Some((user, system)), true) = (cpu, done > 0.0) {
        s.cpu_us = (user + system) * 1e6 / done;
        s.user_us = user * 1e6 / done;
    }
    if let Some(p) = pid {
        s.rss_mb = rss_mb(p);
    }
    s
}

#[derive(Clone, Copy)]
enum Load {
    Wrk,
    H2load,
}

/// TLS and HTTP/2 against nginx terminating TLS in the same run: HTTP/1.1
/// keep-alive over TLS, h2, a new TLS handshake per request, and what an
/// idle TLS connection costs.
fn tls(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let files = tls_files(dir);
    let config = gateway_config(redis_url, upstream, true, 100_000, dir, "tls").replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]",
        1,
    ) + &format!(
        "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\ndefault = true\n",
        files.cert.display(),
        files.key.display()
    );
    if o.mode != "tls-memory" {
        tls_load(o, bin, dir, redis_url, upstream, &files, &config);
    }
    tls_memory(o, bin, dir, redis_url, upstream, &files, &config);
}

/// The load half of [`tls`].
fn tls_load(
    o: &Opts,
    bin: &str,
    dir: &std::path::Path,
    redis_url: &str,
    upstream: SocketAddr,
    files: &TlsFiles,
    config: &str,
) {
    let gw = start_gateway(bin, config, dir, "tls");
    let gw_tls = gw.tls.expect("the gateway's TLS listener");
    let gw_pid = gw.proc.0.id();
    let Some((nginx, nginx_addr)) = start_nginx(dir, upstream, redis_url, false, Some(files))
    else {
        eprintln!("nginx is not installed: no TLS comparison (bench/run.sh installs it)");
        return;
    };
    let nginx_pid = nginx.0.id();
    let cookie = format!("Cookie: {COOKIE}");
    // The certificate names bench.test; the clients connect to the address
    // (wrk and h2load send no SNI for an IP, so both servers present their
    // default certificate) and name the host in the request.
    let host = "Host: bench.test";
    let authority = ":authority: bench.test";
    let close = "Connection: close";
    type Case<'a> = (&'a str, Load, String, Vec<&'a str>, u32);
    let cases: Vec<Case> = vec![
        (
            "nginx TLS pass-through, HTTP/1.1",
            Load::Wrk,
            format!("https://{nginx_addr}/public/x"),
            vec![cookie.as_str(), host],
            nginx_pid,
        ),
        (
            "gateway TLS, public, HTTP/1.1",
            Load::Wrk,
            format!("https://{gw_tls}/public/x"),
            vec![cookie.as_str(), host],
            gw_pid,
        ),
        (
            "gateway TLS, auth + cache, HTTP/1.1",
            Load::Wrk,
            format!("https://{gw_tls}/app"),
            vec![cookie.as_str(), host],
            gw_pid,
        ),
        (
            "nginx TLS pass-through, h2",
            Load::H2load,
            format!("https://{nginx_addr}/public/x"),
            vec![cookie.as_str(), authority],
            nginx_pid,
        ),
        (
            "gateway TLS, public, h2",
            Load::H2load,
            format!("https://{gw_tls}/public/x"),
            vec![cookie.as_str(), authority],
            gw_pid,
        ),
        (
            "gateway TLS, auth + cache, h2",
            Load::H2load,
            format!("https://{gw_tls}/app"),
            vec![cookie.as_str(), authority],
            gw_pid,
        ),
        (
            "nginx, a TLS handshake per request",
            Load::Wrk,
            format!("https://{nginx_addr}/public/x"),
            vec![cookie.as_str(), host, close],
            nginx_pid,
        ),
        (
            "gateway, a TLS handshake per request",
            Load::Wrk,
            format!("https://{gw_tls}/public/x"),
            vec![cookie.as_str(), host, close],
            gw_pid,
        ),
    ];
    let run = |case: &Case, o: &Opts| match case.1 {
        Load::Wrk => wrk(&case.2, &case.3, o, Some(case.4)),
        Load::H2load => h2load(&case.2, &case.3, o, Some(case.4)),
    };
    let warm = Opts {
        duration: 1,
        mode: String::new(),
        target: String::new(),
        ..*o
    };
    for case in &cases {
        run(case, &warm);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 0..o.rounds {
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let s = run(&cases[i], o);
            eprintln!(
                "round {}: {:<40} {:>9.0} req/s  cpu {:.1} us/req  errors {}",
                round + 1,
                cases[i].0,
                s.rps,
                s.cpu_us,
                s.errors
            );
            samples[i].push(s);
        }
    }
    println!(
        "\n## TLS and HTTP/2 ({} rounds x {} s, {} connections; ECDSA P-256, TLS 1.3; each server on 1 thread pinned to CPU 0, the load on CPU 1)",
        o.rounds, o.duration, o.connections
    );
    println!("| target | req/s | p50 ms (h2: mean) | p99 ms (h2: max) | server CPU us/req | RSS MB | non-2xx/errors |");
    println!("|---|---|---|---|---|---|---|");
    for (i, case) in cases.iter().enumerate() {
        let col = |f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} | {errors} |",
            case.0,
            col(|s| s.rps),
            col(|s| s.p50_ms),
            col(|s| s.p99_ms),
            col(|s| s.cpu_us),
            col(|s| s.rss_mb),
        );
    }
    let ratio = |num: usize, base: usize, target: &str| {
        let ratios: Vec<f64> = samples[num]
            .iter()
            .zip(&samples[base])
            .map(|(a, b)| a.rps / b.rps)
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cpu: Vec<f64> = samples[num]
            .iter()
            .zip(&samples[base])
            .map(|(a, b)| a.cpu_us / b.cpu_us)
            .collect();
        println!(
            "- {:<44} {:.3}x req/s [{lo:.3}..{hi:.3}], {:.3}x CPU per request  ({target})",
            format!("{} / {}:", cases[num].0, cases[base].0),
            median(ratios),
            median(cpu)
        );
    };
    println!(
        "\nper-round ratios to nginx (median [min..max] over {} rounds):",
        o.rounds
    );
    ratio(1, 0, "-");
    ratio(2, 0, "target >= 0.6x req/s");
    ratio(4, 3, "-");
    ratio(5, 3, "target >= 0.6x req/s");
    ratio(7, 6, "target >= 0.8x handshakes/s");
    drop(gw);
    drop(nginx);
}

/// The memory half of [`tls`]: idle TLS connections, each server alone on
/// the machine.
fn tls_memory(
    o: &Opts,
    bin: &str,
    dir: &std::path::Path,
    redis_url: &str,
    upstream: SocketAddr,
    files: &TlsFiles,
    config: &str,
) {
    println!(
        "\n### Memory per idle TLS connection ({} connections; RSS growth / connections)",
        o.idle
    );
    println!("| server | h1, handshake done | h1, after one request | h2, preface and SETTINGS exchanged | h2, after one request |");
    println!("|---|---|---|---|---|");
    // A fresh process per protocol: memory the first one freed would
    // otherwise be reused by the second without showing in RSS.
    let mut rows: Vec<(&str, [f64; 4])> = Vec::new();
    for (name, is_gateway) in [("gateway", true), ("nginx", false)] {
        let mut row = [f64::NAN; 4];
        for h2 in [false, true] {
            let half = if is_gateway {
                let gw = start_gateway(bin, config, dir, "tls-memory");
                let addr = gw.tls.expect("the gateway's TLS listener");
                idle_tls(gw.proc.0.id(), addr, &files.der, o.idle, h2)
            } else {
                let Some((nginx, addr)) = start_nginx(dir, upstream, redis_url, false, Some(files))
                else {
                    continue;
                };
                idle_tls(nginx.0.id(), addr, &files.der, o.idle, h2)
            };
            let at = if h2 { 2 } else { 0 };
            row[at..at + 2].copy_from_slice(&half);
        }
        rows.push((name, row));
    }
    for (name, row) in rows {
        println!(
            "| {name} | {:.1} KB | {:.1} KB | {:.1} KB | {:.1} KB |",
            row[0], row[1], row[2], row[3]
        );
    }
    println!("(target for the gateway: <= 45 KB per idle TLS connection)");
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Runs `step` on every connection, 200 at a time (as they were opened: a
/// burst of 10k requests at once would leave the allocator's fragmentation
/// in the figure), and keeps those it gives back.
async fn in_batches<F, Fut>(conns: &mut Vec<Tls>, step: F)
where
    F: Fn(Tls) -> Fut,
    Fut: std::future::Future<Output = Option<Tls>> + Send + 'static,
{
    let mut rest = std::mem::take(conns).into_iter().peekable();
    while rest.peek().is_some() {
        let mut batch = tokio::task::JoinSet::new();
        for c in rest.by_ref().take(200) {
            batch.spawn(step(c));
        }
        while let Some(done) = batch.join_next().await {
            if let Some(c) = done.ok().flatten() {
                conns.push(c);
            }
        }
    }
}

/// Reads from `c` until `done` says what came is enough; `None` when the
/// connection ended or stayed silent for 10 s.
async fn read_until(mut c: Tls, done: impl Fn(&[u8]) -> bool) -> Option<Tls> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(c)
}

/// Whether `got` holds a HEADERS or DATA frame of stream 1.
fn answered_on_stream_1(got: &[u8]) -> bool {
    let mut at = 0;
    while got.len() >= at + 9 {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 8] == 1 && (got[at + 3] == 0 || got[at + 3] == 1) {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// Opens `n` TLS connections to `addr` (trusting `der` for bench.test) and
/// measures the RSS growth of `pid` per connection in KB: for HTTP/1.1 with
/// the handshake done, then after one request each; for HTTP/2 (`h2`) with
/// the preface and SETTINGS exchanged, then after one request each.
fn idle_tls(pid: u32, addr: SocketAddr, der: &[u8], n: usize, h2: bool) -> [f64; 2] {
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_conn =
        |before: f64, count: usize| (rss_mb(pid) - before) * 1024.0 / count.max(1) as f64;
    let settle = || std::thread::sleep(Duration::from_secs(3));
    settle();
    let base = rss_mb(pid);
    let mut conns: Vec<Tls> = Vec::with_capacity(n);
    rt.block_on(async {
        while conns.len() < n {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..(n - conns.len()).min(200) {
                let connector = connector.clone();
                batch.spawn(async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let name = rustls::pki_types::ServerName::try_from("bench.test").unwrap();
                    connector.connect(name, tcp).await.ok()
                });
            }
            let mut failed = 0;
            while let Some(done) = batch.join_next().await {
                match done.ok().flatten() {
                    Some(c) => conns.push(c),
                    None => failed += 1,
                }
            }
            if failed > 0 {
                eprintln!(
                    "{failed} TLS connections failed; stopping at {}",
                    conns.len()
                );
                break;
            }
        }
        if h2 {
            // The preface and an empty SETTINGS; the server's SETTINGS is
            // acknowledged.
            in_batches(&mut conns, |mut c| async move {
                c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                    .await
                    .ok()?;
                let mut c = read_until(c, |got| !got.is_empty()).await?;
                c.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.ok()?;
                Some(c)
            })
            .await;
        }
    });
    settle();
    let handshaken = per_conn(base, conns.len());
    let request: Vec<u8> = if h2 {
        // One GET on stream 1: a header block of literals.
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "bench.test"),
            (":path", "/app"),
            ("cookie", COOKIE),
        ] {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
        frame.extend_from_slice(&block);
        frame
    } else {
        format!("GET /app HTTP/1.1\r\nHost: bench.test\r\nCookie: {COOKIE}\r\n\r\n").into_bytes()
    };
    rt.block_on(in_batches(&mut conns, |mut c| {
        let request = request.clone();
        async move {
            c.write_all(&request).await.ok()?;
            if h2 {
                read_until(c, answered_on_stream_1).await
            } else {
                read_until(c, |got| !got.is_empty()).await
            }
        }
    }));
    settle();
    let answered = per_conn(base, conns.len());
    drop(conns);
    [handshaken, answered]
}

/// What tying a WebSocket to its session costs: `--idle` WebSockets (each
/// with a session of its own) held open through the gateway on a route with
/// `live = "keep"` (not tied) and then, on a fresh process, on one with the
/// default `live = "close"` (tied: its request head kept for re-checks and
/// an entry in the index by session key).
fn live_memory(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let n = o.idle;
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_connection().unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.set_ex(format!("sess:ws{i:06}"), SESSION_VALUE, 3600)
                .ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
    }
    let config = gateway_config(redis_url, upstream, true, n + 1000, dir, "live").replacen(
        "[[route]]\nname = \"app\"",
        "[[route]]\nname = \"keep\"\npath_prefix = \"/keep/\"\nupstream = \"app\"\nlive = \"keep\"\n\n[[route]]\nname = \"app\"",
        1,
    );
    println!("\n## Live exchanges ({n} WebSockets, one session each, held open)");
    let mut per = Vec::new();
    for (label, path) in [
        ("live = \"keep\" (not tied to its session)", "/keep/ws"),
        ("live = \"close\" (tied to its session)", "/ws"),
    ] {
        let gw = start_gateway(bin, &config, dir, "live");
        let pid = gw.proc.0.id();
        std::thread::sleep(Duration::from_secs(2));
        let base = rss_mb(pid);
        let mut sockets = Vec::with_capacity(n);
        for i in 0..n {
            let Ok(mut s) = TcpStream::connect(gw.addr) else {
                break;
            };
            let cookie = sign(&format!("ws{i:06}"));
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: b\r\nCookie: {cookie}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 101") {
                eprintln!(
                    "WebSocket {i} was not upgraded: {}",
                    String::from_utf8_lossy(&head)
                );
                break;
            }
            sockets.push(s);
        }
        std::thread::sleep(Duration::from_secs(3));
        let kb = (rss_mb(pid) - base) * 1024.0 / sockets.len().max(1) as f64;
        println!(
            "- {label}: {} open, {kb:.1} KB each (gateway RSS {:.1} MB -> {:.1} MB)",
            sockets.len(),
            base,
            rss_mb(pid)
        );
        per.push(kb);
        drop(sockets);
        drop(gw);
    }
    if let [keep, close] = per[..] {
        println!("- tying each to its session: {:.1} KB", close - keep);
    }
}
