//! Typed log events linked to a lease, resource and/or blueprint (spec §12),
//! queryable by object and time.

use crate::db::{Row, query};
use crate::row::{get, json, to_json};
use crate::{Result, Store, StoreError, Tx, now_ms};
use drydock_model::{BlueprintId, LeaseId, LogId, ResourceId};
use serde_json::Value;
use std::fmt::Write as _;

/// Longest log type accepted.
pub const MAX_TYPE_LEN: usize = 64;
/// Largest serialized `data` accepted, in bytes.
pub const MAX_DATA_LEN: usize = 64 * 1024;

/// A log event to write.
#[derive(Clone, Debug, Default)]
pub struct NewLog {
    pub lease: Option<LeaseId>,
    pub resource: Option<ResourceId>,
    pub blueprint: Option<BlueprintId>,
    pub kind: String,
    pub data: Value,
}

impl NewLog {
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            data: Value::Object(Default::default()),
            ..Default::default()
        }
    }
    pub fn lease(mut self, id: LeaseId) -> Self {
        self.lease = Some(id);
        self
    }
    pub fn resource(mut self, id: ResourceId) -> Self {
        self.resource = Some(id);
        self
    }
    pub fn blueprint(mut self, id: BlueprintId) -> Self {
        self.blueprint = Some(id);
        self
    }
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// A stored log event.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LogEntry {
    pub id: LogId,
    pub epoch: i64,
    pub lease: Option<LeaseId>,
    pub resource: Option<ResourceId>,
    pub blueprint: Option<BlueprintId>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

/// Which events to read. Unset fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub lease: Option<LeaseId>,
    pub resource: Option<ResourceId>,
    pub blueprint: Option<BlueprintId>,
    /// Only events with an id greater than this (cursor paging, oldest first).
    pub after: Option<LogId>,
    /// Only events at or after this epoch (ms).
    pub since: Option<i64>,
    /// Only events before this epoch (ms).
    pub until: Option<i64>,
    /// At most this many (default and maximum 1000).
    pub limit: Option<i64>,
    /// The latest `limit` events instead of the first (still returned
    /// oldest first).
    pub latest: bool,
}

fn from_row(row: &Row) -> Result<LogEntry> {
    Ok(LogEntry {
        id: LogId(get(row, "id")?),
        epoch: get(row, "epoch")?,
        lease: get::<Option<i64>>(row, "lease_id")?.map(LeaseId),
        resource: get::<Option<i64>>(row, "resource_id")?.map(ResourceId),
        blueprint: get::<Option<i64>>(row, "blueprint_id")?.map(BlueprintId),
        kind: get(row, "type")?,
        data: json(row, "data")?,
    })
}

impl Tx {
    /// Record an event. It is written with the transaction's other events,
    /// in one statement, when the transaction commits (a rolled-back
    /// transaction records none).
    pub async fn log(&mut self, log: NewLog) -> Result<()> {
        let row = PendingLog::checked(log)?;
        self.pending_logs.push(row);
        Ok(())
    }

    /// Write the events recorded so far (see [`Tx::log`]), with the
    /// transaction's pending side writes; returns their ids.
    pub(crate) async fn write_logs(&mut self) -> Result<Vec<i64>> {
        if self.pending_logs.is_empty() {
            return Ok(Vec::new());
        }
        let logs = std::mem::take(&mut self.pending_logs);
        let q = self.with_side_writes(logs_insert(logs));
        let rows = q.fetch_all(self.raw()).await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }
}

/// The head of an `INSERT` of events: the columns their values go to.
pub(crate) const LOGS_INSERT_SQL: &str =
    "INSERT INTO logs (epoch, blueprint_id, resource_id, lease_id, type, data)";

/// One `INSERT` of `logs` (at least one), in order, returning their ids.
pub(crate) fn logs_insert(logs: Vec<PendingLog>) -> crate::db::Query {
    let mut sql = format!("{LOGS_INSERT_SQL} VALUES ");
    for i in 0..logs.len() {
        let n = i * 6;
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{sep}(${}, ${}, ${}, ${}, ${}, ${})",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5,
            n + 6
        );
    }
    sql.push_str(" RETURNING id");
    let mut q = query(sql);
    for l in logs {
        q = q
            .bind(l.epoch)
            .bind(l.blueprint)
            .bind(l.resource)
            .bind(l.lease)
            .bind(l.kind)
            .bind(l.data);
    }
    q
}

/// An event waiting for its transaction's commit, checked.
pub(crate) struct PendingLog {
    epoch: i64,
    blueprint: Option<i64>,
    resource: Option<i64>,
    lease: Option<i64>,
    kind: String,
    data: String,
}

impl PendingLog {
    /// Bind this event's epoch, blueprint, resource, type and data, in
    /// that order (its lease is the caller's to fill in).
    pub(crate) fn bind_without_lease(self, q: crate::db::Query) -> crate::db::Query {
        q.bind(self.epoch)
            .bind(self.blueprint)
            .bind(self.resource)
            .bind(self.kind)
            .bind(self.data)
    }

    pub(crate) fn checked(log: NewLog) -> Result<PendingLog> {
        if log.kind.is_empty() || log.kind.len() > MAX_TYPE_LEN {
            return Err(StoreError::invalid(
                "log type",
                format!("{:?} must be 1 to {MAX_TYPE_LEN} bytes", log.kind),
            ));
        }
        let mut data = to_json(&log.data);
        if data.len() > MAX_DATA_LEN {
            // Keep the event, drop the oversized payload: logs must not grow
            // without bound because a command printed a lot.
            data = to_json(&serde_json::json!({ "truncated": true, "bytes": data.len() }));
        }
        Ok(PendingLog {
            epoch: now_ms(),
            blueprint: log.blueprint.map(|b| b.0),
            resource: log.resource.map(|r| r.0),
            lease: log.lease.map(|l| l.0),
            kind: log.kind,
            data,
        })
    }
}

impl Store {
    /// Record an event in a transaction of its own; returns its id.
    pub async fn log(&self, log: NewLog) -> Result<LogId> {
        let mut tx = self.begin().await?;
        tx.log(log).await?;
        let id = tx.write_logs().await?.pop();
        tx.commit().await?;
        id.map(LogId)
            .ok_or_else(|| StoreError::Database("the event was not written".into()))
    }

    /// Events matching `filter`, oldest first.
    pub async fn logs(&self, filter: &LogFilter) -> Result<Vec<LogEntry>> {
        let limit = filter.limit.unwrap_or(1000).clamp(1, 1000);
        // Only the conditions that filter, so the planner picks the index of
        // the object asked about (`x IS NULL OR …` would defeat it).
        let mut q = crate::row::Select::new(
            "SELECT id, epoch, lease_id, resource_id, blueprint_id, type, data FROM logs WHERE 1 = 1"
                .into(),
        );
        q.any_of("lease_id", filter.lease.map(|l| l.0).into_iter());
        q.any_of("resource_id", filter.resource.map(|r| r.0).into_iter());
        q.any_of("blueprint_id", filter.blueprint.map(|b| b.0).into_iter());
        q.above("id", filter.after.map(|a| a.0));
        q.compare("epoch", ">=", filter.since);
        q.compare("epoch", "<", filter.until);
        let order = if filter.latest { "id DESC" } else { "id" };
        let rows = q
            .page(order, limit)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        let mut entries = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
        if filter.latest {
            entries.reverse();
        }
        Ok(entries)
    }
}
