//! The durable task queue (spec §17, without its weaknesses).
//!
//! - **schedule**, optionally at a future time that is really honoured;
//!   inside the caller's transaction ([`Tx::schedule`]), so a state change
//!   and the work it causes commit together;
//! - **at most one queued task per object**: scheduling an object that
//!   already has a queued task coalesces into it (earliest `run_at`, highest
//!   priority win). A partial unique index enforces it;
//! - **claim** with an expiring claim and a fencing token; a crashed worker's
//!   task is claimed again after expiry; tasks of an object whose task is
//!   already running are not claimed (one pass per object at a time);
//! - **heartbeat** extends a claim during long work;
//! - outcomes: done, **yield** (run again later, not a failure), **retry**
//!   (a temporary failure, exponential backoff, bounded attempts), **fail**
//!   (permanent, reason recorded);
//! - **awaken** makes waiting tasks runnable now;
//! - workers learn of new work from an in-process [`Notify`] and, on
//!   PostgreSQL, `LISTEN/NOTIFY`; polling is only a fallback.
//!
//! [`Notify`]: tokio::sync::Notify

use crate::db::{Db, Row, query, query_as, query_scalar};
use crate::lease::Lease;
use crate::object_lock::{ObjectLock, TAKE_LOCK};
use crate::row::{get, json, to_json};
use crate::{Dialect, Result, Store, StoreError, Tx, ms, now_ms};
use drydock_model::{LeaseId, ObjectRef, TaskId};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Attempts before a task that keeps failing temporarily fails for good.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 8;
/// The channel used for `NOTIFY` on PostgreSQL.
pub const NOTIFY_CHANNEL: &str = "drydock_tasks";
/// PostgreSQL channel notified when a transaction changed a lease, so
/// readers in other processes (an API server's long-poll) see it at once.
pub const CHANGES_CHANNEL: &str = "drydock_changes";

/// What a process listens to (PostgreSQL): task notifications
/// ([`NOTIFY_CHANNEL`]) ...
const LISTEN_TASKS: u8 = 1;
/// ... and lease changes ([`CHANGES_CHANNEL`]) ...
const LISTEN_CHANGES: u8 = 2;
/// ... and, in a daemon, the task notifications routed to it
/// ([`Store::serve_tasks_as`]).
const LISTEN_OWN: u8 = 4;

/// A daemon counts as a destination for task notifications while its
/// heartbeat is this fresh (it beats every 2 s). One that is not is sent
/// nothing (its workers find work by their poll) unless no daemon is
/// fresh: then every notification is broadcast.
const ROUTE_FRESH_MS: i64 = 5_000;

/// PostgreSQL: the channel a task notification goes to, as an SQL
/// expression around `broadcast` (the broadcast channel's name, a
/// parameter or literal): one daemon that beat within
/// [`ROUTE_FRESH_MS`], chosen at random (its own channel,
/// `drydock_tasks_` and the MD5 of its id), or the broadcast channel when
/// there is none. Every notification woke every daemon's listener, each
/// sending an idle worker to claim: with 4 daemons, 3 empty claims (and
/// due-time reads) per notification and 3 processes woken for nothing.
/// A notification routed to a daemon that died in the last seconds is
/// lost: its task waits for a worker's poll (1 s) or next claim.
pub(crate) fn task_channel_sql(broadcast: &str) -> String {
    format!(
        "COALESCE((SELECT {} FROM daemons d \
           WHERE d.stopped_at IS NULL \
             AND d.heartbeat_at > CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) - {ROUTE_FRESH_MS} \
           ORDER BY random() LIMIT 1), {broadcast})",
        daemon_channel_sql("d.id")
    )
}

/// Most idle workers one commit wakes, here and (PostgreSQL) elsewhere.
pub(crate) const MAX_WAKES: usize = 16;

/// PostgreSQL: tell the workers of work committed on `db`, in a
/// transaction of its own, after that commit. Not in the transaction that
/// made the work: a transaction that notifies holds PostgreSQL's one
/// notification-queue lock from its commit until it is durable, so every
/// notifying commit waits for the one before it to be flushed to disk. On
/// this machine (`pgbench`, 8 clients) a one-row `INSERT` that notifies in
/// its own statement commits 4,250 times/s; followed by the notification
/// as a statement of its own, 9,600 times/s; without one, 13,000. A
/// notification sent alone writes nothing, so it waits for no flush.
pub(crate) async fn notify_tasks(db: &mut crate::db::Db, payload: &str) -> Result<()> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT pg_notify({}, $2)", task_channel_sql("$1")));
    query(SQL.as_str())
        .bind(NOTIFY_CHANNEL)
        .bind(payload)
        .execute(db)
        .await
        .map(drop)
}

/// PostgreSQL: the statement notifying the workers (routed) with `payload`
/// — our own instance name and a number — as the commit's message sends it.
pub(crate) fn task_notice_sql(payload: &str) -> String {
    static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT pg_notify({}, ",
            task_channel_sql(&format!("'{NOTIFY_CHANNEL}'"))
        )
    });
    format!("{}'{payload}')", PREFIX.as_str())
}

/// PostgreSQL: the channel of the daemon whose id is `id` (an SQL
/// expression): ids are free text, channel names short identifiers.
fn daemon_channel_sql(id: &str) -> String {
    format!("'{NOTIFY_CHANNEL}_' || md5({id})")
}

/// A task to schedule.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub kind: String,
    /// Tasks with the same key coalesce while queued and never run at once.
    pub object_key: Option<String>,
    pub payload: Value,
    /// Epoch ms before which the task does not run.
    pub run_at: i64,
    /// Higher runs first.
    pub priority: i64,
    pub max_attempts: i64,
}

/// The head of [`SCHEDULE_SQL`]: the columns a task's values go to.
pub(crate) const TASK_INSERT_SQL: &str = "INSERT INTO tasks (kind, object_key, state, priority, run_at, \
     attempts, max_attempts, claim_token, payload, created_at)";

/// The tail of [`SCHEDULE_SQL`]: a task for an object already queued is
/// folded into that one (the earlier `run_at` and the higher priority of
/// the two).
pub(crate) const TASK_FOLD_SQL: &str = "ON CONFLICT (object_key) WHERE state = 'queued' DO UPDATE SET \
     run_at = CASE WHEN excluded.run_at < tasks.run_at THEN excluded.run_at ELSE tasks.run_at END, \
     priority = CASE WHEN excluded.priority > tasks.priority THEN excluded.priority ELSE tasks.priority END";

/// Insert a queued task, or fold it into its object's queued task, and
/// answer its id: `$1..$7` bound by [`NewTask::bind_to`].
static SCHEDULE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{TASK_INSERT_SQL} VALUES ($1, $2, 'queued', $3, $4, 0, $5, 0, $6, $7) {TASK_FOLD_SQL} RETURNING id"
    )
});

impl NewTask {
    /// Bind this task as `$1..$7` of [`SCHEDULE_SQL`], created `now`.
    pub(crate) fn bind_to(&self, q: crate::db::Query, now: i64) -> crate::db::Query {
        q.bind(&self.kind)
            .bind(&self.object_key)
            .bind(self.priority)
            .bind(self.run_at)
            .bind(self.max_attempts)
            .bind(to_json(&self.payload))
            .bind(now)
    }

    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            object_key: None,
            payload: Value::Object(Default::default()),
            run_at: 0,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The update task of an object.
    pub fn update(object: ObjectRef) -> Self {
        Self::new(object.update_task_kind()).object(object.key())
    }

    pub fn object(mut self, key: impl Into<String>) -> Self {
        self.object_key = Some(key.into());
        self
    }

    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    pub fn run_at(mut self, epoch_ms: i64) -> Self {
        self.run_at = epoch_ms;
        self
    }

    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, n: i64) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Claimed,
    Done,
    Failed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Claimed => "claimed",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Queued, Self::Claimed, Self::Done, Self::Failed]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// A stored task.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: TaskId,
    pub kind: String,
    pub object_key: Option<String>,
    pub state: TaskState,
    pub priority: i64,
    pub run_at: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub claim_owner: Option<String>,
    pub claim_expires_at: Option<i64>,
    pub claim_token: i64,
    pub payload: Value,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// A task claimed by a worker. Every later write about it is conditional on
/// `token`: a worker whose claim was taken over cannot complete it.
#[derive(Clone, Debug)]
pub struct ClaimedTask {
    pub id: TaskId,
    pub kind: String,
    pub object_key: Option<String>,
    pub payload: Value,
    /// Failures so far (temporary failures and crashed runs).
    pub attempts: i64,
    /// Failures after which the queue fails the task for good: a handler
    /// that gives up itself (breaking its object) does so no later.
    pub max_attempts: i64,
    pub token: i64,
    pub owner: String,
    /// The lock of the task's object (named by `object_key`), taken with
    /// the claim when it was free: renewed by the claim's heartbeat and
    /// released when the task completes, in the same transactions. `None`
    /// when another holder had it (or the task has no object).
    pub lock: Option<ObjectLock>,
}

/// How a claimed task ends, as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    Done,
    /// Back to the queue until `run_at`. `failure` counts towards the
    /// attempt limit (a temporary failure) and is recorded; `None` is a
    /// yield or a hand-back and counts nothing.
    Requeue {
        run_at: i64,
        failure: Option<String>,
    },
    /// Permanent failure, with its reason.
    Fail(String),
}

const TASK_COLUMNS: &str = "id, kind, object_key, state, priority, run_at, attempts, max_attempts, claim_owner, \
     claim_expires_at, claim_token, payload, last_error, created_at, finished_at";

fn task_from_row(row: &Row) -> Result<Task> {
    Ok(Task {
        id: TaskId(get(row, "id")?),
        kind: get(row, "kind")?,
        object_key: get(row, "object_key")?,
        state: crate::row::parsed(row, "state")?,
        priority: get(row, "priority")?,
        run_at: get(row, "run_at")?,
        attempts: get(row, "attempts")?,
        max_attempts: get(row, "max_attempts")?,
        claim_owner: get(row, "claim_owner")?,
        claim_expires_at: get(row, "claim_expires_at")?,
        claim_token: get(row, "claim_token")?,
        payload: json(row, "payload")?,
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
        finished_at: get(row, "finished_at")?,
    })
}

impl Tx {
    /// Schedule a task in this transaction. If the object already has a
    /// queued task, that one is kept (with the earlier `run_at` and higher
    /// priority of the two) and its id returned.
    pub async fn schedule(&mut self, task: NewTask) -> Result<TaskId> {
        let q = task.bind_to(query(SCHEDULE_SQL.as_str()), now_ms());
        let id: i64 = get(&q.fetch_one(self.conn().await?).await?, "id")?;
        self.notify_workers();
        Ok(TaskId(id))
    }

    /// Make the given queued tasks runnable now (spec §17.5, but reliable: it
    /// works for any queued task, whatever its history).
    pub async fn awaken(&mut self, ids: &[TaskId]) -> Result<u64> {
        let now = now_ms();
        let mut n = 0;
        for id in ids {
            n += query(
                "UPDATE tasks SET run_at = $1 WHERE id = $2 AND state = 'queued' AND run_at > $1",
            )
            .bind(now)
            .bind(id.0)
            .execute(self.conn().await?)
            .await?
            .rows_affected();
        }
        if n > 0 {
            self.notify_workers();
        }
        Ok(n)
    }

    /// Wake the object's update worker now: schedules its update task, or
    /// moves an already queued one to now.
    pub async fn wake(&mut self, object: ObjectRef) -> Result<TaskId> {
        self.schedule(NewTask::update(object).run_at(now_ms()))
            .await
    }

    /// Record that a lease was written, as `saved`: its waiters here are
    /// woken when this transaction commits (and given it), and
    /// (PostgreSQL; on SQLite they watch `data_version`) other processes'
    /// are told in it, once per lease.
    pub(crate) fn lease_changed(&mut self, saved: &Lease) {
        if let Some(seen) = self.changed_leases.iter_mut().find(|l| l.id == saved.id) {
            *seen = saved.clone();
            return;
        }
        self.changed_leases.push(saved.clone());
        if self.dialect() == Dialect::Postgres {
            let payload = format!("{} {}", self.store.inner.instance, saved.id.0);
            self.notices.push((CHANGES_CHANNEL, payload));
        }
    }

    /// A task was made runnable: when this transaction commits, one idle
    /// worker is woken for it — here, and on PostgreSQL by a notification
    /// of its own (routed to a daemon of its own: see
    /// [`task_channel_sql`]), up to [`MAX_WAKES`] per transaction.
    fn notify_workers(&mut self) {
        self.tasks_made += 1;
        if self.dialect() == Dialect::Postgres && self.tasks_made <= MAX_WAKES {
            // Told apart by their number: PostgreSQL delivers a
            // transaction's identical notifications once.
            let payload = format!("{} {}", self.store.inner.instance, self.tasks_made);
            self.notices.push((NOTIFY_CHANNEL, payload));
        }
    }
}

impl Store {
    /// PostgreSQL: run `q`, one statement whose data-modifying parts (CTEs)
    /// make work for the workers, as a transaction of its own: no `BEGIN`
    /// and `COMMIT` round trips. Then, if `made_work` says so of its rows,
    /// tell the workers ([`notify_tasks`]) and wake one idle worker here,
    /// as a commit that scheduled work does.
    pub(crate) async fn write_alone(
        &self,
        q: crate::db::Query,
        made_work: impl FnOnce(&[Row]) -> bool,
    ) -> Result<Vec<Row>> {
        debug_assert_eq!(self.dialect(), Dialect::Postgres);
        let mut conn = self.inner.write.get().await?;
        let rows = q.fetch_all(&mut conn.raw).await?;
        self.count_autocommit();
        if made_work(&rows) {
            if let Err(e) = notify_tasks(&mut conn.raw, self.notice_payload()).await {
                // Committed all the same: the workers' poll finds it.
                tracing::warn!("telling the workers of new work failed: {e}");
            }
            self.inner.tasks_ready.notify_one();
        }
        Ok(rows)
    }

    /// What this process's notifications carry (its listener skips them).
    pub(crate) fn notice_payload(&self) -> &str {
        &self.inner.instance
    }

    /// Schedule a task in its own transaction.
    pub async fn schedule(&self, task: NewTask) -> Result<TaskId> {
        let mut tx = self.begin().await?;
        let id = tx.schedule(task).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn awaken(&self, ids: &[TaskId]) -> Result<u64> {
        let mut tx = self.begin().await?;
        let n = tx.awaken(ids).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Claim the most urgent runnable task for `owner` for `ttl`.
    ///
    /// Runnable: queued with `run_at` passed, or claimed by a worker whose
    /// claim expired (that run counts as a failed attempt). A task whose
    /// object already has a task running under a live claim waits.
    pub async fn claim(&self, owner: &str, ttl: Duration) -> Result<Option<ClaimedTask>> {
        loop {
            match self.claim_once(owner, ttl).await? {
                Claimed::Nothing => return Ok(None),
                // Given up on (its workers kept dying): look again.
                Claimed::Exhausted => {}
                Claimed::Task { task, more } => {
                    if more {
                        self.more_tasks_maybe();
                    }
                    return Ok(Some(task));
                }
            }
        }
    }

    /// One claim, committed. On PostgreSQL the claim is one statement, run
    /// without `BEGIN` and `COMMIT` around it.
    async fn claim_once(&self, owner: &str, ttl: Duration) -> Result<Claimed> {
        if self.dialect() == Dialect::Postgres {
            let mut conn = self.inner.write.get().await?;
            let claimed = claim_on(&mut conn.raw, Dialect::Postgres, owner, ttl).await?;
            if matches!(claimed, Claimed::Task { .. }) {
                self.count_autocommit();
            }
            return Ok(claimed);
        }
        let mut tx = self.begin().await?;
        let claimed = claim_in(&mut tx, owner, ttl).await?;
        match claimed {
            Claimed::Nothing => tx.rollback().await?,
            _ => tx.commit().await?,
        }
        Ok(claimed)
    }

    /// Extend a claim, and the object lock taken with it. Fails with
    /// [`StoreError::LostClaim`] if the claim was taken over or the task
    /// finished, or the lock was taken over.
    pub async fn heartbeat(&self, task: &ClaimedTask, ttl: Duration) -> Result<()> {
        let mut tx = self.begin().await?;
        let n = query(
            "UPDATE tasks SET claim_expires_at = $1 WHERE id = $2 AND claim_token = $3 AND state = 'claimed'",
        )
        .bind(now_ms().saturating_add(ms(ttl)))
        .bind(task.id.0)
        .bind(task.token)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
        let lock_held = match &task.lock {
            Some(lock) => tx.renew_lock(&mut lock.clone(), ttl).await.is_ok(),
            None => true,
        };
        tx.commit().await?;
        if n == 0 || !lock_held {
            Err(lost(task))
        } else {
            Ok(())
        }
    }

    /// Record how a claimed task ended. Conditional on the claim token.
    pub async fn complete(&self, task: &ClaimedTask, completion: Completion) -> Result<()> {
        self.complete_then(task, completion, None, None)
            .await
            .map(|_| ())
    }

    /// Record how a claimed task ended and, with `claim_next` (the worker's
    /// name and claim expiry), claim the next runnable task in the same
    /// transaction: a busy worker goes from task to task with one commit
    /// between them instead of two; finding none, it says when the next
    /// task is due. `tail`, the handler's last write, commits with it.
    pub(crate) async fn complete_then(
        &self,
        task: &ClaimedTask,
        completion: Completion,
        claim_next: Option<(&str, Duration)>,
        tail: Option<Tx>,
    ) -> Result<AfterTask> {
        match tail {
            // Done and failed tasks leave the queue without any race: the
            // tail joins the completion.
            Some(tx) if !matches!(completion, Completion::Requeue { .. }) => {
                return self
                    .try_complete(task, &completion, claim_next, Some(tx))
                    .await;
            }
            Some(tx) => tx.commit().await?,
            None => {}
        }
        // A requeue can race with someone scheduling the same object (the
        // partial unique index then refuses the second queued row); the
        // second round sees the other row and merges into it.
        for _ in 0..3 {
            match self.try_complete(task, &completion, claim_next, None).await {
                Err(e) if e.is_unique_violation() => continue,
                other => return other,
            }
        }
        Err(StoreError::Busy(format!(
            "task {} kept racing with new schedules of its object",
            task.id
        )))
    }

    async fn try_complete(
        &self,
        task: &ClaimedTask,
        completion: &Completion,
        claim_next: Option<(&str, Duration)>,
        tail: Option<Tx>,
    ) -> Result<AfterTask> {
        let now = now_ms();
        let mut tx = match tail {
            Some(tx) => tx,
            None => self.begin().await?,
        };
        let n = match completion {
            Completion::Done => {
                set_state(&mut tx, task, "done", Some(now), None, task.attempts, now).await?
            }
            Completion::Fail(reason) => {
                set_state(
                    &mut tx,
                    task,
                    "failed",
                    Some(now),
                    Some(reason),
                    task.attempts,
                    now,
                )
                .await?
            }
            Completion::Requeue { run_at, failure } => {
                let inc = i64::from(failure.is_some());
                let row: Option<(i64, i64)> =
                    query_as("SELECT attempts, max_attempts FROM tasks WHERE id = $1 AND claim_token = $2 AND state = 'claimed'")
                        .bind(task.id.0)
                        .bind(task.token)
                        .fetch_optional(tx.conn().await?)
                        .await?;
                let Some((attempts, max_attempts)) = row else {
                    tx.rollback().await?;
                    return Err(lost(task));
                };
                let attempts = attempts + inc;
                let other: Option<i64> = match &task.object_key {
                    Some(key) => {
                        query_scalar("SELECT id FROM tasks WHERE object_key = $1 AND state = 'queued' AND id <> $2")
                            .bind(key)
                            .bind(task.id.0)
                            .fetch_optional(tx.conn().await?)
                            .await?
                    }
                    None => None,
                };
                if attempts >= max_attempts {
                    set_state(
                        &mut tx,
                        task,
                        "failed",
                        Some(now),
                        failure.as_deref(),
                        attempts,
                        *run_at,
                    )
                    .await?
                } else if let Some(other) = other {
                    // The object is queued again already: merge into that
                    // task. A yield takes the earlier time; a failure carries
                    // its attempt count and backoff over, so it is not lost.
                    let sql = if failure.is_some() {
                        "UPDATE tasks SET run_at = CASE WHEN run_at < $1 THEN $1 ELSE run_at END, \
                         attempts = CASE WHEN attempts < $2 THEN $2 ELSE attempts END, \
                         last_error = COALESCE($3, last_error) WHERE id = $4"
                    } else {
                        "UPDATE tasks SET run_at = CASE WHEN run_at > $1 THEN $1 ELSE run_at END, \
                         attempts = CASE WHEN attempts < $2 THEN $2 ELSE attempts END, \
                         last_error = COALESCE($3, last_error) WHERE id = $4"
                    };
                    query(sql)
                        .bind(run_at)
                        .bind(attempts)
                        .bind(failure.as_deref())
                        .bind(other)
                        .execute(tx.conn().await?)
                        .await?;
                    let note = format!("coalesced into task {other}");
                    set_state(
                        &mut tx,
                        task,
                        "done",
                        Some(now),
                        Some(&note),
                        attempts,
                        *run_at,
                    )
                    .await?
                } else {
                    set_state(
                        &mut tx,
                        task,
                        "queued",
                        None,
                        failure.as_deref(),
                        attempts,
                        *run_at,
                    )
                    .await?
                }
            }
        };
        if n == 0 {
            tx.rollback().await?;
            return Err(lost(task));
        }
        if matches!(completion, Completion::Requeue { .. }) {
            tx.notify_workers();
        }
        if let Some((owner, ttl)) = claim_next
            && let Claimed::Task { task, more } = claim_in(&mut tx, owner, ttl).await?
        {
            tx.commit().await?;
            if more {
                self.more_tasks_maybe();
            }
            return Ok(AfterTask {
                due: None,
                next: Some(task),
            });
        }
        // Only a worker (claiming) waits for the next due time.
        let due = match claim_next {
            Some(_) => next_due_in(tx.conn().await?).await?,
            None => None,
        };
        tx.commit().await?;
        Ok(AfterTask { due, next: None })
    }

    /// Give a claimed task back to the queue unchanged (a worker shutting
    /// down before running it to the end).
    pub async fn hand_back(&self, task: &ClaimedTask) -> Result<()> {
        self.complete(
            task,
            Completion::Requeue {
                run_at: now_ms(),
                failure: None,
            },
        )
        .await
    }

    pub async fn task(&self, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        let row = query(sql)
            .bind(id.0)
            .fetch_optional(&mut self.reader().await?.raw)
            .await?
            .ok_or(StoreError::NotFound {
                what: "task",
                id: id.to_string(),
            })?;
        task_from_row(&row)
    }

    /// Tasks of an object, newest first.
    pub async fn tasks_for(&self, object_key: &str) -> Result<Vec<Task>> {
        let sql =
            format!("SELECT {TASK_COLUMNS} FROM tasks WHERE object_key = $1 ORDER BY id DESC");
        let rows = query(sql)
            .bind(object_key)
            .fetch_all(&mut self.reader().await?.raw)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Number of tasks in each state.
    pub async fn task_counts(&self) -> Result<Vec<(String, i64)>> {
        query_as("SELECT state, COUNT(*) FROM tasks GROUP BY state ORDER BY state")
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }

    /// When the next task becomes runnable: the earliest queued `run_at`
    /// (of a task not waiting for its object's live claim to end) or claim
    /// expiry. `None` when nothing is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>> {
        next_due_in(&mut self.reader().await?.raw).await
    }

    /// This process is the daemon `daemon_id` (as registered with
    /// [`Store::daemon_heartbeat`]): on PostgreSQL, hear the task
    /// notifications routed to it (see `task_channel_sql`) besides the
    /// broadcast ones. Call before registering it, so no notification is
    /// routed to it before it listens (its workers also look when they
    /// start). Nothing to do on SQLite.
    pub async fn serve_tasks_as(&self, daemon_id: &str) -> Result<()> {
        if self.dialect() == Dialect::Sqlite {
            return Ok(());
        }
        let channel: String = query_scalar(format!("SELECT {}", daemon_channel_sql("$1")))
            .bind(daemon_id)
            .fetch_one(&mut self.reader().await?.raw)
            .await?;
        *self
            .inner
            .task_channel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel);
        self.ensure_listener(LISTEN_TASKS | LISTEN_OWN).await;
        // A listener already listening for another daemon's channel (this
        // store served as one before) listens again (`wants_more`).
        self.inner.listen_more.notify_one();
        Ok(())
    }

    /// A signal that fires when new work may be runnable. Take it *before*
    /// looking for work, then [`Store::wait_for_tasks`] on it, so no wake-up
    /// between the look and the wait is missed.
    pub async fn task_signal(&self) -> TaskSignal<'_> {
        self.ensure_listener(LISTEN_TASKS).await;
        let mut notified = Box::pin(self.inner.tasks_ready.notified());
        notified.as_mut().enable();
        TaskSignal { notified }
    }

    /// Wake one idle worker of this process to look for work.
    fn more_tasks_maybe(&self) {
        self.inner.tasks_ready.notify_one();
    }

    /// Wait until the signal fires, the next scheduled task is due, or
    /// `poll` passes (the safety net), whichever is first.
    pub async fn wait_for_tasks(&self, signal: TaskSignal<'_>, poll: Duration) {
        let due = self.next_due().await.ok().flatten();
        Self::wait_until_due(signal, due, poll).await;
    }

    /// Wait until the signal fires, `due` (when the next task is due) comes,
    /// or `poll` passes. `due` may have been read before the signal was
    /// taken: work committed in between wakes an idle worker, or leaves
    /// the permit this signal takes at once.
    async fn wait_until_due(signal: TaskSignal<'_>, due: Option<i64>, poll: Duration) {
        let now = now_ms();
        let wait = match due {
            Some(due) => {
                Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0)).min(poll)
            }
            _ => poll,
        };
        if wait.is_zero() {
            return;
        }
        let _ = tokio::time::timeout(wait, signal.notified).await;
    }

    /// On PostgreSQL, forward `NOTIFY` from other processes to this process's
    /// waiting workers and lease readers. Best effort: both also poll.
    ///
    /// A process listens only to the channels it needs (`want`, added up
    /// over its life): every notification wakes every backend listening to
    /// its channel and its process, so a daemon that runs workers for
    /// nobody's waits does not hear lease changes, and a client that waits
    /// for its lease does not hear of tasks. A new need makes the listener
    /// listen again, for the union (everybody here looks once after).
    async fn ensure_listener(&self, want: u8) {
        if self.dialect() == Dialect::Sqlite {
            return self.ensure_sqlite_watcher().await;
        }
        let before = self.inner.listen_for.fetch_or(want, Ordering::SeqCst);
        let weak = Arc::downgrade(&self.inner);
        let url = self.inner.url.clone();
        let more = self.inner.listen_more.clone();
        self.inner
            .listener
            .get_or_init(|| async move {
                tokio::spawn(async move {
                    // Once listening, everyone here looks: notifications
                    // sent before are lost — while the connection was down,
                    // and before the first one too (a short-lived process's
                    // reader may wait for a lease another process just
                    // wrote).
                    let mut look_once_listening = true;
                    loop {
                        let Some(channels) = weak
                            .upgrade()
                            .map(|inner| inner.listen_for.load(Ordering::SeqCst))
                        else {
                            return;
                        };
                        let own = weak.upgrade().and_then(|inner| task_channel(&inner));
                        let listener = async {
                            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                            let names = [
                                (LISTEN_TASKS, Some(NOTIFY_CHANNEL)),
                                (LISTEN_CHANGES, Some(CHANGES_CHANNEL)),
                                (LISTEN_OWN, own.as_deref()),
                            ];
                            l.listen_all(
                                names
                                    .iter()
                                    .filter(|(bit, _)| channels & bit != 0)
                                    .filter_map(|(_, name)| *name),
                            )
                            .await?;
                            Ok::<_, sqlx::Error>(l)
                        }
                        .await;
                        match listener {
                            Ok(mut l) => loop {
                                if let Some(inner) = weak.upgrade()
                                    && look_once_listening
                                {
                                    look_once_listening = false;
                                    inner.tasks_ready.notify_waiters();
                                    changed_elsewhere(&inner);
                                }
                                let got = tokio::select! {
                                    got = l.try_recv() => Some(got),
                                    () = more.notified() => None,
                                };
                                let Some(inner) = weak.upgrade() else { return };
                                let Some(got) = got else {
                                    if wants_more(&inner, channels, own.as_deref()) {
                                        // Listen again, for more: what was
                                        // sent meanwhile is looked for.
                                        break;
                                    }
                                    continue;
                                };
                                match got {
                                    Ok(Some(n)) => {
                                        // Payload: the sender's instance and,
                                        // for a change, the lease.
                                        let mut words = n.payload().split(' ');
                                        let sender = words.next().unwrap_or("");
                                        let lease = words.next().and_then(|w| w.parse().ok());
                                        if sender == inner.instance {
                                            // Our own commit woke this process already.
                                        } else if n.channel() != CHANGES_CHANNEL {
                                            // A task made: one worker looks
                                            // (each task has a notification).
                                            inner.tasks_ready.notify_one();
                                        } else if let Some(id) = lease {
                                            Store {
                                                inner: inner.clone(),
                                            }
                                            .leases_changed(&[id]);
                                        } else {
                                            changed_elsewhere(&inner);
                                        }
                                    }
                                    // Connection lost: everyone looks, then
                                    // reconnect below.
                                    Ok(None) | Err(_) => {
                                        inner.tasks_ready.notify_waiters();
                                        changed_elsewhere(&inner);
                                        break;
                                    }
                                }
                            },
                            Err(e) => tracing::warn!(
                                "task notifications unavailable, polling instead: {e}"
                            ),
                        }
                        let Some(inner) = weak.upgrade() else { return };
                        look_once_listening = true;
                        if wants_more(&inner, channels, own.as_deref()) {
                            continue;
                        }
                        drop(inner);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            })
            .await;
        if before & want != want {
            // The listener may have started without it (it reads what is
            // wanted when it connects; more than that, it ignores).
            self.inner.listen_more.notify_one();
        }
    }
}

/// Whether this process now needs channels beyond `channels`, the ones
/// its listener listens to.
fn wants_more(inner: &crate::Inner, channels: u8, own: Option<&str>) -> bool {
    inner.listen_for.load(Ordering::SeqCst) & !channels != 0
        || task_channel(inner).as_deref() != own
}

/// The channel of the task notifications routed to this process, if it
/// serves as a daemon.
fn task_channel(inner: &crate::Inner) -> Option<String> {
    inner
        .task_channel
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// How often the SQLite watch looks at `PRAGMA data_version`, besides the
/// looks at once when another process's commit is heard (`writer_file`),
/// while the database is busy (a change seen within
/// [`SQLITE_WATCH_BUSY_FOR`]) or a lease is waited for here: where commits
/// cannot be heard, a lease made active by a daemon in another process is
/// seen within a few ms. The look is a local call of about a microsecond
/// (on this thread, see `db`); the timer wake-up costs more.
const SQLITE_WATCH_BUSY: Duration = Duration::from_millis(4);
/// How often it looks otherwise, so an idle daemon stays idle.
const SQLITE_WATCH_IDLE: Duration = Duration::from_millis(20);
const SQLITE_WATCH_BUSY_FOR: Duration = Duration::from_secs(1);

impl Store {
    /// On SQLite, notice commits by other processes (a CLI queueing a lease
    /// for a daemon, a daemon activating a lease a client waits for) by
    /// watching `PRAGMA data_version` on a connection of its own: it
    /// changes when another connection commits. It looks when another
    /// Drydock process's commit is heard (on Linux, see `writer_file`),
    /// and otherwise every [`SQLITE_WATCH_BUSY`] while busy,
    /// [`SQLITE_WATCH_IDLE`] otherwise. This process's commits
    /// change it too (they woke their workers and readers already),
    /// so a change is looked into rather than broadcast. One worker looks
    /// if no commit of this process can explain the change (counted in
    /// `Tx::commit`), or else only if a task is runnable; the readers of a
    /// lease are woken if its version moved since the last look.
    async fn ensure_sqlite_watcher(&self) {
        let weak = Arc::downgrade(&self.inner);
        let url = self.inner.url.clone();
        self.inner
            .listener
            .get_or_init(|| async move {
                use std::sync::atomic::Ordering::SeqCst;
                let path = crate::connect::sqlite_path(&url);
                let Ok(mut conn) = crate::pool::open_sqlite(path).map(Db::sqlite) else {
                    tracing::warn!(
                        "cannot watch the database for other processes' work; polling instead"
                    );
                    return;
                };
                // Heard from before the first reading on.
                let mut heard = weak.upgrade().and_then(|inner| {
                    let commits = inner.writer_file.hear()?;
                    Some((commits, inner.instance.clone()))
                });
                // The first reading is taken before whoever asked looks for
                // work or reads a lease: a commit after that look is seen.
                let mut done_before_last = weak
                    .upgrade()
                    .map_or(0, |inner| inner.commits_done.load(SeqCst));
                let mut last: Option<i64> = query_scalar("PRAGMA data_version")
                    .fetch_one(&mut conn)
                    .await
                    .ok();
                // Lease id -> version at the last look, for the leases
                // someone here waits for: those waited for already are read
                // before their readers read them.
                let mut seen = std::collections::HashMap::new();
                if let Some(inner) = weak.upgrade() {
                    let waited = Store { inner }.waited_versions(&mut conn, &mut seen).await;
                    seen.extend(waited.unwrap_or_default());
                }
                tokio::spawn(async move {
                    let mut changed_at = tokio::time::Instant::now();
                    let mut looked_at = tokio::time::Instant::now();
                    loop {
                        let busy = changed_at.elapsed() < SQLITE_WATCH_BUSY_FOR
                            || weak
                                .upgrade()
                                .is_some_and(|inner| !Store { inner }.lease_waiters().is_empty());
                        let timed = tokio::time::sleep_until(
                            looked_at
                                + if busy {
                                    SQLITE_WATCH_BUSY
                                } else {
                                    SQLITE_WATCH_IDLE
                                },
                        );
                        // Another process's commit, heard as it happened.
                        let another = match heard.as_mut() {
                            Some((commits, own)) => tokio::select! {
                                () = commits.another(own) => true,
                                () = timed => false,
                            },
                            None => {
                                timed.await;
                                false
                            }
                        };
                        let Some(inner) = weak.upgrade() else { return };
                        looked_at = tokio::time::Instant::now();
                        let done = inner.commits_done.load(SeqCst);
                        let Ok(version) = query_scalar::<i64>("PRAGMA data_version")
                            .fetch_one(&mut conn)
                            .await
                        else {
                            continue;
                        };
                        // No own commit can have become visible since the
                        // last look if every one begun by now had finished
                        // before it.
                        let foreign =
                            another || inner.commits_begun.load(SeqCst) == done_before_last;
                        if last.is_some_and(|l| l != version) {
                            changed_at = tokio::time::Instant::now();
                            let store = Store { inner };
                            let looked = store.look_after_change(&mut conn, &mut seen, foreign);
                            if let Err(e) = looked.await {
                                tracing::debug!("watching for other processes' work: {e}");
                            }
                        }
                        last = Some(version);
                        done_before_last = done;
                    }
                });
            })
            .await;
    }

    /// The versions of the leases somebody here waits for; `seen` keeps
    /// only those leases.
    async fn waited_versions(
        &self,
        conn: &mut Db,
        seen: &mut std::collections::HashMap<i64, i64>,
    ) -> Result<Vec<(i64, i64)>> {
        let waited: Vec<i64> = self.lease_waiters().keys().copied().collect();
        seen.retain(|id, _| waited.contains(id));
        if waited.is_empty() {
            return Ok(Vec::new());
        }
        // Integers formatted, never text from input.
        let ids: Vec<String> = waited.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT id, version FROM leases WHERE id IN ({})",
            ids.join(", ")
        );
        query_as(sql).fetch_all(conn).await
    }

    /// See [`Store::ensure_sqlite_watcher`].
    async fn look_after_change(
        &self,
        conn: &mut Db,
        seen: &mut std::collections::HashMap<i64, i64>,
        foreign: bool,
    ) -> Result<()> {
        if foreign || runnable_now(&mut *conn).await? {
            self.more_tasks_maybe();
        }
        let versions = self.waited_versions(conn, seen).await?;
        // A lease seen for the first time wakes its readers too: they may
        // have read it before the change this look found.
        // A version this process wrote itself woke its readers already.
        let moved: Vec<i64> = {
            let waiters = self.lease_waiters();
            versions
                .into_iter()
                .filter(|(id, v)| seen.insert(*id, *v) != Some(*v))
                .filter(|(id, v)| {
                    waiters
                        .get(id)
                        .and_then(|w| w.written.as_ref())
                        .is_none_or(|l| l.version != *v)
                })
                .map(|(id, _)| id)
                .collect()
        };
        self.leases_changed(&moved);
        Ok(())
    }
}

impl Store {
    /// A signal that fires when lease `id` is written (by this process, or
    /// — through the listener — another), or when another process changed
    /// something unnamed. Take it before reading the lease, then wait on
    /// it, so no change between the read and the wait is missed. Only the
    /// readers of the lease written wake: many waiting clients cost one
    /// read per change of their own lease, not one per commit.
    ///
    /// [`LeaseSignal::written`] gives the lease as this process last wrote
    /// it, when no other process's change has been heard of since: a reader
    /// woken by this process's write need not read the lease back.
    pub async fn lease_signal(&self, id: LeaseId) -> LeaseSignal<'_> {
        let register = |waiters: &mut std::collections::HashMap<i64, LeaseWaiters>| {
            let entry = waiters.entry(id.0).or_insert_with(|| LeaseWaiters {
                notify: Arc::new(tokio::sync::Notify::new()),
                written: None,
            });
            (entry.notify.clone(), entry.written.clone())
        };
        // Known before the listener starts (a SQLite watcher starting now
        // reads the versions of the leases waited for first).
        register(&mut self.lease_waiters());
        self.ensure_listener(LISTEN_CHANGES).await;
        let (notify, written) = register(&mut self.lease_waiters());
        let mut lease = Box::pin(notify.notified_owned());
        lease.as_mut().enable();
        let mut any = Box::pin(self.inner.changed.notified());
        any.as_mut().enable();
        LeaseSignal {
            store: self,
            id: id.0,
            lease,
            any,
            written,
        }
    }

    fn lease_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, LeaseWaiters>> {
        Self::waiters_of(&self.inner)
    }

    fn waiters_of(
        inner: &crate::Inner,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, LeaseWaiters>> {
        inner
            .lease_waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wake the readers waiting for these leases, changed by another
    /// process: they read them again.
    pub(crate) fn leases_changed(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut waiters = self.lease_waiters();
        for id in ids {
            if let Some(w) = waiters.get_mut(id) {
                w.written = None;
                w.notify.notify_waiters();
            }
        }
    }

    /// Wake the readers waiting for these leases, just committed here as
    /// they are: each keeps the latest version written.
    pub(crate) fn leases_written(&self, leases: Vec<Lease>) {
        if leases.is_empty() {
            return;
        }
        let mut waiters = self.lease_waiters();
        for lease in leases {
            if let Some(w) = waiters.get_mut(&lease.id.0) {
                // Commits of one lease are ordered by its lock, but two may
                // report here out of order: the newest version wins.
                if w.written.as_ref().is_none_or(|l| l.version < lease.version) {
                    w.written = Some(lease);
                }
                w.notify.notify_waiters();
            }
        }
    }
}

/// Another process may have changed anything: every reader waiting for a
/// lease reads it again.
fn changed_elsewhere(inner: &crate::Inner) {
    for w in Store::waiters_of(inner).values_mut() {
        w.written = None;
    }
    inner.changed.notify_waiters();
}

/// The readers of one lease (see [`Store::lease_signal`]).
pub(crate) struct LeaseWaiters {
    notify: Arc<tokio::sync::Notify>,
    /// The lease as this process last committed it, since anyone here
    /// waited; `None` once another process changed it.
    written: Option<Lease>,
}

/// See [`Store::lease_signal`].
pub struct LeaseSignal<'a> {
    store: &'a Store,
    id: i64,
    lease: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    any: Pin<Box<tokio::sync::futures::Notified<'a>>>,
    written: Option<Lease>,
}

impl LeaseSignal<'_> {
    /// Wait for the change, or at most `poll`. True when a write of this
    /// lease woke it (not the poll, nor an unnamed change elsewhere). Once
    /// woken, a signal stays fired: take a new one to wait again.
    pub async fn wait(&mut self, poll: Duration) -> bool {
        let changed = async {
            tokio::select! {
                _ = self.lease.as_mut() => true,
                _ = self.any.as_mut() => false,
            }
        };
        tokio::time::timeout(poll, changed).await.unwrap_or(false)
    }

    /// The lease as this process last committed it, when that was after
    /// every change another process is known to have made to it (as of
    /// when this signal was taken). Take the next signal before dropping
    /// the last one: the record lives while someone waits.
    pub fn written(&self) -> Option<&Lease> {
        self.written.as_ref()
    }
}

impl Drop for LeaseSignal<'_> {
    fn drop(&mut self) {
        // The last reader of the lease removes its entry (the map holds
        // one reference and this signal's future the other).
        let mut waiters = self.store.lease_waiters();
        if waiters
            .get(&self.id)
            .is_some_and(|w| Arc::strong_count(&w.notify) <= 2)
        {
            waiters.remove(&self.id);
        }
    }
}

/// See [`Store::task_signal`].
pub struct TaskSignal<'a> {
    notified: Pin<Box<tokio::sync::futures::Notified<'a>>>,
}

/// What a worker does after a task (see [`Store::complete_then`]).
pub(crate) struct AfterTask {
    /// When the next task is due, for a worker that claimed none (`None`:
    /// nothing queued, or not asked).
    due: Option<i64>,
    /// The task claimed with the completion.
    next: Option<ClaimedTask>,
}

/// What [`claim_in`] found.
// Short-lived (one claim's answer): its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Claimed {
    Nothing,
    /// A task whose workers kept dying, marked failed instead of run.
    Exhausted,
    /// A claimed task, and whether another is runnable now (SQLite; on
    /// PostgreSQL every task made has a notification of its own).
    Task {
        task: ClaimedTask,
        more: bool,
    },
}

/// The claim: the most urgent runnable task (`$1` owner, `$2` claim expiry,
/// `$3` now), built once per dialect.
fn claim_sql(dialect: Dialect) -> &'static str {
    static SQLITE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| build_claim_sql(Dialect::Sqlite));
    static POSTGRES: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| build_claim_sql(Dialect::Postgres));
    match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
    }
}

fn build_claim_sql(dialect: Dialect) -> String {
    let skip_locked = dialect.skip_locked();
    // An object's task is not claimed while another of its tasks holds a
    // live claim.
    let free = not_behind_a_live_claim("$3");
    // SQLite: is another task runnable? (Then one more idle worker looks:
    // another process's commit is seen by the watch, which cannot tell how
    // many tasks it made.) PostgreSQL tells a worker of each task.
    let more = match dialect {
        Dialect::Sqlite => {
            "EXISTS (SELECT 1 FROM tasks m WHERE m.state = 'queued' AND m.run_at <= $3 \
               AND m.id <> tasks.id)"
        }
        Dialect::Postgres => "FALSE",
    };
    let claim = format!(
        "UPDATE tasks SET state = 'claimed', claim_owner = $1, claim_expires_at = $2, \
           claim_token = claim_token + 1, \
           attempts = attempts + CASE WHEN state = 'claimed' THEN 1 ELSE 0 END \
         WHERE id = (SELECT t.id FROM tasks t \
           WHERE ((t.state = 'queued' AND t.run_at <= $3) OR (t.state = 'claimed' AND t.claim_expires_at < $3)) \
             AND {free} \
           ORDER BY t.priority DESC, t.run_at, t.id LIMIT 1{skip_locked}) \
         RETURNING id, kind, object_key, payload, attempts, max_attempts, claim_token, {more} AS more"
    );
    match dialect {
        // The object's lock is taken in the claiming statement too (one
        // round trip, and no transaction of its own around it): for a task
        // with an object that its workers have not given up on, if the lock
        // is free or its holder's expired — the lock expires with the claim.
        Dialect::Postgres => format!(
            "WITH c AS ({claim}), \
             l AS (INSERT INTO object_locks (name, owner, token, expires_at, acquired_at) \
               SELECT object_key, $1, 1, $2, $3 FROM c \
               WHERE object_key IS NOT NULL AND attempts < max_attempts {TAKE_LOCK}) \
             SELECT c.*, (SELECT token FROM l) AS lock_token FROM c"
        ),
        Dialect::Sqlite => claim,
    }
}

/// Claim the most urgent runnable task (and its object's lock when free)
/// in `tx`.
async fn claim_in(tx: &mut Tx, owner: &str, ttl: Duration) -> Result<Claimed> {
    let dialect = tx.dialect();
    claim_on(tx.conn().await?, dialect, owner, ttl).await
}

/// [`claim_in`] on a connection: in its transaction, or (PostgreSQL, whose
/// claim is one statement) a transaction of its own.
async fn claim_on(db: &mut Db, dialect: Dialect, owner: &str, ttl: Duration) -> Result<Claimed> {
    let now = now_ms();
    let expires_at = now.saturating_add(ms(ttl));
    let row = query(claim_sql(dialect))
        .bind(owner)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(&mut *db)
        .await?;
    let Some(row) = row else {
        return Ok(Claimed::Nothing);
    };
    let mut task = ClaimedTask {
        id: TaskId(get(&row, "id")?),
        kind: get(&row, "kind")?,
        object_key: get(&row, "object_key")?,
        payload: json(&row, "payload")?,
        attempts: get(&row, "attempts")?,
        max_attempts: get(&row, "max_attempts")?,
        token: get(&row, "claim_token")?,
        owner: owner.to_owned(),
        lock: None,
    };
    if task.attempts >= task.max_attempts {
        // Its workers kept dying: stop here instead of crashing forever.
        query(
            "UPDATE tasks SET state = 'failed', finished_at = $1, claim_owner = NULL, \
             last_error = COALESCE(last_error, $2) WHERE id = $3",
        )
        .bind(now)
        .bind(format!(
            "gave up after {} attempts: the workers running it stopped before finishing",
            task.attempts
        ))
        .bind(task.id.0)
        .execute(db)
        .await?;
        return Ok(Claimed::Exhausted);
    }
    task.lock = match (dialect, &task.object_key) {
        (_, None) => None,
        (Dialect::Postgres, Some(key)) => {
            get::<Option<i64>>(&row, "lock_token")?.map(|token| ObjectLock {
                name: key.clone(),
                owner: owner.to_owned(),
                token,
                expires_at,
            })
        }
        (Dialect::Sqlite, Some(key)) => {
            crate::object_lock::try_lock_on(db, key, owner, now, expires_at).await?
        }
    };
    // SQLite: another runnable task (whatever its object's state; read
    // with the claim): one more idle worker looks (and so on while each
    // finds one), instead of every commit waking every worker.
    let more = get::<bool>(&row, "more")?;
    Ok(Claimed::Task { task, more })
}

/// Whether a queued task is due now (whatever its object's state).
async fn runnable_now(db: &mut Db) -> Result<bool> {
    let due: Option<i64> =
        query_scalar("SELECT id FROM tasks WHERE state = 'queued' AND run_at <= $1 LIMIT 1")
            .bind(now_ms())
            .fetch_optional(db)
            .await?;
    Ok(due.is_some())
}

/// `tasks t` is not waiting for another task of its object to end: none
/// holds a claim live at `now` (an SQL parameter). The live claims are
/// read once, through the small `tasks_claimed` index (a task whose own
/// claim expired is not among them, so it never excludes itself).
fn not_behind_a_live_claim(now: &str) -> String {
    format!(
        "(t.object_key IS NULL OR t.object_key NOT IN (SELECT o.object_key FROM tasks o \
           WHERE o.state = 'claimed' AND o.claim_expires_at >= {now} AND o.object_key IS NOT NULL))"
    )
}

/// A queued task whose object has a task under a live claim (at `$1`) is
/// not due before that claim ends — the second part — and the completion
/// that ends it tells the workers ([`set_state`]): counting it due would
/// set idle workers claiming in a loop, finding nothing, until then.
static NEXT_DUE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT (SELECT MIN(t.run_at) FROM tasks t WHERE t.state = 'queued' AND {}), \
           (SELECT MIN(claim_expires_at) FROM tasks WHERE state = 'claimed')",
        not_behind_a_live_claim("$1")
    )
});

/// When the next task becomes runnable (see [`Store::next_due`]).
async fn next_due_in(db: &mut Db) -> Result<Option<i64>> {
    let (a, b): (Option<i64>, Option<i64>) = query_as(NEXT_DUE_SQL.as_str())
        .bind(now_ms())
        .fetch_one(db)
        .await?;
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

async fn set_state(
    tx: &mut Tx,
    task: &ClaimedTask,
    state: &str,
    finished_at: Option<i64>,
    error: Option<&str>,
    attempts: i64,
    run_at: i64,
) -> Result<u64> {
    const UPDATE: &str = "UPDATE tasks SET state = $1, finished_at = $2, \
         last_error = COALESCE($3, last_error), attempts = $4, run_at = $5, \
         claim_owner = NULL, claim_expires_at = NULL \
         WHERE id = $6 AND claim_token = $7 AND state = 'claimed'";
    let q = |sql: std::borrow::Cow<'static, str>| {
        query(sql)
            .bind(state)
            .bind(finished_at)
            .bind(error)
            .bind(attempts)
            .bind(run_at)
            .bind(task.id.0)
            .bind(task.token)
    };
    let (lock, dialect) = (task.lock.as_ref(), tx.dialect());
    if lock.is_some() {
        // A lease write put off to the commit is made under the lock this
        // completion lets go: make it while the lock's token still fences.
        tx.write_unsaved_lease().await?;
    }
    match (&task.object_key, dialect) {
        // One statement: the object's lock is let go with its task, and
        // whether another task of the object waits for it is read.
        (Some(key), Dialect::Postgres) => {
            let unlock = match lock {
                Some(_) => {
                    ", u AS (UPDATE object_locks SET owner = NULL, expires_at = 0 \
                       WHERE name = $8 AND token = $9 AND EXISTS (SELECT 1 FROM t))"
                }
                None => "",
            };
            let sql = format!(
                "WITH t AS ({UPDATE} RETURNING 1){unlock} \
                 SELECT COUNT(*) AS n, \
                   EXISTS (SELECT 1 FROM tasks WHERE object_key = $8 AND state = 'queued') AS waiting \
                 FROM t"
            );
            let mut q = q(sql.into()).bind(key.as_str());
            if let Some(lock) = lock {
                q = q.bind(lock.token);
            }
            // The transaction's side writes ride with it.
            let row = tx.with_side_writes(q).fetch_one(tx.raw()).await?;
            if row.get::<bool>("waiting")? {
                // It waited for this task's claim to end, so idle workers
                // did not count it as due ([`Store::next_due`]): tell them.
                tx.notify_workers();
            }
            Ok(row.get::<i64>("n")? as u64)
        }
        // SQLite: other processes' workers look at every commit they see.
        _ => {
            let n = q(UPDATE.into())
                .execute(tx.conn().await?)
                .await?
                .rows_affected();
            if let Some(lock) = lock
                && n > 0
            {
                tx.unlock(lock).await?;
            }
            Ok(n)
        }
    }
}

fn lost(task: &ClaimedTask) -> StoreError {
    StoreError::LostClaim {
        task: task.id.0,
        token: task.token,
    }
}

/// What a task handler says about the task it ran.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done,
    /// Not finished, not failed: run again after this long.
    Yield(Duration),
    /// A temporary failure: retry with backoff, up to the attempt limit.
    Retry(String),
    /// A permanent failure.
    Fail(String),
}

/// What a handler hands back: its outcome and, optionally, its last write
/// still open (`tail`), which then commits in the completion's transaction
/// — one commit fewer per task, and fenced by the claim: a worker that lost
/// its claim loses that write too. A tail is committed on its own first
/// when the task is requeued (a requeue may have to retry its transaction).
pub struct Handled {
    pub outcome: Outcome,
    pub tail: Option<Tx>,
}

impl From<Outcome> for Handled {
    fn from(outcome: Outcome) -> Self {
        Handled {
            outcome,
            tail: None,
        }
    }
}

/// Runs claimed tasks. One handler serves every task kind it is given.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, task: &ClaimedTask) -> impl Future<Output = Handled> + Send;
}

/// Settings of a worker loop.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Name recorded as the claim owner (e.g. `host:pid:worker-3`).
    pub owner: String,
    pub claim_ttl: Duration,
    /// Safety-net poll interval when no notification arrives.
    pub poll: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl WorkerConfig {
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            claim_ttl: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
        }
    }

    /// Delay before retry number `attempt` (1-based): base · 2^(attempt-1), capped.
    pub fn backoff(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.retry_base.saturating_mul(1 << exp).min(self.retry_cap)
    }
}

/// Counter of finished task runs, by task kind and outcome.
pub const TASK_OUTCOMES: &str = "drydock_task_outcomes_total";

/// Run one claimed task: heartbeat while the handler works, then record the
/// outcome. Returns the outcome, or the store error that stopped recording it.
pub async fn run_claimed<H: Handler>(
    store: &Store,
    handler: &H,
    cfg: &WorkerConfig,
    task: &ClaimedTask,
) -> Result<Outcome> {
    run_task(store, handler, cfg, task, None)
        .await
        .map(|(outcome, _)| outcome)
}

/// [`run_claimed`], also returning what comes next: unless `stop` (a
/// worker's stop flag) is absent or set when the task ends, the next task,
/// claimed in the completion's transaction; else when the next task is due.
async fn run_task<H: Handler>(
    store: &Store,
    handler: &H,
    cfg: &WorkerConfig,
    task: &ClaimedTask,
    stop: Option<&tokio::sync::watch::Receiver<bool>>,
) -> Result<(Outcome, AfterTask)> {
    use futures_util::FutureExt as _;
    let claim = ClaimGuard::start(store, task, cfg.claim_ttl);
    // The handler runs only while its claim is known to be held: once it is
    // lost, or cannot be confirmed before it would expire, the handler is
    // dropped (at its next await; its child processes are killed on drop)
    // before another worker can claim the object.
    // Boxed: a pass's future is large, and the panic guard and claim guard
    // around it would move it about on the worker's stack (debug builds
    // overflowed it in the lifecycle tests without this box).
    let work = std::panic::AssertUnwindSafe(Box::pin(handler.handle(task))).catch_unwind();
    let handled = match claim.guard(work).await {
        Ok(handled) => handled,
        Err(why) => {
            tracing::warn!(task = task.id.0, kind = %task.kind, "stopped the task's handler: its claim was lost: {why}");
            metrics::counter!(TASK_OUTCOMES, "kind" => task.kind.clone(), "outcome" => "lost")
                .increment(1);
            return Err(lost(task));
        }
    };
    drop(claim);
    let Handled { outcome, tail } = handled.unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        tracing::error!(task = task.id.0, kind = %task.kind, "the task's handler panicked: {message}");
        Outcome::Retry(format!("the handler panicked: {message}")).into()
    });
    let now = now_ms();
    let completion = match &outcome {
        Outcome::Done => Completion::Done,
        Outcome::Yield(d) => Completion::Requeue {
            run_at: now.saturating_add(ms(*d)),
            failure: None,
        },
        Outcome::Retry(e) => Completion::Requeue {
            run_at: now.saturating_add(ms(cfg.backoff(task.attempts + 1))),
            failure: Some(e.clone()),
        },
        Outcome::Fail(e) => Completion::Fail(e.clone()),
    };
    let outcome_name = match &outcome {
        Outcome::Done => "done",
        Outcome::Yield(_) => "yield",
        Outcome::Retry(_) => "retry",
        Outcome::Fail(_) => "fail",
    };
    metrics::counter!(TASK_OUTCOMES, "kind" => task.kind.clone(), "outcome" => outcome_name)
        .increment(1);
    let next = stop
        .is_some_and(|stop| !*stop.borrow())
        .then_some((cfg.owner.as_str(), cfg.claim_ttl));
    let after = store.complete_then(task, completion, next, tail).await?;
    Ok((outcome, after))
}

tokio::task_local! {
    /// The claim of the task this handler runs: why it was lost, once it is.
    static CLAIM: tokio::sync::watch::Receiver<Option<String>>;
}

/// Whether the claim under which the current task's handler runs is still
/// held (`true` outside a claimed task): a handler checks it before each
/// destructive or external step. Its handler is also stopped when the
/// claim is lost, but only at its next await.
pub fn claim_held() -> bool {
    CLAIM
        .try_with(|lost| lost.borrow().is_none())
        .unwrap_or(true)
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// A claim (or lock) kept alive while its holder works: a renewal task of
/// its own (never pausing the work: on SQLite paused work may hold the one
/// writer connection), aborted when the guard is dropped — work that
/// panicked or was stopped renews nothing.
///
/// Every `ttl / 3` it renews. A failed renewal that is not a lost claim
/// ([`StoreError::LostClaim`], [`StoreError::Stale`]: the database away,
/// busy, slow) is retried every `ttl / 12` — until the *deadline*:
/// `ttl - ttl / 6` after the last renewal that was sent and confirmed
/// (measured on this process's monotonic clock, from before it was sent,
/// so the stored expiry is later still). Past the deadline, or once lost,
/// [`ClaimGuard::lost`] answers and [`claim_held`] turns false: the holder
/// stops at least `ttl / 6` before anyone else can take the object.
pub struct ClaimGuard {
    /// Why the claim was lost, once it is (`None` while it is held).
    lost: tokio::sync::watch::Receiver<Option<String>>,
    beat: tokio::task::JoinHandle<()>,
}

impl ClaimGuard {
    /// Keep `task`'s claim (and the object lock taken with it) alive.
    pub(crate) fn start(store: &Store, task: &ClaimedTask, ttl: Duration) -> ClaimGuard {
        let (store, task) = (store.clone(), task.clone());
        Self::keep(ttl, move || {
            let (store, task) = (store.clone(), task.clone());
            async move { store.heartbeat(&task, ttl).await }
        })
    }

    /// Keep something alive for `ttl` at a time with `renew`, which was
    /// just taken (or renewed).
    pub fn keep<F, Fut>(ttl: Duration, renew: F) -> ClaimGuard
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send,
    {
        let (tx, lost) = tokio::sync::watch::channel(None);
        let margin = ttl / 6;
        let every = (ttl / 3).max(Duration::from_millis(10));
        let retry = (ttl / 12).max(Duration::from_millis(5));
        let beat = tokio::spawn(async move {
            let mut deadline = tokio::time::Instant::now() + ttl - margin;
            let mut next = tokio::time::Instant::now() + every;
            let reason = loop {
                tokio::time::sleep_until(next.min(deadline)).await;
                if tokio::time::Instant::now() >= deadline {
                    break format!(
                        "it could not be renewed within {:?} of its last renewal \
                             (it expires {margin:?} later)",
                        ttl - margin
                    );
                }
                let sent = tokio::time::Instant::now();
                match tokio::time::timeout_at(deadline, renew()).await {
                    Ok(Ok(())) => {
                        deadline = sent + ttl - margin;
                        next = sent + every;
                    }
                    Ok(Err(e @ (StoreError::LostClaim { .. } | StoreError::Stale { .. }))) => {
                        break e.to_string();
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("renewing a claim failed, retrying: {e}");
                        next = tokio::time::Instant::now() + retry;
                    }
                    Err(_) => {}
                }
            };
            // Receivers keep the last value after the sender is gone.
            let _ = tx.send(Some(reason));
        });
        ClaimGuard { lost, beat }
    }

    /// Answers (why) once the claim is lost or could not be renewed in
    /// time; pending while it is held.
    pub async fn lost(&self) -> String {
        let mut lost = self.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The renewal task ended without a word (it panicked).
            Err(_) => "its renewal stopped".into(),
        }
    }

    /// Run `work` while the claim is held, with [`claim_held`] telling it
    /// so; `Err(why)` once the claim is lost (then `work` was dropped).
    pub async fn guard<T>(&self, work: impl Future<Output = T>) -> std::result::Result<T, String> {
        tokio::select! {
            // Boxed: the work is often a whole pass, a large future that
            // would otherwise be moved about on the worker's stack.
            done = Box::pin(CLAIM.scope(self.lost.clone(), work)) => Ok(done),
            why = self.lost() => Err(why),
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

/// Claim and run tasks until `stop` turns true. The task in hand when `stop`
/// turns true is finished first.
pub async fn run_worker<H: Handler>(
    store: Store,
    handler: Arc<H>,
    cfg: WorkerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Set when the last completion saw no task due yet: then wait for that
    // time (or a wake-up) without looking at the queue first.
    let mut not_due: Option<Option<i64>> = None;
    // A task claimed with the last one's completion.
    let mut next: Option<ClaimedTask> = None;
    while !*stop.borrow() || next.is_some() {
        let task = match next.take() {
            Some(task) => task,
            None => {
                let signal = store.task_signal().await;
                if let Some(due) = not_due.take() {
                    tokio::select! {
                        _ = Store::wait_until_due(signal, due, cfg.poll) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                match store.claim(&cfg.owner, cfg.claim_ttl).await {
                    // Dropping the signal passes on any wake-up it caught
                    // while this worker was claiming (`claim` woke another
                    // worker if it saw more).
                    Ok(Some(task)) => task,
                    Ok(None) => {
                        tokio::select! {
                            _ = store.wait_for_tasks(signal, cfg.poll) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("claiming a task failed: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(cfg.poll) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
        };
        match run_task(&store, handler.as_ref(), &cfg, &task, Some(&stop)).await {
            Ok((_, AfterTask { next: Some(t), .. })) => next = Some(t),
            Ok((_, AfterTask { due, .. })) if due.is_none_or(|d| d > now_ms()) => {
                not_due = Some(due);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(task = task.id.0, kind = %task.kind, "recording task outcome failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod plans {
    use super::*;

    /// The queue's hot statements and the GC of finished tasks read
    /// `tasks` (which keeps every finished task until GC) through its
    /// indexes, never by a scan.
    #[tokio::test]
    async fn the_queue_reads_tasks_through_indexes_not_scans() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let mut conn = store.reader().await.unwrap();
        for (what, sql) in [
            ("claim", claim_sql(Dialect::Sqlite).to_owned()),
            ("next due", NEXT_DUE_SQL.clone()),
            ("gc", crate::gc::FINISHED_TASKS_SQL.to_owned()),
        ] {
            let mut q = query(format!("EXPLAIN QUERY PLAN {sql}"));
            for n in 1..=3_i64 {
                if sql.contains(&format!("${n}")) {
                    q = q.bind(n);
                }
            }
            let plan: Vec<String> = q
                .fetch_all(&mut conn.raw)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String>("detail").unwrap())
                .collect();
            assert!(
                !plan
                    .iter()
                    .any(|d| d.starts_with("SCAN ") && d != "SCAN CONSTANT ROW"),
                "{what} scans: {plan:#?}"
            );
        }
    }
}
