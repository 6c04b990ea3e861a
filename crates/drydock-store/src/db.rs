//! The one SQL layer under the store: the same SQL (`$N` placeholders) and
//! the same bound values run on SQLite through rusqlite, on the calling
//! thread, and on PostgreSQL through sqlx.
//!
//! Why not sqlx for SQLite too: sqlx runs every SQLite connection on a thread
//! of its own and ships each statement there and back over channels. On two
//! cores those hand-offs (30–80 µs each, mostly kernel thread switching) were
//! the price of a lease cycle, not SQLite (a prepared statement here runs in
//! a few µs). A SQLite statement here runs where it is awaited; the only
//! wait that can be long — another process holding the write lock — is at
//! `BEGIN IMMEDIATE`, which `Tx` retries with async sleeps instead of
//! blocking the thread (see [`begin_immediate`]).

use crate::{Result, StoreError};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// An open connection of either backend, and the first statement error
/// on it since its transaction began ([`Db::begun`]): a transaction with a
/// failed statement is never committed ([`Db::failure`]), on SQLite (where
/// a failed statement leaves the others in place) as on PostgreSQL (where
/// the server aborts it and answers `COMMIT` with a rollback, not an error).
pub(crate) struct Db {
    pub(crate) backend: Backend,
    failed: Option<Failure>,
}

/// The connection of one backend.
pub(crate) enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
}

/// A statement error that poisoned its transaction.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    message: String,
    temporary: bool,
}

impl Failure {
    /// The error a commit of the poisoned transaction answers: temporary
    /// if the statement's error was.
    pub(crate) fn into_error(self) -> StoreError {
        let message = format!(
            "nothing of the transaction was committed: a statement in it failed: {}",
            self.message
        );
        if self.temporary {
            StoreError::Busy(message)
        } else {
            StoreError::Database(message)
        }
    }
}

impl Db {
    pub(crate) fn sqlite(conn: rusqlite::Connection) -> Db {
        Db {
            backend: Backend::Sqlite(conn),
            failed: None,
        }
    }

    pub(crate) fn postgres(conn: sqlx::PgConnection) -> Db {
        Db {
            backend: Backend::Postgres(conn),
            failed: None,
        }
    }

    /// A transaction begins on this connection: earlier failures are not its.
    pub(crate) fn begun(&mut self) {
        self.failed = None;
    }

    /// The first statement error since the transaction began, if any.
    pub(crate) fn failure(&mut self) -> Option<Failure> {
        self.failed.take()
    }

    /// Remember `result`'s error, if it is the first since the transaction
    /// began.
    fn note<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && self.failed.is_none()
        {
            self.failed = Some(Failure {
                message: e.to_string(),
                temporary: e.is_temporary(),
            });
        }
        result
    }
}

/// A value bound to a `$N` placeholder. Nulls keep their type: PostgreSQL
/// needs it to plan the statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(Option<bool>),
}

/// A value read from a row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    Blob(Vec<u8>),
}

/// One result row: its column names (shared by all rows of a result) and
/// its values.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    names: Arc<[String]>,
    cells: Vec<Cell>,
}

impl Row {
    /// The columns named `{prefix}{name}`, as `name`: the part of a joined
    /// row that another table gave.
    pub(crate) fn part(&self, prefix: &str) -> Row {
        let (names, cells) = self
            .names
            .iter()
            .zip(&self.cells)
            .filter_map(|(n, c)| Some((n.strip_prefix(prefix)?.to_owned(), c.clone())))
            .unzip::<_, _, Vec<String>, Vec<Cell>>();
        Row {
            names: names.into(),
            cells,
        }
    }

    /// The value of column `col`, converted; an error names the column.
    pub(crate) fn get<T: FromCell>(&self, col: &str) -> Result<T> {
        let i = self
            .names
            .iter()
            .position(|n| n == col)
            .ok_or_else(|| StoreError::invalid("query result", format!("no column {col}")))?;
        self.at(i, col)
    }

    fn at<T: FromCell>(&self, i: usize, col: &str) -> Result<T> {
        let cell = self
            .cells
            .get(i)
            .ok_or_else(|| StoreError::invalid("query result", format!("no column {i} ({col})")))?;
        T::from_cell(cell)
            .map_err(|e| StoreError::invalid("stored value", format!("column {col}: {e}")))
    }
}

/// Conversion of a read value into a Rust type.
pub(crate) trait FromCell: Sized {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String>;
}

fn mismatch(want: &str, got: &Cell) -> String {
    let got = match got {
        Cell::Null => "NULL",
        Cell::Int(_) => "an integer",
        Cell::Real(_) => "a real number",
        Cell::Text(_) => "text",
        Cell::Bool(_) => "a boolean",
        Cell::Blob(_) => "a blob",
    };
    format!("expected {want}, found {got}")
}

impl FromCell for i64 {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String> {
        match cell {
            Cell::Int(v) => Ok(*v),
            Cell::Bool(b) => Ok(i64::from(*b)),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl FromCell for bool {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String> {
        match cell {
            Cell::Bool(b) => Ok(*b),
            Cell::Int(v) => Ok(*v != 0),
            other => Err(mismatch("a boolean", other)),
        }
    }
}

impl FromCell for String {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String> {
        match cell {
            Cell::Text(s) => Ok(s.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl FromCell for Vec<u8> {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String> {
        match cell {
            Cell::Blob(b) => Ok(b.clone()),
            Cell::Text(s) => Ok(s.clone().into_bytes()),
            other => Err(mismatch("bytes", other)),
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(cell: &Cell) -> std::result::Result<Self, String> {
        match cell {
            Cell::Null => Ok(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// Conversion of a whole row, by position (tuples of [`FromCell`]).
pub(crate) trait FromRow: Sized {
    fn from_row(row: &Row) -> Result<Self>;
}

macro_rules! tuple_from_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: FromCell),+> FromRow for ($($t,)+) {
            fn from_row(row: &Row) -> Result<Self> {
                Ok(($(row.at::<$t>($i, stringify!($i))?,)+))
            }
        }
    };
}

tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),+ $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(v.map($conv))
            }
        }
    )+};
}
arg_from!(Int: i64 => |v| v);

arg_from!(Bool: bool => |v| v);
arg_from!(Text: String => |v| v, &str => str::to_owned);

impl<T: Clone + Into<Arg>> From<&T> for Arg {
    fn from(v: &T) -> Arg {
        v.clone().into()
    }
}

/// A statement and its bound values.
#[must_use = "a query does nothing until it is executed or fetched"]
pub(crate) struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// `sql`, with values bound by [`Query::bind`] in `$1, $2, ...` order.
pub(crate) fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// `sql` with every `$N` placeholder outside quoted text and identifiers
/// renumbered `$(N + by)`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push('$');
                out.push_str(&(n + by).to_string());
            }
            None => out.push(c),
        }
    }
    out
}

/// What a statement did.
pub(crate) struct Done {
    rows: u64,
}

impl Done {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows
    }
}

impl Query {
    /// PostgreSQL: this statement with `sides` run in it first, as
    /// data-modifying CTEs (`side_0`, `side_1`, ...): writes whose results
    /// nobody reads ride with the next statement instead of costing a round
    /// trip each. They see the statement's snapshot, not each other's
    /// effects, so they must be independent of each other and of it (the
    /// caller's promise). This statement keeps its `$N`; the sides' are
    /// numbered after them.
    pub(crate) fn after(self, sides: Vec<Query>) -> Query {
        if sides.is_empty() {
            return self;
        }
        let mut args = self.args;
        let mut ctes = Vec::with_capacity(sides.len());
        for (i, side) in sides.into_iter().enumerate() {
            ctes.push(format!(
                "side_{i} AS ({})",
                shift_params(&side.sql, args.len())
            ));
            args.extend(side.args);
        }
        let ctes = ctes.join(", ");
        let sql = match self.sql.strip_prefix("WITH ") {
            Some(rest) => format!("WITH {ctes}, {rest}"),
            None => format!("WITH {ctes} {}", self.sql),
        };
        Query {
            sql: sql.into(),
            args,
        }
    }

    pub(crate) fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    pub(crate) async fn execute(self, db: &mut Db) -> Result<Done> {
        let done = match &mut db.backend {
            Backend::Sqlite(conn) => {
                sqlite::execute(conn, &self.sql, &self.args).map_err(Into::into)
            }
            Backend::Postgres(conn) => self.execute_pg(conn).await,
        };
        db.note(done)
    }

    async fn execute_pg(self, conn: &mut sqlx::PgConnection) -> Result<Done> {
        use sqlx::Executor as _;
        let q = sqlx::query_with(sqlx::AssertSqlSafe(self.sql), postgres::args(self.args)?);
        Ok(Done {
            rows: conn.execute(q).await?.rows_affected(),
        })
    }

    /// Every row.
    pub(crate) async fn fetch_all(self, db: &mut Db) -> Result<Vec<Row>> {
        self.fetch(db, usize::MAX).await
    }

    /// The first row, if any.
    pub(crate) async fn fetch_optional(self, db: &mut Db) -> Result<Option<Row>> {
        Ok(self.fetch(db, 1).await?.pop())
    }

    /// The first row; none is an error.
    pub(crate) async fn fetch_one(self, db: &mut Db) -> Result<Row> {
        let sql = self.sql.clone();
        self.fetch_optional(db)
            .await?
            .ok_or_else(|| StoreError::Database(format!("expected a row, got none from: {sql}")))
    }

    async fn fetch(self, db: &mut Db, limit: usize) -> Result<Vec<Row>> {
        let rows = match &mut db.backend {
            Backend::Sqlite(conn) => {
                sqlite::fetch(conn, &self.sql, &self.args, limit).map_err(Into::into)
            }
            Backend::Postgres(conn) => self.fetch_pg(conn, limit).await,
        };
        db.note(rows)
    }

    async fn fetch_pg(self, conn: &mut sqlx::PgConnection, limit: usize) -> Result<Vec<Row>> {
        use sqlx::Executor as _;
        let q = sqlx::query_with(sqlx::AssertSqlSafe(self.sql), postgres::args(self.args)?);
        let mut names = None;
        let rows = if limit == 1 {
            conn.fetch_optional(q).await?.into_iter().collect()
        } else {
            conn.fetch_all(q).await?
        };
        rows.iter().map(|r| postgres::row(r, &mut names)).collect()
    }
}

/// A query whose rows are read as `T` (a tuple of columns, by position).
pub(crate) fn query_as<T: FromRow>(sql: impl Into<Cow<'static, str>>) -> Typed<T> {
    Typed {
        query: query(sql),
        read: T::from_row,
    }
}

/// A query whose rows are read as their first column, a `T`.
pub(crate) fn query_scalar<T: FromCell>(sql: impl Into<Cow<'static, str>>) -> Typed<T> {
    Typed {
        query: query(sql),
        read: |row| row.at(0, "0"),
    }
}

/// A [`Query`] with typed rows (see [`query_as`], [`query_scalar`]).
#[must_use = "a query does nothing until it is executed or fetched"]
pub(crate) struct Typed<T> {
    query: Query,
    read: fn(&Row) -> Result<T>,
}

impl<T> Typed<T> {
    pub(crate) fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub(crate) async fn fetch_all(self, db: &mut Db) -> Result<Vec<T>> {
        let rows = self.query.fetch_all(db).await?;
        rows.iter().map(self.read).collect()
    }

    pub(crate) async fn fetch_optional(self, db: &mut Db) -> Result<Option<T>> {
        let row = self.query.fetch_optional(db).await?;
        row.as_ref().map(self.read).transpose()
    }

    pub(crate) async fn fetch_one(self, db: &mut Db) -> Result<T> {
        let row = self.query.fetch_one(db).await?;
        (self.read)(&row)
    }
}

mod sqlite {
    use super::{Arg, Cell, Done, Row};
    use rusqlite::types::{ToSqlOutput, ValueRef};
    use std::sync::Arc;

    impl rusqlite::ToSql for Arg {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::Borrowed(match self {
                Arg::Int(Some(v)) => ValueRef::Integer(*v),
                Arg::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
                Arg::Bool(Some(v)) => ValueRef::Integer(i64::from(*v)),
                Arg::Int(None) | Arg::Text(None) | Arg::Bool(None) => ValueRef::Null,
            }))
        }
    }

    /// Prepare (cached) and bind: `$N` is bound to `args[N - 1]` wherever
    /// and however often it appears.
    fn prepare<'c>(
        conn: &'c rusqlite::Connection,
        sql: &str,
        args: &[Arg],
    ) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        tracing::debug!(target: "drydock_store::sql", "{sql}");
        let mut stmt = conn.prepare_cached(sql)?;
        for i in 1..=stmt.parameter_count() {
            let n = stmt
                .parameter_name(i)
                .and_then(|name| name.strip_prefix('$'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=args.len()).contains(n))
                .ok_or_else(|| {
                    rusqlite::Error::InvalidParameterName(format!(
                        "parameter {i} of {sql:?}: expected $1..${}",
                        args.len()
                    ))
                })?;
            stmt.raw_bind_parameter(i, &args[n - 1])?;
        }
        Ok(stmt)
    }

    pub(super) fn execute(
        conn: &rusqlite::Connection,
        sql: &str,
        args: &[Arg],
    ) -> rusqlite::Result<Done> {
        let mut stmt = prepare(conn, sql, args)?;
        if stmt.column_count() == 0 {
            let rows = stmt.raw_execute()?;
            return Ok(Done { rows: rows as u64 });
        }
        // A statement with results (RETURNING, a pragma): run it through.
        let mut rows = stmt.raw_query();
        while rows.next()?.is_some() {}
        drop(rows);
        Ok(Done {
            rows: conn.changes(),
        })
    }

    pub(super) fn fetch(
        conn: &rusqlite::Connection,
        sql: &str,
        args: &[Arg],
        limit: usize,
    ) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = prepare(conn, sql, args)?;
        let names: Arc<[String]> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let width = names.len();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let mut cells = Vec::with_capacity(width);
            for i in 0..width {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Real(v),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                });
            }
            out.push(Row {
                names: names.clone(),
                cells,
            });
        }
        Ok(out)
    }
}

mod postgres {
    use super::{Arg, Cell, Row};
    use crate::{Result, StoreError};
    use sqlx::postgres::{PgArguments, PgRow};
    use sqlx::{Arguments as _, Column as _, Row as _, TypeInfo as _, ValueRef as _};
    use std::sync::Arc;

    pub(super) fn args(args: Vec<Arg>) -> Result<PgArguments> {
        let mut out = PgArguments::default();
        for arg in args {
            match arg {
                Arg::Int(v) => out.add(v),
                Arg::Text(v) => out.add(v),
                Arg::Bool(v) => out.add(v),
            }
            .map_err(|e| StoreError::invalid("query argument", e))?;
        }
        Ok(out)
    }

    pub(super) fn row(row: &PgRow, names: &mut Option<Arc<[String]>>) -> Result<Row> {
        let names = names
            .get_or_insert_with(|| row.columns().iter().map(|c| c.name().to_owned()).collect())
            .clone();
        let mut cells = Vec::with_capacity(names.len());
        for (i, col) in row.columns().iter().enumerate() {
            if row.try_get_raw(i)?.is_null() {
                cells.push(Cell::Null);
                continue;
            }
            cells.push(match col.type_info().name() {
                "INT8" => Cell::Int(row.try_get::<i64, _>(i)?),
                "INT4" => Cell::Int(row.try_get::<i32, _>(i)?.into()),
                "INT2" => Cell::Int(row.try_get::<i16, _>(i)?.into()),
                "BOOL" => Cell::Bool(row.try_get(i)?),
                "FLOAT8" => Cell::Real(row.try_get(i)?),
                "FLOAT4" => Cell::Real(row.try_get::<f32, _>(i)?.into()),
                "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => Cell::Text(row.try_get(i)?),
                "BYTEA" => Cell::Blob(row.try_get(i)?),
                "VOID" => Cell::Null,
                other => {
                    return Err(StoreError::invalid(
                        "query result",
                        format!("column {} has unsupported type {other}", col.name()),
                    ));
                }
            });
        }
        Ok(Row { names, cells })
    }
}

/// Commit the open transaction. On PostgreSQL `notices` (`(channel,
/// payload)`, our own names and payloads: letters, digits, `.`, `_` and
/// spaces) follow `COMMIT` in the same message, one round trip: the
/// simple-query protocol runs them in order and stops at the first error,
/// so they are sent only once the transaction has committed — and in a
/// transaction of their own, which writes nothing. In the committing
/// transaction they would hold PostgreSQL's one notification-queue lock
/// until its commit is flushed to disk, so that notifying commits wait
/// for each other's flushes ([`crate::queue::notify_tasks`]).
pub(crate) async fn commit(db: &mut Db, notices: &[(&str, String)]) -> Result<()> {
    match &mut db.backend {
        Backend::Postgres(conn) if !notices.is_empty() => {
            use futures_util::StreamExt as _;
            use sqlx::Executor as _;
            use std::fmt::Write as _;
            fn plain(s: &str) -> bool {
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ' '))
            }
            let mut script = String::from("COMMIT");
            for (channel, payload) in notices {
                if !plain(channel) || !plain(payload) {
                    return Err(StoreError::invalid(
                        "notification",
                        format!("{channel:?} {payload:?} is not a plain name"),
                    ));
                }
                if *channel == crate::queue::NOTIFY_CHANNEL {
                    let _ = write!(script, "; {}", crate::queue::task_notice_sql(payload));
                } else {
                    let _ = write!(script, "; NOTIFY {channel}, '{payload}'");
                }
            }
            let mut answers = conn.fetch_many(sqlx::raw_sql(sqlx::AssertSqlSafe(script)));
            // The first answer is `COMMIT`'s; after it the work is
            // committed, and an error is the notifications' alone (their
            // readers' safety polls find the change).
            match answers.next().await {
                Some(Ok(sqlx::Either::Left(_))) => {}
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(sqlx::Either::Right(_))) | None => {
                    return Err(StoreError::Database("COMMIT gave no answer".into()));
                }
            }
            while let Some(answer) = answers.next().await {
                if let Err(e) = answer {
                    tracing::warn!("notifying after a commit failed: {e}");
                }
            }
            Ok(())
        }
        _ => query("COMMIT").execute(db).await.map(drop),
    }
}

/// Take SQLite's write lock (`BEGIN IMMEDIATE`) without blocking the
/// thread: when another process holds it, sleep and try again (1 ms
/// doubling to 50 ms), for at most `patience`.
pub(crate) async fn begin_immediate(
    conn: &mut rusqlite::Connection,
    patience: Duration,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    conn.busy_timeout(Duration::ZERO)?;
    let begun = loop {
        tracing::debug!(target: "drydock_store::sql", "BEGIN IMMEDIATE");
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) if is_busy(&e) && started.elapsed() < patience => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => break other,
        }
    };
    conn.busy_timeout(crate::pool::SQLITE_BUSY_TIMEOUT)?;
    Ok(begun?)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = crate::pool::open_sqlite(path.to_str().unwrap()).unwrap();
        (dir, Db::sqlite(conn))
    }

    #[test]
    fn placeholders_are_renumbered_outside_quotes_only() {
        assert_eq!(
            shift_params(
                "UPDATE t SET a = $1, b = '$2' WHERE c = $12 AND \"$3\" = $2",
                5
            ),
            "UPDATE t SET a = $6, b = '$2' WHERE c = $17 AND \"$3\" = $7"
        );
        assert_eq!(
            shift_params("SELECT 'it''s $1', $1, $", 1),
            "SELECT 'it''s $1', $2, $"
        );
    }

    #[test]
    fn writes_ride_with_the_next_statement_as_ctes_with_their_values_after_its() {
        let q = query("UPDATE a SET x = $1 WHERE id = $2 RETURNING id")
            .bind(1)
            .bind(2)
            .after(vec![
                query("DELETE FROM b WHERE k = $1").bind("k"),
                query("UPDATE c SET y = $2 WHERE id = $1").bind(3).bind(4),
            ]);
        assert_eq!(
            q.sql,
            "WITH side_0 AS (DELETE FROM b WHERE k = $3), side_1 AS (UPDATE c SET y = $5 WHERE id = $4) \
             UPDATE a SET x = $1 WHERE id = $2 RETURNING id"
        );
        assert_eq!(
            q.args,
            [
                Arg::Int(Some(1)),
                Arg::Int(Some(2)),
                Arg::Text(Some("k".into())),
                Arg::Int(Some(3)),
                Arg::Int(Some(4))
            ]
        );
        // A statement with CTEs of its own keeps them, after the sides.
        let q = query("WITH t AS (UPDATE a SET x = $1 RETURNING 1) SELECT COUNT(*) FROM t")
            .bind(1)
            .after(vec![query("DELETE FROM b WHERE k = $1").bind("k")]);
        assert_eq!(
            q.sql,
            "WITH side_0 AS (DELETE FROM b WHERE k = $2), t AS (UPDATE a SET x = $1 RETURNING 1) SELECT COUNT(*) FROM t"
        );
        let q = query("SELECT 1").after(Vec::new());
        assert_eq!(q.sql, "SELECT 1");
    }

    #[tokio::test]
    async fn placeholders_bind_by_number_wherever_and_however_often_they_appear() {
        let (_dir, mut db) = sqlite();
        query("CREATE TABLE t (a INTEGER, b TEXT, c INTEGER)")
            .execute(&mut db)
            .await
            .unwrap();
        // $2 before $1, $1 twice, a typed null.
        query("INSERT INTO t (b, a, c) VALUES ($2, $1, $1 + $3)")
            .bind(7_i64)
            .bind("seven")
            .bind(None::<i64>)
            .execute(&mut db)
            .await
            .unwrap();
        let row: (i64, String, Option<i64>) = query_as("SELECT a, b, c FROM t")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(row, (7, "seven".to_owned(), None));
        let changed = query("UPDATE t SET c = $1 WHERE b = $2")
            .bind(1_i64)
            .bind("seven")
            .execute(&mut db)
            .await
            .unwrap();
        assert_eq!(changed.rows_affected(), 1);
    }

    #[tokio::test]
    async fn bad_statements_and_values_are_named_in_the_error() {
        let (_dir, mut db) = sqlite();
        let missing = query("SELECT $1 + $2")
            .bind(1_i64)
            .fetch_one(&mut db)
            .await
            .unwrap_err()
            .to_string();
        assert!(missing.contains("$1..$1"), "{missing}");
        let row = query("SELECT 'x' AS name")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let wrong = row.get::<i64>("name").unwrap_err().to_string();
        assert!(
            wrong.contains("column name: expected an integer, found text"),
            "{wrong}"
        );
        let absent = row.get::<String>("other").unwrap_err().to_string();
        assert!(absent.contains("no column other"), "{absent}");
        let none = query_scalar::<i64>("SELECT 1 WHERE 0")
            .fetch_one(&mut db)
            .await
            .unwrap_err()
            .to_string();
        assert!(none.contains("expected a row"), "{none}");
    }

    /// Another connection (another process, in real use) holds the write
    /// lock: `begin_immediate` waits for it with async sleeps, so the
    /// runtime's only thread keeps running other tasks meanwhile (here, the
    /// one that releases the lock), and it gives up with a temporary error
    /// after its patience.
    #[tokio::test(flavor = "current_thread")]
    async fn begin_immediate_waits_for_the_lock_without_blocking_the_thread() {
        let (dir, db) = sqlite();
        let Backend::Sqlite(mut conn) = db.backend else {
            unreachable!()
        };
        let other = crate::pool::open_sqlite(dir.path().join("t.db").to_str().unwrap()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();

        let err = begin_immediate(&mut conn, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_temporary(), "{err}");

        // Release the other writer from a task on this same thread: that
        // can only happen if the waiting BEGIN yields the thread.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let releaser = tokio::spawn(async move {
            tokio::task::yield_now().await;
            other.execute_batch("COMMIT").unwrap();
            let _ = tx.send(());
        });
        // A BEGIN that blocked the thread in SQLite's own lock wait (30 s)
        // would keep the releaser from running until it gave up.
        tokio::time::timeout(
            Duration::from_secs(10),
            begin_immediate(&mut conn, Duration::from_secs(60)),
        )
        .await
        .expect("BEGIN waited without letting the lock holder finish")
        .unwrap();
        rx.await.unwrap();
        releaser.await.unwrap();
        assert!(!conn.is_autocommit(), "inside the transaction it began");
        conn.execute_batch("ROLLBACK").unwrap();
    }
}
