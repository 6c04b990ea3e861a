//! Bulk rows for `drydock bench --scale`: what a long-lived installation
//! accumulates (thousands of busy resources, a million finished leases),
//! written in a few statements instead of a million engine passes.

use crate::db::{query, query_scalar};
use crate::{Result, Store, now_ms};
use drydock_model::BlueprintId;

/// Rows written per transaction, so a running daemon's writes interleave
/// (and each statement stays under the driver's 1 s slow-statement
/// warning: 100,000 rows took 1.0 s on PostgreSQL here).
const CHUNK: i64 = 25_000;

impl Store {
    /// Add `resources` active resources of `blueprint`, each held by one
    /// active lease (owner `bench-fleet`), and `history` destroyed leases
    /// spread over them. Returns the number of rows written.
    pub async fn seed_fleet(
        &self,
        blueprint: BlueprintId,
        resource_type: &str,
        resources: i64,
        history: i64,
    ) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO resources (blueprint_id, type, status, attributes, live_leases, last_used_at, created_at, modified_at) \
             SELECT $2, $3, 'active', '{}', 0, $4, $4, $4 FROM n",
        )
        .bind(resources)
        .bind(blueprint.0)
        .bind(resource_type)
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
        query(
            "INSERT INTO leases (resource_type, status, resource_id, authorizing, owner, acquired_at, activated_at, created_at, modified_at) \
             SELECT $1, 'active', id, 'drydock', 'bench-fleet', $2, $2, $2, $2 FROM resources \
             WHERE blueprint_id = $3 AND status = 'active'",
        )
        .bind(resource_type)
        .bind(now)
        .bind(blueprint.0)
        .execute(tx.conn().await?)
        .await?;
        let first: i64 = query_scalar("SELECT MIN(id) FROM resources WHERE blueprint_id = $1")
            .bind(blueprint.0)
            .fetch_one(tx.conn().await?)
            .await?;
        tx.commit().await?;
        let mut written = 0;
        while written < history {
            let n = CHUNK.min(history - written);
            let mut tx = self.begin().await?;
            query(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1 - 1) \
                 INSERT INTO leases (resource_type, status, resource_id, authorizing, owner, acquired_at, activated_at, created_at, modified_at) \
                 SELECT $2, 'destroyed', $3 + (i % $4), 'drydock', 'bench-history', $5, $5, $5, $5 FROM n",
            )
            .bind(n)
            .bind(resource_type)
            .bind(first)
            .bind(resources.max(1))
            .bind(now - 86_400_000)
            .execute(tx.conn().await?)
            .await?;
            tx.commit().await?;
            written += n;
        }
        Ok(resources * 2 + history)
    }
}
