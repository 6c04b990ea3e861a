//! Drydock's storage layer: one [`Store`] over SQLite (the embedded default)
//! or PostgreSQL (scale-out), picked at run time from a URL.
//!
//! It owns the schema and its migrations, every SQL statement, the durable
//! task queue ([`queue`]), object locks with fencing tokens ([`object_lock`]),
//! slot locks ([`slot_lock`]), the command queue ([`command`]) and logs
//! ([`log`]). It knows nothing about blueprint behaviour or the allocator.
//!
//! Both backends run the same SQL through one small layer (`db`: rusqlite
//! on SQLite, on the calling thread; sqlx on PostgreSQL; `$N` placeholders
//! on both); the few dialect-specific statements branch on [`Dialect`]. On
//! SQLite every write transaction starts with `BEGIN IMMEDIATE` on a single
//! writer connection, so writers queue in the process instead of failing
//! with `SQLITE_BUSY` halfway through.

pub mod authorization;
pub mod blueprint;
pub mod command;
mod connect;
pub mod credential;
pub mod daemon;
mod db;
mod error;
mod gc;
mod group;
pub mod lease;
pub mod log;
pub mod object_lock;
mod pool;
pub mod queue;
pub mod resource;
mod row;
mod seed;
pub mod slot_lock;
pub mod stats;
pub mod token;
mod wakeup;
mod writer_file;

pub use connect::{DEFAULT_DATABASE_URL, Dialect, redact_url};
pub use error::{SlotConflict, StoreError};
pub use gc::PruneReport;

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Current time in milliseconds since the Unix epoch, **by the
/// database's clock**: this host's clock corrected by the offset last
/// measured against the PostgreSQL server ([`Store::sync_clock`]; zero on
/// SQLite, whose processes share one host's clock). Every stored time —
/// claim and lock expiries above all — is written with it, so hosts whose
/// clocks disagree still agree on when a claim expires.
pub fn now_ms() -> i64 {
    clock::local_ms().saturating_add(clock::OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// The process's correction of its clock to the database's.
pub mod clock {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Added to this host's clock to read the database's.
    pub(crate) static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
    /// Tests only: how far this process pretends its clock is ahead.
    static PRETEND_AHEAD_MS: AtomicI64 = AtomicI64::new(0);

    /// A skew this large is reported (log, `/readyz`).
    pub const SKEW_WARNING_MS: i64 = 1_000;

    /// This host's clock (epoch ms), uncorrected.
    pub(crate) fn local_ms() -> i64 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(PRETEND_AHEAD_MS.load(Ordering::Relaxed))
    }

    /// How far the database's clock is ahead of this host's, as last
    /// measured (negative: behind).
    pub fn skew_ms() -> i64 {
        OFFSET_MS.load(Ordering::Relaxed)
    }

    /// Tests only: make this process's clock read `ms` ahead of the
    /// host's (as a host whose clock is wrong would).
    #[doc(hidden)]
    pub fn pretend_clock_ahead(ms: i64) {
        PRETEND_AHEAD_MS.store(ms, Ordering::Relaxed);
    }
}

/// Milliseconds in a duration, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// PostgreSQL connections a process running `workers` workers needs: each
/// may hold a transaction while its claim's renewal takes a connection of
/// its own (renewals never wait behind passes), and 8 more for the API,
/// listeners and the daemon's own heartbeat.
pub fn pool_size_for(workers: usize) -> usize {
    workers.saturating_mul(2).saturating_add(8)
}

/// A handle on the database. Cheap to clone; all clones share the pools and
/// the task-queue notifier.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dialect: Dialect,
    /// SQLite: one connection, so writes queue in-process. PostgreSQL: the pool.
    write: pool::Pool,
    /// SQLite: several read-only-by-convention connections. PostgreSQL: the pool.
    read: pool::Pool,
    /// Woken after a commit that made a task runnable (and, on PostgreSQL,
    /// by `NOTIFY` from other processes).
    tasks_ready: Notify,
    /// Woken when another process may have changed something this one
    /// cannot name (a PostgreSQL listener reconnecting, a notification
    /// without a lease): every reader waiting for a lease re-reads it.
    changed: Notify,
    /// Readers waiting for particular leases ([`Store::lease_signal`]),
    /// woken by commits that wrote those leases — here or, through
    /// `NOTIFY`, in another process.
    lease_waiters: std::sync::Mutex<std::collections::HashMap<i64, queue::LeaseWaiters>>,
    /// The connection URL (kept for the PostgreSQL listener; never printed).
    url: String,
    /// Commits begun and finished through this handle: the SQLite watch
    /// tells other processes' commits from them.
    commits_begun: std::sync::atomic::AtomicU64,
    commits_done: std::sync::atomic::AtomicU64,
    /// SQLite: `COMMIT`s sent (a group's transactions share one).
    commits_written: std::sync::atomic::AtomicU64,
    /// This handle's name in `NOTIFY` payloads, so its listener can tell
    /// its own notifications (already delivered in-process) from others'.
    instance: String,
    listener: tokio::sync::OnceCell<()>,
    /// PostgreSQL: the channels this process needs to hear
    /// (`queue::LISTEN_*` bits): task notifications once it runs workers,
    /// lease changes once somebody here waits for a lease.
    listen_for: std::sync::atomic::AtomicU8,
    /// Tells the listener to listen again, for more channels.
    listen_more: Arc<tokio::sync::Notify>,
    /// PostgreSQL, in a daemon: the channel of the task notifications
    /// routed to it ([`Store::serve_tasks_as`]).
    task_channel: std::sync::Mutex<Option<String>>,
    /// SQLite: the open commit group on the writer connection.
    groups: group::Groups,
    /// SQLite: the file through which processes take turns writing and
    /// hear each other's commits.
    writer_file: writer_file::WriterFile,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.inner.dialect)
            .field("url", &redact_url(&self.inner.url))
            .finish()
    }
}

impl Store {
    /// Connect to `url` (`sqlite://PATH` or `postgres://...`) and apply any
    /// pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        store.sync_clock().await?;
        Ok(store)
    }

    /// The backend in use.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Begin a write transaction. Work enqueued inside it (tasks, commands)
    /// becomes visible, and wakes workers, only when it commits.
    ///
    /// Do all writes of the transaction through the [`Tx`]: on SQLite the
    /// store has one writer connection, so calling a writing `Store` method
    /// while holding a `Tx` of the same store waits for that `Tx` forever.
    pub async fn begin(&self) -> Result<Tx> {
        // The Tx holds the connection before BEGIN is sent: if this future
        // is dropped half-way (a client hung up), its drop rolls back.
        let mut tx = Tx {
            conn: Some(self.inner.write.get().await?),
            store: self.clone(),
            group: None,
            tasks_made: 0,
            changed_leases: Vec::new(),
            notices: Vec::new(),
            pending_logs: Vec::new(),
            deferred_fires: Vec::new(),
            unsaved_lease: None,
            side_writes: Vec::new(),
        };
        tx.raw().begun();
        match self.inner.dialect {
            // One writer connection: join (or open) its group (`group`).
            Dialect::Sqlite => {
                let conn = tx.conn.as_mut().expect("held since it was taken");
                tx.group = Some(group::begin(self, conn).await?);
            }
            Dialect::Postgres => {
                db::query("BEGIN").execute(tx.raw()).await?;
            }
        }
        Ok(tx)
    }

    /// Write transactions finished through this handle and its clones
    /// (committed, or failed at `COMMIT`); for tests and diagnostics.
    pub fn commits(&self) -> u64 {
        self.inner
            .commits_done
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `COMMIT`s written to the database: on SQLite a group of
    /// transactions shares one ([`Store::commits`] counts each
    /// transaction); on PostgreSQL the same as [`Store::commits`].
    pub fn commits_written(&self) -> u64 {
        match self.inner.dialect {
            Dialect::Sqlite => self
                .inner
                .commits_written
                .load(std::sync::atomic::Ordering::Relaxed),
            Dialect::Postgres => self.commits(),
        }
    }

    /// Count a write made by one statement outside [`Tx`] (its own
    /// transaction) in [`Store::commits`].
    pub(crate) fn count_autocommit(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.inner.commits_begun.fetch_add(1, SeqCst);
        self.inner.commits_done.fetch_add(1, SeqCst);
    }

    /// A connection for reads (SQLite: not the writer's).
    pub(crate) async fn reader(&self) -> Result<pool::Conn> {
        Ok(self.inner.read.get().await?)
    }

    /// PostgreSQL: let the connection pool grow to `connections` (at least
    /// 1); a daemon sizes it for its workers ([`pool_size_for`]). SQLite
    /// keeps its one writer and four readers.
    pub fn set_pool_size(&self, connections: usize) {
        if self.inner.dialect == Dialect::Postgres {
            self.inner.write.resize(connections.max(1));
        }
    }

    /// Close every connection (those in use close when given back).
    pub async fn close(&self) {
        self.inner.write.close();
        self.inner.read.close();
    }
}

/// A write transaction. Dropping it without [`Tx::commit`] rolls it back.
pub struct Tx {
    /// The writer connection, inside `BEGIN`; `None` once finished.
    conn: Option<pool::Conn>,
    store: Store,
    /// SQLite: the commit group this transaction is a member of.
    group: Option<Arc<group::Group>>,
    /// Tasks this transaction made runnable (scheduled, requeued, or let
    /// through by a claim it ended): as many idle workers are woken.
    tasks_made: usize,
    /// Leases this transaction wrote, as it left them (their waiters here
    /// are woken on commit and given them; on PostgreSQL other processes
    /// are told just after it, in the commit's message).
    changed_leases: Vec<lease::Lease>,
    /// PostgreSQL notifications `(channel, payload)`, sent with `COMMIT`
    /// (one round trip; delivered when, and only if, it commits).
    notices: Vec<(&'static str, String)>,
    /// Events recorded by [`Tx::log`], written just before the commit.
    pending_logs: Vec<log::PendingLog>,
    /// Wake-ups to fire once this transaction has committed (see
    /// [`Tx::fire`]).
    deferred_fires: Vec<wakeup::Fire>,
    /// A lease write put off to the commit ([`Tx::save_lease_at_commit`]),
    /// unless a later write of the same lease supersedes it.
    unsaved_lease: Option<(lease::Lease, object_lock::ObjectLock)>,
    /// PostgreSQL: writes whose results nobody reads, sent with the next
    /// statement that takes them ([`Tx::with_side_writes`]) or before any
    /// other ([`Tx::conn`]).
    side_writes: Vec<db::Query>,
}

impl Tx {
    /// Commit, then wake workers if this transaction made tasks runnable.
    pub async fn commit(mut self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        // A statement of it failed (and its caller went on): commit none
        // of it. Dropping `self` rolls it back (SQLite: its member only).
        if let Some(failure) = self.raw().failure() {
            return Err(failure.into_error());
        }
        self.write_unsaved_lease().await?;
        self.write_logs().await?;
        self.conn().await?; // what is left of the side writes
        let store = self.store.clone();
        store.inner.commits_begun.fetch_add(1, SeqCst);
        // PostgreSQL: the connection stays in the Tx until COMMIT has
        // answered: a failure, or this future dropped half-way, leaves it
        // to `Drop`. SQLite: the member's work joins its group at once
        // (synchronously); dropped while it waits for the group's commit,
        // the work is committed with the group all the same.
        let committed = match self.group.take() {
            Some(group) => {
                let conn = self
                    .conn
                    .take()
                    .expect("a transaction is open until it ends");
                group::commit(&store, conn, group).await
            }
            None => {
                let notices = std::mem::take(&mut self.notices);
                db::commit(self.raw(), &notices).await
            }
        };
        store.inner.commits_done.fetch_add(1, SeqCst);
        committed?;
        drop(self.conn.take());
        store.leases_written(std::mem::take(&mut self.changed_leases));
        // One idle worker here per task made (never every worker for one
        // task; on PostgreSQL other processes were told as many times).
        for _ in 0..self.tasks_made.min(queue::MAX_WAKES) {
            store.inner.tasks_ready.notify_one();
        }
        let deferred_fires = std::mem::take(&mut self.deferred_fires);
        if !deferred_fires.is_empty() {
            // Best effort: if this fails, the waiters' safety poll finds the
            // change (and the change itself is committed).
            if let Err(e) = Box::pin(store.fire_deferred(&deferred_fires)).await {
                tracing::warn!("waking waiters for {deferred_fires:?} failed: {e}");
            }
        }
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<()> {
        if self.group.is_some() {
            // Dropping the member undoes its work (and only its).
            return Ok(());
        }
        db::query("ROLLBACK").execute(self.raw()).await?;
        drop(self.conn.take());
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The connection, for a statement of this transaction: its pending
    /// side writes are sent first, so the statement sees them.
    pub(crate) async fn conn(&mut self) -> Result<&mut db::Db> {
        if !self.side_writes.is_empty() {
            let q = self.with_side_writes(db::query("SELECT 1"));
            q.execute(self.raw()).await?;
        }
        Ok(self.raw())
    }

    /// The connection, as it is (side writes not sent).
    pub(crate) fn raw(&mut self) -> &mut db::Db {
        &mut self
            .conn
            .as_mut()
            .expect("a transaction is open until it ends")
            .raw
    }

    /// A write whose result nobody reads and that no statement of this
    /// transaction before the next one needs to see (a delete of rows
    /// nothing reads again here, a flag set): on PostgreSQL it rides with
    /// the next statement ([`Tx::with_side_writes`], [`Tx::conn`]) instead
    /// of costing a round trip; on SQLite (statements in process) it runs
    /// now.
    pub(crate) async fn side_write(&mut self, q: db::Query) -> Result<()> {
        match self.dialect() {
            Dialect::Sqlite => {
                q.execute(self.raw()).await?;
            }
            Dialect::Postgres => self.side_writes.push(q),
        }
        Ok(())
    }

    /// `q` with this transaction's pending side writes run in it first
    /// (PostgreSQL; see [`db::Query::after`]): for statements independent
    /// of them, executed on [`Tx::raw`]. The events recorded so far
    /// ([`Tx::log`]) go with them, in order (those recorded later are
    /// written later).
    pub(crate) fn with_side_writes(&mut self, q: db::Query) -> db::Query {
        let mut sides = std::mem::take(&mut self.side_writes);
        if self.dialect() == Dialect::Postgres && !self.pending_logs.is_empty() {
            sides.push(log::logs_insert(std::mem::take(&mut self.pending_logs)));
        }
        q.after(sides)
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.store.inner.dialect
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            match self.store.inner.dialect {
                Dialect::Sqlite => group::drop_member(&self.store, conn),
                Dialect::Postgres => roll_back_later(conn),
            }
        }
    }
}

/// Roll back an unfinished PostgreSQL transaction on its connection and
/// give the connection back to the pool. If the rollback fails (the
/// transaction may have ended, or the connection broke), or there is no
/// runtime to do it on, close the connection instead: closing ends any
/// transaction, and nothing unclean is reused. (SQLite: see
/// [`group::drop_member`].)
fn roll_back_later(mut conn: pool::Conn) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                if db::query("ROLLBACK").execute(&mut conn.raw).await.is_err() {
                    drop(deadpool::managed::Object::take(conn));
                }
            });
        }
        Err(_) => drop(deadpool::managed::Object::take(conn)),
    }
}
