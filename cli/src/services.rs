//! Private Redis and PostgreSQL instances for `tollgate dev`, `tollgate services`
//! and the test harness, and a PgBouncer in front of that PostgreSQL for the
//! tests and the benchmarks.
//!
//! Each instance lives under one directory (`.tollgate/` at the repository root for
//! development) and listens on 127.0.0.1 on its own port, so the user's own Redis
//! and PostgreSQL (typically on 6379 and 5432) are never touched. Starting is
//! idempotent: an instance already running from the same directory is reused, so
//! many processes can call [`Services::start`] and share one pair of servers.
//!
//! PostgreSQL refuses to run as root. When we are root (containers, CI), `initdb`
//! and `pg_ctl` run as the `postgres` system user, created by the distribution's
//! package, and the data directory is owned by that user.
//!
//! PgBouncer stands in for Neon's pooled endpoint, which is PgBouncer in
//! transaction mode: a deployment's `DATABASE_URL` points at one, so the tests
//! run the app through one too. It pools a few server connections per
//! database, passes any database name through to the private PostgreSQL (each
//! test has its own database), and, like PostgreSQL, refuses to run as root.
//! `tollgate dev` runs without it.
//!
//! The binaries come from the system; `scripts/bootstrap.sh redis postgres
//! pgbouncer` installs them when missing.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use sqlx::Connection;
use tokio::process::Command;

/// Redis port of the private instance unless told otherwise.
pub const DEFAULT_REDIS_PORT: u16 = 6390;
/// PostgreSQL port of the private instance unless told otherwise.
pub const DEFAULT_POSTGRES_PORT: u16 = 54390;
/// PgBouncer listens on the PostgreSQL port plus this unless told otherwise,
/// so that each pair of private instances has its own pooler.
pub const PGBOUNCER_PORT_OFFSET: u16 = 10000;
/// Server connections PgBouncer keeps per database: small, as a pooled
/// endpoint's share of a database is, so that code holding a connection
/// across awaits, or expecting its session to persist, shows up in tests.
pub const PGBOUNCER_POOL_SIZE: u32 = 3;
/// The database the application uses, created on first start.
pub const DATABASE: &str = "tollgate";

/// `CREATE DATABASE` takes no bind parameters; the name is the constant above.
const CREATE_DATABASE: &str = "CREATE DATABASE tollgate";

/// What the user should run when a binary is missing.
const BOOTSTRAP_HINT: &str = "run `scripts/bootstrap.sh redis postgres pgbouncer` to install it";

const REDIS_START_TIMEOUT: Duration = Duration::from_secs(15);
const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(60);
const PGBOUNCER_START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// initdb fsyncs nothing with `--no-sync`, but a slow disk can still take a while.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for another process to finish an initdb it started.
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of a server log quoted in an error.
const LOG_TAIL_LINES: usize = 25;

/// Where the private instances live and which ports they use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Holds the Redis pid and log files, the PostgreSQL data directory (`pg/`),
    /// its log (`pg.log`) and socket directory (`pgsock/`).
    pub dir: PathBuf,
    /// Port the private Redis listens on, on 127.0.0.1.
    pub redis_port: u16,
    /// Port the private PostgreSQL listens on, on 127.0.0.1.
    pub postgres_port: u16,
    /// Port of a PgBouncer in front of that PostgreSQL, on 127.0.0.1, or
    /// `None` to run without one. Its files live in `pgbouncer/`.
    pub pgbouncer_port: Option<u16>,
    /// Whether both keep what they acknowledge through a crash, as Upstash
    /// and Neon do: Redis writes every command to its append-only file
    /// before answering, Postgres flushes its log at each commit. The soak
    /// test kills them. Off for development and tests, whose data is
    /// disposable and which run faster without.
    pub durable: bool,
}

impl Layout {
    /// A layout under `dir` with the default ports ([`DEFAULT_REDIS_PORT`],
    /// [`DEFAULT_POSTGRES_PORT`]).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            redis_port: DEFAULT_REDIS_PORT,
            postgres_port: DEFAULT_POSTGRES_PORT,
            pgbouncer_port: None,
            durable: false,
        }
    }

    /// The PgBouncer port that goes with a PostgreSQL port, or `None` when
    /// the sum does not fit in a port number.
    pub fn default_pgbouncer_port(postgres_port: u16) -> Option<u16> {
        postgres_port.checked_add(PGBOUNCER_PORT_OFFSET)
    }
}

/// The files of one layout, with `dir` made absolute: Redis resolves its pid and
/// log files after changing into `--dir`, and `pg_ctl` runs from another
/// directory, so relative paths would point elsewhere.
struct Paths {
    dir: PathBuf,
    redis_pid: PathBuf,
    redis_log: PathBuf,
    pg_data: PathBuf,
    pg_log: PathBuf,
    pg_socket_dir: PathBuf,
    /// PgBouncer's directory: its configuration, user list, pid file and log.
    pgbouncer_dir: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(dir: PathBuf) -> Self {
        Self {
            redis_pid: dir.join("redis.pid"),
            redis_log: dir.join("redis.log"),
            pg_data: dir.join("pg"),
            pg_log: dir.join("pg.log"),
            pg_socket_dir: dir.join("pgsock"),
            pgbouncer_dir: dir.join("pgbouncer"),
            lock: dir.join("services.lock"),
            dir,
        }
    }

    /// Creates the directory if needed and resolves it.
    fn create(layout: &Layout) -> anyhow::Result<Self> {
        fs::create_dir_all(&layout.dir)
            .with_context(|| format!("creating {}", layout.dir.display()))?;
        let dir = fs::canonicalize(&layout.dir)
            .with_context(|| format!("resolving {}", layout.dir.display()))?;
        Ok(Self::new(dir))
    }

    /// Resolves the directory, or `None` when it doesn't exist (nothing to stop).
    fn existing(layout: &Layout) -> anyhow::Result<Option<Self>> {
        match fs::canonicalize(&layout.dir) {
            Ok(dir) => Ok(Some(Self::new(dir))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("resolving {}", layout.dir.display())),
        }
    }
}

/// Running private services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// For example `redis://127.0.0.1:6390`.
    pub redis_url: String,
    /// For example `postgres://postgres@127.0.0.1:54390/tollgate`.
    pub database_url: String,
    /// Process id of the Redis server.
    pub redis_pid: u32,
    /// Process id of the PostgreSQL postmaster.
    pub postgres_pid: u32,
    /// The same database through PgBouncer, for example
    /// `postgres://postgres@127.0.0.1:64390/tollgate`, when it runs.
    pub pooled_database_url: Option<String>,
    /// Process id of PgBouncer, when it runs.
    pub pgbouncer_pid: Option<u32>,
    postgres_port: u16,
    pgbouncer_port: Option<u16>,
}

impl Services {
    /// Starts private Redis and PostgreSQL for `layout`, and PgBouncer when it
    /// has a port for one, or reuses those already running from the same
    /// directory. Runs initdb on first use and creates the [`DATABASE`]
    /// database when missing. Returns once all accept connections; on failure
    /// the error quotes the end of the server's log.
    pub async fn start(layout: &Layout) -> anyhow::Result<Services> {
        let paths = Paths::create(layout)?;
        // Several processes (parallel test binaries, `tollgate dev` next to a test
        // run) may start the same layout at once; one initdb at a time.
        let _lock = DirLock::acquire(&paths.lock).await?;

        let redis_pid = start_redis(&paths, layout.redis_port, layout.durable)
            .await
            .context("starting the private Redis")?;
        let postgres_pid = start_postgres(&paths, layout.postgres_port, layout.durable)
            .await
            .context("starting the private PostgreSQL")?;
        let pgbouncer_pid = match layout.pgbouncer_port {
            Some(port) => Some(
                start_pgbouncer(&paths, port, layout.postgres_port)
                    .await
                    .context("starting the private PgBouncer")?,
            ),
            None => None,
        };

        Ok(Services {
            redis_url: redis_url(layout.redis_port),
            database_url: database_url(layout.postgres_port, DATABASE),
            redis_pid,
            postgres_pid,
            pooled_database_url: layout
                .pgbouncer_port
                .map(|port| database_url(port, DATABASE)),
            pgbouncer_pid,
            postgres_port: layout.postgres_port,
            pgbouncer_port: layout.pgbouncer_port,
        })
    }

    /// Stops the private Redis, PgBouncer and PostgreSQL of `layout`, if
    /// running, and waits until their processes are gone. Data is kept
    /// (PostgreSQL's) or dropped (Redis keeps none). A PgBouncer started from
    /// the directory is stopped whatever `layout.pgbouncer_port` says.
    pub async fn stop(layout: &Layout) -> anyhow::Result<()> {
        let Some(paths) = Paths::existing(layout)? else {
            return Ok(());
        };
        let _lock = DirLock::acquire(&paths.lock).await?;
        // Try each even if one fails, so a broken Redis doesn't leave Postgres up.
        let redis = stop_redis(&paths, layout.redis_port)
            .await
            .context("stopping the private Redis");
        // Before PostgreSQL, whose fast shutdown would otherwise cut the
        // pooler's server connections under it.
        let pgbouncer = stop_pgbouncer(&paths)
            .await
            .context("stopping the private PgBouncer");
        let postgres = stop_postgres(&paths)
            .await
            .context("stopping the private PostgreSQL");
        redis.and(pgbouncer).and(postgres)
    }

    /// The URL of another database on the same PostgreSQL server, for tests that
    /// each create their own.
    pub fn database_url_for(&self, database: &str) -> String {
        database_url(self.postgres_port, database)
    }

    /// The URL of another database through PgBouncer, when it runs.
    pub fn pooled_database_url_for(&self, database: &str) -> Option<String> {
        self.pgbouncer_port.map(|port| database_url(port, database))
    }

    /// `REDIS_URL=…` and `DATABASE_URL=…` lines, and `POOLED_DATABASE_URL=…`
    /// when PgBouncer runs, for `eval` in a shell or a `.env`.
    pub fn env_lines(&self) -> String {
        let mut lines = format!(
            "REDIS_URL={}\nDATABASE_URL={}\n",
            self.redis_url, self.database_url
        );
        if let Some(url) = &self.pooled_database_url {
            lines.push_str(&format!("POOLED_DATABASE_URL={url}\n"));
        }
        lines
    }
}

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

fn database_url(port: u16, database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{database}")
}

// --- Redis ------------------------------------------------------------------------

/// What answers on the Redis port.
enum RedisProbe {
    /// Our instance: its working directory is our layout's.
    Ours,
    /// Another Redis, serving the given directory.
    Other(String),
    /// Nothing we could talk to.
    Down,
}

async fn probe_redis(port: u16, dir: &Path) -> RedisProbe {
    let probe = async {
        let client = redis::Client::open(redis_url(port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        // A server started with `--dir D` reports D, resolved, as its `dir`.
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query_async(&mut conn)
            .await?;
        Ok::<_, redis::RedisError>(reply.into_iter().nth(1).unwrap_or_default())
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(served)) if Path::new(&served) == dir => RedisProbe::Ours,
        Ok(Ok(served)) => RedisProbe::Other(served),
        _ => RedisProbe::Down,
    }
}

async fn start_redis(paths: &Paths, port: u16, durable: bool) -> anyhow::Result<u32> {
    match probe_redis(port, &paths.dir).await {
        RedisProbe::Ours => {
            if let Some(pid) = read_pid(&paths.redis_pid) {
                return Ok(pid);
            }
            // Ours but the pid file is gone: restart it to know the pid again.
            stop_redis(paths, port).await?;
        }
        RedisProbe::Other(served) => bail!(
            "port {port} is used by another Redis (serving {served}); \
             pick another port for the private one"
        ),
        RedisProbe::Down => {
            // Left over from an earlier run on another port, or a crash.
            stop_redis_by_pidfile(paths).await?;
        }
    }

    let redis_server = find_on_path("redis-server", std::env::var_os("PATH").as_deref())
        .or_else(|| find_in_dirs("redis-server", &["/opt/homebrew/bin", "/usr/local/bin"]))
        .with_context(|| format!("redis-server not found on PATH; {BOOTSTRAP_HINT}"))?;

    // A stale pid file would make the early-exit check below look at a dead pid.
    remove_if_exists(&paths.redis_pid)?;
    let mut cmd = Command::new(&redis_server);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        // Development and test data is disposable: no snapshots, no AOF.
        .args(["--save", ""])
        .args(if durable {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "everysec"]
        })
        .args(["--daemonize", "yes"])
        .arg("--pidfile")
        .arg(&paths.redis_pid)
        .arg("--logfile")
        .arg(&paths.redis_log)
        .arg("--dir")
        .arg(&paths.dir);
    run(&mut cmd, "redis-server", REDIS_START_TIMEOUT).await?;

    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    loop {
        if let RedisProbe::Ours = probe_redis(port, &paths.dir).await {
            if let Some(pid) = read_pid(&paths.redis_pid) {
                return Ok(pid);
            }
        }
        // The daemon writes its pid file before binding; if it has died since,
        // waiting longer won't help (typically: the port is taken).
        let died = read_pid(&paths.redis_pid).is_some_and(|pid| !process_alive(pid));
        if died || Instant::now() >= deadline {
            bail!(
                "Redis did not answer on 127.0.0.1:{port}{}.\n{}",
                if died { " and exited" } else { " in time" },
                log_tail(&paths.redis_log)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn stop_redis(paths: &Paths, port: u16) -> anyhow::Result<()> {
    // Read before shutting down: Redis deletes its pid file on the way out.
    let pid = read_pid(&paths.redis_pid);
    if let RedisProbe::Ours = probe_redis(port, &paths.dir).await {
        let shutdown = async {
            let client = redis::Client::open(redis_url(port))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            // The server closes the connection instead of replying.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
                .arg("NOSAVE")
                .query_async(&mut conn)
                .await;
            Ok::<_, redis::RedisError>(())
        };
        // Whatever happens here, the pid-based fallback below finishes the job.
        let _ = tokio::time::timeout(Duration::from_secs(5), shutdown).await;
    }
    if let Some(pid) = pid {
        terminate_and_wait(pid, "Redis").await?;
    }
    remove_if_exists(&paths.redis_pid)
}

/// Stops a Redis left running from this directory on another port.
async fn stop_redis_by_pidfile(paths: &Paths) -> anyhow::Result<()> {
    if let Some(pid) = read_pid(&paths.redis_pid) {
        // Pids get reused; only signal it if it is still a Redis.
        if process_alive(pid) && process_name(pid).is_some_and(|name| name.contains("redis")) {
            terminate_and_wait(pid, "Redis").await?;
        }
    }
    remove_if_exists(&paths.redis_pid)
}

// --- PostgreSQL ---------------------------------------------------------------------

/// How to run PostgreSQL's binaries: as ourselves, or, when root, as `postgres`.
enum RunAs {
    CurrentUser,
    Postgres {
        /// `runuser` or `setpriv`, whichever exists.
        switch: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    async fn detect() -> anyhow::Result<Self> {
        if id(&["-u"]).await? != 0 {
            return Ok(Self::CurrentUser);
        }
        let (uid, gid) = match (id(&["-u", "postgres"]).await, id(&["-g", "postgres"]).await) {
            (Ok(uid), Ok(gid)) => (uid, gid),
            _ => bail!(
                "running as root, but PostgreSQL refuses to run as root and there is no \
                 `postgres` system user to run it as; {BOOTSTRAP_HINT} (the postgresql \
                 package creates that user), or run as a normal user"
            ),
        };
        let switch = ["runuser", "setpriv"]
            .into_iter()
            .find_map(|tool| {
                find_on_path(tool, std::env::var_os("PATH").as_deref())
                    .or_else(|| find_in_dirs(tool, &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]))
            })
            .context(
                "running as root, and neither `runuser` nor `setpriv` (util-linux) is \
                 available to run PostgreSQL as the `postgres` user",
            )?;
        Ok(Self::Postgres { switch, uid, gid })
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            Self::CurrentUser => Command::new(program),
            Self::Postgres { switch, .. } => {
                let mut cmd = Command::new(switch);
                if switch.file_name() == Some(OsStr::new("setpriv")) {
                    cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
                } else {
                    cmd.args(["-u", "postgres"]);
                }
                cmd.arg("--").arg(program);
                cmd
            }
        };
        // Messages in English and no dependency on the user's locale being
        // installed; the cluster itself is created with `--locale=C` anyway.
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// Hands `path` to the user PostgreSQL will run as.
    fn own(&self, path: &Path) -> anyhow::Result<()> {
        if let Self::Postgres { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("giving {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

/// `initdb` and `pg_ctl` from one installation.
struct PgBin {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl PgBin {
    fn find(data_dir: &Path) -> anyhow::Result<Self> {
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        let mut versioned = Vec::new();
        for (root, prefix) in [
            // Debian and Ubuntu: one directory per major version, not on PATH.
            ("/usr/lib/postgresql", ""),
            // Homebrew's postgresql@N formulae are keg-only, so not on PATH either.
            ("/opt/homebrew/opt", "postgresql@"),
            ("/usr/local/opt", "postgresql@"),
        ] {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(version) = name.strip_prefix(prefix) {
                    versioned.push((version.to_owned(), entry.path().join("bin")));
                }
            }
        }
        // An existing cluster only starts with the major version that created it.
        let data_version = fs::read_to_string(data_dir.join("PG_VERSION")).ok();

        postgres_bin_candidates(
            &path_dirs,
            versioned,
            data_version.as_deref().map(str::trim),
        )
        .into_iter()
        .find_map(|dir| {
            let initdb = dir.join("initdb");
            let pg_ctl = dir.join("pg_ctl");
            (is_executable(&initdb) && is_executable(&pg_ctl)).then_some(PgBin { initdb, pg_ctl })
        })
        .with_context(|| {
            format!(
                "PostgreSQL's initdb and pg_ctl were not found on PATH nor under \
                     /usr/lib/postgresql/*/bin; {BOOTSTRAP_HINT}"
            )
        })
    }
}

/// Directories that may hold `initdb` and `pg_ctl`, best first: the versioned
/// directory matching an existing cluster's `PG_VERSION`, then PATH in order,
/// then versioned directories from the highest version down.
fn postgres_bin_candidates(
    path_dirs: &[PathBuf],
    mut versioned: Vec<(String, PathBuf)>,
    data_version: Option<&str>,
) -> Vec<PathBuf> {
    fn version_key(version: &str) -> Option<Vec<u32>> {
        version.split('.').map(|part| part.parse().ok()).collect()
    }
    versioned.retain(|(version, _)| version_key(version).is_some());
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(version_key(version)));

    let matching = versioned
        .iter()
        .filter(|(version, _)| Some(version.as_str()) == data_version)
        .map(|(_, dir)| dir.clone());
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in matching
        .chain(path_dirs.iter().cloned())
        .chain(versioned.iter().map(|(_, dir)| dir.clone()))
    {
        if !candidates.contains(&dir) {
            candidates.push(dir);
        }
    }
    candidates
}

/// The `-o` options `pg_ctl` passes to `postgres`, through a shell.
fn postgres_options(port: u16, socket_dir: Option<&Path>, durable: bool) -> anyhow::Result<String> {
    let sockets = match socket_dir {
        Some(dir) => {
            let dir = dir.to_string_lossy();
            if dir.contains('\'') {
                bail!("the services directory {dir} contains a single quote; use another");
            }
            format!("'{dir}'")
        }
        // TCP only.
        None => "''".to_owned(),
    };
    // fsync and friends are off unless asked for: development and test
    // clusters are throwaway, where speed matters and a crash may lose data.
    let safety = if durable {
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    } else {
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    };
    Ok(format!(
        "-p {port} -k {sockets} -c listen_addresses=127.0.0.1 {safety} -c max_connections=200"
    ))
}

async fn start_postgres(paths: &Paths, port: u16, durable: bool) -> anyhow::Result<u32> {
    let run_as = RunAs::detect().await?;
    let bin = PgBin::find(&paths.pg_data)?;

    if paths.pg_data.join("PG_VERSION").exists() {
        if let Some((pid, running_port)) = running_postmaster(paths, &run_as, &bin).await? {
            if running_port == Some(port) {
                ensure_database(port).await?;
                return Ok(pid);
            }
            // Started earlier on another port: move it.
            pg_ctl_stop(paths, &run_as, &bin).await?;
        }
    } else {
        init_cluster(paths, &run_as, &bin).await?;
    }

    prepare_postgres_files(paths, &run_as)?;
    // Unix socket paths are limited to about 104 bytes; a deep directory gets TCP only.
    let socket_dir = (paths.pg_socket_dir.as_os_str().len() + ".s.PGSQL.65535".len() < 100)
        .then_some(paths.pg_socket_dir.as_path());
    let mut cmd = run_as.command(&bin.pg_ctl);
    cmd.current_dir(&paths.dir)
        .arg("-D")
        .arg(&paths.pg_data)
        .arg("-l")
        .arg(&paths.pg_log)
        .arg("-o")
        .arg(postgres_options(port, socket_dir, durable)?)
        .args(["-w", "-t"])
        .arg(POSTGRES_START_TIMEOUT.as_secs().to_string())
        .arg("start");
    if let Err(e) = run(&mut cmd, "pg_ctl start", POSTGRES_START_TIMEOUT * 2).await {
        bail!("{e:#}\n{}", log_tail(&paths.pg_log));
    }

    let pid = postmaster_pid(&paths.pg_data)
        .map(|(pid, _)| pid)
        .context("pg_ctl reported a start but postmaster.pid is missing")?;
    ensure_database(port)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", log_tail(&paths.pg_log)))?;
    Ok(pid)
}

/// Creates the data directory with initdb, as the user PostgreSQL runs as.
async fn init_cluster(paths: &Paths, run_as: &RunAs, bin: &PgBin) -> anyhow::Result<()> {
    // Without PG_VERSION any leftovers are from an interrupted initdb, which
    // refuses a non-empty directory.
    if paths.pg_data.exists() {
        fs::remove_dir_all(&paths.pg_data)
            .with_context(|| format!("removing the incomplete {}", paths.pg_data.display()))?;
    }
    fs::create_dir(&paths.pg_data)
        .with_context(|| format!("creating {}", paths.pg_data.display()))?;
    // PostgreSQL insists on a data directory only its owner can read.
    fs::set_permissions(&paths.pg_data, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", paths.pg_data.display()))?;
    run_as.own(&paths.pg_data)?;
    if let RunAs::Postgres { .. } = run_as {
        check_postgres_can_write(run_as, &paths.pg_data).await?;
    }

    tracing::info!(dir = %paths.pg_data.display(), "creating the private PostgreSQL cluster");
    let mut cmd = run_as.command(&bin.initdb);
    // The postgres user may not be able to enter our working directory.
    cmd.current_dir(&paths.dir)
        .arg("-D")
        .arg(&paths.pg_data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
        // Same reasoning as fsync=off: a throwaway cluster.
        .arg("--no-sync");
    run(&mut cmd, "initdb", INITDB_TIMEOUT).await?;
    Ok(())
}

/// Fails with a useful message when a parent directory is closed to `postgres`,
/// instead of initdb's bare "permission denied".
async fn check_postgres_can_write(run_as: &RunAs, dir: &Path) -> anyhow::Result<()> {
    let mut cmd = run_as.command(Path::new("test"));
    cmd.arg("-w").arg(dir).stdin(Stdio::null());
    let status = cmd.status().await.context("running `test` as postgres")?;
    if !status.success() {
        bail!(
            "the postgres user cannot write to {}: every parent directory must be \
             traversable by others (chmod o+x), or choose a directory elsewhere",
            dir.display()
        );
    }
    Ok(())
}

/// The log file and socket directory, writable by the user PostgreSQL runs as
/// (both sit in our directory, which may belong to root).
fn prepare_postgres_files(paths: &Paths, run_as: &RunAs) -> anyhow::Result<()> {
    fs::create_dir_all(&paths.pg_socket_dir)
        .with_context(|| format!("creating {}", paths.pg_socket_dir.display()))?;
    run_as.own(&paths.pg_socket_dir)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.pg_log)
        .with_context(|| format!("creating {}", paths.pg_log.display()))?;
    run_as.own(&paths.pg_log)
}

/// The postmaster's pid and port when the cluster is running.
async fn running_postmaster(
    paths: &Paths,
    run_as: &RunAs,
    bin: &PgBin,
) -> anyhow::Result<Option<(u32, Option<u16>)>> {
    let mut cmd = run_as.command(&bin.pg_ctl);
    cmd.current_dir(&paths.dir)
        .arg("-D")
        .arg(&paths.pg_data)
        .arg("status")
        .stdin(Stdio::null());
    let output = cmd.output().await.context("running pg_ctl status")?;
    // pg_ctl status exits 3 when not running, 4 without a usable data directory.
    if !output.status.success() {
        return Ok(None);
    }
    Ok(postmaster_pid(&paths.pg_data))
}

/// Reads `postmaster.pid`: the pid on line 1 and the port on line 4.
fn postmaster_pid(data_dir: &Path) -> Option<(u32, Option<u16>)> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let port = lines.nth(2).and_then(|line| line.trim().parse().ok());
    Some((pid, port))
}

async fn pg_ctl_stop(paths: &Paths, run_as: &RunAs, bin: &PgBin) -> anyhow::Result<()> {
    let pid = postmaster_pid(&paths.pg_data).map(|(pid, _)| pid);
    let mut cmd = run_as.command(&bin.pg_ctl);
    cmd.current_dir(&paths.dir)
        .arg("-D")
        .arg(&paths.pg_data)
        // Fast: roll back open transactions rather than wait for clients to leave.
        .args(["-m", "fast", "-w", "-t"])
        .arg(STOP_TIMEOUT.as_secs().to_string())
        .arg("stop");
    if let Err(e) = run(&mut cmd, "pg_ctl stop", STOP_TIMEOUT * 2).await {
        // Not running (no pid file, or a stale one) is what we wanted.
        if pid.is_some_and(process_alive) {
            bail!("{e:#}\n{}", log_tail(&paths.pg_log));
        }
    }
    if let Some(pid) = pid {
        wait_gone(pid, "PostgreSQL").await?;
    }
    Ok(())
}

async fn stop_postgres(paths: &Paths) -> anyhow::Result<()> {
    if !paths.pg_data.join("postmaster.pid").exists() {
        return Ok(());
    }
    let run_as = RunAs::detect().await?;
    let bin = PgBin::find(&paths.pg_data)?;
    pg_ctl_stop(paths, &run_as, &bin).await
}

/// Waits for PostgreSQL to take connections, then creates [`DATABASE`] if missing.
async fn ensure_database(port: u16) -> anyhow::Result<()> {
    let url = database_url(port, "postgres");
    let deadline = Instant::now() + POSTGRES_START_TIMEOUT;
    let mut conn = loop {
        match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => break conn,
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {url}"));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await
            .context("looking for the tollgate database")?;
    if !exists {
        match sqlx::raw_sql(CREATE_DATABASE).execute(&mut conn).await {
            Ok(_) => {}
            // Someone else (sharing the server, not our lock) created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the tollgate database"),
        }
    }
    conn.close().await.ok();
    Ok(())
}

// --- PgBouncer ----------------------------------------------------------------------

/// PgBouncer's configuration for the private instance in `dir`, in front of
/// the private PostgreSQL on `postgres_port`: transaction pooling, as Neon's
/// pooled endpoint does it. A named prepared statement that outlives its
/// transaction must fail here, so the tracking of such statements that
/// PgBouncer 1.21 added (`max_prepared_statements`, on by default since 1.22)
/// is turned off where the version has it (`tracks_statements`); 1.18, the
/// Debian 12 package, has none and refuses the setting.
fn pgbouncer_config(
    dir: &Path,
    port: u16,
    postgres_port: u16,
    tracks_statements: bool,
) -> anyhow::Result<String> {
    let dir = dir
        .to_str()
        .filter(|dir| !dir.contains(['\n', '\r']))
        .with_context(|| {
            format!(
                "PgBouncer's configuration cannot name {}; use another services directory",
                dir.display()
            )
        })?;
    Ok(format!(
        ";; The private PgBouncer of `tollgate services`, rewritten at each start.
[databases]
;; Any database name goes to the database of that name on the private
;; PostgreSQL, so that each test's own database is reachable through here.
* = host=127.0.0.1 port={postgres_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
;; TCP only: no socket in /tmp that another instance could also want.
unix_socket_dir =
;; As the private PostgreSQL: no password, on 127.0.0.1 only. The user
;; must still be listed in auth_file.
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = postgres
stats_users = postgres
;; A server connection per transaction, a few per database.
pool_mode = transaction
default_pool_size = {PGBOUNCER_POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
{statements};; The pools of every test process and of the benchmarks.
max_client_conn = 1000
;; sqlx sets it when it connects, and PgBouncer refuses a startup
;; parameter it does not know unless told to ignore it.
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
pidfile = {dir}/pgbouncer.pid
logfile = {dir}/pgbouncer.log
",
        statements = if tracks_statements {
            "max_prepared_statements = 0\n"
        } else {
            ""
        }
    ))
}

/// Whether the PgBouncer that printed `version` (`pgbouncer --version`'s
/// first line, `PgBouncer 1.18.0`) has the `max_prepared_statements` setting.
fn tracks_prepared_statements(version: &str) -> bool {
    let numbers: Vec<u32> = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect();
    numbers.as_slice() >= [1, 21].as_slice()
}

/// The pid of the PgBouncer started from this directory, when it runs.
fn running_pgbouncer(paths: &Paths) -> Option<u32> {
    let pid = read_pid(&paths.pgbouncer_dir.join("pgbouncer.pid"))?;
    // Pids get reused; only count it if it is still a PgBouncer.
    (process_alive(pid) && process_name(pid).is_some_and(|name| name.contains("pgbouncer")))
        .then_some(pid)
}

/// Whether PgBouncer's admin console answers on `port`.
async fn pgbouncer_answers(port: u16) -> bool {
    let probe = async {
        let mut conn = sqlx::PgConnection::connect(&database_url(port, "pgbouncer")).await?;
        // The console speaks the simple protocol only.
        sqlx::raw_sql("SHOW VERSION").execute(&mut conn).await?;
        conn.close().await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(()))
    )
}

async fn start_pgbouncer(paths: &Paths, port: u16, postgres_port: u16) -> anyhow::Result<u32> {
    let dir = &paths.pgbouncer_dir;
    let config_file = dir.join("pgbouncer.ini");
    let pid_file = dir.join("pgbouncer.pid");
    let log_file = dir.join("pgbouncer.log");
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    let pgbouncer = find_on_path("pgbouncer", std::env::var_os("PATH").as_deref())
        .or_else(|| {
            find_in_dirs(
                "pgbouncer",
                &["/usr/sbin", "/opt/homebrew/bin", "/usr/local/bin"],
            )
        })
        .with_context(|| {
            format!("pgbouncer not found on PATH nor in /usr/sbin; {BOOTSTRAP_HINT}")
        })?;
    let version = run(
        Command::new(&pgbouncer).arg("--version"),
        "pgbouncer --version",
        PGBOUNCER_START_TIMEOUT,
    )
    .await?;
    let version = String::from_utf8_lossy(&version.stdout);
    let config = pgbouncer_config(
        dir,
        port,
        postgres_port,
        tracks_prepared_statements(version.lines().next().unwrap_or_default()),
    )?;
    if let Some(pid) = running_pgbouncer(paths) {
        let same_config = fs::read_to_string(&config_file).is_ok_and(|old| old == config);
        if same_config && pgbouncer_answers(port).await {
            return Ok(pid);
        }
        // Started earlier on another port, or stuck: start it afresh.
        terminate_and_wait(pid, "PgBouncer").await?;
    }

    // PgBouncer refuses to run as root, as PostgreSQL does, and writes its
    // pid file and log into its directory.
    let run_as = RunAs::detect().await?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    run_as.own(dir)?;
    fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")
        .with_context(|| format!("writing PgBouncer's user list in {}", dir.display()))?;
    fs::write(&config_file, &config)
        .with_context(|| format!("writing {}", config_file.display()))?;
    // A stale pid file would make the early-exit check below look at a dead pid.
    remove_if_exists(&pid_file)?;

    let mut cmd = run_as.command(&pgbouncer);
    cmd.current_dir(dir).arg("-d").arg(&config_file);
    if let Err(e) = run(&mut cmd, "pgbouncer", PGBOUNCER_START_TIMEOUT).await {
        bail!("{e:#}\n{}", log_tail(&log_file));
    }
    let deadline = Instant::now() + PGBOUNCER_START_TIMEOUT;
    loop {
        if let Some(pid) = read_pid(&pid_file) {
            if pgbouncer_answers(port).await {
                return Ok(pid);
            }
        }
        // It writes its pid file once daemonized; if it has died since,
        // waiting longer won't help (typically: the port is taken).
        let died = read_pid(&pid_file).is_some_and(|pid| !process_alive(pid));
        if died || Instant::now() >= deadline {
            bail!(
                "PgBouncer did not answer on 127.0.0.1:{port}{}.\n{}",
                if died { " and exited" } else { " in time" },
                log_tail(&log_file)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn stop_pgbouncer(paths: &Paths) -> anyhow::Result<()> {
    // SIGTERM: PgBouncer closes every connection and exits at once.
    if let Some(pid) = running_pgbouncer(paths) {
        terminate_and_wait(pid, "PgBouncer").await?;
    }
    remove_if_exists(&paths.pgbouncer_dir.join("pgbouncer.pid"))
}

// --- Processes and files ----------------------------------------------------------

/// Runs a command to completion with a time limit, failing with its output
/// when it exits unsuccessfully.
async fn run(cmd: &mut Command, what: &str, limit: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish within {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Runs `id ARGS` and parses the number it prints (no libc dependency needed).
async fn id(args: &[&str]) -> anyhow::Result<u32> {
    let output = run(Command::new("id").args(args), "id", Duration::from_secs(5)).await?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing the output of `id`")
}

/// Whether `pid` is a live process. Zombies count as gone: without an init that
/// reaps orphans (some containers), a stopped daemon stays a zombie forever.
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        // The state letter follows the parenthesised command name, which may itself
        // contain spaces and parentheses.
        return fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z')
        });
    }
    // macOS: no /proc, but `ps` shows the state there too.
    std::process::Command::new("ps")
        .args(["-o", "stat=", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().starts_with('Z')
        })
}

fn process_name(pid: u32) -> Option<String> {
    if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
        return Some(comm.trim().to_owned());
    }
    let out = std::process::Command::new("ps")
        .args(["-o", "comm=", "-p", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sends SIGTERM if `pid` is still alive, then waits for it to go.
async fn terminate_and_wait(pid: u32, what: &str) -> anyhow::Result<()> {
    if process_alive(pid) {
        // `kill` rather than libc, which this crate doesn't depend on. It may fail
        // because the process just exited; wait_gone decides.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    wait_gone(pid, what).await
}

async fn wait_gone(pid: u32, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            bail!("{what} (pid {pid}) is still running after {STOP_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The last lines of a log file, to put in an error message.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            format!(
                "--- end of {} ---\n{}",
                path.display(),
                lines[start..].join("\n")
            )
        }
        Err(e) => format!("({} could not be read: {e})", path.display()),
    }
}

fn find_on_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn find_in_dirs(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A lock file holding the owner's pid, so that concurrent starts and stops of one
/// layout take turns. A lock whose owner has died is taken over. (std's file
/// locks need a newer Rust than the workspace's minimum.)
struct DirLock {
    path: PathBuf,
}

impl DirLock {
    async fn acquire(path: &Path) -> anyhow::Result<Self> {
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let lock = Self {
                        path: path.to_owned(),
                    };
                    write!(file, "{}", std::process::id())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if Self::is_stale(path) {
                        remove_if_exists(path)?;
                        continue;
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is still held after {LOCK_TIMEOUT:?}; if no other tollgate \
                     process is starting services, delete it",
                    path.display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn is_stale(path: &Path) -> bool {
        match read_pid(path) {
            Some(pid) => !process_alive(pid),
            // Just created and not yet written, unless it has been like that a while.
            None => fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                .is_some_and(|age| age > Duration::from_secs(10)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    fn versioned(list: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        list.iter()
            .map(|(version, dir)| (version.to_string(), PathBuf::from(dir)))
            .collect()
    }

    #[test]
    fn postgres_binaries_are_looked_up_on_path_first_then_from_the_highest_version() {
        let candidates = postgres_bin_candidates(
            &dirs(&["/usr/local/bin", "/usr/bin"]),
            versioned(&[
                ("9.6", "/pg/9.6/bin"),
                ("16", "/pg/16/bin"),
                ("10", "/pg/10/bin"),
                ("beta", "/pg/beta/bin"),
            ]),
            None,
        );
        assert_eq!(
            candidates,
            dirs(&[
                "/usr/local/bin",
                "/usr/bin",
                "/pg/16/bin",
                "/pg/10/bin",
                "/pg/9.6/bin"
            ])
        );
    }

    #[test]
    fn an_existing_cluster_prefers_the_binaries_of_its_own_version() {
        let candidates = postgres_bin_candidates(
            &dirs(&["/usr/bin", "/pg/15/bin"]),
            versioned(&[("16", "/pg/16/bin"), ("15", "/pg/15/bin")]),
            Some("15"),
        );
        assert_eq!(candidates, dirs(&["/pg/15/bin", "/usr/bin", "/pg/16/bin"]));
    }

    #[test]
    fn urls_and_env_lines_point_at_the_private_ports() {
        let services = Services {
            redis_url: redis_url(6390),
            database_url: database_url(54390, DATABASE),
            redis_pid: 1,
            postgres_pid: 2,
            pooled_database_url: Some(database_url(64390, DATABASE)),
            pgbouncer_pid: Some(3),
            postgres_port: 54390,
            pgbouncer_port: Some(64390),
        };
        assert_eq!(services.redis_url, "redis://127.0.0.1:6390");
        assert_eq!(
            services.database_url,
            "postgres://postgres@127.0.0.1:54390/tollgate"
        );
        assert_eq!(
            services.database_url_for("test_1"),
            "postgres://postgres@127.0.0.1:54390/test_1"
        );
        assert_eq!(
            services.pooled_database_url_for("test_1").as_deref(),
            Some("postgres://postgres@127.0.0.1:64390/test_1")
        );
        assert_eq!(
            services.env_lines(),
            "REDIS_URL=redis://127.0.0.1:6390\n\
             DATABASE_URL=postgres://postgres@127.0.0.1:54390/tollgate\n\
             POOLED_DATABASE_URL=postgres://postgres@127.0.0.1:64390/tollgate\n"
        );
    }

    #[test]
    fn pgbouncer_pools_transactions_of_any_database_in_front_of_the_private_postgres() {
        let config = pgbouncer_config(Path::new("/srv/t/pgbouncer"), 64390, 54390, false).unwrap();
        for line in [
            "* = host=127.0.0.1 port=54390",
            "listen_addr = 127.0.0.1",
            "listen_port = 64390",
            "pool_mode = transaction",
            "default_pool_size = 3",
            "auth_file = /srv/t/pgbouncer/userlist.txt",
            "pidfile = /srv/t/pgbouncer/pgbouncer.pid",
        ] {
            assert!(config.lines().any(|l| l == line), "{line} in\n{config}");
        }
        assert!(!config.contains("max_prepared_statements"));
        let newer = pgbouncer_config(Path::new("/srv/t/pgbouncer"), 64390, 54390, true).unwrap();
        assert!(newer.lines().any(|l| l == "max_prepared_statements = 0"));
        assert!(pgbouncer_config(Path::new("/srv/a\nb"), 1, 2, false).is_err());
    }

    #[test]
    fn only_pgbouncer_1_21_and_later_know_max_prepared_statements() {
        assert!(!tracks_prepared_statements("PgBouncer 1.18.0"));
        assert!(!tracks_prepared_statements("PgBouncer 1.20.1"));
        assert!(tracks_prepared_statements("PgBouncer 1.21.0"));
        assert!(tracks_prepared_statements("PgBouncer 1.24.1"));
        assert!(tracks_prepared_statements("PgBouncer 2.0"));
        assert!(!tracks_prepared_statements("something else"));
    }

    #[test]
    fn layout_defaults_to_ports_away_from_the_usual_ones() {
        let layout = Layout::new(PathBuf::from(".tollgate"));
        assert_eq!((layout.redis_port, layout.postgres_port), (6390, 54390));
        assert_eq!(
            layout.pgbouncer_port, None,
            "development runs without a pooler"
        );
        assert_eq!(Layout::default_pgbouncer_port(54390), Some(64390));
        assert_eq!(Layout::default_pgbouncer_port(60000), None);
    }

    #[test]
    fn postgres_options_quote_the_socket_dir_or_disable_sockets() {
        let with_socket =
            postgres_options(5555, Some(Path::new("/tmp/a b/pgsock")), false).unwrap();
        assert!(with_socket.starts_with("-p 5555 -k '/tmp/a b/pgsock' "));
        assert!(with_socket.contains("-c fsync=off"));
        assert!(postgres_options(5555, None, false)
            .unwrap()
            .contains("-k '' "));
        assert!(postgres_options(5555, Some(Path::new("/tmp/it's")), false).is_err());
    }

    #[test]
    fn postmaster_pid_file_gives_pid_and_port() {
        let dir = std::env::temp_dir().join(format!("tollgate-pmpid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("postmaster.pid"),
            "4242\n/data\n1700000000\n54390\n/sock\n127.0.0.1\n",
        )
        .unwrap();
        assert_eq!(postmaster_pid(&dir), Some((4242, Some(54390))));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn check_all_respond(services: &Services) -> anyhow::Result<()> {
        let client = redis::Client::open(services.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        anyhow::ensure!(pong == "PONG", "redis answered {pong}");

        let mut pg = sqlx::PgConnection::connect(&services.database_url).await?;
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut pg).await?;
        anyhow::ensure!(one == 1, "postgres answered {one}");
        pg.close().await?;

        let pooled = services
            .pooled_database_url
            .as_deref()
            .context("PgBouncer runs")?;
        let mut pg = sqlx::PgConnection::connect(pooled).await?;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .persistent(false)
            .fetch_one(&mut pg)
            .await?;
        anyhow::ensure!(one == 1, "postgres answered {one} through PgBouncer");
        pg.close().await?;
        Ok(())
    }

    #[tokio::test]
    async fn services_start_are_reused_and_stop_in_a_private_directory() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-services-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        // The postgres user must be able to reach the data directory when we are root.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let layout = Layout {
            dir: dir.clone(),
            redis_port: free_port(),
            postgres_port: free_port(),
            pgbouncer_port: Some(free_port()),
            durable: false,
        };

        let outcome = async {
            let started = Instant::now();
            let first = Services::start(&layout).await?;
            eprintln!("first start (with initdb): {:?}", started.elapsed());
            check_all_respond(&first).await?;

            let started = Instant::now();
            let again = Services::start(&layout).await?;
            eprintln!("second start (reused): {:?}", started.elapsed());
            anyhow::ensure!(again == first, "the running instances are reused");

            let started = Instant::now();
            Services::stop(&layout).await?;
            eprintln!("stop: {:?}", started.elapsed());
            anyhow::ensure!(!process_alive(first.redis_pid), "redis is gone");
            anyhow::ensure!(!process_alive(first.postgres_pid), "postgres is gone");
            let pgbouncer = first.pgbouncer_pid.context("PgBouncer's pid")?;
            anyhow::ensure!(!process_alive(pgbouncer), "pgbouncer is gone");

            let started = Instant::now();
            let restarted = Services::start(&layout).await?;
            eprintln!("restart (existing cluster): {:?}", started.elapsed());
            check_all_respond(&restarted).await?;
            Services::stop(&layout).await?;
            anyhow::ensure!(!process_alive(restarted.redis_pid), "redis is gone");
            anyhow::ensure!(!process_alive(restarted.postgres_pid), "postgres is gone");
            let pgbouncer = restarted.pgbouncer_pid.context("PgBouncer's pid")?;
            anyhow::ensure!(!process_alive(pgbouncer), "pgbouncer is gone");
            Ok::<_, anyhow::Error>(())
        }
        .await;

        // Don't leave servers behind when an assertion above failed.
        if outcome.is_err() {
            let _ = Services::stop(&layout).await;
        }
        let _ = fs::remove_dir_all(&dir);
        outcome.unwrap();
    }
}
