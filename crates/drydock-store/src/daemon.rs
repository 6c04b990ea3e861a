//! Daemon heartbeats: which `drydock daemon` processes are alive, so a CLI
//! knows whether to wait for one or do the work in-process.

use crate::db::query;
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
