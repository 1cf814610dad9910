//! smsgate behind Debian's PgBouncer in transaction pooling mode, as deployments with many
//! processes run it. The pooler has far fewer server sessions than smsgate has connections,
//! so statements of different clients interleave on every server session: a statement split
//! across two servers, a named statement left behind or a session setting would show here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use smsgate::Role;
use sqlx::PgPool;

use crate::dispatch::{FAST_DISPATCH, config_with, wait_until};
use crate::failover::{as_postgres_account, run};
use crate::helpers::{ADMIN_TOKEN, http_client, sms_request, token};
use crate::standins::twilio::TwilioStandIn;

/// Server sessions PgBouncer keeps to PostgreSQL: fewer than one process's pool.
const SERVER_SESSIONS: u32 = 3;

/// A private PostgreSQL with PgBouncer in front, and a direct pool for the test's checks.
/// Fields drop in order: the pooler, then the server, then their directory.
struct BehindPgBouncer {
    direct: PgPool,
    bouncer: PgBouncer,
    cluster: smsgate::db::embedded::EmbeddedPostgres,
    _dir: tempfile::TempDir,
}

impl BehindPgBouncer {
    async fn start(server_sessions: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = crate::faults::private_cluster(dir.path());
        let (socket_dir, pg_port) = cluster.socket();
        // PgBouncer runs as the `postgres` account too: its files in a directory it may write.
        let bouncer_dir = dir.path().join("pgbouncer");
        std::fs::create_dir(&bouncer_dir).expect("pgbouncer dir");
        std::fs::set_permissions(
            &bouncer_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let bouncer = PgBouncer::start(
            &bouncer_dir,
            socket_dir,
            pg_port,
            "postgres",
            server_sessions,
        );
        bouncer.until_serving("postgres").await;
        let direct = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(cluster.connect_options("postgres"))
            .await
            .expect("direct connection");
        Self {
            _dir: dir,
            cluster,
            bouncer,
            direct,
        }
    }

    /// The test configuration through the pooler, LISTENing and migrating on PostgreSQL itself.
    /// Hundreds of requests share three server sessions here: on a machine busy with other
    /// builds a connection can take longer than the default 3 s to come free, which says
    /// nothing about correctness behind the pooler (what these tests check).
    fn config(&self, standin: &TwilioStandIn) -> crate::test_config::TestConfig {
        config_with(standin, FAST_DISPATCH)
            .set("database.acquire_timeout_ms", 15_000)
            .set("database.url", self.bouncer.url("postgres"))
            .set("database.transaction_pooling", true)
            .set("database.direct_url", self.cluster.url("postgres"))
    }
}

/// A PgBouncer daemon in front of one database, stopped when dropped.
struct PgBouncer {
    dir: PathBuf,
    port: u16,
}

impl PgBouncer {
    /// Starts `pgbouncer -d` for `database` on the server behind `socket_dir`/`pg_port`.
    fn start(
        dir: &Path,
        socket_dir: &Path,
        pg_port: u16,
        database: &str,
        server_sessions: u32,
    ) -> Self {
        let port = crate::cli::free_port();
        let config = format!(
            "[databases]\n\
             {database} = host={socket} port={pg_port} dbname={database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {server_sessions}\n\
             max_client_conn = 1000\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            socket = socket_dir.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), config).expect("pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("users.txt");
        let mut command = as_postgres_account(&pgbouncer_binary());
        command.arg("-d").arg(dir.join("pgbouncer.ini"));
        run(command, "pgbouncer");
        PgBouncer {
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// Waits until a query through the pooler reaches the server.
    async fn until_serving(&self, database: &str) {
        let mut last = String::new();
        for _ in 0..200 {
            let options = self
                .url(database)
                .parse::<sqlx::postgres::PgConnectOptions>()
                .expect("url");
            match <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await {
                Ok(mut session) => match sqlx::raw_sql("SELECT 1").execute(&mut session).await {
                    Ok(_) => return,
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pgbouncer does not serve: {last}\n{}", self.log());
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Debian installs it outside a non-root PATH.
fn pgbouncer_binary() -> PathBuf {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("pgbouncer is installed (apt-get install pgbouncer; .ci/run does)")
}

/// Sends `count` messages, `concurrency` at a time; every one must be accepted. Returns the
/// recipients and the messages' ids.
async fn send_all(
    address: SocketAddr,
    count: usize,
    concurrency: usize,
) -> (Vec<String>, Vec<String>) {
    let http = http_client(30);
    let recipients: Vec<String> = (0..count).map(|n| format!("+1415{n:07}")).collect();
    let answers: Vec<(u16, String)> = futures_util::stream::iter(recipients.clone())
        .map(|recipient| {
            let request = sms_request(&http, address, token(), &recipient);
            async move {
                let Ok(response) = request.send().await else {
                    return (0, String::new());
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                (status, body["id"].as_str().unwrap_or_default().to_string())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    let refused = statuses.iter().filter(|&&status| status != 200).count();
    assert_eq!(refused, 0, "answers other than 200: {statuses:?}");
    (recipients, answers.into_iter().map(|(_, id)| id).collect())
}

/// Reads every message's status, `concurrency` at a time: single statements, each of which
/// the pooler could split across servers were it not in a transaction.
async fn read_all(address: SocketAddr, ids: &[String], concurrency: usize) {
    let http = http_client(30);
    let statuses: Vec<u16> = futures_util::stream::iter(ids)
        .map(|id| {
            let request = http
                .get(format!("http://{address}/v1/messages/{id}"))
                .bearer_auth(ADMIN_TOKEN);
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let failed = statuses.iter().filter(|&&status| status != 200).count();
    assert_eq!(failed, 0, "status reads other than 200: {statuses:?}");
}

async fn messages_by_status(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM messages GROUP BY status")
        .fetch_all(pool)
        .await
        .expect("statuses")
        .into_iter()
        .collect()
}

#[tokio::test]
async fn hundreds_of_concurrent_messages_through_transaction_pooling_are_each_delivered_once() {
    let setup = BehindPgBouncer::start(SERVER_SESSIONS).await;
    let standin = TwilioStandIn::start().await;
    let listening = setup.config(&standin);
    let (address, stop_first, first) =
        crate::faults::serve_on(&listening, &setup.bouncer.url("postgres"), Role::All).await;
    // A second worker with no session at all: it polls.
    let polling = listening
        .without("database.direct_url")
        .set("database.migrate_on_start", false);
    let (_, stop_second, second) =
        crate::faults::serve_on(&polling, &setup.bouncer.url("postgres"), Role::Worker).await;

    let (recipients, ids) = send_all(address, 400, 100).await;
    read_all(address, &ids, 100).await;

    let direct = &setup.direct;
    wait_until("every message sent", Duration::from_secs(60), async || {
        messages_by_status(direct).await.get("sent") == Some(&400)
    })
    .await;
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for received in standin.received() {
        *deliveries.entry(received.to).or_default() += 1;
    }
    let not_once: Vec<(&String, usize)> = recipients
        .iter()
        .map(|r| (r, deliveries.get(r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        not_once.is_empty(),
        "not delivered exactly once: {not_once:?}"
    );
    assert_eq!(standin.received().len(), 400, "nothing else was sent");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM message_attempts")
        .fetch_one(direct)
        .await
        .expect("attempts");
    assert_eq!(attempts, 400, "one attempt per message");
    // Everything the two processes did went through the pooler's few server sessions.
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'postgres' \
         AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(direct)
    .await
    .expect("sessions");
    assert!(
        sessions <= i64::from(SERVER_SESSIONS) + 1,
        "{sessions} sessions: the pooler's {SERVER_SESSIONS} and one LISTEN at most"
    );
    let log = setup.bouncer.log();
    assert!(
        !log.contains("ERROR") && !log.contains("WARNING"),
        "pgbouncer complained:\n{log}"
    );

    stop_first.cancel();
    stop_second.cancel();
    first.await.expect("first").expect("clean stop");
    second.await.expect("second").expect("clean stop");
}

/// Every server session the pooler has, left LISTENing by another client.
async fn poison_every_server_session(bouncer: &PgBouncer, sessions: u32) {
    let options: sqlx::postgres::PgConnectOptions = bouncer.url("postgres").parse().expect("url");
    let mut clients = Vec::new();
    // Each client holds a transaction, so each gets a server session of its own.
    for _ in 0..sessions {
        let mut client = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
            .await
            .expect("a client of the pooler");
        sqlx::raw_sql("BEGIN; LISTEN smsgate_queue")
            .execute(&mut client)
            .await
            .expect("LISTEN");
        clients.push(client);
    }
    for mut client in clients {
        sqlx::raw_sql("COMMIT")
            .execute(&mut client)
            .await
            .expect("commit");
        sqlx::Connection::close(client).await.ok();
    }
}

/// Found by an attack: a LISTEN someone left on a server session the pooler shares made
/// sqlx fail reading the answer to our COMMIT (a notification in its way), so stored messages
/// were answered 503 and sent outcomes written twice. Each transaction now begins with
/// UNLISTEN *, which takes effect at its commit.
#[tokio::test]
async fn a_listen_left_on_a_pooled_session_costs_no_request_and_no_outcome() {
    let setup = BehindPgBouncer::start(2).await;
    poison_every_server_session(&setup.bouncer, 2).await;
    let standin = TwilioStandIn::start().await;
    let config = setup.config(&standin);
    let (address, stop, served) =
        crate::faults::serve_on(&config, &setup.bouncer.url("postgres"), Role::All).await;

    let (recipients, _) = send_all(address, 300, 50).await;

    wait_until("every message sent", Duration::from_secs(60), async || {
        messages_by_status(&setup.direct).await.get("sent") == Some(&300)
    })
    .await;
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM message_attempts")
        .fetch_one(&setup.direct)
        .await
        .expect("attempts");
    assert_eq!(attempts, 300, "one attempt row per message");
    assert_eq!(standin.received().len(), recipients.len());
    stop.cancel();
    served.await.expect("served").expect("clean stop");
}

/// Found by an attack: a caller giving up while its BEGIN waited for a server session (a
/// probe's timeout) left that session idle in a transaction once the BEGIN ran, pinned for
/// `idle_in_transaction_session_timeout` (10 s of 503s with two sessions). The BEGIN now
/// runs to its end on a task of its own and is rolled back.
#[tokio::test]
async fn a_begin_cut_short_by_its_caller_leaves_no_session_in_a_transaction() {
    let setup = BehindPgBouncer::start(2).await;
    let standin = TwilioStandIn::start().await;
    let config = setup.config(&standin);
    let (address, stop, served) =
        crate::faults::serve_on(&config, &setup.bouncer.url("postgres"), Role::Ingress).await;
    let http = http_client(30);

    // Both server sessions busy: two writes wait behind a lock on the messages table.
    let blocker = crate::helpers::hold_tables(&setup.direct, "messages").await;
    let writes: Vec<_> = (0..2)
        .map(|n| {
            let request = sms_request(&http, address, token(), &format!("+1415555{:04}", 7000 + n));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    crate::helpers::until_a_session_waits_for_a_lock(&setup.direct).await;
    // Status reads that give up while their BEGIN waits for a server session.
    let impatient = http_client(1);
    for _ in 0..6 {
        let probe = impatient
            .get(format!(
                "http://{address}/v1/messages/{}",
                uuid::Uuid::now_v7()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_millis(150))
            .send()
            .await;
        assert!(probe.is_err(), "the read gave up: {probe:?}");
    }
    blocker.commit().await.expect("lock released");
    for write in writes {
        assert_eq!(write.await.expect("joined").expect("answered"), 200);
    }

    // Nothing stays idle in a transaction (the timeout would end it after 10 s).
    wait_until(
        "no session idle in a transaction",
        Duration::from_secs(3),
        async || {
            let pinned: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE state = 'idle in transaction' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&setup.direct)
            .await
            .expect("sessions");
            pinned == 0
        },
    )
    .await;
    let after = sms_request(&http, address, token(), "+14155557999")
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .expect("answered in time");
    assert_eq!(after.status().as_u16(), 200);
    stop.cancel();
    served.await.expect("served").expect("clean stop");
}
