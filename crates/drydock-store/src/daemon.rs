//! Daemon heartbeats: which `drydock daemon` processes are alive, so a CLI
//! knows whether to wait for one or do the work in-process.

use crate::db::{query, query_scalar};
use crate::row::get;
use crate::{Result, Store, now_ms};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Daemon {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stopped_at: Option<i64>,
}

impl Store {
    /// Register a daemon or refresh its heartbeat.
    pub async fn daemon_heartbeat(&self, id: &str, host: &str, pid: i64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        query(
            "INSERT INTO daemons (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = $4, stopped_at = NULL",
        )
        .bind(id)
        .bind(host)
        .bind(pid)
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
        tx.commit().await
    }

    /// PostgreSQL: measure how far the database server's clock is from
    /// this host's and correct [`crate::now_ms`] by it (`open` does it
    /// once; a daemon with each heartbeat). A measurement whose round trip
    /// took over 100 ms is not trusted (its error is up to half of it) and
    /// changes nothing. Answers the skew in use (ms the database is
    /// ahead); always 0 on SQLite.
    pub async fn sync_clock(&self) -> Result<i64> {
        use std::sync::atomic::Ordering;
        if self.dialect() != crate::Dialect::Postgres {
            return Ok(0);
        }
        let mut conn = self.reader().await?;
        let before = crate::clock::local_ms();
        let server: i64 =
            query_scalar("SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)")
                .fetch_one(&mut conn.raw)
                .await?;
        let after = crate::clock::local_ms();
        if after - before <= 100 {
            let offset = server - (before + (after - before) / 2);
            crate::clock::OFFSET_MS.store(offset, Ordering::Relaxed);
        }
        Ok(crate::clock::skew_ms())
    }

    /// Record a clean stop.
    pub async fn daemon_stopped(&self, id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        query("UPDATE daemons SET stopped_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(tx.conn().await?)
            .await?;
        tx.commit().await
    }

    /// Daemons that have not stopped and beat within `within`.
    pub async fn live_daemons(&self, within: Duration) -> Result<Vec<Daemon>> {
        let since = now_ms().saturating_sub(crate::ms(within));
        let rows = query(
            "SELECT id, host, pid, started_at, heartbeat_at, stopped_at FROM daemons \
             WHERE stopped_at IS NULL AND heartbeat_at >= $1 ORDER BY started_at",
        )
        .bind(since)
        .fetch_all(&mut self.reader().await?.raw)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Daemon {
                    id: get(r, "id")?,
                    host: get(r, "host")?,
                    pid: get(r, "pid")?,
                    started_at: get(r, "started_at")?,
                    heartbeat_at: get(r, "heartbeat_at")?,
                    stopped_at: get(r, "stopped_at")?,
                })
            })
            .collect()
    }
}
