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
