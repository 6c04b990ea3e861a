//! Wake-up edges: every wait has an event that ends it.
//!
//! A waiting object registers the events it waits for
//! ([`Tx::wait_on`]); whoever causes such an event fires it
//! ([`Tx::fire`]) in the transaction that causes it, which schedules each
//! waiter's update task. Waiters are scheduled at their own rank (priority,
//! then `run_at`, usually the lease's creation time) so that the queue runs
//! them first come, first served within a priority.

use crate::queue::NewTask;
use crate::{Result, Store, Tx};
use drydock_model::ObjectRef;

impl Tx {
    /// Replace `waiter`'s registrations with `events`.
    ///
    /// Registrations already there are left untouched rather than deleted
    /// and inserted again: on PostgreSQL a concurrent fire that is waiting
    /// for our delete would then skip the old row and not see the new one
    /// (its snapshot predates it) — a lost wake-up the engine tests found.
    pub async fn wait_on(
        &mut self,
        waiter: ObjectRef,
        priority: i64,
        run_at: i64,
        events: &[String],
    ) -> Result<()> {
        let key = waiter.key();
        let marks: Vec<String> = (0..events.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = if events.is_empty() {
            "DELETE FROM wakeups WHERE waiter = $1".to_owned()
        } else {
            format!(
                "DELETE FROM wakeups WHERE waiter = $1 AND event NOT IN ({})",
                marks.join(", ")
            )
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&key);
        for event in events {
            q = q.bind(event);
        }
        q.execute(self.conn()).await?;
        for event in events {
            sqlx::query(
                "INSERT INTO wakeups (event, waiter, priority, run_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event, waiter) DO NOTHING",
            )
            .bind(event)
            .bind(&key)
            .bind(priority)
            .bind(run_at)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Drop every registration of `waiter` (it no longer waits).
    pub async fn stop_waiting(&mut self, waiter: ObjectRef) -> Result<()> {
        sqlx::query("DELETE FROM wakeups WHERE waiter = $1")
            .bind(waiter.key())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Wake everybody waiting for `event`, as part of this transaction's
    /// effect.
    ///
    /// On SQLite transactions are serial, so this fires right here. On
    /// PostgreSQL (READ COMMITTED) firing inside the transaction could miss
    /// a waiter that registers after this statement but scans before this
    /// transaction commits; so the event is fired just after commit, when
    /// any later registration's scan is sure to see the change.
    pub async fn fire(&mut self, event: &str) -> Result<()> {
        match self.dialect() {
            crate::Dialect::Sqlite => {
                self.fire_now(event).await?;
            }
            crate::Dialect::Postgres => {
                if !self.deferred_fires.iter().any(|e| e == event) {
                    self.deferred_fires.push(event.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Wake everybody waiting for `event` now. Returns how many were woken.
    pub(crate) async fn fire_now(&mut self, event: &str) -> Result<usize> {
        // One statement takes exactly the registrations it deletes: a
        // registration committed concurrently is either taken (and woken)
        // here or left for the next firing, never deleted unseen.
        let mut waiters: Vec<(String, i64, i64)> = sqlx::query_as(
            "DELETE FROM wakeups WHERE event = $1 RETURNING waiter, priority, run_at",
        )
        .bind(event)
        .fetch_all(self.conn())
        .await?;
        if waiters.is_empty() {
            return Ok(0);
        }
        waiters.sort_by_key(|(w, p, r)| (-p, *r, w.clone()));
        for (waiter, priority, run_at) in &waiters {
            if let Some(obj) = ObjectRef::parse(waiter) {
                self.schedule(NewTask::update(obj).priority(*priority).run_at(*run_at))
                    .await?;
            }
        }
        Ok(waiters.len())
    }
}

impl Store {
    pub async fn fire(&self, event: &str) -> Result<usize> {
        let mut tx = self.begin().await?;
        let n = tx.fire_now(event).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Events `waiter` is registered for.
    pub async fn waits_of(&self, waiter: ObjectRef) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT event FROM wakeups WHERE waiter = $1 ORDER BY event")
                .bind(waiter.key())
                .fetch_all(self.read_pool())
                .await?,
        )
    }
}
