//! Test databases: a fresh SQLite file or a fresh PostgreSQL database per
//! test, removed afterwards.
//!
//! PostgreSQL comes from `DRYDOCK_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the
//! PostgreSQL tests fail under `CI=true` and are skipped, loudly, elsewhere.

use drydock_store::Store;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Another independent handle on the same database (its own pools), as
    /// another process would have.
    pub async fn connect_again(&self) -> Store {
        Store::open(&self.url).await.expect("second connection")
    }

    /// PostgreSQL: how many sessions on this database wait for a lock held
    /// by another (`pg_stat_activity`), to see a transaction blocked.
    pub async fn sessions_waiting_for_locks(&self) -> i64 {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("a PostgreSQL test database");
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_activity");
        n
    }
}

pub fn postgres_url() -> String {
    std::env::var("DRYDOCK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn create(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("drydock.db").display());
            let store = Store::open(&url).await.expect("open sqlite");
            Some(TestDb {
                backend,
                url,
                store,
                _dir: Some(dir),
            })
        }
        Backend::Postgres => {
            let admin_url = postgres_url();
            let admin = match sqlx_admin(&admin_url).await {
                Ok(c) => c,
                Err(e) => {
                    if in_ci() {
                        panic!("PostgreSQL at {admin_url} is unreachable under CI=true: {e}");
                    }
                    eprintln!(
                        "\n!!! SKIPPING PostgreSQL test: {admin_url} unreachable ({e}); set DRYDOCK_TEST_POSTGRES_URL\n"
                    );
                    return None;
                }
            };
            let name = format!(
                "drydock_t_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos()
            );
            admin.execute_sql(&format!("CREATE DATABASE {name}")).await;
            let url = replace_database(&admin_url, &name);
            let store = Store::open(&url).await.expect("open postgres");
            Some(TestDb {
                backend,
                url,
                store,
                _dir: None,
            })
        }
    }
}

async fn drop_db(db: TestDb) {
    db.store.close().await;
    if db.backend == Backend::Postgres {
        let name = db
            .url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        if let Ok(admin) = sqlx_admin(&postgres_url()).await {
            admin
                .execute_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

struct Admin(sqlx::PgConnection);

async fn sqlx_admin(url: &str) -> Result<Admin, sqlx::Error> {
    use sqlx::Connection;
    let conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    Ok(Admin(conn))
}

impl Admin {
    async fn execute_sql(mut self, sql: &str) {
        use sqlx::Executor;
        self.0
            .execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .expect(sql);
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Run `test` on a fresh database of `backend`, then remove the database.
pub async fn run<F>(backend: Backend, test: F)
where
    F: AsyncFnOnce(&TestDb) -> anyhow::Result<()>,
{
    let Some(db) = create(backend).await else {
        return;
    };
    let result = test(&db).await;
    drop_db(db).await;
    if let Err(e) = result {
        panic!("{backend:?}: {e:?}");
    }
}

/// Wait until `cond` holds, checking every few milliseconds, or fail after
/// `deadline`.
pub async fn wait_until<F>(deadline: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> bool,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Declare tests `async fn NAME(db: &TestDb) -> anyhow::Result<()>` of the
/// enclosing module as conformance tests, once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::run($crate::Backend::Sqlite, super::$name).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::run($crate::Backend::Postgres, super::$name).await
                }
            )+
        }
    };
}

/// Small deterministic PRNG (xorshift) for stress tests: variety, not quality.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A real OpenSSH server on 127.0.0.1 with a throwaway host key, accepting a
/// throwaway client key for the current user. Killed when dropped.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Sshd {
    /// Start it and wait until it accepts connections. Fails under
    /// `CI=true` if OpenSSH is missing; skips (returns `None`) otherwise.
    pub async fn start() -> Option<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(sshd) = sshd else {
            if in_ci() {
                panic!("openssh-server is not installed under CI=true (.ci/run installs it)");
            }
            eprintln!(
                "\n!!! SKIPPING SSH test: /usr/sbin/sshd not found (apt-get install openssh-server)\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        for key in ["host_key", "client_key"] {
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(key))
                .status()
                .expect("ssh-keygen")
                .success();
            assert!(ok, "ssh-keygen failed");
        }
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nLogLevel ERROR\nMaxStartups 100\nMaxSessions 100\nSubsystem sftp internal-sftp\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("sshd_config"), config).expect("config");
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sshd");
        let s = Sshd { port, dir, child };
        wait_until(Duration::from_secs(20), "sshd to listen", async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await
        .expect("sshd did not start");
        Some(s)
    }

    /// The client's private key file (authorized for the current user).
    pub fn client_key(&self) -> std::path::PathBuf {
        self.dir.path().join("client_key")
    }

    /// The user the tests log in as.
    pub fn user() -> String {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(
                    &std::process::Command::new("whoami")
                        .output()
                        .expect("whoami")
                        .stdout,
                )
                .trim()
                .to_owned()
            })
    }

    /// Stop the server now (a host going down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private PostgreSQL server (its own `initdb` cluster on a free port of
/// 127.0.0.1) that a test may stop and start at will — never the shared
/// server other tests use. Stopped and removed when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    /// Running as root: PostgreSQL's programs run as the `postgres` user.
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Create and start a cluster. Fails under `CI=true` if PostgreSQL's
    /// server programs are missing; skips (returns `None`) otherwise.
    pub async fn start() -> Option<PrivatePostgres> {
        let mut bins: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        bins.sort_by_key(|b| {
            b.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
        });
        let Some(bin) = bins.pop() else {
            if in_ci() {
                panic!(
                    "PostgreSQL's server programs are missing under CI=true (.ci/run installs postgresql)"
                );
            }
            eprintln!(
                "\n!!! SKIPPING private PostgreSQL test: no /usr/lib/postgresql/*/bin/initdb\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        // PostgreSQL refuses to run as root: hand the directory to the
        // `postgres` user and run its programs as that user.
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if as_postgres {
            let ok = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = PrivatePostgres {
            port,
            dir,
            bin,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// One of PostgreSQL's programs, as the user that may run it.
    fn command(&self, program: &str) -> std::process::Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the (stopped) server and wait until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stop the server the way a crash or a failover does: at once, every
    /// connection cut (`pg_ctl stop -m immediate`).
    pub fn stop_now(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Already stopped is fine here.
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
