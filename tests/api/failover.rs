//! A database failover drill: a primary with a synchronous streaming standby, and a TCP proxy
//! in front playing HAProxy's part beside Patroni. Under load the primary stops at once, the
//! standby is promoted and the proxy repointed; no acknowledged message may be lost, and the
//! same smsgate process accepts again within seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smsgate::Role;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::dispatch::wait_until;
use crate::test_config::TestConfig;

/// One PostgreSQL server of the drill, listening on loopback TCP.
struct Node {
    dir: PathBuf,
    port: u16,
}

/// Runs a PostgreSQL server binary as the `postgres` account when we are root.
fn server_command(program: &str) -> Command {
    let bin = smsgate::db::embedded::find_server_binaries().expect("PostgreSQL binaries");
    as_postgres_account(&bin.join(program))
}

/// `program` as the `postgres` account when we are root (PostgreSQL and PgBouncer refuse root).
pub fn as_postgres_account(program: &Path) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

pub fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server the test leaves (a failed assertion included) is stopped, not orphaned.
impl Drop for Node {
    fn drop(&mut self) {
        let mut pg_ctl = server_command("pg_ctl");
        pg_ctl
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.dir);
        let _ = pg_ctl.output();
    }
}

impl Node {
    /// The primary: a fresh cluster (made synchronous once its standby streams).
    fn primary(base: &Path) -> Self {
        let node = Node {
            dir: base.join("primary"),
            port: crate::cli::free_port(),
        };
        node.run("initdb", &["-U", "postgres", "--auth=trust", "--no-sync"]);
        node.start("");
        node
    }

    /// A streaming standby of `primary`, cloned with pg_basebackup.
    fn standby_of(primary: &Node, base: &Path) -> Self {
        let node = Node {
            dir: base.join("standby"),
            port: crate::cli::free_port(),
        };
        let port = primary.port.to_string();
        node.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ],
        );
        node.start("");
        node
    }

    fn start(&self, extra: &str) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} {extra}",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-l", &log, "-o", &options],
        );
    }

    /// Stops the server at once, as a crash or a lost machine would.
    fn crash(&self) {
        self.run("pg_ctl", &["stop", "-m", "immediate", "-w"]);
    }

    fn promote(&self) {
        self.run("pg_ctl", &["promote", "-w"]);
    }

    /// `program -D <dir> args…`, which must succeed.
    fn run(&self, program: &str, args: &[&str]) {
        let mut command = server_command(program);
        command.args(args).arg("-D").arg(&self.dir);
        run(command, program);
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn pool(&self, database: &str) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url(database))
            .await
            .expect("connect to a node")
    }
}

/// A TCP proxy whose backend can be switched, dropping every connection to the old one, as
/// HAProxy does beside Patroni (`on-marked-down shutdown-sessions`).
#[derive(Clone)]
struct Proxy {
    backend: Arc<Mutex<(SocketAddr, CancellationToken)>>,
}

impl Proxy {
    async fn start(backend: u16) -> (Self, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let proxy = Proxy {
            backend: Arc::new(Mutex::new((
                SocketAddr::from(([127, 0, 0, 1], backend)),
                CancellationToken::new(),
            ))),
        };
        let serving = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (address, cut) = serving.backend.lock().expect("proxy state").clone();
                tokio::spawn(forward(client, address, cut));
            }
        });
        (proxy, port)
    }

    fn repoint(&self, backend: u16) {
        let mut state = self.backend.lock().expect("proxy state");
        state.1.cancel();
        *state = (
            SocketAddr::from(([127, 0, 0, 1], backend)),
            CancellationToken::new(),
        );
    }
}

async fn forward(mut client: TcpStream, backend: SocketAddr, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(backend).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => {}
    }
}

async fn messages_to(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT recipient FROM messages")
        .fetch_all(pool)
        .await
        .expect("recipients")
}

#[tokio::test]
async fn a_synchronous_standby_promoted_under_load_loses_no_acknowledged_message() {
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let primary = Node::primary(dir.path());
    sqlx::query("CREATE DATABASE smsgate")
        .execute(&primary.pool("postgres").await)
        .await
        .expect("create database");
    let standby = Node::standby_of(&primary, dir.path());
    let primary_admin = primary.pool("postgres").await;
    // Commits now return only once the standby has the WAL: the setting that keeps every
    // acknowledged message through a failover (docs/operations.md).
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(statement)
            .execute(&primary_admin)
            .await
            .expect("synchronous replication");
    }
    wait_until(
        "the standby to stream synchronously",
        Duration::from_secs(30),
        async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .fetch_one(&primary_admin)
            .await
            .is_ok_and(|n| n == 1)
        },
    )
    .await;
    primary_admin.close().await;

    eprintln!("drill: cluster ready after {:?}", began.elapsed());
    let (proxy, proxy_port) = Proxy::start(primary.port).await;
    let config = TestConfig::base().set("database.acquire_timeout_ms", 500);
    let through_proxy = format!("postgres://postgres@127.0.0.1:{proxy_port}/smsgate");
    let (address, shutdown, served) =
        crate::faults::serve_on(&config, &through_proxy, Role::Ingress).await;

    let stop_load = CancellationToken::new();
    let running = tokio::spawn(crate::faults::load(address, 4, 0, stop_load.clone()));
    let replica = standby.pool("smsgate").await;
    wait_until(
        "acknowledged messages on the standby",
        Duration::from_secs(30),
        async || messages_to(&replica).await.len() >= 50,
    )
    .await;

    eprintln!("drill: load flowing after {:?}", began.elapsed());
    primary.crash();
    let failover = Instant::now();
    standby.promote();
    proxy.repoint(standby.port);
    let promoted_with = messages_to(&replica).await.len();
    wait_until(
        "the same process to accept again",
        Duration::from_secs(15),
        async || messages_to(&replica).await.len() >= promoted_with + 20,
    )
    .await;
    let accepting_after = failover.elapsed();
    eprintln!("drill: accepting again {accepting_after:?} after the failover");
    stop_load.cancel();
    let outcomes = running.await.expect("load");

    let stored: std::collections::HashSet<String> =
        messages_to(&replica).await.into_iter().collect();
    let acknowledged: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == Some(200))
        .map(|o| o.recipient.as_str())
        .collect();
    let lost: Vec<&&str> = acknowledged
        .iter()
        .filter(|recipient| !stored.contains(**recipient))
        .collect();
    assert!(
        acknowledged.len() >= 60,
        "{} acknowledged",
        acknowledged.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged, then lost in the failover: {lost:?}"
    );
    crate::faults::assert_only_200_or_503(&outcomes);
    assert!(
        accepting_after < Duration::from_secs(15),
        "accepting again {accepting_after:?} after the failover"
    );

    shutdown.cancel();
    served.await.expect("served").expect("clean stop");
    replica.close().await;
}
