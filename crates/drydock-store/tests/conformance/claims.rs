//! Work is fenced, not only rows: a handler runs only while its claim is
//! known to be held, a panicking handler is a failed attempt, and nothing
//! renews a claim after its handler stopped.

use anyhow::ensure;
use drydock_store::queue::{
    ClaimedTask, Handled, Handler, NewTask, Outcome, TaskState, WorkerConfig, claim_held,
    run_claimed,
};
use drydock_store::{Store, StoreError};
use drydock_testkit::{Backend, TestDb, wait_until};
use std::sync::{Arc, Mutex};
use std::time::Duration;

backend_tests!(
    a_claim_that_cannot_be_renewed_stops_its_handler_before_another_worker_takes_it,
    a_short_outage_does_not_cost_a_handler_its_claim,
    a_panicking_handler_is_a_failed_attempt_and_renews_nothing_after,
);

/// A claim short enough that its deadlines pass within a test: renewed
/// every 400 ms, its handler stopped 1 s after the last renewal, expired
/// 200 ms after that.
const TTL: Duration = Duration::from_millis(1200);

/// Every write to the queue held up until [`Outage::end`]: SQLite's write
/// lock, or PostgreSQL's exclusive lock on `tasks`, taken by a connection
/// of the test's own — to the workers, the database is away.
enum Outage {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgConnection),
}

impl Outage {
    async fn begin(db: &TestDb) -> anyhow::Result<Outage> {
        Ok(match db.backend {
            Backend::Sqlite => {
                let path = db.url.trim_start_matches("sqlite://");
                let conn = rusqlite::Connection::open(path)?;
                conn.execute_batch("BEGIN IMMEDIATE")?;
                Outage::Sqlite(conn)
            }
            Backend::Postgres => {
                use sqlx::Connection as _;
                let mut conn = sqlx::PgConnection::connect(&db.url).await?;
                sqlx::raw_sql("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await?;
                Outage::Postgres(conn)
            }
        })
    }

    async fn end(self) -> anyhow::Result<()> {
        match self {
            Outage::Sqlite(conn) => conn.execute_batch("ROLLBACK")?,
            Outage::Postgres(mut conn) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await?;
            }
        }
        Ok(())
    }
}

/// What the handlers did, in order.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn note(&self, what: impl Into<String>) {
        self.0.lock().unwrap().push(what.into());
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, what: &str) -> bool {
        self.entries().iter().any(|e| e == what)
    }
}

/// Notes `{name} stopped` when the handler's future is dropped, finished
/// or not.
struct OnDrop(Journal, String);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.note(format!("{} stopped", self.1));
    }
}

/// Starts, works for `work`, then makes its one external side effect
/// ("destroys") — if it is still running by then.
struct Destroyer {
    name: &'static str,
    work: Duration,
    journal: Journal,
}

impl Handler for Destroyer {
    async fn handle(&self, _task: &ClaimedTask) -> Handled {
        let _stopped = OnDrop(self.journal.clone(), self.name.to_owned());
        self.journal.note(format!("{} started", self.name));
        tokio::time::sleep(self.work).await;
        self.journal.note(format!("{} destroyed", self.name));
        Outcome::Done.into()
    }
}

fn cfg(owner: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(owner);
    cfg.claim_ttl = TTL;
    cfg
}

/// Schedule a task of object `x`, claim it as `w1` and run it, in the
/// background, with a destroyer named `h1` that works for `work`.
async fn start_h1(
    s: &Store,
    journal: &Journal,
    work: Duration,
) -> anyhow::Result<(
    drydock_model::TaskId,
    ClaimedTask,
    tokio::task::JoinHandle<drydock_store::Result<Outcome>>,
)> {
    let id = s.schedule(NewTask::new("test.destroy").object("x")).await?;
    let task = s.claim("w1", TTL).await?.expect("the task");
    let h1 = Destroyer {
        name: "h1",
        work,
        journal: journal.clone(),
    };
    let run = {
        let (s, task) = (s.clone(), task.clone());
        tokio::spawn(async move { run_claimed(&s, &h1, &cfg("w1"), &task).await })
    };
    Ok((id, task, run))
}

async fn a_claim_that_cannot_be_renewed_stops_its_handler_before_another_worker_takes_it(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let journal = Journal::default();
    let (id, first, run1) = start_h1(s, &journal, Duration::from_secs(6)).await?;
    wait_until(Duration::from_secs(5), "h1 started", async || {
        journal.has("h1 started")
    })
    .await?;
    // The database goes away for longer than the claim lives.
    let outage = Outage::begin(db).await?;
    wait_until(Duration::from_secs(5), "h1 stopped", async || {
        journal.has("h1 stopped")
    })
    .await?;
    let stopped = run1.await?;
    ensure!(
        matches!(stopped, Err(StoreError::LostClaim { .. })),
        "the stopped handler's run answered {stopped:?}"
    );
    outage.end().await?;
    // Once the claim expires, another worker takes the object over.
    let other = db.connect_again().await;
    let mut second = None;
    wait_until(
        Duration::from_secs(5),
        "the expired claim taken over",
        async || {
            second = other.claim("w2", TTL).await.ok().flatten();
            second.is_some()
        },
    )
    .await?;
    let second = second.expect("claimed");
    ensure!(second.id == id && second.token > first.token);
    let h2 = Destroyer {
        name: "h2",
        work: Duration::ZERO,
        journal: journal.clone(),
    };
    ensure!(run_claimed(&other, &h2, &cfg("w2"), &second).await? == Outcome::Done);
    let entries = journal.entries();
    ensure!(
        entries
            == [
                "h1 started",
                "h1 stopped",
                "h2 started",
                "h2 destroyed",
                "h2 stopped"
            ],
        "the first handler must stop before the second starts, and only one destroys: {entries:?}"
    );
    ensure!(s.task(id).await?.state == TaskState::Done);
    Ok(())
}

async fn a_short_outage_does_not_cost_a_handler_its_claim(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let journal = Journal::default();
    let (id, _, run1) = start_h1(s, &journal, Duration::from_millis(1800)).await?;
    // Away from 300 ms to 750 ms: the renewal due at 400 ms waits, and
    // goes through before the handler's deadline (1 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outage = Outage::begin(db).await?;
    tokio::time::sleep(Duration::from_millis(450)).await;
    outage.end().await?;
    // While it runs, nobody else can take the task.
    let other = db.connect_again().await;
    while !run1.is_finished() {
        ensure!(
            other.claim("w2", TTL).await?.is_none(),
            "another worker claimed a live claim"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(run1.await?? == Outcome::Done);
    let entries = journal.entries();
    ensure!(
        entries == ["h1 started", "h1 destroyed", "h1 stopped"],
        "{entries:?}"
    );
    ensure!(s.task(id).await?.state == TaskState::Done);
    Ok(())
}

/// Panics once it has seen that its claim is held.
struct Panics(Arc<Mutex<Option<bool>>>);

impl Handler for Panics {
    async fn handle(&self, _task: &ClaimedTask) -> Handled {
        *self.0.lock().unwrap() = Some(claim_held());
        panic!("a bug in a hook");
    }
}

async fn a_panicking_handler_is_a_failed_attempt_and_renews_nothing_after(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s: &Store = &db.store;
    let id = s
        .schedule(NewTask::new("test.panic").object("x").max_attempts(2))
        .await?;
    let seen = Arc::new(Mutex::new(None));
    let handler = Panics(seen.clone());
    let mut cfg = cfg("w1");
    cfg.retry_base = Duration::from_millis(1);
    let task = s.claim("w1", TTL).await?.expect("the task");
    // The worker survives the panic and records a failed attempt.
    let outcome = run_claimed(s, &handler, &cfg, &task).await?;
    ensure!(
        matches!(&outcome, Outcome::Retry(m) if m.contains("a bug in a hook")),
        "{outcome:?}"
    );
    ensure!(
        *seen.lock().unwrap() == Some(true),
        "the handler saw its claim held"
    );
    let row = s.task(id).await?;
    ensure!(
        row.state == TaskState::Queued && row.attempts == 1,
        "{row:?}"
    );
    ensure!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked: a bug in a hook")),
        "{row:?}"
    );
    // Nothing renews the finished claim: its expiry stays cleared.
    tokio::time::sleep(TTL).await;
    ensure!(s.task(id).await?.claim_expires_at.is_none());
    // The second panic is the last attempt.
    let mut again = None;
    wait_until(Duration::from_secs(5), "the retry", async || {
        again = s.claim("w1", TTL).await.ok().flatten();
        again.is_some()
    })
    .await?;
    run_claimed(s, &handler, &cfg, &again.expect("claimed")).await?;
    ensure!(s.task(id).await?.state == TaskState::Failed);
    Ok(())
}

/// A worker whose host's clock runs 60 s ahead cannot take a live claim
/// on PostgreSQL: stored times follow the database server's clock
/// (`now_ms` corrected by `Store::sync_clock`, which `open` runs), not the
/// worker's. (SQLite's processes share one host's clock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_clock_is_a_minute_ahead_cannot_steal_a_live_claim_on_postgres() {
    drydock_testkit::run(Backend::Postgres, async |db: &TestDb| {
        let s = &db.store;
        s.schedule(NewTask::new("test.skew").object("x")).await?;
        let claimed = s.claim("w1", Duration::from_secs(30)).await?;
        ensure!(claimed.is_some());
        // This process (nextest runs each test in one of its own) now
        // reads its clock a minute fast, as a skewed host would.
        drydock_store::clock::pretend_clock_ahead(60_000);
        let skewed = db.connect_again().await;
        let skew = drydock_store::clock::skew_ms();
        ensure!(
            (-61_000..=-59_000).contains(&skew),
            "measured skew {skew} ms, expected about -60000"
        );
        ensure!(
            skewed.claim("w2", Duration::from_secs(30)).await?.is_none(),
            "a worker a minute ahead took a claim that is live by the database's clock"
        );
        // Its own claims expire by the database's clock too.
        let before = drydock_store::now_ms();
        s.schedule(NewTask::new("test.skew").object("y")).await?;
        let mine = skewed
            .claim("w2", Duration::from_secs(30))
            .await?
            .expect("the other task");
        let row = skewed.task(mine.id).await?;
        let expires = row.claim_expires_at.expect("claimed");
        ensure!(
            (before + 29_000..=before + 31_000).contains(&expires),
            "claim expiry {expires} not 30 s after the database's now {before}"
        );
        Ok(())
    })
    .await
}
