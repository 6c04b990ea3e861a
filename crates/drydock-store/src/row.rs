//! Reading typed values out of rows: JSON columns, statuses and ids, with
//! errors that name the column instead of panicking on bad data.

use crate::StoreError;
use crate::db::{Arg, Db, FromCell, Query, Row, query};

pub(crate) fn get<T: FromCell>(row: &Row, col: &'static str) -> Result<T, StoreError> {
    row.get(col)
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(
    row: &Row,
    col: &'static str,
) -> Result<T, StoreError> {
    let text: String = get(row, col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::invalid("stored JSON", format!("column {col}: {e}")))
}

pub(crate) fn opt_json<T: serde::de::DeserializeOwned>(
    row: &Row,
    col: &'static str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = get(row, col)?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::invalid("stored JSON", format!("column {col}: {e}")))
    })
    .transpose()
}

pub(crate) fn parsed<T>(row: &Row, col: &'static str) -> Result<T, StoreError>
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
pub(crate) async fn by_id<T>(
    db: &mut Db,
    columns: &str,
    table: &str,
    what: &'static str,
    id: i64,
    map: fn(&Row) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let sql = format!("SELECT {columns} FROM {table} WHERE id = $1");
    let row = query(sql).bind(id).fetch_optional(db).await?;
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
            let m = self.placeholder(Arg::from(v));
            self.sql += &format!(" AND {column} < {m}");
        }
    }

    /// `column OP value` when a value is given.
    pub(crate) fn compare(&mut self, column: &'static str, op: &'static str, value: Option<i64>) {
        if let Some(v) = value {
            let m = self.placeholder(Arg::from(v));
            self.sql += &format!(" AND {column} {op} {m}");
        }
    }

    /// `column > value` when a value is given (cursor paging backwards).
    pub(crate) fn above(&mut self, column: &'static str, value: Option<i64>) {
        if let Some(v) = value {
            let m = self.placeholder(Arg::from(v));
            self.sql += &format!(" AND {column} > {m}");
        }
    }

    /// The query, ordered and limited.
    pub(crate) fn page(mut self, order: &'static str, limit: i64) -> Query {
        let m = self.placeholder(Arg::from(limit));
        self.sql += &format!(" ORDER BY {order} LIMIT {m}");
        let mut q = query(self.sql);
        for a in self.args {
            q = q.bind(a);
        }
        q
    }
}
