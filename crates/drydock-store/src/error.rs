//! The store's error type: driver errors are mapped here, at the boundary, so
//! callers match on meaning (busy, stale, not found) rather than on a driver's error.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The database cannot be reached right now (connection refused, pool
    /// timed out, server restarting). Temporary.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    /// Contention or a serialization failure. Temporary: try again shortly.
    #[error("database busy: {0}")]
    Busy(String),

    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },

    /// A conditional write matched nothing: the row changed since it was
    /// read, or the writer's object lock was taken over. The write did not
    /// happen.
    #[error(
        "stale write to {object}: it changed since it was read, or the lock held as token {token} was taken over"
    )]
    Stale { object: String, token: i64 },

    /// A claimed task was taken over (its claim expired) or already finished.
    #[error("task {task} is no longer claimed with token {token}")]
    LostClaim { task: i64, token: i64 },

    #[error("{0}")]
    SlotLocked(SlotConflict),

    /// Bad input or data that the store refuses to write or cannot read.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("migration failed: {0}")]
    Migrate(String),

    #[error("database error: {0}")]
    Database(String),

    /// A unique constraint refused the write (the message names it).
    #[error("database error: {0}")]
    UniqueViolation(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Busy(_) | Self::SlotLocked(_)
        )
    }

    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, Self::UniqueViolation(_))
    }

    pub(crate) fn invalid(what: &'static str, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::failed(Self::classify(e))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let ext = match &e {
            rusqlite::Error::SqliteFailure(f, _) => f.extended_code,
            _ => 0,
        };
        Self::failed(match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => StoreError::Busy(e.to_string()),
            // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE.
            Some(C::ConstraintViolation) if ext == 1555 || ext == 2067 => {
                StoreError::UniqueViolation(e.to_string())
            }
            Some(C::CannotOpen | C::NotADatabase | C::SystemIoFailure | C::DiskFull) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        })
    }
}

impl StoreError {
    /// A connection failure makes every pooled connection be checked
    /// before its next use.
    fn failed(mapped: Self) -> Self {
        if matches!(mapped, StoreError::Unavailable(_)) {
            crate::pool::connection_failed();
        }
        mapped
    }

    fn classify(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => StoreError::Unavailable(
                "no database connection in time: the database is down, restarting or overloaded"
                    .into(),
            ),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    // unique_violation.
                    "23505" => StoreError::UniqueViolation(e.to_string()),
                    // serialization_failure, deadlock_detected, lock_not_available.
                    "40001" | "40P01" | "55P03" => StoreError::Busy(e.to_string()),
                    // admin_shutdown, crash_shutdown, cannot_connect_now.
                    "57P01" | "57P02" | "57P03" => StoreError::Unavailable(e.to_string()),
                    _ => StoreError::Database(e.to_string()),
                }
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// Slot locks that could not be taken because other owners hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConflict {
    /// lock key -> current owner
    pub held: BTreeMap<String, String>,
}

impl fmt::Display for SlotConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("slot locks held by others: ")?;
        for (i, (k, o)) in self.held.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k} (held by {o})")?;
        }
        Ok(())
    }
}
