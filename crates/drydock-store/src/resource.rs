//! Resource rows. A resource is inserted by the allocator (lease worker,
//! through its blueprint); after that only its update worker writes it,
//! through [`Tx::save_resource`], fenced like leases.

use crate::db::{Row, query, query_as, query_scalar};
use crate::lease::check_map;
use crate::object_lock::{ObjectLock, fence_condition};
use crate::row::{get, json, parsed};
use crate::{Result, Store, StoreError, Tx, now_ms};
use drydock_model::{BlueprintId, ObjectRef, ResourceId, ResourceStatus};
use serde_json::{Map, Value};

#[derive(Clone, Debug)]
pub struct NewResource {
    pub blueprint_id: BlueprintId,
    pub resource_type: String,
    /// `Pending` (activated later by its worker) or `Active`.
    pub status: ResourceStatus,
    pub attributes: Map<String, Value>,
    pub until: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Resource {
    pub id: ResourceId,
    pub blueprint_id: BlueprintId,
    pub resource_type: String,
    pub status: ResourceStatus,
    pub until: Option<i64>,
    /// Blueprint-private state.
    pub attributes: Map<String, Value>,
    pub failure: Option<String>,
    pub version: i64,
    /// Last time a lease on it was released (the reclaim grace period
    /// counts from here; spec T13676).
    pub last_used_at: i64,
    pub created_at: i64,
    pub modified_at: i64,
}

impl Resource {
    pub fn object(&self) -> ObjectRef {
        ObjectRef::resource(self.id)
    }
}

/// Which resources to list. Unset fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct ResourceFilter {
    pub statuses: Vec<ResourceStatus>,
    pub ids: Vec<ResourceId>,
    /// Resources of any of these blueprints.
    pub blueprints: Vec<BlueprintId>,
    /// Only resources with an id below this (paging newest first).
    pub before: Option<ResourceId>,
    /// Only resources with an id above this.
    pub after: Option<ResourceId>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    pub limit: Option<i64>,
}

pub(crate) const COLUMNS: &str = "id, blueprint_id, type, status, until_at, attributes, failure, version, last_used_at, created_at, modified_at";

pub(crate) fn from_row(row: &Row) -> Result<Resource> {
    Ok(Resource {
        id: ResourceId(get(row, "id")?),
        blueprint_id: BlueprintId(get(row, "blueprint_id")?),
        resource_type: get(row, "type")?,
        status: parsed(row, "status")?,
        until: get(row, "until_at")?,
        attributes: json(row, "attributes")?,
        failure: get(row, "failure")?,
        version: get(row, "version")?,
        last_used_at: get(row, "last_used_at")?,
        created_at: get(row, "created_at")?,
        modified_at: get(row, "modified_at")?,
    })
}

impl Tx {
    pub async fn insert_resource(&mut self, new: &NewResource) -> Result<Resource> {
        if !matches!(new.status, ResourceStatus::Pending | ResourceStatus::Active) {
            return Err(StoreError::invalid("new resource status", new.status));
        }
        let attributes = check_map("resource attributes", &new.attributes)?;
        let now = now_ms();
        let id: i64 = query_scalar(
            "INSERT INTO resources (blueprint_id, type, status, until_at, attributes, version, fence, last_used_at, \
               created_at, modified_at) VALUES ($1, $2, $3, $4, $5, 1, 0, $6, $6, $6) RETURNING id",
        )
        .bind(new.blueprint_id.0)
        .bind(&new.resource_type)
        .bind(new.status.as_str())
        .bind(new.until)
        .bind(attributes)
        .bind(now)
        .fetch_one(self.conn().await?)
        .await?;
        self.resource(ResourceId(id)).await
    }

    pub async fn resource(&mut self, id: ResourceId) -> Result<Resource> {
        crate::row::by_id(
            self.conn().await?,
            COLUMNS,
            "resources",
            "resource",
            id.0,
            from_row,
        )
        .await
    }

    /// Write every mutable field of `resource`, fenced on its version and
    /// the resource lock's token.
    pub async fn save_resource(
        &mut self,
        resource: &Resource,
        lock: &ObjectLock,
    ) -> Result<Resource> {
        let attributes = check_map("resource attributes", &resource.attributes)?;
        let sql = format!(
            "UPDATE resources SET status = $1, until_at = $2, attributes = $3, failure = $4, last_used_at = $5, \
               version = version + 1, fence = $6, modified_at = $7 \
             WHERE id = $8 AND version = $9 AND {}",
            fence_condition(10, 6)
        );
        let n = query(sql)
            .bind(resource.status.as_str())
            .bind(resource.until)
            .bind(attributes)
            .bind(&resource.failure)
            .bind(resource.last_used_at)
            .bind(lock.token)
            .bind(now_ms())
            .bind(resource.id.0)
            .bind(resource.version)
            .bind(&lock.name)
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::Stale {
                object: resource.object().key(),
                token: lock.token,
            });
        }
        self.resource(resource.id).await
    }
}

impl Store {
    pub async fn resource(&self, id: ResourceId) -> Result<Resource> {
        crate::row::by_id(
            &mut self.reader().await?.raw,
            COLUMNS,
            "resources",
            "resource",
            id.0,
            from_row,
        )
        .await
    }

    /// Resources, newest first; optionally of one blueprint and/or status.
    pub async fn resources(
        &self,
        blueprint: Option<BlueprintId>,
        status: Option<ResourceStatus>,
        limit: i64,
    ) -> Result<Vec<Resource>> {
        self.resources_matching(&ResourceFilter {
            statuses: status.into_iter().collect(),
            blueprints: blueprint.into_iter().collect(),
            limit: Some(limit),
            ..Default::default()
        })
        .await
    }

    /// Resources matching `filter`, newest first (or oldest first), one page.
    pub async fn resources_matching(&self, filter: &ResourceFilter) -> Result<Vec<Resource>> {
        let mut q = crate::row::Select::new(format!(
            "SELECT {COLUMNS} FROM resources WHERE {}",
            crate::row::status_in(filter.statuses.iter().map(|s| s.as_str()))
        ));
        q.any_of("id", filter.ids.iter().map(|i| i.0));
        q.any_of("blueprint_id", filter.blueprints.iter().map(|b| b.0));
        q.below("id", filter.before.map(|b| b.0));
        q.above("id", filter.after.map(|a| a.0));
        let order = if filter.ascending { "id" } else { "id DESC" };
        let rows = q
            .page(order, filter.limit.unwrap_or(100).clamp(1, 10_000))
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(from_row).collect()
    }
}

impl Tx {
    /// Read a resource and, on PostgreSQL, lock its row until the
    /// transaction ends, to change its status: a release, reclaim or break
    /// waits for the leases being acquired on it ([`Tx::resource_to_acquire`])
    /// and sees them, and they wait for it and see its new status (spec
    /// PHI312). SQLite transactions are serial anyway.
    pub async fn resource_for_update(&mut self, id: ResourceId) -> Result<Resource> {
        self.resource_locked(id, " FOR UPDATE").await
    }

    /// Read a resource to acquire a lease on it, sharing its row with the
    /// other leases being acquired on it (PostgreSQL `FOR KEY SHARE`: only
    /// [`Tx::resource_for_update`] waits for them). Many leases on one
    /// resource do not queue for its row: their live-lease count is written
    /// when each transaction commits (a deferred trigger, migration 0009).
    pub async fn resource_to_acquire(&mut self, id: ResourceId) -> Result<Resource> {
        self.resource_locked(id, " FOR KEY SHARE").await
    }

    async fn resource_locked(&mut self, id: ResourceId, lock: &str) -> Result<Resource> {
        let lock = match self.dialect() {
            crate::Dialect::Sqlite => "",
            crate::Dialect::Postgres => lock,
        };
        let sql = format!("SELECT {COLUMNS} FROM resources WHERE id = $1{lock}");
        let row = query(sql)
            .bind(id.0)
            .fetch_optional(self.conn().await?)
            .await?;
        from_row(&row.ok_or(StoreError::NotFound {
            what: "resource",
            id: id.to_string(),
        })?)
    }
}

impl Store {
    /// Active resources with room for another lease, with their live-lease
    /// counts, oldest first: for each blueprint, those with fewer live
    /// leases than its limit (`None`: no limit). Resources at their limit
    /// are skipped by the `resources_room` index, however many there are.
    /// (No condition on the resource type: the blueprints imply it, and
    /// naming it led SQLite to scan every active resource of the type.)
    pub async fn active_resources_with_room(
        &self,
        room: &[(BlueprintId, Option<i64>)],
    ) -> Result<Vec<(Resource, i64)>> {
        if room.is_empty() {
            return Ok(Vec::new());
        }
        // Integers formatted, never text from input.
        let unlimited: Vec<String> = room
            .iter()
            .filter(|(_, limit)| limit.is_none())
            .map(|(b, _)| b.0.to_string())
            .collect();
        let mut terms: Vec<String> = room
            .iter()
            .filter_map(|(b, limit)| {
                limit.map(|l| format!("(blueprint_id = {} AND live_leases < {l})", b.0))
            })
            .collect();
        if !unlimited.is_empty() {
            terms.push(format!("blueprint_id IN ({})", unlimited.join(", ")));
        }
        let sql = format!(
            "SELECT {COLUMNS}, live_leases FROM resources \
             WHERE status = 'active' AND ({}) ORDER BY id",
            terms.join(" OR ")
        );
        let rows = query(sql).fetch_all(&mut self.reader().await?.raw).await?;
        rows.iter()
            .map(|row| Ok((from_row(row)?, row.get::<i64>("live_leases")?)))
            .collect()
    }

    /// Resources whose stored live-lease count differs from their leases
    /// (always none; fault and stress tests check it): `(id, stored, real)`.
    pub async fn live_lease_drift(&self) -> Result<Vec<(ResourceId, i64, i64)>> {
        let rows: Vec<(i64, i64, i64)> = query_as(
            "SELECT id, live_leases, real_count FROM (SELECT id, live_leases, \
               (SELECT COUNT(*) FROM leases l WHERE l.resource_id = r.id \
                  AND l.status IN ('pending', 'acquired', 'active')) AS real_count \
               FROM resources r) counted \
             WHERE live_leases <> real_count ORDER BY id",
        )
        .fetch_all(&mut self.reader().await?.raw)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, stored, real)| (ResourceId(id), stored, real))
            .collect())
    }

    /// Number of resources in each status.
    pub async fn resource_status_counts(&self) -> Result<Vec<(String, i64)>> {
        query_as("SELECT status, COUNT(*) FROM resources GROUP BY status ORDER BY status")
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }
}
