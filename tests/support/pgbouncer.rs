//! A PgBouncer of the test's own, in transaction mode, in front of a Postgres server: the pooler
//! many-process deployments put between chatq and Postgres. It runs from `CQTEST_PGBOUNCER`
//! (Debian's `pgbouncer`, which `scripts/test` installs), on a spare port, with its
//! configuration in a directory of its own, and trusts every client (as the test Postgres does).
//! Shared by the `api` and `faults` test binaries.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running PgBouncer; dropping it stops it and removes its files.
pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Starts a PgBouncer in transaction mode that sends every database to the Postgres server
    /// at `upstream` (`host:port`) as the `postgres` user, with up to 20 server sessions per
    /// database.
    pub async fn start(upstream: (&str, u16)) -> Self {
        Self::start_with_sessions(upstream, 20).await
    }

    /// As [`Self::start`], with up to `sessions` server sessions per database: fewer than its
    /// clients make it lend each session to one client after another.
    pub async fn start_with_sessions(upstream: (&str, u16), sessions: usize) -> Self {
        let binary = std::env::var_os("CQTEST_PGBOUNCER").unwrap_or_else(|| {
            panic!(
                "CQTEST_PGBOUNCER is not set. The pooler tests start their own pgbouncer; run \
                 them with scripts/test, which installs Debian's pgbouncer and exports it."
            )
        });
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a local port can be bound");
            listener.local_addr().unwrap().port()
        };
        // Under the system temp directory, readable by the `postgres` user PgBouncer runs as
        // when the tests run as root (it refuses to run as root).
        let dir = std::env::temp_dir().join(format!(
            "cqtest-pgbouncer-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (host, upstream_port) = upstream;
        let config = format!(
            "[databases]\n\
             * = host={host} port={upstream_port} user=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             max_client_conn = 2000\n\
             default_pool_size = {sessions}\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut command = Command::new(&binary);
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "cannot hand {} to postgres",
                dir.display()
            );
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.to_string_lossy()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgbouncer is not listening on {addr} after 20 s; see {}/pgbouncer.log",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self { port, dir, child }
    }

    /// `postgres_url` (a URL of the upstream server) with this PgBouncer's address instead.
    pub fn url_for(&self, postgres_url: &str) -> String {
        let (scheme_user, rest) = postgres_url
            .split_once('@')
            .expect("a postgres://user@host:port/db URL");
        let database = rest.split_once('/').map_or("", |(_, db)| db);
        format!("{scheme_user}@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        drop(self.child.start_kill());
        drop(std::fs::remove_dir_all(&self.dir));
    }
}

/// The `host` and `port` of a `postgres://user@host:port/db` URL.
pub fn host_and_port(postgres_url: &str) -> (String, u16) {
    let rest = postgres_url
        .split_once('@')
        .map_or(postgres_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().expect("a port number")),
        None => (authority.to_owned(), 5432),
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
