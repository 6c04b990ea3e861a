//! Choosing and connecting a backend from a URL, and running migrations.

use crate::db::{Backend, query_as, query_scalar};
use crate::{Inner, Result, Store, StoreError, pool};
use sqlx::migrate::Migrator;
use std::sync::Arc;
use std::time::Duration;

/// The default database: a SQLite file in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://drydock.db";

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The SQL dialect of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Pick the dialect from a database URL, or say why the URL is unusable.
    pub fn from_url(url: &str) -> Result<Dialect> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            _ => Err(StoreError::InvalidUrl {
                url: redact_url(url),
                reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into(),
            }),
        }
    }

    /// The row-lock clause that skips rows another transaction holds, with
    /// its leading space: PostgreSQL's; SQLite has one writer, so none.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

/// A URL with any password replaced by `***`, safe to print.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo
        .split_once(':')
        .map(|(u, _)| format!("{u}:***"))
        .unwrap_or(userinfo.to_owned());
    // Also strip a password passed as a query parameter.
    let tail = match tail.find("password=") {
        Some(i) => {
            let end = tail[i..].find('&').map(|e| i + e).unwrap_or(tail.len());
            format!("{}password=***{}", &tail[..i], &tail[end..])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

impl Store {
    /// Connect without migrating.
    pub async fn connect(url: &str) -> Result<Store> {
        let dialect = Dialect::from_url(url)?;
        let (write, read) = match dialect {
            Dialect::Sqlite => {
                let url = sqlite_url(url)?;
                // A new database file holds credentials later: create it
                // readable by its owner only (an existing file keeps the
                // mode its owner gave it).
                let path = sqlite_path(&url);
                if !path.is_empty() && !std::path::Path::new(path).exists() {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| {
                            StoreError::Unavailable(format!(
                                "cannot create the database file {path}: {e}"
                            ))
                        })?;
                }
                // One writer connection: writers queue here instead of
                // spinning on SQLite's file lock (sqlx #4166).
                let write = pool::pool(&url, dialect, 1, Duration::from_secs(60))?;
                let read = pool::pool(&url, dialect, 4, Duration::from_secs(60))?;
                // Open the writer now: a bad path or permission is reported
                // here, not at the first query.
                drop(write.get().await.map_err(|e| connect_error(&url, e))?);
                (write, read)
            }
            Dialect::Postgres => {
                // Requests wait at most 5 s for a connection, so an outage
                // is reported while it lasts instead of hanging callers.
                let pool = pool::pool(url, dialect, 8, Duration::from_secs(5))?;
                // Open the first connection now (the pool keeps it): its
                // error says why (refused, unknown database,
                // authentication), at start-up rather than at the first
                // query.
                drop(pool.get().await.map_err(|e| connect_error(url, e))?);
                (pool.clone(), pool)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                dialect,
                write,
                read,
                tasks_ready: tokio::sync::Notify::new(),
                changed: tokio::sync::Notify::new(),
                url: url.to_owned(),
                instance: instance_name(),
                commits_begun: Default::default(),
                commits_done: Default::default(),
                commits_written: Default::default(),
                lease_waiters: Default::default(),
                listener: tokio::sync::OnceCell::new(),
                listen_for: std::sync::atomic::AtomicU8::new(0),
                listen_more: Arc::default(),
                task_channel: Default::default(),
                groups: Default::default(),
                writer_file: crate::writer_file::WriterFile::of(sqlite_path(url)),
            }),
        })
    }

    /// Apply pending migrations of this backend's dialect. Returns how many
    /// were applied.
    pub async fn migrate(&self) -> Result<usize> {
        let migrator = match self.inner.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        // Up to date (every known migration applied, with the same
        // checksum): nothing to run. This is every open but the first, so
        // a CLI call does not pay for the migrator's own connection.
        let known: Vec<(i64, Vec<u8>)> = migrator
            .iter()
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        let applied: Option<Vec<(i64, Vec<u8>)>> = query_as(
            "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&mut self.reader().await?.raw)
        .await
        .ok();
        if applied.as_ref() == Some(&known) {
            return Ok(0);
        }
        let before = applied.map_or(0, |a| a.len());
        // sqlx's migrator keeps the `_sqlx_migrations` record that
        // databases made by earlier versions already have. On SQLite it
        // needs a sqlx connection of its own.
        let ran = match &mut self.inner.write.get().await?.raw.backend {
            Backend::Sqlite(_) => {
                use sqlx::Connection;
                let url = sqlite_url(&self.inner.url)?;
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                let ran = migrator.run(&mut conn).await;
                conn.close().await?;
                ran
            }
            Backend::Postgres(conn) => migrator.run(conn).await,
        };
        ran.map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(self.applied_migrations().await?.saturating_sub(before))
    }

    /// Number of migrations applied to this database.
    pub async fn applied_migrations(&self) -> Result<usize> {
        let n: i64 = query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut self.reader().await?.raw)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Number of migrations this binary knows.
    pub fn known_migrations(&self) -> usize {
        match self.inner.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.iter().count(),
            Dialect::Postgres => POSTGRES_MIGRATIONS.iter().count(),
        }
    }

    /// `(table, column)` pairs of the schema, sorted; used to prove the two
    /// dialects' migrations define the same schema.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String)>> {
        let sql = match self.inner.dialect {
            Dialect::Sqlite => {
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'"
            }
            Dialect::Postgres => {
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
            }
        };
        let mut cols: Vec<(String, String)> = query_as(sql)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        cols.sort();
        Ok(cols)
    }
}

/// A name for one `Store` handle, unique across processes and hosts: a
/// per-process random key and a counter.
fn instance_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{random:016x}.{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The file path of a SQLite URL.
pub(crate) fn sqlite_path(url: &str) -> &str {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or("")
}

fn sqlite_url(url: &str) -> Result<String> {
    let path = sqlite_path(url);
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: "a SQLite database needs a file path, e.g. sqlite://drydock.db (in-memory databases are not shared between connections)".into(),
        });
    }
    if url.contains('?') {
        Ok(url.to_owned())
    } else {
        Ok(format!("{url}?mode=rwc"))
    }
}

/// Why the first connection to `url` failed, as an outage naming the
/// database (its password redacted).
fn connect_error(url: &str, e: impl Into<StoreError>) -> StoreError {
    let reason = match e.into() {
        StoreError::Unavailable(m) | StoreError::Database(m) | StoreError::Busy(m) => m,
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("cannot connect to {}: {reason}", redact_url(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_their_dialect_and_bad_ones_are_named() {
        assert_eq!(Dialect::from_url("sqlite://x.db").unwrap(), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_url("postgres://u@h/db").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(
            Dialect::from_url("postgresql://u@h/db").unwrap(),
            Dialect::Postgres
        );
        let err = Dialect::from_url("mysql://root:hunter2@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mysql://root:***@h/db"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=secret&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert_eq!(redact_url("sqlite://drydock.db"), "sqlite://drydock.db");
    }
}
