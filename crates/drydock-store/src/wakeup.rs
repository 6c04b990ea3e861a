//! Wake-up edges: every wait has an event that ends it.
//!
//! A waiting object registers the events it waits for
//! ([`Tx::wait_on`]); whoever causes such an event fires it
//! ([`Tx::fire`]) in the transaction that causes it, which schedules each
//! waiter's update task. Waiters are scheduled at their own rank (priority,
//! then `run_at`, usually the lease's creation time) so that the queue runs
//! them first come, first served within a priority.

use crate::db::{query, query_as, query_scalar};
use crate::queue::NewTask;
use crate::{Result, Store, Tx};
use drydock_model::{ObjectRef, ResourceId};

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
        let mut q = query(sql).bind(&key);
        for event in events {
            q = q.bind(event);
        }
        q.execute(self.conn().await?).await?;
        for event in events {
            query(
                "INSERT INTO wakeups (event, waiter, priority, run_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event, waiter) DO NOTHING",
            )
            .bind(event)
            .bind(&key)
            .bind(priority)
            .bind(run_at)
            .execute(self.conn().await?)
            .await?;
        }
        Ok(())
    }

    /// Drop every registration of `waiter` (it no longer waits). A side
    /// write: it rides with the transaction's next statement.
    pub async fn stop_waiting(&mut self, waiter: ObjectRef) -> Result<()> {
        self.side_write(query("DELETE FROM wakeups WHERE waiter = $1").bind(waiter.key()))
            .await
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
        self.fire_or_defer(Fire::All(event.to_owned())).await
    }

    /// Hand one slot freed on `resource` to the best-ranked waiter for
    /// `event` only, instead of waking them all (a thundering herd where
    /// one wins). The waiter records the hand-off; when its pass ends
    /// without the lease holding `resource`, it hands the slot on to the
    /// next waiter in rank ([`Tx::settle_handoffs`]). Fired like
    /// [`Tx::fire`].
    pub async fn hand_over(&mut self, event: &str, resource: ResourceId) -> Result<()> {
        self.fire_or_defer(Fire::One {
            event: event.to_owned(),
            resource,
            after: None,
        })
        .await
    }

    async fn fire_or_defer(&mut self, fire: Fire) -> Result<()> {
        match self.dialect() {
            crate::Dialect::Sqlite => {
                self.fire_now(&fire).await?;
            }
            crate::Dialect::Postgres => {
                // Waking everybody twice is once; each hand-off is a slot.
                if matches!(fire, Fire::One { .. }) || !self.deferred_fires.contains(&fire) {
                    self.deferred_fires.push(fire);
                }
            }
        }
        Ok(())
    }

    /// End of a waiter's pass: slots handed to it are used when it now holds
    /// that resource (`holding`), and otherwise handed on to the next
    /// waiter in rank, so a slot one waiter cannot use is never lost.
    pub async fn settle_handoffs(
        &mut self,
        waiter: ObjectRef,
        priority: i64,
        run_at: i64,
        holding: Option<ResourceId>,
    ) -> Result<()> {
        let key = waiter.key();
        let slots: Vec<(String, i64)> =
            query_as("DELETE FROM handoffs WHERE waiter = $1 RETURNING event, resource_id")
                .bind(&key)
                .fetch_all(self.conn().await?)
                .await?;
        for (event, resource) in slots {
            if holding == Some(ResourceId(resource)) {
                continue; // used
            }
            self.fire_or_defer(Fire::One {
                event,
                resource: ResourceId(resource),
                after: Some(Rank {
                    priority,
                    run_at,
                    waiter: key.clone(),
                }),
            })
            .await?;
        }
        Ok(())
    }

    /// Fire now. Returns how many waiters were woken.
    pub(crate) async fn fire_now(&mut self, fire: &Fire) -> Result<usize> {
        match fire {
            Fire::All(event) => self.wake_all(event).await,
            Fire::One {
                event,
                resource,
                after,
            } => Ok(usize::from(
                self.hand_now(event, *resource, after.as_ref()).await?,
            )),
        }
    }

    async fn wake_all(&mut self, event: &str) -> Result<usize> {
        // One statement takes exactly the registrations it deletes: a
        // registration committed concurrently is either taken (and woken)
        // here or left for the next firing, never deleted unseen. It skips
        // the rows another transaction is deleting (see `hand_now`).
        let sql = format!(
            "DELETE FROM wakeups WHERE (event, waiter) IN \
               (SELECT event, waiter FROM wakeups WHERE event = $1{}) \
             RETURNING waiter, priority, run_at",
            self.dialect().skip_locked()
        );
        let mut waiters: Vec<(String, i64, i64)> = query_as(sql)
            .bind(event)
            .fetch_all(self.conn().await?)
            .await?;
        if waiters.is_empty() {
            return Ok(0);
        }
        waiters.sort_by_key(|(w, p, r)| (-p, *r, w.clone()));
        for (waiter, priority, run_at) in &waiters {
            self.schedule_waiter(waiter, *priority, *run_at).await?;
        }
        Ok(waiters.len())
    }

    async fn schedule_waiter(&mut self, waiter: &str, priority: i64, run_at: i64) -> Result<()> {
        if let Some(obj) = ObjectRef::parse(waiter) {
            self.schedule(NewTask::update(obj).priority(priority).run_at(run_at))
                .await?;
        }
        Ok(())
    }

    /// Give the slot to the best-ranked waiter (ranked after `after`, when
    /// handing on). Returns whether anybody took it.
    async fn hand_now(
        &mut self,
        event: &str,
        resource: ResourceId,
        after: Option<&Rank>,
    ) -> Result<bool> {
        let (p, r, w) = after.map_or((i64::MAX, i64::MIN, String::new()), |a| {
            (a.priority, a.run_at, a.waiter.clone())
        });
        // Picked and taken in one statement that never waits: a waiter
        // whose registration another transaction is deleting (another
        // firing hands it a slot, or its own pass no longer waits) is
        // passed over for the next (PostgreSQL; SQLite has one writer).
        // Picking, then deleting — waiting for a row another firing held —
        // deadlocked firings that took rows in different orders: each cost
        // PostgreSQL's 1 s deadlock timeout and lost a slot.
        let pick: Option<(String, i64, i64)> = query_as(format!(
            "DELETE FROM wakeups WHERE (event, waiter) = \
               (SELECT event, waiter FROM wakeups WHERE event = $1 \
                  AND (priority < $2 OR (priority = $2 AND (run_at > $3 OR (run_at = $3 AND waiter > $4)))) \
                ORDER BY priority DESC, run_at, waiter LIMIT 1{}) \
             RETURNING waiter, priority, run_at",
            self.dialect().skip_locked()
        ))
        .bind(event)
        .bind(p)
        .bind(r)
        .bind(&w)
        .fetch_optional(self.conn().await?)
        .await?;
        let Some((waiter, priority, run_at)) = pick else {
            return Ok(false);
        };
        query("INSERT INTO handoffs (waiter, event, resource_id) VALUES ($1, $2, $3)")
            .bind(&waiter)
            .bind(event)
            .bind(resource.0)
            .execute(self.conn().await?)
            .await?;
        self.schedule_waiter(&waiter, priority, run_at).await?;
        Ok(true)
    }
}

/// A wake-up to fire: everybody waiting for an event, or one slot handed
/// to one waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fire {
    All(String),
    One {
        event: String,
        resource: ResourceId,
        after: Option<Rank>,
    },
}

impl Fire {
    fn event(&self) -> &str {
        match self {
            Fire::All(event) | Fire::One { event, .. } => event,
        }
    }
}

/// A waiter's place in line: higher priority first, then earlier `run_at`,
/// then the waiter's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rank {
    priority: i64,
    run_at: i64,
    waiter: String,
}

impl Store {
    /// Fire what a committed transaction deferred ([`Tx::fire`]). Most
    /// events have nobody waiting, so it looks first, on a read connection:
    /// a waiter registering after that look re-checks what it waits for
    /// (and sees the committed change), so the look misses nobody this
    /// firing must wake — and no write transaction is spent on nobody.
    pub(crate) async fn fire_deferred(&self, fires: &[Fire]) -> Result<()> {
        let mut wanted = Vec::new();
        let mut reader = self.reader().await?;
        for fire in fires {
            let waiting: Option<i64> =
                query_scalar("SELECT 1 FROM wakeups WHERE event = $1 LIMIT 1")
                    .bind(fire.event())
                    .fetch_optional(&mut reader.raw)
                    .await?;
            if waiting.is_some() {
                wanted.push(fire);
            }
        }
        drop(reader);
        if wanted.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for fire in wanted {
            tx.fire_now(fire).await?;
        }
        tx.commit().await
    }
}

impl Store {
    pub async fn fire(&self, event: &str) -> Result<usize> {
        let mut tx = self.begin().await?;
        let n = tx.fire_now(&Fire::All(event.to_owned())).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Events `waiter` is registered for.
    pub async fn waits_of(&self, waiter: ObjectRef) -> Result<Vec<String>> {
        query_scalar("SELECT event FROM wakeups WHERE waiter = $1 ORDER BY event")
            .bind(waiter.key())
            .fetch_all(&mut self.reader().await?.raw)
            .await
    }
}
