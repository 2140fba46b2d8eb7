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
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    while lines.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(a) = line
            .trim_end()
            .strip_prefix("sessiongate listening on http://")
        {
            addr = Some(a.parse().unwrap());
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
) -> Option<(Proc, SocketAddr)> {
    Command::new("nginx").arg("-v").output().ok()?;
    let tag = if lua_redis { "nginx-lua" } else { "nginx" };
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
    server {{
        listen 127.0.0.1:{port};
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
        prefix = prefix.display()
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
    let nginx = start_nginx(dir, upstream, redis_url, false);
    let nginx_lua = start_nginx(dir, upstream, redis_url, true);
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

/// Instructions per request of one target (`--target public|cache|nocache`),
/// counted by callgrind: repeatable where wall-clock figures drift. The
/// gateway runs under `valgrind --tool=callgrind`; after a warm-up the
/// counters are zeroed, `--trials` requests are sent on 8 keep-alive
/// connections, and the counters are dumped.
fn instructions(o: &Opts, bin: &str, dir: &std::path::Path, redis_url: &str, upstream: SocketAddr) {
    let cache = o.target != "nocache";
    let out = dir.join("callgrind.out");
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin);
    let gw = launch(
        valgrind,
        &gateway_config(redis_url, upstream, cache, 100_000, dir, "counted"),
        dir,
        "counted",
    );
    let (addr, pid) = (gw.addr, gw.proc.0.id());
    let url_path = if o.target == "public" {
        "/public/x"
    } else {
        "/app"
    };
    let mut conns: Vec<Conn> = (0..8).map(|_| Conn::open(addr)).collect();
    let mut send = |n: usize| {
        for i in 0..n {
            let n_conns = conns.len();
            let status = conns[i % n_conns].get(url_path, COOKIE);
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
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: b\r\nAccept: application/json\r\nCookie: {cookie}\r\n\r\n").unwrap();
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
}
