//! Aggregate counts for metrics and dashboards. Each is one grouped query
//! over an indexed column; none reads whole rows.

use crate::db::{query_as, query_scalar};
use crate::{Dialect, Result, Store, now_ms};

/// Depth and age of the task queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Queued tasks whose run time has come.
    pub due: i64,
    /// Queued tasks scheduled for later.
    pub scheduled: i64,
    /// Tasks claimed by a worker right now.
    pub running: i64,
    /// How long the oldest due task has waited, in ms (0 if none).
    pub oldest_due_ms: i64,
}

impl Store {
    /// Resources per (blueprint id, status).
    pub async fn resource_counts_by_blueprint(&self) -> Result<Vec<(i64, String, i64)>> {
        query_as(
            "SELECT blueprint_id, status, COUNT(*) FROM resources GROUP BY blueprint_id, status ORDER BY blueprint_id, status",
        )
        .fetch_all(&mut self.reader().await?.raw)
        .await
    }

    /// Pending leases per waiting reason (`unknown` before the first pass).
    pub async fn waiting_reason_counts(&self) -> Result<Vec<(String, i64)>> {
        let reason = match self.dialect() {
            Dialect::Sqlite => "json_extract(waiting, '$.reason')",
            Dialect::Postgres => "(waiting::json ->> 'reason')",
        };
        let sql = format!(
            "SELECT COALESCE({reason}, 'unknown') AS reason, COUNT(*) FROM leases \
             WHERE status = 'pending' GROUP BY 1 ORDER BY 1"
        );
        query_as(sql).fetch_all(&mut self.reader().await?.raw).await
    }

    /// The task queue's depth and the age of its oldest due task.
    pub async fn queue_stats(&self) -> Result<QueueStats> {
        let now = now_ms();
        let (due, scheduled, oldest): (i64, i64, Option<i64>) = query_as(
            "SELECT COALESCE(SUM(CASE WHEN run_at <= $1 THEN 1 ELSE 0 END), 0), \
                    COALESCE(SUM(CASE WHEN run_at > $1 THEN 1 ELSE 0 END), 0), \
                    MIN(run_at) FROM tasks WHERE state = 'queued'",
        )
        .bind(now)
        .fetch_one(&mut self.reader().await?.raw)
        .await?;
        let running: i64 = query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'claimed'")
            .fetch_one(&mut self.reader().await?.raw)
            .await?;
        Ok(QueueStats {
            due,
            scheduled,
            running,
            oldest_due_ms: oldest.map(|o| (now - o).max(0)).unwrap_or(0),
        })
    }

    /// Commands not yet consumed by their object's worker.
    pub async fn command_queue_depth(&self) -> Result<i64> {
        query_scalar("SELECT COUNT(*) FROM commands WHERE consumed = 0")
            .fetch_one(&mut self.reader().await?.raw)
            .await
    }
}
