//! Reading typed values out of rows: JSON columns, statuses and ids, with
//! errors that name the column instead of panicking on bad data.

use crate::StoreError;
use sqlx::Row;
use sqlx::any::AnyRow;

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(StoreError::from)
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &'static str,
) -> Result<T, StoreError> {
    let text: String = get(row, col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::invalid("stored JSON", format!("column {col}: {e}")))
}

pub(crate) fn opt_json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &'static str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = get(row, col)?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::invalid("stored JSON", format!("column {col}: {e}")))
    })
    .transpose()
}

pub(crate) fn parsed<T>(row: &AnyRow, col: &'static str) -> Result<T, StoreError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = get(row, col)?;
    text.parse()
        .map_err(|e| StoreError::invalid("stored value", format!("column {col}: {e}")))
}

pub(crate) fn to_json(v: &impl serde::Serialize) -> String {
    // Serializing plain data (maps, vectors, numbers, strings) cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// `SELECT {columns} FROM {table} WHERE id = $1` on any executor (a
/// transaction's connection or the read pool), mapped by `map`; a missing
/// row is [`StoreError::NotFound`] naming `what`.
pub(crate) async fn by_id<'e, E, T>(
    executor: E,
    columns: &str,
    table: &str,
    what: &'static str,
    id: i64,
    map: fn(&AnyRow) -> Result<T, StoreError>,
) -> Result<T, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {columns} FROM {table} WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(executor)
        .await?;
    map(&row.ok_or(StoreError::NotFound {
        what,
        id: id.to_string(),
    })?)
}

/// `status IN ('a', 'b')` for statuses named by an enum (never input text:
/// the values are pasted into the SQL), or a true condition for none.
pub(crate) fn status_in<'a>(statuses: impl Iterator<Item = &'static str> + 'a) -> String {
    let list: Vec<String> = statuses.map(|s| format!("'{s}'")).collect();
    if list.is_empty() {
        "1 = 1".into()
    } else {
        format!("status IN ({})", list.join(", "))
    }
}

/// A bound value of a dynamically built query.
pub(crate) enum Arg {
    Int(i64),
    Text(String),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

/// A `SELECT` whose conditions depend on the filter: column names come
/// from code, every value is a bound parameter.
pub(crate) struct Select {
    sql: String,
    args: Vec<Arg>,
}

impl Select {
    /// `base` must end inside a `WHERE` clause (conditions are ANDed on).
    pub(crate) fn new(base: String) -> Self {
        Self {
            sql: base,
            args: Vec::new(),
        }
    }

    fn placeholder(&mut self, v: Arg) -> String {
        self.args.push(v);
        format!("${}", self.args.len())
    }

    /// `column IN (...)`; no condition for an empty list.
    pub(crate) fn any_of<T: Into<Arg>>(
        &mut self,
        column: &'static str,
        values: impl Iterator<Item = T>,
    ) {
        let marks: Vec<String> = values.map(|v| self.placeholder(v.into())).collect();
        if !marks.is_empty() {
            self.sql += &format!(" AND {column} IN ({})", marks.join(", "));
        }
    }

    /// `column < value` when a value is given (cursor paging).
    pub(crate) fn below(&mut self, column: &'static str, value: Option<i64>) {
        if let Some(v) = value {
            let m = self.placeholder(Arg::Int(v));
            self.sql += &format!(" AND {column} < {m}");
        }
    }

    /// `column OP value` when a value is given.
    pub(crate) fn compare(&mut self, column: &'static str, op: &'static str, value: Option<i64>) {
        if let Some(v) = value {
            let m = self.placeholder(Arg::Int(v));
            self.sql += &format!(" AND {column} {op} {m}");
        }
    }

    /// `column > value` when a value is given (cursor paging backwards).
    pub(crate) fn above(&mut self, column: &'static str, value: Option<i64>) {
        if let Some(v) = value {
            let m = self.placeholder(Arg::Int(v));
            self.sql += &format!(" AND {column} > {m}");
        }
    }

    /// The query, ordered and limited.
    pub(crate) fn page(
        mut self,
        order: &'static str,
        limit: i64,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let m = self.placeholder(Arg::Int(limit));
        self.sql += &format!(" ORDER BY {order} LIMIT {m}");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for a in self.args {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
            };
        }
        q
    }
}
