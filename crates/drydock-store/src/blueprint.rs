//! Blueprints (configured blueprint implementations) and the audit trail of
//! every edit: who changed which field from what to what, and when.

use crate::db::{Row, query, query_scalar};
use crate::row::{get, json, to_json};
use crate::{Result, Store, StoreError, Tx, now_ms};
use drydock_model::BlueprintId;
use serde_json::{Map, Value};

/// Longest blueprint name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest serialized field map, in bytes.
pub const MAX_FIELDS_LEN: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Blueprint {
    pub id: BlueprintId,
    pub name: String,
    /// The implementation, e.g. `host.local`, `host.ssh`, `working-copy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Implementation configuration. Secrets are never stored here (they
    /// live apart, referenced by id).
    pub fields: Map<String, Value>,
    pub disabled: bool,
    pub version: i64,
    pub created_at: i64,
    pub modified_at: i64,
}

/// One recorded change to a blueprint.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BlueprintEdit {
    pub id: i64,
    pub blueprint: BlueprintId,
    pub author: String,
    /// `name`, `type`, `disabled`, or `fields.<key>`.
    pub field: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub epoch: i64,
}

const COLUMNS: &str = "id, name, type, fields, disabled, version, created_at, modified_at";

fn from_row(row: &Row) -> Result<Blueprint> {
    Ok(Blueprint {
        id: BlueprintId(get(row, "id")?),
        name: get(row, "name")?,
        kind: get(row, "type")?,
        fields: json(row, "fields")?,
        disabled: get::<i64>(row, "disabled")? != 0,
        version: get(row, "version")?,
        created_at: get(row, "created_at")?,
        modified_at: get(row, "modified_at")?,
    })
}

fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME_LEN {
        return Err(StoreError::invalid(
            "blueprint name",
            format!("{name:?} must be 1 to {MAX_NAME_LEN} bytes and not blank"),
        ));
    }
    Ok(())
}

fn check_fields(fields: &Map<String, Value>) -> Result<String> {
    let text = to_json(fields);
    if text.len() > MAX_FIELDS_LEN {
        return Err(StoreError::invalid(
            "blueprint fields",
            format!("{} bytes (at most {MAX_FIELDS_LEN})", text.len()),
        ));
    }
    Ok(text)
}

fn name_taken(e: StoreError, name: &str) -> StoreError {
    if e.is_unique_violation() {
        StoreError::invalid(
            "blueprint name",
            format!("a blueprint named {name:?} already exists"),
        )
    } else {
        e
    }
}

impl Tx {
    async fn record_edit(
        &mut self,
        id: BlueprintId,
        author: &str,
        field: &str,
        old: Option<String>,
        new: Option<String>,
    ) -> Result<()> {
        query(
            "INSERT INTO blueprint_edits (blueprint_id, author, field, old_value, new_value, epoch) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.0)
        .bind(author)
        .bind(field)
        .bind(old)
        .bind(new)
        .bind(now_ms())
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    pub async fn blueprint(&mut self, id: BlueprintId) -> Result<Blueprint> {
        crate::row::by_id(
            self.conn().await?,
            COLUMNS,
            "blueprints",
            "blueprint",
            id.0,
            from_row,
        )
        .await
    }
}

impl Store {
    /// Create a blueprint, recording its creation in the audit trail.
    pub async fn create_blueprint(
        &self,
        author: &str,
        name: &str,
        kind: &str,
        fields: Map<String, Value>,
    ) -> Result<Blueprint> {
        check_name(name)?;
        if kind.is_empty() || kind.len() > 64 {
            return Err(StoreError::invalid("blueprint type", format!("{kind:?}")));
        }
        let fields_text = check_fields(&fields)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let id: i64 = query_scalar(
            "INSERT INTO blueprints (name, type, fields, disabled, version, created_at, modified_at) \
             VALUES ($1, $2, $3, 0, 1, $4, $4) RETURNING id",
        )
        .bind(name)
        .bind(kind)
        .bind(&fields_text)
        .bind(now)
        .fetch_one(tx.conn().await?)
        .await
        .map_err(|e| name_taken(e, name))?;
        let id = BlueprintId(id);
        tx.record_edit(id, author, "type", None, Some(kind.to_owned()))
            .await?;
        tx.record_edit(id, author, "name", None, Some(name.to_owned()))
            .await?;
        for (k, v) in &fields {
            tx.record_edit(id, author, &format!("fields.{k}"), None, Some(to_json(v)))
                .await?;
        }
        let bp = tx.blueprint(id).await?;
        tx.commit().await?;
        Ok(bp)
    }

    /// Change a blueprint's name and/or fields (`None` value removes a
    /// field). Every changed value is recorded with its author. Conditional
    /// on `expected_version` when given, so two editors cannot silently
    /// overwrite each other.
    pub async fn edit_blueprint(
        &self,
        author: &str,
        id: BlueprintId,
        expected_version: Option<i64>,
        name: Option<&str>,
        changes: &Map<String, Value>,
    ) -> Result<Blueprint> {
        let mut tx = self.begin().await?;
        let old = tx.blueprint(id).await?;
        if let Some(v) = expected_version.filter(|v| *v != old.version) {
            return Err(StoreError::Stale {
                object: format!("blueprint:{id}"),
                token: v,
            });
        }
        let mut fields = old.fields.clone();
        for (k, v) in changes {
            let before = fields.get(k).cloned();
            if v.is_null() {
                fields.remove(k);
            } else {
                fields.insert(k.clone(), v.clone());
            }
            let after = fields.get(k).cloned();
            if before != after {
                tx.record_edit(
                    id,
                    author,
                    &format!("fields.{k}"),
                    before.map(|b| to_json(&b)),
                    after.map(|a| to_json(&a)),
                )
                .await?;
            }
        }
        let new_name = name.unwrap_or(&old.name);
        check_name(new_name)?;
        if new_name != old.name {
            tx.record_edit(
                id,
                author,
                "name",
                Some(old.name.clone()),
                Some(new_name.to_owned()),
            )
            .await?;
        }
        let fields_text = check_fields(&fields)?;
        let n = query(
            "UPDATE blueprints SET name = $1, fields = $2, version = version + 1, modified_at = $3 WHERE id = $4 AND version = $5",
        )
        .bind(new_name)
        .bind(&fields_text)
        .bind(now_ms())
        .bind(id.0)
        .bind(old.version)
        .execute(tx.conn().await?)
        .await
        .map_err(|e| name_taken(e, new_name))?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Stale {
                object: format!("blueprint:{id}"),
                token: old.version,
            });
        }
        let bp = tx.blueprint(id).await?;
        tx.commit().await?;
        Ok(bp)
    }

    /// Disable or enable a blueprint (recorded). Returns the blueprint.
    pub async fn set_blueprint_disabled(
        &self,
        author: &str,
        id: BlueprintId,
        disabled: bool,
    ) -> Result<Blueprint> {
        let mut tx = self.begin().await?;
        let old = tx.blueprint(id).await?;
        if old.disabled != disabled {
            query("UPDATE blueprints SET disabled = $1, version = version + 1, modified_at = $2 WHERE id = $3")
                .bind(i64::from(disabled))
                .bind(now_ms())
                .bind(id.0)
                .execute(tx.conn().await?)
                .await?;
            tx.record_edit(
                id,
                author,
                "disabled",
                Some(old.disabled.to_string()),
                Some(disabled.to_string()),
            )
            .await?;
        }
        let bp = tx.blueprint(id).await?;
        tx.commit().await?;
        Ok(bp)
    }

    pub async fn blueprint(&self, id: BlueprintId) -> Result<Blueprint> {
        crate::row::by_id(
            &mut self.reader().await?.raw,
            COLUMNS,
            "blueprints",
            "blueprint",
            id.0,
            from_row,
        )
        .await
    }

    pub async fn blueprint_by_name(&self, name: &str) -> Result<Blueprint> {
        let sql = format!("SELECT {COLUMNS} FROM blueprints WHERE name = $1");
        let row = query(sql)
            .bind(name)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        from_row(&row.ok_or(StoreError::NotFound {
            what: "blueprint",
            id: format!("{name:?}"),
        })?)
    }

    /// Blueprints, by id; optionally only those of one implementation type.
    pub async fn blueprints(&self, kind: Option<&str>) -> Result<Vec<Blueprint>> {
        let sql =
            format!("SELECT {COLUMNS} FROM blueprints WHERE ($1 IS NULL OR type = $1) ORDER BY id");
        let rows = query(sql)
            .bind(kind)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The audit trail of a blueprint, oldest first.
    pub async fn blueprint_edits(&self, id: BlueprintId) -> Result<Vec<BlueprintEdit>> {
        let rows = query(
            "SELECT id, blueprint_id, author, field, old_value, new_value, epoch FROM blueprint_edits \
             WHERE blueprint_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(&mut self.reader().await?.raw)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BlueprintEdit {
                    id: get(r, "id")?,
                    blueprint: BlueprintId(get(r, "blueprint_id")?),
                    author: get(r, "author")?,
                    field: get(r, "field")?,
                    old_value: get(r, "old_value")?,
                    new_value: get(r, "new_value")?,
                    epoch: get(r, "epoch")?,
                })
            })
            .collect()
    }
}
