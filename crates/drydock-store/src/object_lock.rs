//! Object locks (`lease:<id>`, `resource:<id>`): expiring leases on a lock
//! row with a strictly increasing **fencing token**.
//!
//! A lock row is never deleted, so its token only grows: every grant after
//! an unlock or an expiry gets a larger token than any before it. Writes
//! made under a lock ([`Tx::save_lease`](crate::Tx::save_lease),
//! [`Tx::save_resource`](crate::Tx::save_resource)) are conditional on the
//! token still being the lock's current one, so a holder that stalled past
//! its expiry and was taken over writes nothing and gets
//! [`StoreError::Stale`].
//!
//! Contention is not an error: [`Store::try_lock`] answers `None`, meaning
//! "try again shortly" (spec §19.1 fixed).

use crate::db::{Db, query, query_scalar};
use crate::row::get;
use crate::{Result, Store, StoreError, Tx, ms, now_ms};
use std::time::Duration;

/// A held object lock. Its token fences every write made under it.
///
/// Opaque: only the store makes one, when it grants the lock (a claim, a
/// `try_lock`); nobody can rebuild one from a read of the lock row
/// ([`LockState`] is what a read gives) and write as its holder. Once it is
/// unlocked its token fences nothing ([`fence_condition`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) token: i64,
    pub(crate) expires_at: i64,
}

impl ObjectLock {
    /// The lock's name (`lease:5`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Who holds it.
    pub fn owner(&self) -> &str {
        &self.owner
    }
    /// Its fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }
    /// When it expires unless renewed (epoch ms, the database's clock).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

/// Who holds a lock, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    pub name: String,
    pub owner: Option<String>,
    pub token: i64,
    pub expires_at: i64,
}

impl LockState {
    pub fn is_held(&self, now: i64) -> bool {
        self.owner.is_some() && self.expires_at >= now
    }
}

impl Store {
    /// Take `name` for `owner` for `ttl` if it is free or its holder's
    /// lease expired. `None` means another live holder has it.
    pub async fn try_lock(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<ObjectLock>> {
        let mut tx = self.begin().await?;
        let lock = tx.try_lock(name, owner, ttl).await?;
        tx.commit().await?;
        Ok(lock)
    }

    /// Extend a held lock. Fails with [`StoreError::Stale`] if it was taken
    /// over (or released) meanwhile.
    pub async fn renew_lock(&self, lock: &mut ObjectLock, ttl: Duration) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.renew_lock(lock, ttl).await?;
        tx.commit().await
    }

    /// Release a lock. Releasing a lock that was already taken over does
    /// nothing to the new holder.
    pub async fn unlock(&self, lock: ObjectLock) -> Result<bool> {
        let mut tx = self.begin().await?;
        let released = tx.unlock(&lock).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// The stored state of a lock, if it was ever taken.
    pub async fn lock_state(&self, name: &str) -> Result<Option<LockState>> {
        let row = query("SELECT name, owner, token, expires_at FROM object_locks WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?;
        row.map(|r| {
            Ok(LockState {
                name: get(&r, "name")?,
                owner: get(&r, "owner")?,
                token: get(&r, "token")?,
                expires_at: get(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    /// Locks held right now (owner set and not expired).
    pub async fn held_locks(&self) -> Result<Vec<LockState>> {
        let rows = query(
            "SELECT name, owner, token, expires_at FROM object_locks WHERE owner IS NOT NULL AND expires_at >= $1 ORDER BY name",
        )
        .bind(now_ms())
        .fetch_all(&mut self.reader().await?.raw)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LockState {
                    name: get(r, "name")?,
                    owner: get(r, "owner")?,
                    token: get(r, "token")?,
                    expires_at: get(r, "expires_at")?,
                })
            })
            .collect()
    }
}

impl Tx {
    /// [`Store::try_lock`] inside this transaction (the task queue takes an
    /// object's lock with the claim of its update task).
    pub async fn try_lock(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<ObjectLock>> {
        let now = now_ms();
        try_lock_on(
            self.conn().await?,
            name,
            owner,
            now,
            now.saturating_add(ms(ttl)),
        )
        .await
    }

    /// [`Store::renew_lock`] inside this transaction.
    pub async fn renew_lock(&mut self, lock: &mut ObjectLock, ttl: Duration) -> Result<()> {
        let expires_at = now_ms().saturating_add(ms(ttl));
        let n = query(
            "UPDATE object_locks SET expires_at = $1 WHERE name = $2 AND token = $3 AND owner = $4",
        )
        .bind(expires_at)
        .bind(&lock.name)
        .bind(lock.token)
        .bind(&lock.owner)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::Stale {
                object: lock.name.clone(),
                token: lock.token,
            });
        }
        lock.expires_at = expires_at;
        Ok(())
    }

    /// [`Store::unlock`] inside this transaction.
    pub async fn unlock(&mut self, lock: &ObjectLock) -> Result<bool> {
        // A lease write put off to the commit is made under this lock: make
        // it now, while its token still fences.
        self.write_unsaved_lease().await?;
        let n = query(
            "UPDATE object_locks SET owner = NULL, expires_at = 0 WHERE name = $1 AND token = $2",
        )
        .bind(&lock.name)
        .bind(lock.token)
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Fail with [`StoreError::Stale`] unless `lock` is still the current
    /// grant of its lock. For writes not covered by a versioned row update.
    pub async fn check_fence(&mut self, lock: &ObjectLock) -> Result<()> {
        let current: Option<i64> =
            query_scalar("SELECT token FROM object_locks WHERE name = $1 AND owner IS NOT NULL")
                .bind(&lock.name)
                .fetch_optional(self.conn().await?)
                .await?;
        if current == Some(lock.token) {
            Ok(())
        } else {
            Err(StoreError::Stale {
                object: lock.name.clone(),
                token: lock.token,
            })
        }
    }
}

/// SQL condition (with placeholders `$a`, `$b` for the lock name and token)
/// that holds while the lock grant is current: not taken over (a later
/// grant has a larger token) and not let go (unlocking clears the owner).
/// A holder whose lock expired but was not taken over still passes: nobody
/// else can have written. Used inside protected UPDATEs.
pub(crate) fn fence_condition(name_param: usize, token_param: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM object_locks l WHERE l.name = ${name_param} AND l.token = ${token_param} \
           AND l.owner IS NOT NULL)"
    )
}

/// The end of an `INSERT INTO object_locks` that takes the lock (`$1` the
/// owner, `$2` its expiry, `$3` now) if it is free or its holder's expired,
/// returning the new fencing token; also part of the queue's claim.
pub(crate) const TAKE_LOCK: &str = "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, \
     token = object_locks.token + 1, expires_at = excluded.expires_at, acquired_at = excluded.acquired_at \
     WHERE object_locks.owner IS NULL OR object_locks.expires_at < $3 RETURNING token";

/// Take `name` for `owner` until `expires_at` if it is free or its holder's
/// expired (at `now`), on a connection inside a transaction.
pub(crate) async fn try_lock_on(
    db: &mut Db,
    name: &str,
    owner: &str,
    now: i64,
    expires_at: i64,
) -> Result<Option<ObjectLock>> {
    let token: Option<i64> = query_scalar(format!(
        "INSERT INTO object_locks (name, owner, token, expires_at, acquired_at) \
         VALUES ($4, $1, 1, $2, $3) {TAKE_LOCK}"
    ))
    .bind(owner)
    .bind(expires_at)
    .bind(now)
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(token.map(|token| ObjectLock {
        name: name.to_owned(),
        owner: owner.to_owned(),
        token,
        expires_at,
    }))
}
