//! Connection pools that check a connection only when it may have gone bad.
//!
//! sqlx's own pool pings every connection it takes back (and, unless told
//! otherwise, every one it hands out): on SQLite a hand-off to the
//! connection's thread, on PostgreSQL a round trip. Measured on our machine
//! kind, a one-statement read cost 84–134 µs through it against 32–46 µs on
//! a held connection (PostgreSQL: 156 against 83 µs) — the pool, not the
//! query, was the price of most reads. These pools (deadpool) hand a
//! connection back without a check, and check it (a ping) only after it sat
//! idle for a while on PostgreSQL, or after any connection of this process
//! failed, so a database restart costs each broken connection one failed
//! statement at most.

use crate::{Dialect, StoreError};
use deadpool::managed::{self, Metrics, PoolError, RecycleResult};
use sqlx::{Connection as _, Executor as _};
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
    pub(crate) raw: sqlx::AnyConnection,
    checked: u64,
}

impl managed::Manager for Connector {
    type Type = Connection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Connection, sqlx::Error> {
        let checked = FAILURES.load(Ordering::Relaxed);
        let mut raw = sqlx::AnyConnection::connect(&self.url).await?;
        if self.dialect == Dialect::Sqlite {
            // WAL lets readers run beside the writer; NORMAL is durable
            // across process crashes.
            raw.execute("PRAGMA journal_mode = WAL").await?;
            raw.execute("PRAGMA synchronous = NORMAL").await?;
            raw.execute("PRAGMA busy_timeout = 30000").await?;
            raw.execute("PRAGMA foreign_keys = ON").await?;
        }
        Ok(Connection { raw, checked })
    }

    async fn recycle(
        &self,
        conn: &mut Connection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        let failures = FAILURES.load(Ordering::Relaxed);
        let idle = self.dialect == Dialect::Postgres && metrics.last_used() > IDLE_CHECK;
        if conn.checked != failures || idle {
            conn.raw.ping().await?;
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

impl From<PoolError<sqlx::Error>> for StoreError {
    fn from(e: PoolError<sqlx::Error>) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => StoreError::Unavailable(
                "no database connection in time: the database is down, restarting or overloaded"
                    .into(),
            ),
            PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}
