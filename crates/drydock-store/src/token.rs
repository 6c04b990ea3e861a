//! API tokens. The store keeps a token's name, role, authorizing object and
//! a hash of its secret — never the secret, which its creator sees once.
//! Hashing and generating secrets is the caller's (the server's) job.

use crate::db::{Row, query, query_scalar};
use crate::row::get;
use crate::{Result, Store, StoreError, now_ms};

/// What may be shown about a token: never its hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// `admin`, `client` or `viewer`.
    pub role: String,
    /// The authorizing object its leases are made for (clients).
    pub object: String,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "id, name, role, object, created_by, created_at, revoked_at";

fn from_row(row: &Row) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: get(row, "role")?,
        object: get(row, "object")?,
        created_by: get(row, "created_by")?,
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

impl Store {
    /// Record a token by the hash of its secret.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        object: &str,
        secret_hash: &str,
        by: &str,
    ) -> Result<TokenInfo> {
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(StoreError::invalid(
                "token name",
                "1 to 100 printable characters",
            ));
        }
        let mut tx = self.begin().await?;
        let id: i64 = query_scalar(
            "INSERT INTO api_tokens (name, role, object, secret_hash, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(name)
        .bind(role)
        .bind(object)
        .bind(secret_hash)
        .bind(by)
        .bind(now_ms())
        .fetch_one(tx.conn().await?)
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                StoreError::invalid(
                    "token name",
                    format!("a token named {name:?} already exists"),
                )
            } else {
                e
            }
        })?;
        tx.commit().await?;
        self.token(id).await
    }

    pub async fn token(&self, id: i64) -> Result<TokenInfo> {
        let sql = format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1");
        let row = query(sql)
            .bind(id)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        from_row(&row.ok_or(StoreError::NotFound {
            what: "token",
            id: id.to_string(),
        })?)
    }

    /// The live (not revoked) token whose secret hashes to `secret_hash`.
    pub async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenInfo>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL"
        );
        let row = query(sql)
            .bind(secret_hash)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every token, by id (revoked ones included).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let sql = format!("SELECT {COLUMNS} FROM api_tokens ORDER BY id");
        let rows = query(sql).fetch_all(&mut self.reader().await?.raw).await?;
        rows.iter().map(from_row).collect()
    }

    /// Revoke a token: it stops working at once.
    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo> {
        let mut tx = self.begin().await?;
        let n = query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(id)
            .execute(tx.conn().await?)
            .await?
            .rows_affected();
        tx.commit().await?;
        let t = self.token(id).await?;
        if n == 0 && t.revoked_at.is_none() {
            return Err(StoreError::NotFound {
                what: "token",
                id: id.to_string(),
            });
        }
        Ok(t)
    }
}
