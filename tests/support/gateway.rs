//! The real `sessiongate` binary, started on a config written for the test,
//! listening on a port the gateway chose itself (port 0). Killed when dropped;
//! its log is printed if the test failed. Its stdout (listen lines, access
//! log) is kept for the test to read.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub struct TestGateway {
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    child: Child,
    log_path: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sessiongate")
}

impl TestGateway {
    /// Starts the gateway with `config` (a complete proxy.toml; `listen` should be port 0).
    pub fn start(config: &str) -> TestGateway {
        Self::try_start(config).unwrap_or_else(|log| panic!("gateway did not start:\n{log}"))
    }

    /// Like `start`, but returns the gateway's output when it does not come up.
    pub fn try_start(config: &str) -> Result<TestGateway, String> {
        Self::try_start_with_env(config, &[])
    }

    /// `start` with extra environment variables, e.g. `("RUST_LOG", "debug")`
    /// (the default is `RUST_LOG=info,sessiongate=debug`).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> TestGateway {
        Self::try_start_with_env(config, env)
            .unwrap_or_else(|log| panic!("gateway did not start:\n{log}"))
    }

    pub fn try_start_with_env(config: &str, env: &[(&str, &str)]) -> Result<TestGateway, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, with_private_paths(config, dir.path())).expect("write config");
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&config_path)
            .env("RUST_LOG", "info,sessiongate=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn sessiongate");

        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("sessiongate listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let read_log = |child: &mut Child| {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
            text
        };
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => return Err(read_log(&mut child)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                return Err(read_log(&mut child));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(TestGateway {
            addr,
            config_path,
            child,
            log_path,
            stdout: lines,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every line the gateway printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The access log once it has a line that `want` accepts (it is written
    /// in batches), or as it is after 5 s.
    pub fn access_log_until(
        &self,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let log = self.access_log();
            if log.iter().any(&want) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The access log so far: the stdout lines that are JSON objects.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The first TLS listener's address (`sessiongate listening on https://ADDR`).
    pub fn tls_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.stdout().iter().find_map(|line| {
                line.strip_prefix("sessiongate listening on https://")
                    .and_then(|a| a.parse().ok())
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(Instant::now() < deadline, "no TLS listener line");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin listener's address (`sessiongate admin listening on http://ADDR`),
    /// once it is accepting connections.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.stdout().iter().find_map(|l| {
                l.strip_prefix("sessiongate admin listening on http://")
                    .map(|a| a.parse::<SocketAddr>().expect("admin address"))
            });
            if let Some(addr) = found {
                if TcpStream::connect(addr).is_ok() {
                    return addr;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no admin listener:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the gateway.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).expect("pid");
        // SAFETY: kill(2) with plain integers.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }
}

/// Gives each gateway its own pid file and upgrade socket so tests can run in parallel.
fn with_private_paths(config: &str, dir: &Path) -> String {
    if config.contains("pid_file") {
        return config.to_owned();
    }
    config.replacen(
        "[server]\n",
        &format!(
            "[server]\npid_file = \"{}\"\nupgrade_sock = \"{}\"\n",
            dir.join("gateway.pid").display(),
            dir.join("upgrade.sock").display()
        ),
        1,
    )
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sessiongate log ----\n{}\n---- end ----", self.log());
        }
    }
}
