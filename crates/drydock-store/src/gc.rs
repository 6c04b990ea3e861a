//! Garbage collection: old logs and consumed commands of destroyed objects,
//! and finished tasks, are deleted after a retention period. Nothing that
//! belongs to a live object is ever deleted.

use crate::db::{query, query_scalar};
use crate::{Result, Store};

/// Rows deleted by one [`Store::prune`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub logs: u64,
    pub commands: u64,
    pub tasks: u64,
}

impl PruneReport {
    pub fn total(&self) -> u64 {
        self.logs + self.commands + self.tasks
    }
}

/// Finished tasks older than `$1`, at most `$2` (through `tasks_finished`).
pub(crate) const FINISHED_TASKS_SQL: &str = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
     WHERE state IN ('done', 'failed') AND finished_at < $1 LIMIT $2)";

impl Store {
    /// Delete up to `batch` rows of each kind: logs and consumed commands of
    /// destroyed objects older than `cutoff`, finished tasks older than
    /// `task_cutoff` (epoch ms). Call again while it reports a full batch.
    pub async fn prune(&self, cutoff: i64, task_cutoff: i64, batch: i64) -> Result<PruneReport> {
        let mut tx = self.begin().await?;
        let logs = query(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE epoch < $1 \
               AND (lease_id IS NOT NULL OR resource_id IS NOT NULL) \
               AND (lease_id IS NULL OR lease_id IN (SELECT id FROM leases WHERE status = 'destroyed')) \
               AND (resource_id IS NULL OR resource_id IN (SELECT id FROM resources WHERE status = 'destroyed')) \
               ORDER BY id LIMIT $2)",
        )
        .bind(cutoff)
        .bind(batch)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
        let commands = query(
            "DELETE FROM commands WHERE id IN (SELECT c.id FROM commands c WHERE c.consumed = 1 AND c.modified_at < $1 \
               AND ((c.target_kind = 'lease' AND c.target_id IN (SELECT id FROM leases WHERE status = 'destroyed')) \
                 OR (c.target_kind = 'resource' AND c.target_id IN (SELECT id FROM resources WHERE status = 'destroyed'))) \
               ORDER BY c.id LIMIT $2)",
        )
        .bind(cutoff)
        .bind(batch)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
        let tasks = query(FINISHED_TASKS_SQL)
            .bind(task_cutoff)
            .bind(batch)
            .execute(tx.conn().await?)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(PruneReport {
            logs,
            commands,
            tasks,
        })
    }
}

impl Store {
    /// Objects that need an update pass but have no queued or running task:
    /// unfinished leases and resources (and active ones with an expiry or
    /// unconsumed commands). The garbage collector reschedules them, so no
    /// task is ever lost for good, whatever crashed where.
    pub async fn orphaned_objects(&self, limit: i64) -> Result<Vec<drydock_model::ObjectRef>> {
        use drydock_model::{LeaseId, ObjectRef, ResourceId};
        let no_task = |kind: &str, table: &str| {
            format!(
                "NOT EXISTS (SELECT 1 FROM tasks t WHERE t.object_key = '{kind}:' || CAST({table}.id AS TEXT) \
                 AND t.state IN ('queued', 'claimed'))"
            )
        };
        let pending_cmd = |kind: &str, table: &str| {
            format!(
                "EXISTS (SELECT 1 FROM commands c WHERE c.target_kind = '{kind}' AND c.target_id = {table}.id AND c.consumed = 0)"
            )
        };
        let leases = format!(
            "SELECT id FROM leases WHERE (status IN ('pending', 'acquired', 'released', 'broken') \
               OR (status = 'active' AND (until_at IS NOT NULL OR {}))) AND {} ORDER BY id LIMIT $1",
            pending_cmd("lease", "leases"),
            no_task("lease", "leases")
        );
        let resources = format!(
            "SELECT id FROM resources WHERE (status IN ('pending', 'released', 'broken') \
               OR (status = 'active' AND (until_at IS NOT NULL OR {}))) AND {} ORDER BY id LIMIT $1",
            pending_cmd("resource", "resources"),
            no_task("resource", "resources")
        );
        let l: Vec<i64> = query_scalar(leases)
            .bind(limit)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        let r: Vec<i64> = query_scalar(resources)
            .bind(limit)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        Ok(l.into_iter()
            .map(|i| ObjectRef::lease(LeaseId(i)))
            .chain(r.into_iter().map(|i| ObjectRef::resource(ResourceId(i))))
            .collect())
    }
}
