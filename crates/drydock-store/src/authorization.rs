//! Authorizations (spec §11): object X may use blueprint B. A request creates
//! a row in state `requested`; an administrator's decision is recorded with
//! who made it and when.

use crate::db::{Row, query, query_scalar};
use crate::row::get;
use crate::{Result, Store, StoreError, now_ms};
use drydock_model::{AuthorizationId, BlueprintId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlueprintAuthState {
    Requested,
    Authorized,
    Declined,
}

impl BlueprintAuthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Authorized => "authorized",
            Self::Declined => "declined",
        }
    }
}

impl std::str::FromStr for BlueprintAuthState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Requested, Self::Authorized, Self::Declined]
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown authorization state {s:?}"))
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Authorization {
    pub id: AuthorizationId,
    pub blueprint: BlueprintId,
    pub object: String,
    pub blueprint_state: BlueprintAuthState,
    /// `active` while the object still asks for the blueprint.
    pub object_active: bool,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub created_at: i64,
    pub modified_at: i64,
}

const COLUMNS: &str = "id, blueprint_id, object, blueprint_state, object_state, decided_by, decided_at, created_at, modified_at";

fn from_row(row: &Row) -> Result<Authorization> {
    Ok(Authorization {
        id: AuthorizationId(get(row, "id")?),
        blueprint: BlueprintId(get(row, "blueprint_id")?),
        object: get(row, "object")?,
        blueprint_state: crate::row::parsed(row, "blueprint_state")?,
        object_active: get::<String>(row, "object_state")? == "active",
        decided_by: get(row, "decided_by")?,
        decided_at: get(row, "decided_at")?,
        created_at: get(row, "created_at")?,
        modified_at: get(row, "modified_at")?,
    })
}

impl Store {
    /// `object` asks to use `blueprint`: creates a `requested` row, or
    /// reactivates an existing one keeping its decision (a decline sticks).
    pub async fn request_authorization(
        &self,
        object: &str,
        blueprint: BlueprintId,
    ) -> Result<Authorization> {
        if object.is_empty() || object.len() > 255 {
            return Err(StoreError::invalid(
                "authorizing object",
                format!("{object:?}"),
            ));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let id: i64 = query_scalar(
            "INSERT INTO authorizations (blueprint_id, object, blueprint_state, object_state, created_at, modified_at) \
             VALUES ($1, $2, 'requested', 'active', $3, $3) \
             ON CONFLICT (object, blueprint_id) DO UPDATE SET object_state = 'active', modified_at = $3 RETURNING id",
        )
        .bind(blueprint.0)
        .bind(object)
        .bind(now)
        .fetch_one(tx.conn().await?)
        .await?;
        tx.commit().await?;
        self.authorization(AuthorizationId(id)).await
    }

    /// Record an administrator's decision.
    pub async fn decide_authorization(
        &self,
        id: AuthorizationId,
        state: BlueprintAuthState,
        by: &str,
    ) -> Result<Authorization> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let n = query(
            "UPDATE authorizations SET blueprint_state = $1, decided_by = $2, decided_at = $3, modified_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(by)
        .bind(now)
        .bind(id.0)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "authorization",
                id: id.to_string(),
            });
        }
        tx.commit().await?;
        self.authorization(id).await
    }

    /// Mark whether the object still asks for the blueprint (spec §11: an
    /// object that stops listing a blueprint keeps the row, so a decision
    /// survives re-adding it).
    pub async fn set_authorization_object_active(
        &self,
        id: AuthorizationId,
        active: bool,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        query("UPDATE authorizations SET object_state = $1, modified_at = $2 WHERE id = $3")
            .bind(if active { "active" } else { "inactive" })
            .bind(now_ms())
            .bind(id.0)
            .execute(tx.conn().await?)
            .await?;
        tx.commit().await
    }

    pub async fn authorization(&self, id: AuthorizationId) -> Result<Authorization> {
        let sql = format!("SELECT {COLUMNS} FROM authorizations WHERE id = $1");
        let row = query(sql)
            .bind(id.0)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        from_row(&row.ok_or(StoreError::NotFound {
            what: "authorization",
            id: id.to_string(),
        })?)
    }

    /// Authorizations, optionally of one blueprint and/or object.
    pub async fn authorizations(
        &self,
        blueprint: Option<BlueprintId>,
        object: Option<&str>,
    ) -> Result<Vec<Authorization>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM authorizations WHERE ($1 IS NULL OR blueprint_id = $1) AND ($2 IS NULL OR object = $2) ORDER BY id"
        );
        let rows = query(sql)
            .bind(blueprint.map(|b| b.0))
            .bind(object)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Whether `object` may use `blueprint` right now.
    pub async fn is_authorized(&self, object: &str, blueprint: BlueprintId) -> Result<bool> {
        let n: i64 = query_scalar(
            "SELECT COUNT(*) FROM authorizations WHERE object = $1 AND blueprint_id = $2 \
             AND blueprint_state = 'authorized' AND object_state = 'active'",
        )
        .bind(object)
        .bind(blueprint.0)
        .fetch_one(&mut self.reader().await?.raw)
        .await?;
        Ok(n > 0)
    }
}
