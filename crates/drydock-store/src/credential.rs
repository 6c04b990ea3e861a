//! Credentials: secrets (SSH private keys) stored apart from blueprint
//! fields. Listing never reads the secret column; the secret itself travels
//! only as a [`SecretString`], whose `Debug` is redacted.

use crate::db::{Row, query, query_scalar};
use crate::row::get;
use crate::{Result, Store, StoreError, now_ms};
use secrecy::SecretString;

/// Largest secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 16 * 1024;

/// What may be shown about a credential: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub created_by: String,
    pub created_at: i64,
}

fn info(row: &Row) -> Result<CredentialInfo> {
    Ok(CredentialInfo {
        id: get(row, "id")?,
        name: get(row, "name")?,
        kind: get(row, "kind")?,
        created_by: get(row, "created_by")?,
        created_at: get(row, "created_at")?,
    })
}

/// Check that `text` looks like an SSH private key, without ever echoing it.
pub fn check_ssh_key(text: &str) -> Result<()> {
    let t = text.trim();
    if t.len() > MAX_SECRET_LEN {
        return Err(StoreError::invalid(
            "SSH private key",
            format!("{} bytes (at most {MAX_SECRET_LEN})", t.len()),
        ));
    }
    let framed =
        t.starts_with("-----BEGIN ") && t.contains("PRIVATE KEY-----") && t.ends_with("-----");
    if !framed {
        return Err(StoreError::invalid(
            "SSH private key",
            "expected a private key file in OpenSSH or PEM format (-----BEGIN ... PRIVATE KEY-----)",
        ));
    }
    Ok(())
}

impl Store {
    /// Store an SSH private key under `name`.
    pub async fn create_ssh_credential(
        &self,
        name: &str,
        key: &SecretString,
        by: &str,
    ) -> Result<CredentialInfo> {
        use secrecy::ExposeSecret;
        if name.trim().is_empty() || name.len() > 255 {
            return Err(StoreError::invalid(
                "credential name",
                format!("{name:?} must be 1 to 255 bytes"),
            ));
        }
        check_ssh_key(key.expose_secret())?;
        let mut tx = self.begin().await?;
        let id: i64 = query_scalar(
            "INSERT INTO credentials (name, kind, secret, created_by, created_at) VALUES ($1, 'ssh-key', $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(format!("{}\n", key.expose_secret().trim()))
        .bind(by)
        .bind(now_ms())
        .fetch_one(tx.conn().await?)
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                StoreError::invalid("credential name", format!("a credential named {name:?} already exists"))
            } else {
                e
            }
        })?;
        tx.commit().await?;
        self.credential(&id.to_string()).await
    }

    /// Credentials, by id (no secrets).
    pub async fn credentials(&self) -> Result<Vec<CredentialInfo>> {
        let rows =
            query("SELECT id, name, kind, created_by, created_at FROM credentials ORDER BY id")
                .fetch_all(&mut self.reader().await?.raw)
                .await?;
        rows.iter().map(info).collect()
    }

    /// A credential by id or name (no secret).
    pub async fn credential(&self, id_or_name: &str) -> Result<CredentialInfo> {
        let id = id_or_name.parse::<i64>().unwrap_or(-1);
        let row = query("SELECT id, name, kind, created_by, created_at FROM credentials WHERE id = $1 OR name = $2")
            .bind(id)
            .bind(id_or_name)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        info(&row.ok_or(StoreError::NotFound {
            what: "credential",
            id: format!("{id_or_name:?}"),
        })?)
    }

    /// The secret of a credential, for the one component that uses it.
    pub async fn credential_secret(&self, id: i64) -> Result<SecretString> {
        let secret: Option<String> = query_scalar("SELECT secret FROM credentials WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        secret.map(SecretString::from).ok_or(StoreError::NotFound {
            what: "credential",
            id: id.to_string(),
        })
    }
}
