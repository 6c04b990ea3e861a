//! Slot locks (spec §4.5): named slots owned by a lease or resource until it
//! is destroyed. Taking a set of keys is all-or-nothing inside the caller's
//! transaction; a conflict takes nothing and says who holds what.
//!
//! `INSERT … ON CONFLICT DO NOTHING` is used instead of letting the unique
//! key fail, so a conflict does not abort a PostgreSQL transaction; under
//! concurrency PostgreSQL makes the second inserter wait for the first to
//! commit or roll back, so a key never has two owners.

use crate::db::{query, query_as, query_scalar};
use crate::{Result, SlotConflict, Store, StoreError, Tx, now_ms};
use std::collections::BTreeMap;

/// Longest slot-lock key accepted.
pub const MAX_KEY_LEN: usize = 512;

impl Tx {
    /// Take every key in `keys` for `owner`, or none of them. Keys the owner
    /// already holds count as taken.
    pub async fn acquire_slot_locks(&mut self, owner: &str, keys: &[String]) -> Result<()> {
        if let Some(k) = keys.iter().find(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
            return Err(StoreError::invalid(
                "slot lock key",
                format!("{} bytes (1 to {MAX_KEY_LEN} allowed)", k.len()),
            ));
        }
        // One order for everybody: two transactions taking overlapping sets
        // must not wait on each other in a cycle (PostgreSQL deadlock).
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let now = now_ms();
        let mut inserted = Vec::new();
        let mut conflicted = Vec::new();
        for key in keys {
            let n = query("INSERT INTO slot_locks (lock_key, owner, created_at) VALUES ($1, $2, $3) ON CONFLICT (lock_key) DO NOTHING")
                .bind(key)
                .bind(owner)
                .bind(now)
                .execute(self.conn().await?)
                .await?
                .rows_affected();
            if n == 1 {
                inserted.push(key)
            } else {
                conflicted.push(key)
            }
        }
        let mut held = BTreeMap::new();
        for key in conflicted {
            let holder: Option<String> =
                query_scalar("SELECT owner FROM slot_locks WHERE lock_key = $1")
                    .bind(key)
                    .fetch_optional(self.conn().await?)
                    .await?;
            match holder {
                Some(h) if h == owner => {}
                Some(h) => {
                    held.insert(key.to_string(), h);
                }
                // Freed between our insert and this read: report it as held
                // (by nobody now); the caller retries shortly.
                None => {
                    held.insert(key.to_string(), "(just released)".to_owned());
                }
            }
        }
        if held.is_empty() {
            return Ok(());
        }
        for key in inserted {
            query("DELETE FROM slot_locks WHERE lock_key = $1 AND owner = $2")
                .bind(key)
                .bind(owner)
                .execute(self.conn().await?)
                .await?;
        }
        Err(StoreError::SlotLocked(SlotConflict { held }))
    }

    /// Release every slot lock of `owner`. Returns how many were released.
    /// Release every slot lock `owner` holds, without counting them: a
    /// side write, riding with the transaction's next statement.
    pub async fn free_slot_locks(&mut self, owner: &str) -> Result<()> {
        self.side_write(query("DELETE FROM slot_locks WHERE owner = $1").bind(owner))
            .await
    }

    pub async fn release_slot_locks(&mut self, owner: &str) -> Result<u64> {
        Ok(query("DELETE FROM slot_locks WHERE owner = $1")
            .bind(owner)
            .execute(self.conn().await?)
            .await?
            .rows_affected())
    }
}

impl Store {
    /// Take slot locks in a transaction of their own.
    pub async fn acquire_slot_locks(&self, owner: &str, keys: &[String]) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.acquire_slot_locks(owner, keys).await?;
        tx.commit().await
    }

    pub async fn release_slot_locks(&self, owner: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = tx.release_slot_locks(owner).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Current holders of the given keys (advisory: may change right after).
    pub async fn slot_lock_holders(&self, keys: &[String]) -> Result<BTreeMap<String, String>> {
        let mut held = BTreeMap::new();
        for key in keys {
            let holder: Option<String> =
                query_scalar("SELECT owner FROM slot_locks WHERE lock_key = $1")
                    .bind(key)
                    .fetch_optional(&mut self.reader().await?.raw)
                    .await?;
            if let Some(h) = holder {
                held.insert(key.to_string(), h);
            }
        }
        Ok(held)
    }

    /// Every slot lock of `owner`.
    pub async fn slot_locks_of(&self, owner: &str) -> Result<Vec<String>> {
        query_scalar("SELECT lock_key FROM slot_locks WHERE owner = $1 ORDER BY lock_key")
            .bind(owner)
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }

    /// Every slot lock: `(key, owner)`, ordered by key.
    pub async fn all_slot_locks(&self) -> Result<Vec<(String, String)>> {
        query_as("SELECT lock_key, owner FROM slot_locks ORDER BY lock_key")
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }
}

impl Store {
    /// Slot-lock keys that start with `prefix` (e.g. a blueprint's limit slots).
    pub async fn slot_keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        query_scalar(
            "SELECT lock_key FROM slot_locks WHERE lock_key LIKE $1 ESCAPE '\\' ORDER BY lock_key",
        )
        .bind(pattern)
        .fetch_all(&mut self.reader().await?.raw)
        .await
    }
}
