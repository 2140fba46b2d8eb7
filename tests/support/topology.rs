//! Redis topologies for one test, on free loopback ports: a master with a
//! replica and a Sentinel, or a three-master cluster. Every process is
//! killed by PID when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One redis-server (or sentinel) process.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    sentinel: bool,
}

impl Node {
    /// Starts `redis-server [conf] <args>` on a free port; waits for PING.
    fn start(args: &[String], sentinel: bool) -> Node {
        for _ in 0..5 {
            let mut node = Node {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("temp dir"),
                args: args.to_vec(),
                sentinel,
            };
            if node.spawn() {
                return node;
            }
            node.kill();
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        if self.sentinel {
            let conf = self.dir.path().join("sentinel.conf");
            std::fs::write(&conf, self.args.join("\n") + "\n").expect("sentinel.conf");
            cmd.arg(&conf).arg("--sentinel");
            cmd.args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string());
        } else {
            cmd.args(["--bind", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.args);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Starts a killed server again on its port and directory (a cluster node
    /// rejoins with its `nodes.conf`; the data is gone).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not come back on {}",
            self.port
        );
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut conn) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port)).expect("redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        let conn = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis");
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        conn
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn info(node: &Node, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query(&mut node.conn())
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A master, one replica and one Sentinel (quorum 1) watching `mymaster`.
pub struct SentinelSetup {
    pub nodes: Vec<Node>,
    pub sentinel: Node,
}

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        let master = Node::start(&[], false);
        let replica = Node::start(
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            false,
        );
        wait_for("the replica to sync", Duration::from_secs(10), || {
            info(&replica, "replication").contains("master_link_status:up")
        });
        let sentinel = Node::start(
            &[
                format!("sentinel monitor mymaster 127.0.0.1 {} 1", master.port),
                "sentinel down-after-milliseconds mymaster 1000".into(),
                "sentinel failover-timeout mymaster 5000".into(),
            ],
            true,
        );
        let setup = SentinelSetup {
            nodes: vec![master, replica],
            sentinel,
        };
        wait_for(
            "the sentinel to see the replica",
            Duration::from_secs(15),
            || {
                let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("mymaster")
                    .query(&mut setup.sentinel.conn())
                    .unwrap_or_default();
                replicas
                    .iter()
                    .any(|r| r.windows(2).any(|w| w[0] == "flags" && w[1] == "slave"))
            },
        );
        setup
    }

    /// The port the Sentinel names as master now.
    pub fn master_port(&self) -> u16 {
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("mymaster")
            .query(&mut self.sentinel.conn())
            .expect("master address");
        addr.get(1).and_then(|p| p.parse().ok()).expect("port")
    }

    pub fn master(&self) -> &Node {
        let port = self.master_port();
        self.nodes.iter().find(|n| n.port == port).expect("master")
    }

    /// `SENTINEL FAILOVER mymaster`, retried until the Sentinel accepts it.
    pub fn failover(&self) {
        wait_for("SENTINEL FAILOVER", Duration::from_secs(10), || {
            redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg("mymaster")
                .query::<String>(&mut self.sentinel.conn())
                .is_ok()
        });
    }
}

/// Three masters, no replicas, `cluster-require-full-coverage no` (a dead
/// master makes only its own slots unavailable).
pub struct ClusterSetup {
    pub nodes: Vec<Node>,
}

impl ClusterSetup {
    pub fn start() -> ClusterSetup {
        let nodes: Vec<Node> = (0..3)
            .map(|_| {
                Node::start(
                    &[
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-node-timeout".into(),
                        "1000".into(),
                        "--cluster-require-full-coverage".into(),
                        "no".into(),
                    ],
                    false,
                )
            })
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Node::addr))
            .args(["--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let setup = ClusterSetup { nodes };
        wait_for("cluster_state:ok", Duration::from_secs(15), || {
            setup.nodes.iter().all(|n| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.conn())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            })
        });
        setup
    }

    /// The index of the node that owns `key`.
    pub fn owner(&self, key: &str) -> usize {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].conn())
            .expect("keyslot");
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.nodes[0].conn())
            .expect("slots");
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS")
        };
        for range in ranges {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                if let Some(redis::Value::Array(master)) = items.get(2) {
                    if let Some(redis::Value::Int(port)) = master.get(1) {
                        return self
                            .nodes
                            .iter()
                            .position(|n| i64::from(n.port) == *port)
                            .expect("owner node");
                    }
                }
            }
        }
        panic!("no owner for slot {slot}");
    }
}
