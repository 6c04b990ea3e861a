//! Garbage collection: old logs and consumed commands of destroyed objects,
//! and finished tasks, are deleted after a retention period. Nothing that
//! belongs to a live object is ever deleted.

use crate::db::{query, query_as};
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
    /// task is ever lost for good, whatever crashed where. Objects whose
    /// last task failed for good are not among them
    /// ([`Store::failed_objects`]): rescheduled, they would fail again.
    pub async fn orphaned_objects(&self, limit: i64) -> Result<Vec<drydock_model::ObjectRef>> {
        use drydock_model::{LeaseId, ObjectRef, ResourceId};
        let (l, r) = (
            self.needing_a_pass("lease", false, limit).await?,
            self.needing_a_pass("resource", false, limit).await?,
        );
        Ok(l.into_iter()
            .map(|(i, _)| ObjectRef::lease(LeaseId(i)))
            .chain(
                r.into_iter()
                    .map(|(i, _)| ObjectRef::resource(ResourceId(i))),
            )
            .collect())
    }

    /// Objects that need an update pass, have no queued or running task,
    /// and whose last task failed for good (a crash loop the queue gave up
    /// on, a permanent failure), each with the task's error: the garbage
    /// collector breaks them with it instead of rescheduling a poison task.
    pub async fn failed_objects(
        &self,
        limit: i64,
    ) -> Result<Vec<(drydock_model::ObjectRef, String)>> {
        use drydock_model::{LeaseId, ObjectRef, ResourceId};
        let (l, r) = (
            self.needing_a_pass("lease", true, limit).await?,
            self.needing_a_pass("resource", true, limit).await?,
        );
        let reason = |e: Option<String>| e.unwrap_or_else(|| "its update task failed".into());
        Ok(l.into_iter()
            .map(|(i, e)| (ObjectRef::lease(LeaseId(i)), reason(e)))
            .chain(
                r.into_iter()
                    .map(|(i, e)| (ObjectRef::resource(ResourceId(i)), reason(e))),
            )
            .collect())
    }

    /// Ids of `kind`'s objects (`lease`, `resource`) that need a pass and
    /// have no task queued or running, whose last task `failed` (or not),
    /// with that task's error.
    async fn needing_a_pass(
        &self,
        kind: &str,
        failed: bool,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>)>> {
        let (table, statuses) = match kind {
            "lease" => ("leases", "'pending', 'acquired', 'released', 'broken'"),
            _ => ("resources", "'pending', 'released', 'broken'"),
        };
        let key = format!("'{kind}:' || CAST(o.id AS TEXT)");
        let sql = format!(
            "SELECT o.id, last.last_error FROM {table} o \
             LEFT JOIN tasks last ON last.id = (SELECT MAX(t.id) FROM tasks t WHERE t.object_key = {key}) \
             WHERE (o.status IN ({statuses}) OR (o.status = 'active' AND (o.until_at IS NOT NULL \
                 OR EXISTS (SELECT 1 FROM commands c WHERE c.target_kind = '{kind}' AND c.target_id = o.id \
                   AND c.consumed = 0)))) \
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.object_key = {key} AND t.state IN ('queued', 'claimed')) \
               AND {} \
             ORDER BY o.id LIMIT $1",
            if failed {
                "last.state = 'failed'"
            } else {
                "(last.id IS NULL OR last.state <> 'failed')"
            }
        );
        query_as(sql)
            .bind(limit)
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }
}
