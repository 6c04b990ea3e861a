//! Group commit on SQLite: write transactions that follow one another on
//! the one writer connection share a `COMMIT`.
//!
//! A SQLite commit costs far more than the statements of a small
//! transaction (the WAL frames of every page it dirtied, written one by
//! one; measured 110–130 µs against 15–45 µs for a lease write), and the
//! writer connection is held for every statement and commit of the
//! process: under load the commits, not the work, are what writers queue
//! for. So when a transaction finishes while another is waiting for the
//! writer, its work is kept (a savepoint released inside one open `BEGIN
//! IMMEDIATE`) and the writer passes to the next; the last transaction of
//! the group — the one that finds nobody waiting, or the group full or
//! old — commits for all of them.
//!
//! What a caller sees does not change: [`crate::Tx::commit`] returns only
//! once its work is committed (visible to every connection, durable), and
//! with an error if the group's commit failed; a transaction that rolls
//! back (or is dropped) undoes only its own work, back to its savepoint.
//! The cost is latency: a transaction waits for those after it in its
//! group (at most [`MAX_MEMBERS`] and [`MAX_OPEN`]). A group left open by
//! a waiter that went away is committed by a watchdog task after
//! [`MAX_OPEN`], so the write lock other processes need is never held by
//! nobody.

use crate::db::{self, Backend};
use crate::{Result, Store, StoreError, pool};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Transactions in one group at most.
pub(crate) const MAX_MEMBERS: usize = 16;

/// How long a group stays open at most before the next finished
/// transaction commits it (and, doubled, before the watchdog does).
pub(crate) const MAX_OPEN: Duration = Duration::from_millis(2);

/// One group: the outcome of its commit, once known.
#[derive(Default)]
pub(crate) struct Group {
    outcome: OnceLock<std::result::Result<(), String>>,
    finished: Notify,
}

impl Group {
    fn finish(&self, outcome: std::result::Result<(), String>) {
        let _ = self.outcome.set(outcome);
        self.finished.notify_waiters();
    }

    /// Wait for the group's commit.
    async fn committed(&self) -> Result<()> {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone().map_err(|e| {
                    StoreError::Unavailable(format!("the commit of this write failed: {e}"))
                });
            }
            finished.await;
        }
    }
}

/// The open group, if any (the writer connection is inside its `BEGIN`).
#[derive(Default)]
pub(crate) struct Groups {
    open: Mutex<Option<Open>>,
}

struct Open {
    group: Arc<Group>,
    /// Transactions whose work is in the group (savepoints released).
    members: usize,
    began: Instant,
    /// Whether the watchdog has been started for it.
    watched: bool,
    /// The writer file's lock (see `writer_file`), let go with the group
    /// (after its end).
    writer: Option<crate::writer_file::Held>,
}

impl Groups {
    fn open(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer connection is outside any transaction although a group
    /// is open: SQLite rolled the group back itself after an error (it
    /// does so for some I/O and memory errors). Its members are told.
    fn lost(&self) {
        if let Some(open) = self.open().take() {
            open.group.finish(Err(
                "SQLite rolled the transaction back after an error".into()
            ));
        }
    }
}

impl Open {
    /// Whether to hand the writer to the next transaction (`waiting` for
    /// it) instead of committing now.
    fn keep_open(&self, waiting: usize) -> bool {
        waiting > 0 && self.members < MAX_MEMBERS && self.began.elapsed() < MAX_OPEN
    }
}

/// Begin a member transaction on the writer connection `conn`: join the
/// open group, or open one (`BEGIN IMMEDIATE`).
pub(crate) async fn begin(store: &Store, conn: &mut pool::Conn) -> Result<Arc<Group>> {
    let Backend::Sqlite(c) = &mut conn.raw.backend else {
        unreachable!("group commit is for SQLite")
    };
    let groups = &store.inner.groups;
    let joined = match groups.open().as_ref() {
        Some(open) if !c.is_autocommit() => Some(open.group.clone()),
        _ => None,
    };
    let group = match joined {
        Some(group) => group,
        None => {
            if c.is_autocommit() {
                groups.lost();
            } else {
                // A transaction without a group (cannot happen): start clean.
                c.execute_batch("ROLLBACK")?;
            }
            let started = Instant::now();
            let writer = store
                .inner
                .writer_file
                .take(pool::SQLITE_BUSY_TIMEOUT)
                .await;
            let patience = pool::SQLITE_BUSY_TIMEOUT.saturating_sub(started.elapsed());
            db::begin_immediate(c, patience).await?;
            let group = Arc::new(Group::default());
            *groups.open() = Some(Open {
                group: group.clone(),
                members: 0,
                began: Instant::now(),
                watched: false,
                writer,
            });
            group
        }
    };
    c.execute_batch("SAVEPOINT member")?;
    Ok(group)
}

/// Commit a member: keep its work in the group and hand the writer on if
/// someone waits for it, else commit the group. Returns once the work is
/// committed.
pub(crate) async fn commit(store: &Store, mut conn: pool::Conn, group: Arc<Group>) -> Result<()> {
    let Backend::Sqlite(c) = &mut conn.raw.backend else {
        unreachable!("group commit is for SQLite")
    };
    if let Err(e) = c.execute_batch("RELEASE member") {
        // The member's work is in an unknown state: undo it, keep the rest.
        drop_member(store, conn);
        return Err(e.into());
    }
    let waiting = store.inner.write.status().waiting;
    let hand_over = {
        let mut open = store.inner.groups.open();
        // A member's group is open until its writer ends it.
        let Some(o) = open.as_mut() else {
            return Err(StoreError::Database(
                "internal error: a transaction's commit group was ended under it".into(),
            ));
        };
        o.members += 1;
        let hand_over = o.keep_open(waiting);
        if hand_over && !std::mem::replace(&mut o.watched, true) {
            watch_group(store.clone(), o.group.clone());
        }
        hand_over
    };
    if !hand_over {
        end_group(store, &mut conn, true);
    }
    drop(conn);
    group.committed().await
}

/// A dropped or rolled-back member: undo its work back to its savepoint,
/// then end the group if nobody is left to (see [`settle`]).
pub(crate) fn drop_member(store: &Store, mut conn: pool::Conn) {
    let Backend::Sqlite(c) = &mut conn.raw.backend else {
        unreachable!("group commit is for SQLite")
    };
    let restored = c.busy_timeout(pool::SQLITE_BUSY_TIMEOUT).is_ok();
    if c.is_autocommit() {
        // Its BEGIN never ran (or failed): nothing of it to undo — or
        // SQLite rolled everything back after an error in it.
        store.inner.groups.lost();
        return;
    }
    if restored
        && c.execute_batch("ROLLBACK TO member; RELEASE member")
            .is_ok()
    {
        settle(store, conn);
        return;
    }
    // The connection is in an unknown state: close it (which ends the
    // group's transaction, undoing it) and fail the group's members.
    if let Some(open) = store.inner.groups.open().take() {
        open.group
            .finish(Err("the writer connection failed and was closed".into()));
    }
    drop(deadpool::managed::Object::take(conn));
}

/// After a member rolled back: with nothing kept in the group, roll it
/// back; with members waiting and others waiting for the writer, hand it
/// on; else commit the group.
fn settle(store: &Store, mut conn: pool::Conn) {
    let waiting = store.inner.write.status().waiting;
    let (members, keep_open) = match store.inner.groups.open().as_ref() {
        None => return,
        Some(o) => (o.members, o.keep_open(waiting)),
    };
    match members {
        0 => end_group(store, &mut conn, false),
        _ if keep_open => {}
        _ => end_group(store, &mut conn, true),
    }
}

/// Commit (or roll back) the open group on `conn` and tell its members.
fn end_group(store: &Store, conn: &mut pool::Conn, commit: bool) {
    let Some(open) = store.inner.groups.open().take() else {
        return;
    };
    let Backend::Sqlite(c) = &mut conn.raw.backend else {
        unreachable!("group commit is for SQLite")
    };
    let outcome = if commit {
        tracing::debug!(target: "drydock_store::sql", "COMMIT ({} transactions)", open.members);
        store.inner.commits_written.fetch_add(1, Ordering::Relaxed);
        let committed = c.execute_batch("COMMIT").map_err(|e| {
            let _ = c.execute_batch("ROLLBACK");
            e.to_string()
        });
        if let (Ok(()), Some(writer)) = (&committed, &open.writer) {
            writer.committed(&store.inner.instance);
        }
        committed
    } else {
        c.execute_batch("ROLLBACK").map_err(|e| e.to_string())
    };
    open.group.finish(outcome);
}

/// The watchdog of a group whose members handed the writer on: if the
/// group is still open after twice [`MAX_OPEN`] (the waiter it was handed
/// to went away, or holds the writer long), take the writer and commit it.
fn watch_group(store: Store, group: Arc<Group>) {
    tokio::spawn(async move {
        if tokio::time::timeout(2 * MAX_OPEN, group.committed())
            .await
            .is_ok()
        {
            return;
        }
        let Ok(mut conn) = store.inner.write.get().await else {
            return;
        };
        let current = store
            .inner
            .groups
            .open()
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(&o.group, &group));
        if current {
            end_group(&store, &mut conn, true);
        } else if group.outcome.get().is_none() {
            // Ended without telling its members (cannot happen): they
            // must not wait forever.
            group.finish(Err("the commit group was lost".into()));
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::Store;
    use crate::lease::{LeaseFilter, NewLease};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    fn lease(marker: &str) -> NewLease {
        NewLease {
            resource_type: "host".into(),
            authorizing: marker.into(),
            ..Default::default()
        }
    }

    /// A scratch database, opened twice: this process's store and
    /// another process's.
    async fn two_processes() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let s = Store::open(&url).await.unwrap();
        let other = Store::open(&url).await.unwrap();
        (dir, s, other)
    }

    /// Whether a lease made with `marker` is in the database, as another
    /// process sees it.
    async fn stored(other: &Store, marker: &str) -> bool {
        let found = other
            .leases(&LeaseFilter {
                authorizing: Some(marker.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        !found.is_empty()
    }

    /// Many writers at once: each commit returns only once its work is
    /// visible to another process; each rollback (or dropped transaction)
    /// undoes its own work and nobody else's; and groups did form.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn grouped_transactions_are_visible_when_their_commit_returns_and_roll_back_alone() {
        let (_dir, s, other) = two_processes().await;
        let actors: Vec<_> = (0..8)
            .map(|a| {
                let (s, other) = (s.clone(), other.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    for i in 0..60 {
                        let marker = format!("actor-{a}-{i}");
                        let mut tx = s.begin().await.unwrap();
                        tx.insert_lease(&lease(&marker)).await.unwrap();
                        // Let the others run meanwhile, as a pass does while it
                        // reads or runs a local hook: they queue for the writer.
                        tokio::task::yield_now().await;
                        let committed = match (a * 31 + i) % 5 {
                            0 => {
                                tx.rollback().await.unwrap();
                                false
                            }
                            1 => {
                                drop(tx);
                                false
                            }
                            _ => {
                                tx.commit().await.unwrap();
                                assert!(
                                    stored(&other, &marker).await,
                                    "{marker}: committed, but another process does not see it"
                                );
                                true
                            }
                        };
                        outcomes.push((marker, committed));
                    }
                    outcomes
                })
            })
            .collect();
        let mut all = Vec::new();
        for actor in actors {
            all.extend(actor.await.unwrap());
        }
        for (marker, committed) in &all {
            assert_eq!(stored(&other, marker).await, *committed, "{marker}");
        }
        let (logical, written) = (s.commits(), s.commits_written());
        assert!(
            written < logical,
            "no group formed: {written} COMMITs for {logical} transactions"
        );
    }

    type Waiting<'s, T> = Pin<Box<dyn Future<Output = crate::Result<T>> + Send + 's>>;

    /// A transaction writes `marker` and commits while a second one waits
    /// for the writer. Returns the first's commit when it handed the writer
    /// on (still waiting for its group), or `None` when it committed at
    /// once (its group was already older than `MAX_OPEN`, as on a loaded
    /// machine); and the second's `begin`, waiting.
    async fn commit_while_another_waits<'s>(
        s: &'s Store,
        marker: &str,
    ) -> (Option<Waiting<'static, ()>>, Waiting<'s, crate::Tx>) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = s.begin().await.unwrap();
        first.insert_lease(&lease(marker)).await.unwrap();
        let mut second: Waiting<'s, crate::Tx> = Box::pin(s.begin());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(s.inner.write.status().waiting, 1);
        let mut commit: Waiting<'static, ()> = Box::pin(first.commit());
        match commit.as_mut().poll(&mut cx) {
            Poll::Ready(committed) => {
                committed.unwrap();
                (None, second)
            }
            Poll::Pending => (Some(commit), second),
        }
    }

    /// A transaction hands the writer to a waiter that then goes away: the
    /// watchdog commits the group, and the commit returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_whose_next_writer_went_away_is_committed_by_the_watchdog() {
        let (_dir, s, other) = two_processes().await;
        let mut handed_on = false;
        for attempt in 0..100 {
            let marker = format!("first-{attempt}");
            let (commit, second) = commit_while_another_waits(&s, &marker).await;
            // The second goes away without taking the writer.
            drop(second);
            if let Some(commit) = commit {
                tokio::time::timeout(Duration::from_secs(10), commit)
                    .await
                    .expect("the group was never committed")
                    .unwrap();
                handed_on = true;
            }
            assert!(stored(&other, &marker).await);
            if handed_on {
                break;
            }
        }
        assert!(handed_on, "the writer was never handed on");
        // The writer is free again.
        let tx = tokio::time::timeout(Duration::from_secs(10), s.begin())
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// SQLite may roll a transaction back by itself after some errors (a
    /// full disk, an I/O error): the group's earlier transactions are then
    /// told their commit failed (none waits forever, none is told it
    /// committed), and the writer serves the next transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_rolled_back_by_sqlite_fails_its_waiting_transactions() {
        let (_dir, s, other) = two_processes().await;
        for attempt in 0..100 {
            let marker = format!("first-{attempt}");
            let (commit, second) = commit_while_another_waits(&s, &marker).await;
            let Some(commit) = commit else {
                // Not handed on: try again.
                second.await.unwrap().commit().await.unwrap();
                continue;
            };
            // The second transaction gets the writer; an error in it makes
            // SQLite roll everything back, the first's work included.
            let mut second = second.await.unwrap();
            if let crate::db::Backend::Sqlite(c) = &mut second.raw().backend {
                c.execute_batch("ROLLBACK").unwrap();
            }
            drop(second);
            let failed = tokio::time::timeout(Duration::from_secs(10), commit)
                .await
                .expect("the first transaction was left waiting");
            assert!(failed.is_err(), "told it committed: {failed:?}");
            assert!(!stored(&other, &marker).await);
            let mut next = s.begin().await.unwrap();
            next.insert_lease(&lease("next")).await.unwrap();
            next.commit().await.unwrap();
            assert!(stored(&other, "next").await);
            return;
        }
        panic!("the writer was never handed on");
    }
}
