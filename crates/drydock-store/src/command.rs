//! The command queue (the seed, spec §9): how everybody but an object's
//! update worker asks for a change to a lease or resource.
//!
//! Enqueueing inserts the command and wakes the target's update task in one
//! transaction. Only the target's update worker consumes commands, in id
//! order; consuming marks a command consumed exactly once, so a second
//! consume of the same command reports `false` and does nothing.

use crate::db::{Db, Row, query, query_scalar};
use crate::queue::{NewTask, TASK_FOLD_SQL, TASK_INSERT_SQL};
use crate::row::{get, json, to_json};
use crate::{Result, Store, StoreError, Tx, now_ms};
use drydock_model::{CommandId, CommandKind, ObjectKind, ObjectRef};
use serde_json::Value;

/// A stored command.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Command {
    pub id: CommandId,
    pub author: String,
    pub target: ObjectRef,
    pub command: CommandKind,
    pub payload: Value,
    pub consumed: bool,
    pub created_at: i64,
    pub modified_at: i64,
}

const COLUMNS: &str =
    "id, author, target_kind, target_id, command, payload, consumed, created_at, modified_at";

fn from_row(row: &Row) -> Result<Command> {
    let kind: String = get(row, "target_kind")?;
    let command: String = get(row, "command")?;
    Ok(Command {
        id: CommandId(get(row, "id")?),
        author: get(row, "author")?,
        target: ObjectRef {
            kind: ObjectKind::parse(&kind)
                .ok_or_else(|| StoreError::invalid("stored command target", &kind))?,
            id: get(row, "target_id")?,
        },
        command: CommandKind::parse(&command)
            .ok_or_else(|| StoreError::invalid("stored command", &command))?,
        payload: json(row, "payload")?,
        consumed: get::<i64>(row, "consumed")? != 0,
        created_at: get(row, "created_at")?,
        modified_at: get(row, "modified_at")?,
    })
}

/// The command columns of a read that joins a target's unconsumed commands
/// to its own row (`c` is `commands`), each named `command_…`.
pub(crate) const JOINED_COLUMNS: &str = "c.id AS command_id, c.author AS command_author, \
     c.command AS command_kind, c.payload AS command_payload, \
     c.created_at AS command_created_at, c.modified_at AS command_modified_at";

/// The unconsumed command of `target` in a row read with
/// [`JOINED_COLUMNS`], if the row has one (a `LEFT JOIN` without a match
/// has none).
pub(crate) fn joined(row: &Row, target: ObjectRef) -> Result<Option<Command>> {
    let Some(id) = get::<Option<i64>>(row, "command_id")? else {
        return Ok(None);
    };
    let command: String = get(row, "command_kind")?;
    Ok(Some(Command {
        id: CommandId(id),
        author: get(row, "command_author")?,
        target,
        command: CommandKind::parse(&command)
            .ok_or_else(|| StoreError::invalid("stored command", &command))?,
        payload: json(row, "command_payload")?,
        consumed: false,
        created_at: get(row, "command_created_at")?,
        modified_at: get(row, "command_modified_at")?,
    }))
}

async fn pending(db: &mut Db, target: ObjectRef) -> Result<Vec<Command>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM commands WHERE target_kind = $1 AND target_id = $2 AND consumed = 0 ORDER BY id"
    );
    let rows = query(sql)
        .bind(target.kind.as_str())
        .bind(target.id)
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

const CONSUME_SQL: &str =
    "UPDATE commands SET consumed = 1, modified_at = $1 WHERE id = $2 AND consumed = 0";

/// Task priority of an object's pass that has a command to act on: above
/// any lease priority in use.
pub const COMMAND_PRIORITY: i64 = 1 << 40;

fn check_target(command: CommandKind, target: ObjectRef) -> Result<()> {
    if command.valid_for(target.kind) {
        return Ok(());
    }
    Err(StoreError::invalid(
        "command",
        format!("{command} cannot be sent to a {}", target.kind.as_str()),
    ))
}

/// The target's update task, woken by a command sent `now`. Acting on a
/// command (a release frees capacity) goes before the allocator passes of
/// waiting leases, which are queued at their leases' rank: a release never
/// waits behind a crowd of waiters.
fn command_task(target: ObjectRef, now: i64) -> NewTask {
    NewTask::update(target)
        .run_at(now)
        .priority(COMMAND_PRIORITY)
}

/// PostgreSQL: a command and its target's update task in one statement
/// (the task `$1..$7`, the command `$8..$12`, the notification `$13,
/// $14`), answering the command's id. With `only_if` (the target's table
/// and a condition on its status), only while the target (`$10`) meets it;
/// it then also answers the target's status (and no id when refused).
fn enqueue_alone_sql(only_if: Option<(&str, &str)>) -> String {
    let (guard, from_ok, answer) = match only_if {
        Some((table, status_in)) => (
            format!(
                "o AS (SELECT status FROM {table} WHERE id = $10), \
                 ok AS (SELECT 1 FROM o WHERE {status_in}), "
            ),
            " FROM ok",
            "SELECT o.status, (SELECT id FROM c) AS id FROM o",
        ),
        None => (String::new(), "", "SELECT c.id FROM c"),
    };
    format!(
        "WITH {guard}\
         t AS ({TASK_INSERT_SQL} SELECT $1, $2, 'queued', $3, $4, 0, $5, 0, $6, $7{from_ok} {TASK_FOLD_SQL}), \
         c AS (INSERT INTO commands (author, target_kind, target_id, command, payload, consumed, created_at, modified_at) \
           SELECT $8, $9, $10, $11, $12, 0, $7, $7{from_ok} RETURNING id) \
         {answer}"
    )
}

/// The table holding `target`'s status.
fn status_table(target: ObjectRef) -> Result<&'static str> {
    match target.kind {
        ObjectKind::Lease => Ok("leases"),
        ObjectKind::Resource => Ok("resources"),
        ObjectKind::Blueprint => Err(StoreError::invalid(
            "command target",
            "a blueprint has no status to check",
        )),
    }
}

impl Tx {
    /// Insert a command for `target` and wake its update task, in this
    /// transaction.
    pub async fn enqueue_command(
        &mut self,
        author: &str,
        target: ObjectRef,
        command: CommandKind,
        payload: Value,
    ) -> Result<CommandId> {
        check_target(command, target)?;
        let now = now_ms();
        let id: i64 = query_scalar(
            "INSERT INTO commands (author, target_kind, target_id, command, payload, consumed, created_at, modified_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $6) RETURNING id",
        )
        .bind(author)
        .bind(target.kind.as_str())
        .bind(target.id)
        .bind(command.as_str())
        .bind(to_json(&payload))
        .bind(now)
        .fetch_one(self.conn().await?)
        .await?;
        self.schedule(command_task(target, now)).await?;
        Ok(CommandId(id))
    }

    /// Mark a command consumed, without telling whether it already was: a
    /// side write, riding with the transaction's next statement (for the
    /// target's update worker, the only consumer).
    pub async fn mark_consumed(&mut self, id: CommandId) -> Result<()> {
        let q = query(CONSUME_SQL).bind(now_ms()).bind(id.0);
        self.side_write(q).await
    }

    /// Mark a command consumed. `true` if this call consumed it, `false` if
    /// it already was.
    pub async fn consume_command(&mut self, id: CommandId) -> Result<bool> {
        let n = query(CONSUME_SQL)
            .bind(now_ms())
            .bind(id.0)
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Unconsumed commands of `target`, oldest first, read inside this
    /// transaction.
    pub async fn pending_commands(&mut self, target: ObjectRef) -> Result<Vec<Command>> {
        pending(self.conn().await?, target).await
    }
}

impl Store {
    /// PostgreSQL: bind a command sent now and its target's task as
    /// `$1..$12` of [`enqueue_alone_sql`].
    fn bind_command(
        &self,
        q: crate::db::Query,
        author: &str,
        target: ObjectRef,
        command: CommandKind,
        payload: &Value,
    ) -> crate::db::Query {
        let now = now_ms();
        command_task(target, now)
            .bind_to(q, now)
            .bind(author)
            .bind(target.kind.as_str())
            .bind(target.id)
            .bind(command.as_str())
            .bind(to_json(payload))
    }

    /// Enqueue a command in its own transaction (on PostgreSQL one
    /// statement: [`Store::write_alone`]).
    pub async fn enqueue_command(
        &self,
        author: &str,
        target: ObjectRef,
        command: CommandKind,
        payload: Value,
    ) -> Result<CommandId> {
        if self.dialect() == crate::Dialect::Postgres {
            check_target(command, target)?;
            let sql = query(enqueue_alone_sql(None));
            let q = self.bind_command(sql, author, target, command, &payload);
            let rows = self.write_alone(q, |_| true).await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Database("the command was not stored".into()))?;
            return Ok(CommandId(get(row, "id")?));
        }
        let mut tx = self.begin().await?;
        let id = tx.enqueue_command(author, target, command, payload).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Enqueue a command (as [`Store::enqueue_command`]) only while
    /// `target`'s status is one of `statuses`, checked with the write (on
    /// PostgreSQL in the same statement): `Err(status)` when it is not,
    /// and nothing is stored. A target that does not exist is
    /// [`StoreError::NotFound`].
    pub async fn enqueue_command_if(
        &self,
        author: &str,
        target: ObjectRef,
        command: CommandKind,
        payload: Value,
        statuses: &[&'static str],
    ) -> Result<std::result::Result<CommandId, String>> {
        check_target(command, target)?;
        let table = status_table(target)?;
        let status_in = crate::row::status_in(statuses.iter().copied());
        let missing = || StoreError::NotFound {
            what: target.kind.as_str(),
            id: target.id.to_string(),
        };
        if self.dialect() == crate::Dialect::Postgres {
            let sql = query(enqueue_alone_sql(Some((table, &status_in))));
            let q = self.bind_command(sql, author, target, command, &payload);
            // Workers are told only of a command stored.
            let stored = |rows: &[crate::db::Row]| {
                rows.first()
                    .is_some_and(|r| get::<Option<i64>>(r, "id").is_ok_and(|id| id.is_some()))
            };
            let rows = self.write_alone(q, stored).await?;
            let row = rows.first().ok_or_else(missing)?;
            return Ok(match get::<Option<i64>>(row, "id")? {
                Some(id) => Ok(CommandId(id)),
                None => Err(get(row, "status")?),
            });
        }
        let mut tx = self.begin().await?;
        let status: Option<String> =
            query_scalar(format!("SELECT status FROM {table} WHERE id = $1"))
                .bind(target.id)
                .fetch_optional(tx.conn().await?)
                .await?;
        let status = status.ok_or_else(missing)?;
        if !statuses.contains(&status.as_str()) {
            tx.rollback().await?;
            return Ok(Err(status));
        }
        let id = tx.enqueue_command(author, target, command, payload).await?;
        tx.commit().await?;
        Ok(Ok(id))
    }

    /// Unconsumed commands of `target`, oldest first.
    pub async fn pending_commands(&self, target: ObjectRef) -> Result<Vec<Command>> {
        pending(&mut self.reader().await?.raw, target).await
    }

    /// Every command of `target` (consumed or not), oldest first.
    pub async fn commands_for(&self, target: ObjectRef) -> Result<Vec<Command>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE target_kind = $1 AND target_id = $2 ORDER BY id"
        );
        let rows = query(sql)
            .bind(target.kind.as_str())
            .bind(target.id)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Whether `target` has an unconsumed command of this kind ("Releasing").
    pub async fn has_pending_command(
        &self,
        target: ObjectRef,
        command: CommandKind,
    ) -> Result<bool> {
        let n: i64 = query_scalar(
            "SELECT COUNT(*) FROM commands WHERE target_kind = $1 AND target_id = $2 AND consumed = 0 AND command = $3",
        )
        .bind(target.kind.as_str())
        .bind(target.id)
        .bind(command.as_str())
        .fetch_one(&mut self.reader().await?.raw)
        .await?;
        Ok(n > 0)
    }
}
