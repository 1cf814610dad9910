//! A private PostgreSQL cluster run from the installed server binaries: the zero-setup default
//! for `serve`, and the test harness's database server.
//!
//! The cluster listens on a unix socket only, in its home directory, which only the server's
//! account (and root) may enter: initdb's `trust` authentication then admits nobody else.
//! PostgreSQL refuses to run as root, so when we are root every server command runs as the
//! `postgres` account through `runuser`.
//!
//! One process owns the cluster: the one holding an exclusive lock on `smsgate.lock` in its
//! home, taken before anything else is done there and released by the kernel when that
//! process dies. The owner starts the cluster and runs a small watchdog shell that holds a pipe
//! from it and stops the cluster when the pipe closes, so even a `kill -9` of smsgate leaves no
//! server behind. Any other process (an operator command beside a live gateway) is a guest: it
//! only connects, and never starts or stops the cluster.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use nix::unistd::{Uid, User};
use sqlx::postgres::PgConnectOptions;

/// The port only names the socket file; nothing listens on TCP.
const PORT: u16 = 5432;
/// Locked by the owner for as long as it lives; holds its pid, for people.
const LOCK_FILE: &str = "smsgate.lock";
/// How long a guest waits for the owner to bring the cluster up.
const GUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a cluster whose owner died is given to be stopped by the owner's watchdog.
const ORPHAN_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// Unix socket paths are limited to 107 bytes on Linux.
const MAX_SOCKET_PATH: usize = 107;
const OS_ACCOUNT: &str = "postgres";

/// How the cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on, as production needs: an acknowledged message survives a power cut.
    Durable,
    /// fsync off, and the directory is deleted when the cluster stops: test clusters.
    Throwaway,
}

/// Whether a process may connect to a cluster another process owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    Owner,
    OwnerOrGuest,
}

/// A running private cluster; [`EmbeddedPostgres::stop`] (or the watchdog) shuts it down.
pub struct EmbeddedPostgres {
    home: PathBuf,
    watchdog: Option<Child>,
    /// The owner's lock; `None` for a guest.
    lock: Option<std::fs::File>,
}

impl EmbeddedPostgres {
    /// Initialises `home` on first use, then starts (or adopts) the cluster living there.
    pub fn start(home: &Path, durability: Durability) -> anyhow::Result<Self> {
        Self::start_as(home, durability, Ownership::OwnerOrGuest)
    }

    /// Like [`EmbeddedPostgres::start`], but always as the owner: while another process owns
    /// the cluster, waits for it to go (a gateway replacing another on one box takes over
    /// when the old one stops; one behind a short operator command waits seconds).
    pub fn start_owned(home: &Path, durability: Durability) -> anyhow::Result<Self> {
        Self::start_as(home, durability, Ownership::Owner)
    }

    fn start_as(home: &Path, durability: Durability, wanted: Ownership) -> anyhow::Result<Self> {
        let runner = Runner {
            bin: find_server_binaries()?,
            run_as: server_account()?,
        };
        let home = prepare_home(home, runner.run_as.as_ref())?;
        let cluster = home.join("pgdata");
        let mut lock = take_lock(&home)?;
        if lock.is_none() && wanted == Ownership::Owner {
            // Blocking on the lock (not polling it) puts this process first in line when the
            // holder goes, ahead of operator commands that start meanwhile.
            tracing::warn!(dir = %home.display(), "the embedded database belongs to another smsgate; waiting for it to stop");
            lock = Some(wait_for_lock(&home)?);
        }
        let Some(mut lock) = lock else {
            // A live owner: connect only, once it has the cluster up.
            let waited = std::time::Instant::now();
            while !runner.is_running(&cluster) && waited.elapsed() < GUEST_WAIT {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            tracing::info!(dir = %home.display(), "embedded PostgreSQL is run by another smsgate; connecting only");
            return Ok(Self {
                home,
                watchdog: None,
                lock: None,
            });
        };
        {
            use std::io::Write;
            lock.set_len(0).ok();
            write!(lock, "{}", std::process::id()).ok();
        }
        if !cluster.join("PG_VERSION").exists() {
            init_cluster(&runner, &cluster, durability)?;
        }
        start_cluster(&runner, &home, &cluster, durability)?;
        let watchdog = spawn_watchdog(&runner, &home, durability == Durability::Throwaway)?;
        Ok(Self {
            home,
            watchdog: Some(watchdog),
            lock: Some(lock),
        })
    }

    /// True for the process that started the cluster and will stop it.
    pub fn is_owner(&self) -> bool {
        self.lock.is_some()
    }

    /// Connection options for `database` on this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.home)
            .port(PORT)
            .username("postgres")
            .database(database)
    }

    /// A `postgres://` URL for `database`, for tools and child processes.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{PORT}/{database}?host={}",
            self.home.display()
        )
    }

    /// Where the server's unix socket lives (`-h` for psql and pgbench), and its port.
    pub fn socket(&self) -> (&Path, u16) {
        (&self.home, PORT)
    }

    /// Stops the cluster and waits until it is down.
    pub fn stop(mut self) {
        self.stop_and_wait();
    }

    fn stop_and_wait(&mut self) {
        // Only the owner has a watchdog: a guest leaves the cluster running, and says nothing.
        if let Some(mut watchdog) = self.watchdog.take() {
            tracing::info!("stopping embedded PostgreSQL");
            // Closing its stdin is the watchdog's signal to run `pg_ctl stop`.
            drop(watchdog.stdin.take());
            if let Err(err) = watchdog.wait() {
                tracing::warn!(error = %err, "waiting for the embedded PostgreSQL to stop failed");
            }
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop_and_wait();
    }
}

/// Builds server commands, through `runuser` when we are root.
struct Runner {
    bin: PathBuf,
    run_as: Option<User>,
}

impl Runner {
    fn is_running(&self, cluster: &Path) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", &user.name, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }
}

/// A shell that ignores terminal signals, waits for EOF on stdin, then stops the cluster (and
/// removes a throw-away one).
fn spawn_watchdog(runner: &Runner, home: &Path, remove: bool) -> anyhow::Result<Child> {
    let stop = runner.command("pg_ctl");
    let mut argv = vec![stop.get_program().to_os_string()];
    argv.extend(stop.get_args().map(|a| a.to_os_string()));
    let script = if remove {
        "trap '' INT TERM HUP; cat >/dev/null; \"$@\" stop -D \"$0/pgdata\" -m immediate -w; rm -rf \"$0\""
    } else {
        "trap '' INT TERM HUP; cat >/dev/null; exec \"$@\" stop -D \"$0/pgdata\" -m fast -w"
    };
    let mut watchdog = Command::new("sh");
    watchdog
        .arg("-c")
        .arg(script)
        .arg(home)
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group, so a Ctrl-C in the terminal does not reach it.
    watchdog.process_group(0);
    watchdog
        .spawn()
        .context("cannot start the PostgreSQL watchdog")
}

fn open_lock_file(home: &Path) -> anyhow::Result<std::fs::File> {
    let path = home.join(LOCK_FILE);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The owner's lock, once whoever holds it has gone.
fn wait_for_lock(home: &Path) -> anyhow::Result<std::fs::File> {
    let file = open_lock_file(home)?;
    file.lock()
        .with_context(|| format!("cannot lock {}", home.join(LOCK_FILE).display()))?;
    Ok(file)
}

/// The owner's lock on `home`, or `None` when a live process holds it.
fn take_lock(home: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let path = home.join(LOCK_FILE);
    let file = open_lock_file(home)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn run_checked(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The unprivileged account to run the server as, when we are root.
fn server_account() -> anyhow::Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(OS_ACCOUNT) {
        Ok(Some(user)) => Ok(Some(user)),
        _ => bail!(
            "smsgate runs as root and PostgreSQL refuses to; create a '{OS_ACCOUNT}' account \
             (installing the postgresql package does) or run smsgate as another user"
        ),
    }
}

/// Looks on PATH, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_server_binaries() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    debian.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    from_path
        .into_iter()
        .chain(from_pg_config)
        .chain(debian.into_iter().map(|(_, dir)| dir))
        .find(|dir| has_server(dir))
        // PATH often holds symlinks (/usr/local/bin/initdb → /usr/lib/postgresql/15/bin/…);
        // the real directory also has the tools beside the server (pgbench, psql).
        .map(|dir| {
            dir.join("initdb")
                .canonicalize()
                .ok()
                .and_then(|real| real.parent().map(Path::to_path_buf))
                .filter(|real| has_server(real))
                .unwrap_or(dir)
        })
        .context(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found on PATH, through \
             pg_config or under /usr/lib/postgresql; install them (Debian/Ubuntu: \
             apt-get install postgresql) or set database.url / DATABASE_URL",
        )
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Creates `home` for the server's account, `0700` (only that account may reach the socket;
/// root always can); its canonical path.
fn prepare_home(home: &Path, run_as: Option<&User>) -> anyhow::Result<PathBuf> {
    // Root hands the directory to the server's account: never through a link someone else
    // may have planted.
    if std::fs::symlink_metadata(home).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "database.data_dir {} is a symbolic link; give the real directory",
            home.display()
        );
    }
    std::fs::create_dir_all(home)
        .with_context(|| format!("cannot create database.data_dir {}", home.display()))?;
    let home = home
        .canonicalize()
        .with_context(|| format!("cannot resolve database.data_dir {}", home.display()))?;
    let socket = home.join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "database.data_dir {} is too deep for a unix socket path (at most {} bytes); \
             choose a shorter path",
            home.display(),
            MAX_SOCKET_PATH - ".s.PGSQL.5432".len() - 1
        );
    }
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&home, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("cannot hand {} to {OS_ACCOUNT}", home.display()))?;
    }
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", home.display()))?;
    Ok(home)
}

fn init_cluster(runner: &Runner, cluster: &Path, durability: Durability) -> anyhow::Result<()> {
    let mut initdb = runner.command("initdb");
    initdb.arg("-D").arg(cluster).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
    ]);
    if durability == Durability::Throwaway {
        initdb.arg("--no-sync");
    }
    run_checked(initdb, "initdb")
}

/// Starts the cluster, or takes over one whose owner died and which its watchdog did not
/// stop in time.
fn start_cluster(
    runner: &Runner,
    home: &Path,
    cluster: &Path,
    durability: Durability,
) -> anyhow::Result<()> {
    if runner.is_running(cluster) {
        // Its owner died (the lock was free): its watchdog is stopping it. Wait, then start
        // it as ours.
        let waited = std::time::Instant::now();
        while runner.is_running(cluster) && waited.elapsed() < ORPHAN_STOP_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    if runner.is_running(cluster) {
        tracing::warn!(dir = %home.display(), "embedded PostgreSQL runs without its owner; taking it over");
        return Ok(());
    }
    let mut options = format!(
        "-k {} -c listen_addresses='' -c unix_socket_permissions=0700 -p {PORT}",
        shell_quote(home)
    );
    if durability == Durability::Throwaway {
        options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
    }
    let mut pg_ctl = runner.command("pg_ctl");
    pg_ctl
        .arg("start")
        .arg("-D")
        .arg(cluster)
        .args(["-w", "-t", "60", "-l"])
        .arg(home.join("postgres.log"))
        .arg("-o")
        .arg(options);
    run_checked(pg_ctl, "pg_ctl start").with_context(|| {
        format!(
            "see {} for the server's own log",
            home.join("postgres.log").display()
        )
    })
}
