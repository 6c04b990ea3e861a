//! Connection pools that check a connection only when it may have gone bad.
//!
//! sqlx's own pool pings every connection it takes back (and, unless told
//! otherwise, every one it hands out): on SQLite a hand-off to the
//! connection's thread, on PostgreSQL a round trip. Measured on our machine
//! kind, a one-statement read cost 84–134 µs through it against 32–46 µs on
//! a held connection (PostgreSQL: 156 against 83 µs) — the pool, not the
//! query, was the price of most reads. These pools (deadpool) hold either
//! backend's connections (SQLite ones are rusqlite's, see `db`), hand a
//! connection back without a check, and check a PostgreSQL one (a ping)
//! only after it sat idle for a while or after any connection of this
//! process failed, so a database restart costs each broken connection one
//! failed statement at most. A SQLite connection is a file handle: never
//! checked.

use crate::db::{Backend, Db};
use crate::{Dialect, StoreError};
use deadpool::managed::{self, Metrics, PoolError, RecycleResult};
use sqlx::Connection as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A pool of connections to one database.
pub(crate) type Pool = managed::Pool<Connector>;

/// A connection taken from a [`Pool`]; back to it when dropped.
pub(crate) type Conn = managed::Object<Connector>;

/// Connection failures seen in this process so far: a connection checked
/// before the latest one is checked again before its next use.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// A PostgreSQL connection idle longer than this is checked before use.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a SQLite statement waits for a lock another process holds
/// (`BEGIN IMMEDIATE` waits without blocking the thread, see
/// [`crate::db::begin_immediate`]; other waits are rare under WAL).
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements kept per SQLite connection (the store has fewer
/// distinct statements than this, so each is prepared once).
const SQLITE_STATEMENT_CACHE: usize = 256;

/// SQLite's own page cache per connection, in KiB (its default is 2 MiB).
/// A process has six connections (writer, four readers, the watch); with
/// the default their caches filled to 12 MiB on a database of a million
/// leases, while the operating system caches the file anyway: 512 KiB each
/// measured the same speed (`drydock bench --scale`) and 8 MiB less memory.
const SQLITE_PAGE_CACHE_KIB: u32 = 512;

/// The page size of a SQLite database this process creates (an existing
/// one keeps its own: in WAL mode it cannot change). A commit writes every
/// page it dirtied to the WAL, and a lease cycle's writes are small rows
/// spread over a dozen tables and indexes: with 1 KiB pages instead of
/// SQLite's default 4 KiB a cycle writes a quarter of the bytes, measured
/// +20–25 % full lease cycles per second (`drydock bench`, alternating).
const SQLITE_PAGE_SIZE: u32 = 1024;

/// Record that a connection failed (the server went away, a socket broke).
pub(crate) fn connection_failed() {
    FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Opens connections (SQLite ones with their pragmas) and checks them.
pub(crate) struct Connector {
    url: String,
    dialect: Dialect,
}

/// A pooled connection and the failure count it was last checked at.
pub(crate) struct Connection {
    pub(crate) raw: Db,
    checked: u64,
}

/// Open a SQLite database file with the store's settings.
pub(crate) fn open_sqlite(path: &str) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    // The page size first: it applies only to a new, empty database, and
    // only before WAL mode is set. WAL lets readers run beside the writer;
    // NORMAL is durable across process crashes.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {SQLITE_PAGE_SIZE}; \
         PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = -{SQLITE_PAGE_CACHE_KIB};"
    ))?;
    conn.set_prepared_statement_cache_capacity(SQLITE_STATEMENT_CACHE);
    Ok(conn)
}

impl managed::Manager for Connector {
    type Type = Connection;
    type Error = StoreError;

    async fn create(&self) -> Result<Connection, StoreError> {
        let checked = FAILURES.load(Ordering::Relaxed);
        let raw = match self.dialect {
            Dialect::Sqlite => Db::sqlite(open_sqlite(crate::connect::sqlite_path(&self.url))?),
            Dialect::Postgres => Db::postgres(sqlx::PgConnection::connect(&self.url).await?),
        };
        Ok(Connection { raw, checked })
    }

    async fn recycle(&self, conn: &mut Connection, metrics: &Metrics) -> RecycleResult<StoreError> {
        // A SQLite connection is a file handle: nothing to check.
        let Backend::Postgres(pg) = &mut conn.raw.backend else {
            return Ok(());
        };
        let failures = FAILURES.load(Ordering::Relaxed);
        if conn.checked != failures || metrics.last_used() > IDLE_CHECK {
            pg.ping().await.map_err(StoreError::from)?;
            conn.checked = failures;
        }
        Ok(())
    }
}

/// A pool of at most `size` connections to `url`; a caller waits at most
/// `wait` for one.
pub(crate) fn pool(
    url: &str,
    dialect: Dialect,
    size: usize,
    wait: Duration,
) -> Result<Pool, StoreError> {
    managed::Pool::builder(Connector {
        url: url.to_owned(),
        dialect,
    })
    .max_size(size)
    .wait_timeout(Some(wait))
    .create_timeout(Some(Duration::from_secs(10)))
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .map_err(|e| StoreError::Unavailable(format!("cannot set up the connection pool: {e}")))
}

impl From<PoolError<StoreError>> for StoreError {
    fn from(e: PoolError<StoreError>) -> Self {
        match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => StoreError::Unavailable(
                "no database connection in time: the database is down, restarting or overloaded"
                    .into(),
            ),
            PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one value `sql` reads.
    fn one<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> T {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn page_size(conn: &rusqlite::Connection) -> u32 {
        one(conn, "PRAGMA page_size")
    }

    #[test]
    fn a_new_sqlite_database_gets_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.db");
        let conn = open_sqlite(new.to_str().unwrap()).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        assert_eq!(page_size(&conn), SQLITE_PAGE_SIZE);
        assert_eq!(one::<String>(&conn, "PRAGMA journal_mode"), "wal");

        // A database made with SQLite's default pages (as earlier versions
        // made them) is opened as it is, and written as before.
        let old = dir.path().join("old.db");
        let made = rusqlite::Connection::open(&old).unwrap();
        made.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1)",
        )
        .unwrap();
        let before = page_size(&made);
        assert_ne!(before, SQLITE_PAGE_SIZE);
        drop(made);
        let conn = open_sqlite(old.to_str().unwrap()).unwrap();
        conn.execute_batch("INSERT INTO t VALUES (2)").unwrap();
        assert_eq!(page_size(&conn), before);
        assert_eq!(one::<i64>(&conn, "SELECT COUNT(*) FROM t"), 2);
    }
}
