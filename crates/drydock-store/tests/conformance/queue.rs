//! Task queue semantics.

use anyhow::{Context as _, ensure};
use drydock_model::{LeaseId, ObjectRef};
use drydock_store::queue::{
    ClaimedTask, Completion, Handled, Handler, NewTask, Outcome, TaskState, WorkerConfig,
    run_claimed,
};
use drydock_store::{Store, StoreError, now_ms};
use drydock_testkit::{TestDb, wait_until};
use std::time::{Duration, Instant};

backend_tests!(
    scheduled_task_is_claimed_once_and_completed,
    future_run_at_is_honoured,
    update_tasks_of_one_object_coalesce,
    expired_claim_is_taken_over_and_the_old_worker_cannot_complete,
    heartbeat_keeps_a_claim_alive,
    yield_requeues_without_counting_a_failure,
    temporary_failures_back_off_then_fail_permanently,
    permanent_failure_records_its_reason,
    awaken_makes_a_waiting_task_runnable_now,
    an_object_runs_one_task_at_a_time,
    yield_merges_into_a_task_queued_meanwhile,
    schedule_rolls_back_with_its_transaction,
    waiting_worker_is_woken_by_notification_not_poll,
    task_notifications_go_to_one_live_daemon_or_else_to_everyone,
    hand_back_returns_the_task_unchanged,
    crashed_runs_count_and_stop_at_the_limit,
    a_claimed_update_holds_its_objects_lock_until_it_completes,
    a_commit_wakes_one_idle_worker_not_all,
    a_commit_that_makes_three_tasks_wakes_three_idle_workers,
    a_lease_reader_wakes_for_its_own_lease_only,
    a_lease_reader_wakes_for_another_processes_write,
    a_processs_first_lease_reader_hears_a_write_made_while_its_listener_connected,
    a_process_hears_tasks_and_lease_changes_whichever_it_needed_first,
    a_lease_reader_is_given_what_this_process_wrote_but_reads_another_processes_write,
    a_lease_pass_reads_its_lease_resource_commands_hand_offs_and_blueprints_version_at_once,
    a_lease_request_stores_the_lease_its_event_and_its_update_task_at_once,
    a_lease_write_put_off_to_the_commit_is_written_once_or_superseded,
    side_writes_are_seen_by_the_next_statement_and_kept_or_undone_with_their_transaction,
    a_worker_returns_at_the_due_time_of_a_task_it_requeued,
    a_dropped_transaction_is_rolled_back_and_frees_the_writer,
    transactions_cancelled_at_any_point_leave_the_writer_clean,
    a_busy_worker_claims_its_next_task_with_the_last_ones_completion,
    a_task_behind_a_live_claim_is_not_due_until_the_claim_ends_and_then_runs_at_once,
    a_hand_over_passes_over_a_registration_being_dropped_without_waiting,
    a_handlers_last_write_commits_with_its_completion_and_only_with_it,
    notifications_follow_their_commit_and_failing_do_not_undo_it,
);

const TTL: Duration = Duration::from_secs(30);

async fn scheduled_task_is_claimed_once_and_completed(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s
        .schedule(NewTask::new("test.echo").payload(serde_json::json!({"x": 1})))
        .await?;
    let t = s.claim("w1", TTL).await?.expect("a runnable task");
    ensure!(t.id == id && t.kind == "test.echo" && t.payload["x"] == 1);
    ensure!(
        s.claim("w2", TTL).await?.is_none(),
        "a claimed task must not be claimed twice"
    );
    s.complete(&t, Completion::Done).await?;
    let row = s.task(id).await?;
    ensure!(row.state == TaskState::Done && row.finished_at.is_some());
    ensure!(s.claim("w2", TTL).await?.is_none());
    Ok(())
}

async fn future_run_at_is_honoured(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let due = now_ms() + 1500;
    s.schedule(NewTask::new("test.later").run_at(due)).await?;
    ensure!(
        s.claim("w", TTL).await?.is_none(),
        "a task must not run before its time"
    );
    ensure!(s.next_due().await? == Some(due));
    let signal = s.task_signal().await;
    s.wait_for_tasks(signal, Duration::from_secs(5)).await;
    let mut t = s.claim("w", TTL).await?;
    // The wait ends at the due time; allow for clock granularity.
    while t.is_none() {
        ensure!(
            now_ms() < due + 2000,
            "task not runnable 2 s after its time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        t = s.claim("w", TTL).await?;
    }
    ensure!(now_ms() >= due, "claimed before run_at");
    Ok(())
}

async fn update_tasks_of_one_object_coalesce(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let obj = ObjectRef::lease(LeaseId(7));
    let later = now_ms() + 60_000;
    let a = s
        .schedule(NewTask::update(obj).run_at(later).priority(1))
        .await?;
    let b = s
        .schedule(NewTask::update(obj).run_at(later - 1000).priority(5))
        .await?;
    let c = s
        .schedule(NewTask::update(obj).run_at(later + 1000).priority(0))
        .await?;
    ensure!(
        a == b && b == c,
        "duplicates must coalesce into one queued task: {a} {b} {c}"
    );
    let row = s.task(a).await?;
    ensure!(row.run_at == later - 1000, "earliest run_at wins");
    ensure!(row.priority == 5, "highest priority wins");
    ensure!(s.tasks_for(&obj.key()).await?.len() == 1);
    // Another object is independent.
    let d = s
        .schedule(NewTask::update(ObjectRef::lease(LeaseId(8))))
        .await?;
    ensure!(d != a);
    Ok(())
}

async fn expired_claim_is_taken_over_and_the_old_worker_cannot_complete(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s.schedule(NewTask::new("test.crash")).await?;
    let old = s
        .claim("dead-worker", Duration::from_millis(500))
        .await?
        .expect("task");
    ensure!(
        s.claim("w2", TTL).await?.is_none(),
        "live claim must block others"
    );
    let mut new = None;
    wait_until(Duration::from_secs(5), "claim expiry", async || {
        new = s.claim("w2", TTL).await.unwrap();
        new.is_some()
    })
    .await?;
    let new = new.unwrap();
    ensure!(
        new.id == id && new.token > old.token,
        "takeover must raise the token"
    );
    ensure!(
        new.attempts == 1,
        "the crashed run counts as an attempt, got {}",
        new.attempts
    );
    let err = s.complete(&old, Completion::Done).await.unwrap_err();
    ensure!(
        matches!(err, StoreError::LostClaim { .. }),
        "stale completion must fail loudly: {err}"
    );
    ensure!(
        s.heartbeat(&old, TTL).await.is_err(),
        "stale heartbeat must fail"
    );
    s.complete(&new, Completion::Done).await?;
    ensure!(s.task(id).await?.state == TaskState::Done);
    Ok(())
}

async fn heartbeat_keeps_a_claim_alive(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    s.schedule(NewTask::new("test.long")).await?;
    let ttl = Duration::from_millis(600);
    let t = s.claim("w1", ttl).await?.expect("task");
    let start = Instant::now();
    while start.elapsed() < ttl * 4 {
        s.heartbeat(&t, ttl).await?;
        ensure!(
            s.claim("w2", TTL).await?.is_none(),
            "a heartbeating claim must not be taken over"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    s.complete(&t, Completion::Done).await?;
    Ok(())
}

async fn yield_requeues_without_counting_a_failure(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s.schedule(NewTask::new("test.yield")).await?;
    let t = s.claim("w", TTL).await?.expect("task");
    let at = now_ms() + 60_000;
    s.complete(
        &t,
        Completion::Requeue {
            run_at: at,
            failure: None,
        },
    )
    .await?;
    let row = s.task(id).await?;
    ensure!(
        row.state == TaskState::Queued
            && row.run_at == at
            && row.attempts == 0
            && row.last_error.is_none()
    );
    ensure!(
        s.claim("w", TTL).await?.is_none(),
        "yielded task waits for its time"
    );
    Ok(())
}

struct Always(Outcome);

impl Handler for Always {
    async fn handle(&self, _task: &ClaimedTask) -> Handled {
        self.0.clone().into()
    }
}

async fn temporary_failures_back_off_then_fail_permanently(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s
        .schedule(NewTask::new("test.flaky").max_attempts(3))
        .await?;
    let mut cfg = WorkerConfig::new("w");
    cfg.retry_base = Duration::from_millis(40);
    let handler = Always(Outcome::Retry("connection reset".into()));
    let mut runs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.task(id).await?.state != TaskState::Failed {
        ensure!(Instant::now() < deadline, "task never failed for good");
        if let Some(t) = s.claim("w", TTL).await? {
            runs.push(Instant::now());
            let before = now_ms();
            run_claimed(s, &handler, &cfg, &t).await?;
            let after = now_ms();
            if runs.len() < 3 {
                let row = s.task(id).await?;
                ensure!(row.state == TaskState::Queued && row.attempts == runs.len() as i64);
                // Set when the outcome was recorded: between `before` and
                // `after`, plus the backoff for this attempt.
                let expect = 40 * (1 << (runs.len() - 1));
                ensure!(
                    row.run_at >= before + expect && row.run_at <= after + expect,
                    "backoff: run_at {} not in [{}, {}]",
                    row.run_at,
                    before + expect,
                    after + expect
                );
            }
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let row = s.task(id).await?;
    ensure!(runs.len() == 3, "ran {} times, expected 3", runs.len());
    ensure!(row.attempts == 3 && row.last_error.as_deref() == Some("connection reset"));
    ensure!(
        cfg.backoff(1) == Duration::from_millis(40) && cfg.backoff(3) == Duration::from_millis(160)
    );
    cfg.retry_cap = Duration::from_millis(100);
    ensure!(
        cfg.backoff(30) == Duration::from_millis(100),
        "backoff is capped"
    );
    Ok(())
}

async fn permanent_failure_records_its_reason(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s.schedule(NewTask::new("test.bad")).await?;
    let t = s.claim("w", TTL).await?.expect("task");
    run_claimed(
        s,
        &Always(Outcome::Fail("no such blueprint".into())),
        &WorkerConfig::new("w"),
        &t,
    )
    .await?;
    let row = s.task(id).await?;
    ensure!(
        row.state == TaskState::Failed && row.last_error.as_deref() == Some("no such blueprint")
    );
    ensure!(row.attempts == 0, "a permanent failure is not a retry");
    ensure!(s.claim("w", TTL).await?.is_none());
    Ok(())
}

async fn awaken_makes_a_waiting_task_runnable_now(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s
        .schedule(NewTask::new("test.wait").run_at(now_ms() + 3_600_000))
        .await?;
    ensure!(s.claim("w", TTL).await?.is_none());
    ensure!(s.awaken(&[id]).await? == 1);
    let t = s.claim("w", TTL).await?.expect("awakened task is runnable");
    ensure!(t.id == id);
    // Awakening a claimed or unknown task does nothing.
    ensure!(s.awaken(&[id, drydock_model::TaskId(999_999)]).await? == 0);
    Ok(())
}

async fn an_object_runs_one_task_at_a_time(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let obj = ObjectRef::lease(LeaseId(1));
    let first = s.schedule(NewTask::update(obj)).await?;
    let running = s.claim("w1", TTL).await?.expect("task");
    ensure!(running.id == first);
    let second = s.schedule(NewTask::update(obj)).await?;
    ensure!(
        second != first,
        "a running task does not absorb new work: a new pass is queued"
    );
    ensure!(
        s.claim("w2", TTL).await?.is_none(),
        "the object's next pass waits for the running one"
    );
    s.complete(&running, Completion::Done).await?;
    let next = s.claim("w2", TTL).await?.expect("next pass");
    ensure!(next.id == second);
    Ok(())
}

async fn yield_merges_into_a_task_queued_meanwhile(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let obj = ObjectRef::resource(drydock_model::ResourceId(3));
    let first = s.schedule(NewTask::update(obj)).await?;
    let t = s.claim("w", TTL).await?.expect("task");
    let newer = s
        .schedule(NewTask::update(obj).run_at(now_ms() + 50_000))
        .await?;
    let soon = now_ms() + 1000;
    s.complete(
        &t,
        Completion::Requeue {
            run_at: soon,
            failure: None,
        },
    )
    .await?;
    let queued: Vec<_> = s
        .tasks_for(&obj.key())
        .await?
        .into_iter()
        .filter(|t| t.state == TaskState::Queued)
        .collect();
    ensure!(
        queued.len() == 1 && queued[0].id == newer,
        "exactly one queued task per object"
    );
    ensure!(
        queued[0].run_at == soon,
        "the merged task runs at the earlier time"
    );
    ensure!(s.task(first).await?.state == TaskState::Done);
    Ok(())
}

async fn schedule_rolls_back_with_its_transaction(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let mut tx = s.begin().await?;
    let id = tx.schedule(NewTask::new("test.never")).await?;
    tx.rollback().await?;
    ensure!(matches!(s.task(id).await, Err(StoreError::NotFound { .. })));
    ensure!(s.claim("w", TTL).await?.is_none());
    Ok(())
}

async fn waiting_worker_is_woken_by_notification_not_poll(db: &TestDb) -> anyhow::Result<()> {
    // The producer is another store with its own connections, as another
    // process would be: the wake-up must travel through LISTEN/NOTIFY
    // (PostgreSQL) or the data_version watch (SQLite).
    let producer = db.connect_again().await;
    let waited = worker_woken_by_another_process(&db.store, &producer).await?;
    ensure!(
        waited < Duration::from_secs(5),
        "woken after {waited:?}: the notification did not arrive"
    );
    Ok(())
}

/// PostgreSQL: a task notification goes to one daemon that beat lately,
/// chosen at random, on its own channel (so one daemon's idle worker
/// claims, not one in every daemon); to the broadcast channel when no
/// daemon is fresh; and a daemon's store hears what is routed to it.
async fn task_notifications_go_to_one_live_daemon_or_else_to_everyone(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_store::queue::NOTIFY_CHANNEL;
    if db.backend != drydock_testkit::Backend::Postgres {
        return Ok(());
    }
    let s = &db.store;
    let mut raw = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(&db.url).await?;
    let mut channel_of = async |daemon: &str| -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT 'drydock_tasks_' || md5($1)")
            .bind(daemon.to_owned())
            .fetch_one(&mut raw)
            .await?)
    };
    let (a, b) = (channel_of("daemon-a").await?, channel_of("daemon-b").await?);
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await?;
    listener
        .listen_all([NOTIFY_CHANNEL, a.as_str(), b.as_str()])
        .await?;
    // Where the notifications of `n` schedules (each its own commit) go.
    let mut send = async |n: usize| -> anyhow::Result<Vec<String>> {
        let mut got = Vec::new();
        for _ in 0..n {
            s.schedule(NewTask::new("test.routed").run_at(now_ms() + 3_600_000))
                .await?;
            let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
                .await
                .context("no notification")??;
            got.push(note.channel().to_owned());
        }
        // Each went to one channel only.
        ensure!(
            tokio::time::timeout(Duration::from_millis(100), listener.recv())
                .await
                .is_err(),
            "a notification went to more than one channel"
        );
        Ok(got)
    };

    ensure!(
        send(3).await?.iter().all(|c| c == NOTIFY_CHANNEL),
        "no daemon yet: to everyone"
    );

    s.daemon_heartbeat("daemon-a", "h", 1).await?;
    s.daemon_heartbeat("daemon-b", "h", 2).await?;
    let got = send(30).await?;
    ensure!(
        got.iter().all(|c| *c == a || *c == b),
        "to one daemon each: {got:?}"
    );
    ensure!(
        got.contains(&a) && got.contains(&b),
        "spread over the live daemons: {got:?}"
    );

    s.daemon_stopped("daemon-a").await?;
    ensure!(
        send(5).await?.iter().all(|c| *c == b),
        "a stopped daemon gets none"
    );

    // A daemon that has not beaten for a minute is not sent to.
    sqlx::query("UPDATE daemons SET heartbeat_at = heartbeat_at - 60000")
        .execute(&mut raw)
        .await?;
    ensure!(
        send(3).await?.iter().all(|c| c == NOTIFY_CHANNEL),
        "no fresh daemon: to everyone"
    );

    // A daemon's store hears what is routed to it (and only that reaches
    // it: it is the only fresh daemon).
    let daemon = db.connect_again().await;
    daemon.serve_tasks_as("daemon-a").await?;
    s.daemon_heartbeat("daemon-a", "h", 1).await?;
    let waited = worker_woken_by_another_process(&daemon, s).await?;
    ensure!(
        waited < Duration::from_secs(5),
        "woken after {waited:?}: the routed notification did not arrive"
    );
    Ok(())
}

/// How long a worker of `s` waits for a task `producer` (another process)
/// schedules.
async fn worker_woken_by_another_process(s: &Store, producer: &Store) -> anyhow::Result<Duration> {
    let s = s.clone();
    let poll = Duration::from_secs(20);
    let waiter = tokio::spawn(async move {
        let signal = s.task_signal().await;
        let start = Instant::now();
        s.wait_for_tasks(signal, poll).await;
        start.elapsed()
    });
    // Tasks due in an hour: neither the due time nor the 20 s poll can end
    // the wait, only the notification their scheduling sends. Keep sending
    // (the waiter may not be listening yet) until it wakes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waiter.is_finished() && Instant::now() < deadline {
        producer
            .schedule(NewTask::new("test.wake").run_at(now_ms() + 3_600_000))
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(tokio::time::timeout(Duration::from_secs(10), waiter).await??)
}

async fn a_lease_request_stores_the_lease_its_event_and_its_update_task_at_once(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_store::lease::{LeaseFilter, NewLease};
    use drydock_store::log::{LogFilter, NewLog};
    use serde_json::json;
    let s = &db.store;
    let new = NewLease {
        priority: 7,
        ..crate::host_lease()
    };
    let queued = || NewLog::new("lease.queued").data(json!({ "type": "host" }));
    let lease = s.request_lease(&new, queued()).await?;
    ensure!(lease == s.lease(lease.id).await?, "{lease:?}");
    ensure!(lease.status == drydock_model::LeaseStatus::Pending && lease.priority == 7);
    let tasks = s.tasks_for(&lease.object().key()).await?;
    ensure!(tasks.len() == 1, "{tasks:?}");
    let task = &tasks[0];
    ensure!(task.state == TaskState::Queued && task.kind == "lease.update");
    ensure!(
        task.priority == 7 && task.run_at == lease.created_at,
        "{task:?}"
    );
    let logs = s
        .logs(&LogFilter {
            lease: Some(lease.id),
            ..Default::default()
        })
        .await?;
    ensure!(
        logs.len() == 1 && logs[0].kind == "lease.queued",
        "{logs:?}"
    );
    ensure!(logs[0].data == json!({ "type": "host" }));
    // Claimed like any update task.
    let claimed = s
        .claim("w", TTL)
        .await?
        .context("the lease's task is runnable")?;
    ensure!(claimed.object_key.as_deref() == Some(lease.object().key().as_str()));

    // PostgreSQL: other processes' workers are told (SQLite's watch sees
    // any commit), for a request and for a command alike.
    if db.backend == drydock_testkit::Backend::Postgres {
        let mut listener = sqlx::postgres::PgListener::connect(&db.url).await?;
        listener
            .listen(drydock_store::queue::NOTIFY_CHANNEL)
            .await?;
        s.request_lease(&new, queued()).await?;
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .context("no notification of the request")??;
        s.enqueue_command(
            "user:a",
            lease.object(),
            drydock_model::CommandKind::Release,
            json!({}),
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .context("no notification of the command")??;
    }

    // Refused as a whole: nothing of it is stored.
    let count =
        async || -> anyhow::Result<usize> { Ok(s.leases(&LeaseFilter::default()).await?.len()) };
    let before = count().await?;
    let bad = NewLease {
        resource_type: String::new(),
        ..crate::host_lease()
    };
    ensure!(matches!(
        s.request_lease(&bad, queued()).await,
        Err(StoreError::Invalid { .. })
    ));
    ensure!(matches!(
        s.request_lease(&new, NewLog::new("")).await,
        Err(StoreError::Invalid { .. })
    ));
    ensure!(count().await? == before, "a refused request stored a lease");
    Ok(())
}

async fn hand_back_returns_the_task_unchanged(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s.schedule(NewTask::new("test.shutdown")).await?;
    let t = s.claim("w", TTL).await?.expect("task");
    s.hand_back(&t).await?;
    let row = s.task(id).await?;
    ensure!(row.state == TaskState::Queued && row.attempts == 0 && row.claim_owner.is_none());
    ensure!(s.claim("w2", TTL).await?.map(|t| t.id) == Some(id));
    Ok(())
}

async fn crashed_runs_count_and_stop_at_the_limit(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let id = s
        .schedule(NewTask::new("test.poison").max_attempts(2))
        .await?;
    let short = Duration::from_millis(30);
    s.claim("w", short).await?.expect("first run");
    let mut claimed = 1;
    wait_until(Duration::from_secs(5), "poison task to fail", async || {
        if let Some(_t) = s.claim("w", short).await.unwrap() {
            claimed += 1;
        }
        s.task(id).await.unwrap().state == TaskState::Failed
    })
    .await?;
    ensure!(claimed == 2, "claimed {claimed} times, expected 2");
    let row = s.task(id).await?;
    ensure!(
        row.last_error
            .unwrap_or_default()
            .contains("gave up after 2 attempts")
    );
    Ok(())
}

async fn a_claimed_update_holds_its_objects_lock_until_it_completes(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let object = ObjectRef::lease(LeaseId(41));
    let key = object.key();
    s.schedule(NewTask::update(object)).await?;
    let t = s.claim("w1", TTL).await?.expect("task");
    let lock = t.lock.clone().expect("the lock comes with the claim");
    ensure!(lock.name() == key && lock.owner() == "w1");
    let state = s.lock_state(&key).await?.expect("lock row");
    ensure!(state.is_held(now_ms()) && state.token == lock.token());
    ensure!(
        s.try_lock(&key, "other", TTL).await?.is_none(),
        "nobody else may take the object while its task runs"
    );
    // The heartbeat extends the lock with the claim.
    s.heartbeat(&t, Duration::from_secs(60)).await?;
    let renewed = s.lock_state(&key).await?.expect("lock row");
    ensure!(renewed.expires_at > state.expires_at && renewed.token == lock.token());
    s.complete(&t, Completion::Done).await?;
    ensure!(
        !s.lock_state(&key)
            .await?
            .expect("lock row")
            .is_held(now_ms()),
        "completing the task releases its lock"
    );

    // Held by someone else at claim time: the claim goes on without it.
    let other = s.try_lock(&key, "admin", TTL).await?.expect("free again");
    s.schedule(NewTask::update(object)).await?;
    let t = s.claim("w1", TTL).await?.expect("task");
    ensure!(t.lock.is_none());
    s.complete(&t, Completion::Done).await?;
    ensure!(
        s.lock_state(&key).await?.expect("lock row").token == other.token(),
        "a task that did not take the lock leaves it to its holder"
    );
    Ok(())
}

async fn a_commit_wakes_one_idle_worker_not_all(db: &TestDb) -> anyhow::Result<()> {
    // Four idle workers wait; one commit makes one task. One of them looks:
    // not all four claiming at once.
    listening_for_tasks(&db.store).await?;
    tasks_wake_as_many_of_four_workers(&db.store, &db.store, 1).await
}

async fn a_commit_that_makes_three_tasks_wakes_three_idle_workers(
    db: &TestDb,
) -> anyhow::Result<()> {
    // One idle worker per task made, at once: not one worker chasing the
    // next (nor all of them). Committed in the workers' process, and on
    // PostgreSQL in another (a notification per task; SQLite's watch
    // sees one commit, and the claims chain from there).
    listening_for_tasks(&db.store).await?;
    tasks_wake_as_many_of_four_workers(&db.store, &db.store, 3).await?;
    if db.store.dialect() == drydock_store::Dialect::Postgres {
        let other = db.connect_again().await;
        tasks_wake_as_many_of_four_workers(&db.store, &other, 3).await?;
    }
    Ok(())
}

/// Four idle workers of `s` wait; `writer` commits `tasks` tasks at once:
/// as many workers wake, and no more.
async fn tasks_wake_as_many_of_four_workers(
    s: &Store,
    writer: &Store,
    tasks: usize,
) -> anyhow::Result<()> {
    let (ready, mut registered) = tokio::sync::mpsc::channel(4);
    let (done, mut woken) = tokio::sync::mpsc::channel(4);
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let (s, ready, done) = (s.clone(), ready.clone(), done.clone());
        waiters.push(tokio::spawn(async move {
            let signal = s.task_signal().await;
            ready.send(()).await.ok();
            s.wait_for_tasks(signal, Duration::from_secs(20)).await;
            done.send(()).await.ok();
        }));
    }
    for _ in 0..4 {
        registered.recv().await;
    }
    // Due in an hour: only the commit's wake-ups can end a wait.
    let mut tx = writer.begin().await?;
    for _ in 0..tasks {
        tx.schedule(NewTask::new("test.wake").run_at(now_ms() + 3_600_000))
            .await?;
    }
    tx.commit().await?;
    for n in 1..=tasks {
        tokio::time::timeout(Duration::from_secs(5), woken.recv())
            .await
            .with_context(|| format!("only {} of {tasks} workers woken", n - 1))?;
    }
    // Another wake-up would follow at once; give it a generous moment.
    let more = tokio::time::timeout(Duration::from_millis(300), woken.recv()).await;
    ensure!(more.is_err(), "{tasks} task(s) woke another idle worker");
    for w in waiters {
        w.abort();
    }
    Ok(())
}

async fn a_lease_reader_wakes_for_its_own_lease_only(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let (a, b) = (
        s.insert_lease(&crate::host_lease()).await?,
        s.insert_lease(&crate::host_lease()).await?,
    );
    listening(s).await?;
    let mut signal = s.lease_signal(a.id).await;
    let (tx_woken, mut woken) = tokio::sync::oneshot::channel();
    let reader = async move {
        signal.wait(Duration::from_secs(20)).await;
        tx_woken.send(()).ok();
    };
    let writer = async {
        write_lease(s, b.id, "other").await?;
        // Another lease's write must not wake the reader.
        let early = tokio::time::timeout(Duration::from_millis(300), &mut woken).await;
        ensure!(early.is_err(), "woken by a write to another lease");
        write_lease(s, a.id, "mine").await?;
        tokio::time::timeout(Duration::from_secs(5), &mut woken)
            .await
            .map_err(|_| anyhow::anyhow!("not woken by a write to its lease"))??;
        Ok(())
    };
    let ((), result) = tokio::join!(reader, writer);
    result
}

/// Yields twice (300 ms each), then is done.
struct YieldTwice(std::sync::atomic::AtomicU32);

impl Handler for YieldTwice {
    async fn handle(&self, _: &ClaimedTask) -> Handled {
        match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 | 1 => Outcome::Yield(Duration::from_millis(300)),
            _ => Outcome::Done,
        }
        .into()
    }
}

async fn a_worker_returns_at_the_due_time_of_a_task_it_requeued(db: &TestDb) -> anyhow::Result<()> {
    // After its completion the worker sees nothing due and waits for the
    // requeued task's time, not for its (here unreachable) poll.
    let s = db.store.clone();
    let id = s.schedule(NewTask::new("test.yield")).await?;
    let handler = std::sync::Arc::new(YieldTwice(Default::default()));
    let mut cfg = WorkerConfig::new("w");
    cfg.poll = Duration::from_secs(600);
    one_worker_until_done(&s, handler.clone(), cfg, &[id]).await?;
    ensure!(handler.0.load(std::sync::atomic::Ordering::SeqCst) == 3);
    Ok(())
}

async fn a_dropped_transaction_is_rolled_back_and_frees_the_writer(
    db: &TestDb,
) -> anyhow::Result<()> {
    // An error path drops its transaction without ending it: nothing it
    // wrote lands, and the database is free for the next writer at once —
    // in this process and in another (on SQLite a transaction left open
    // would hold the file's write lock).
    let s = &db.store;
    let mut tx = s.begin().await?;
    let id = tx.schedule(NewTask::new("test.dropped")).await?;
    drop(tx);
    let other = db.connect_again().await;
    for store in [s, &other] {
        let written = schedule_within(store, "the writer was not freed").await?;
        ensure!(s.task(written).await.is_ok());
    }
    // (SQLite may give the rolled-back id to a later row.)
    ensure!(
        s.task(id).await.map_or(true, |t| t.kind != "test.dropped"),
        "the dropped transaction's write landed"
    );
    Ok(())
}

async fn a_lease_reader_wakes_for_another_processes_write(db: &TestDb) -> anyhow::Result<()> {
    // The writer is another store with its own connections, as another
    // process would be: the wake-up travels through NOTIFY (PostgreSQL) or
    // the data_version watch (SQLite), not through the reader's poll.
    let writer = db.connect_again().await;
    let waited = reader_woken_by_another_process(&db.store, &writer).await?;
    ensure!(
        waited < Duration::from_secs(5),
        "woken after {waited:?}: another process's write did not reach the reader"
    );
    Ok(())
}

/// A short-lived process (the `drydock lease` CLI) waits for a lease
/// right after it starts. On PostgreSQL its listener is still connecting
/// then, and a notification sent before it listens is lost: another
/// process may already have activated the lease. So once the listener
/// listens, its process's readers look again — as after a reconnection —
/// rather than at their safety poll. (On SQLite the watch takes its first
/// reading before the reader looks; nothing can be lost.)
async fn a_processs_first_lease_reader_hears_a_write_made_while_its_listener_connected(
    db: &TestDb,
) -> anyhow::Result<()> {
    if db.store.dialect() == drydock_store::Dialect::Sqlite {
        return Ok(());
    }
    let (fresh, writer) = (db.connect_again().await, db.connect_again().await);
    let lease = writer.insert_lease(&crate::host_lease()).await?;
    let before = fresh.lease(lease.id).await?;
    // How long a signal's wait lasts (its poll: 20 s).
    let waited = async |mut signal: drydock_store::queue::LeaseSignal<'_>| {
        let started = Instant::now();
        signal.wait(Duration::from_secs(20)).await;
        started.elapsed()
    };
    let signal = fresh.lease_signal(lease.id).await;
    // Written at once, maybe before the listener this signal started
    // listens — and even if not: the look wakes the reader all the same,
    // so the wait ends without the 20 s poll either way.
    write_lease(&writer, lease.id, "written while the listener connects").await?;
    let waited_for_write = waited(signal).await;
    ensure!(
        waited_for_write < Duration::from_secs(5),
        "woken after {waited_for_write:?}: a write made before the listener listened could be missed"
    );
    ensure!(
        fresh.lease(lease.id).await? != before,
        "the write is there to read"
    );
    // The mechanism, without a race: a first listener's look wakes a
    // reader of a lease nobody writes.
    let quiet = db.connect_again().await;
    let waited_unwritten = waited(quiet.lease_signal(lease.id).await).await;
    ensure!(
        waited_unwritten < Duration::from_secs(5),
        "a reader waited {waited_unwritten:?}: the listener did not have it look once listening"
    );
    Ok(())
}

/// Wait until the fresh store `s`'s listener listens (PostgreSQL): it
/// then has every reader look once (see
/// `a_processs_first_lease_reader_hears_a_write_made_while_its_listener_connected`);
/// a test of which writes wake a reader starts after that.
async fn listening(s: &Store) -> anyhow::Result<()> {
    if s.dialect() == drydock_store::Dialect::Postgres {
        let mut signal = s.lease_signal(LeaseId(0)).await;
        let started = Instant::now();
        signal.wait(Duration::from_secs(5)).await;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "the listener did not start listening"
        );
    }
    Ok(())
}

/// [`listening`], for task notifications: the listener's first look
/// wakes every idle worker once.
async fn listening_for_tasks(s: &Store) -> anyhow::Result<()> {
    if s.dialect() == drydock_store::Dialect::Postgres {
        let signal = s.task_signal().await;
        let started = Instant::now();
        s.wait_for_tasks(signal, Duration::from_secs(5)).await;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "the listener did not start listening"
        );
    }
    Ok(())
}

/// How long a reader of a lease in `s` waits for `writer` (another
/// process) to write it.
async fn reader_woken_by_another_process(s: &Store, writer: &Store) -> anyhow::Result<Duration> {
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let mut signal = s.lease_signal(lease.id).await;
    let woken = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    let reader = async {
        signal.wait(Duration::from_secs(20)).await;
        woken.store(true, std::sync::atomic::Ordering::SeqCst);
        started.elapsed()
    };
    // Keep writing (the watch may not have its baseline yet) until it wakes.
    let write = async {
        let mut n = 0;
        while !woken.load(std::sync::atomic::Ordering::SeqCst)
            && started.elapsed() < Duration::from_secs(5)
        {
            n += 1;
            write_lease(writer, lease.id, &format!("write {n}")).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    };
    let (waited, written) = tokio::join!(reader, write);
    written?;
    Ok(waited)
}

async fn a_process_hears_tasks_and_lease_changes_whichever_it_needed_first(
    db: &TestDb,
) -> anyhow::Result<()> {
    // On PostgreSQL a process listens only to what it needs so far: a new
    // need must make it listen for that too. Both orders.
    let other = db.connect_again().await;
    let readers_first = db.connect_again().await;
    let workers_first = db.connect_again().await;
    let bound = Duration::from_secs(5);
    let waited = reader_woken_by_another_process(&readers_first, &other).await?;
    ensure!(waited < bound, "reader first: woken after {waited:?}");
    let waited = worker_woken_by_another_process(&readers_first, &other).await?;
    ensure!(waited < bound, "then a worker: woken after {waited:?}");
    let waited = worker_woken_by_another_process(&workers_first, &other).await?;
    ensure!(waited < bound, "worker first: woken after {waited:?}");
    let waited = reader_woken_by_another_process(&workers_first, &other).await?;
    ensure!(waited < bound, "then a reader: woken after {waited:?}");
    Ok(())
}

async fn transactions_cancelled_at_any_point_leave_the_writer_clean(
    db: &TestDb,
) -> anyhow::Result<()> {
    // A caller can stop waiting anywhere (an HTTP client hangs up): while
    // taking the connection, after BEGIN went out, in a statement, during
    // COMMIT. Cut 200 transactions off after growing delays; every later
    // transaction must still start cleanly and commit.
    let s = &db.store;
    for i in 0..200u64 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 25), async {
            let mut tx = s.begin().await?;
            tx.schedule(NewTask::new("test.cut")).await?;
            tx.commit().await?;
            anyhow::Ok(())
        })
        .await;
    }
    let id = schedule_within(s, "the writer was left unusable").await?;
    ensure!(s.task(id).await?.kind == "test.after");
    Ok(())
}

async fn a_lease_pass_reads_its_lease_resource_commands_hand_offs_and_blueprints_version_at_once(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_model::{CommandKind, ResourceId};
    use serde_json::json;
    let s = &db.store;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let other = s.insert_lease(&crate::host_lease()).await?;
    let (obj, other_obj) = (ObjectRef::lease(lease.id), ObjectRef::lease(other.id));

    let read = s.lease_for_pass(lease.id).await?;
    ensure!(read.lease == lease, "{:?}", read.lease);
    ensure!(read.commands.is_empty() && !read.handed_over);

    // Three commands, the first consumed; one for another lease.
    let first = s
        .enqueue_command("user:a", obj, CommandKind::Renew, json!({"until": 5}))
        .await?;
    s.enqueue_command("user:b", obj, CommandKind::Renew, json!({"until": 7}))
        .await?;
    s.enqueue_command("user:c", obj, CommandKind::Release, json!({}))
        .await?;
    s.enqueue_command("user:d", other_obj, CommandKind::Release, json!({}))
        .await?;
    let mut tx = s.begin().await?;
    ensure!(tx.consume_command(first).await?);
    tx.commit().await?;
    let read = s.lease_for_pass(lease.id).await?;
    ensure!(read.lease == lease, "one lease, however many commands");
    ensure!(
        read.commands == s.pending_commands(obj).await?,
        "{:?}",
        read.commands
    );
    let seen: Vec<(&str, CommandKind)> = read
        .commands
        .iter()
        .map(|c| (c.author.as_str(), c.command))
        .collect();
    ensure!(
        seen == [
            ("user:b", CommandKind::Renew),
            ("user:c", CommandKind::Release)
        ],
        "{seen:?}"
    );
    ensure!(read.commands[0].payload == json!({"until": 7}));
    ensure!(!read.handed_over);

    // A slot handed to the lease is seen until it is settled.
    let event = "capacity(host)".to_owned();
    let mut tx = s.begin().await?;
    tx.wait_on(obj, 0, 1, std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    let mut tx = s.begin().await?;
    tx.hand_over(&event, ResourceId(9)).await?;
    tx.commit().await?;
    wait_until(Duration::from_secs(5), "the hand-off", async || {
        s.lease_for_pass(lease.id)
            .await
            .is_ok_and(|r| r.handed_over)
    })
    .await?;
    ensure!(!s.lease_for_pass(other.id).await?.handed_over);
    let mut tx = s.begin().await?;
    tx.settle_handoffs(obj, 0, 1, Some(ResourceId(9))).await?;
    tx.commit().await?;
    ensure!(!s.lease_for_pass(lease.id).await?.handed_over);

    // The blueprints' version moves with every blueprint created, edited
    // or disabled, and only then.
    let version = async || -> anyhow::Result<i64> {
        Ok(s.lease_for_pass(lease.id).await?.blueprints_version)
    };
    let mut seen = vec![version().await?];
    let bp = s
        .create_blueprint("admin", "one", "host.local", Default::default())
        .await?;
    seen.push(version().await?);
    s.create_blueprint("admin", "two", "host.local", Default::default())
        .await?;
    seen.push(version().await?);
    s.edit_blueprint("admin", bp.id, None, Some("uno"), &Default::default())
        .await?;
    seen.push(version().await?);
    s.set_blueprint_disabled("admin", bp.id, true).await?;
    seen.push(version().await?);
    seen.push(version().await?);
    ensure!(
        seen.windows(2).take(4).all(|w| w[0] < w[1]) && seen[4] == seen[5],
        "blueprints' versions {seen:?}"
    );

    // The resource the lease is on comes with it (none before).
    ensure!(s.lease_for_pass(lease.id).await?.resource.is_none());
    let mut tx = s.begin().await?;
    let r = tx
        .insert_resource(&drydock_store::resource::NewResource {
            blueprint_id: bp.id,
            resource_type: "host".into(),
            status: drydock_model::ResourceStatus::Active,
            attributes: json!({"dir": "/tmp/x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            until: None,
        })
        .await?;
    tx.commit().await?;
    let lock = s.try_lock(&obj.key(), "w", TTL).await?.context("lock")?;
    let mut on = s.lease(lease.id).await?;
    on.resource_id = Some(r.id);
    on.status = drydock_model::LeaseStatus::Acquired;
    let mut tx = s.begin().await?;
    tx.save_lease(&on, &lock).await?;
    tx.commit().await?;
    s.unlock(lock).await?;
    let read = s.lease_for_pass(lease.id).await?;
    ensure!(
        read.resource == Some(s.resource(r.id).await?),
        "{:?}",
        read.resource
    );
    ensure!(read.lease.resource_id == Some(r.id) && read.commands.len() == 2);

    match s.lease_for_pass(LeaseId(other.id.0 + 100)).await {
        Err(StoreError::NotFound { what: "lease", .. }) => Ok(()),
        other => anyhow::bail!("a missing lease: {other:?}"),
    }
}

async fn a_lease_write_put_off_to_the_commit_is_written_once_or_superseded(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let lock = s
        .try_lock(&lease.object().key(), "w", TTL)
        .await?
        .context("lock")?;
    let noted = |note: &str| {
        let mut l = lease.clone();
        l.failure = Some(note.into());
        l
    };

    // Put off and rolled back: nothing written.
    let mut tx = s.begin().await?;
    tx.save_lease_at_commit(noted("rolled back"), &lock).await?;
    tx.rollback().await?;
    ensure!(s.lease(lease.id).await? == lease);

    // Put off and committed: written once, at the commit.
    let mut tx = s.begin().await?;
    tx.save_lease_at_commit(noted("at commit"), &lock).await?;
    ensure!(
        s.lease(lease.id).await? == lease,
        "written before the commit"
    );
    tx.commit().await?;
    let stored = s.lease(lease.id).await?;
    ensure!(stored.failure.as_deref() == Some("at commit"));
    ensure!(stored.version == lease.version + 1, "{}", stored.version);

    // Put off, then superseded by a write from the same version: one write.
    let mut tx = s.begin().await?;
    let mut first = stored.clone();
    first.failure = Some("first".into());
    tx.save_lease_at_commit(first.clone(), &lock).await?;
    first.failure = Some("second".into());
    let saved = tx.save_lease(&first, &lock).await?;
    tx.commit().await?;
    let stored2 = s.lease(lease.id).await?;
    ensure!(stored2 == saved && stored2.failure.as_deref() == Some("second"));
    ensure!(stored2.version == stored.version + 1, "{}", stored2.version);

    // A read of the lease inside the transaction sees the write put off.
    let mut tx = s.begin().await?;
    let mut third = stored2.clone();
    third.failure = Some("read".into());
    tx.save_lease_at_commit(third, &lock).await?;
    ensure!(tx.lease(lease.id).await?.failure.as_deref() == Some("read"));
    tx.commit().await?;
    ensure!(s.lease(lease.id).await?.version == stored2.version + 1);

    // Refused when put off, not at the commit.
    let mut big = s.lease(lease.id).await?;
    big.attributes.insert(
        "x".into(),
        "y".repeat(drydock_store::lease::MAX_ATTRIBUTES_LEN).into(),
    );
    let mut tx = s.begin().await?;
    ensure!(matches!(
        tx.save_lease_at_commit(big, &lock).await,
        Err(StoreError::Invalid { .. })
    ));
    tx.commit().await?;
    s.unlock(lock).await?;
    Ok(())
}

async fn side_writes_are_seen_by_the_next_statement_and_kept_or_undone_with_their_transaction(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_model::CommandKind;
    use serde_json::json;
    let s = &db.store;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let obj = lease.object();
    let lock = s.try_lock(&obj.key(), "w", TTL).await?.context("lock")?;
    let key = vec!["slot.a".to_owned()];
    let events = vec!["capacity(host)".to_owned()];
    // A lease that holds a slot, waits for an event and has a command.
    let setup = async || -> anyhow::Result<drydock_model::CommandId> {
        let mut tx = s.begin().await?;
        tx.acquire_slot_locks(&obj.key(), &key).await?;
        tx.wait_on(obj, 0, 1, &events).await?;
        tx.commit().await?;
        Ok(
            s.enqueue_command("user:a", obj, CommandKind::Release, json!({}))
                .await?,
        )
    };
    let holders = async || -> anyhow::Result<usize> { Ok(s.slot_lock_holders(&key).await?.len()) };
    let state = async || -> anyhow::Result<(usize, usize, usize)> {
        Ok((
            holders().await?,
            s.waits_of(obj).await?.len(),
            s.pending_commands(obj).await?.len(),
        ))
    };

    // Undone with a rollback (after riding with a statement) and with a drop.
    // The three side writes, then (with a note) a lease write carrying them.
    let writes = async |tx: &mut drydock_store::Tx,
                        command: drydock_model::CommandId,
                        note: Option<&str>|
           -> anyhow::Result<()> {
        tx.free_slot_locks(&obj.key()).await?;
        tx.stop_waiting(obj).await?;
        tx.mark_consumed(command).await?;
        if let Some(note) = note {
            let mut l = s.lease(lease.id).await?;
            l.failure = Some(note.into());
            tx.save_lease(&l, &lock).await?;
        }
        Ok(())
    };
    let command = setup().await?;
    let mut tx = s.begin().await?;
    writes(&mut tx, command, Some("rolled back")).await?;
    tx.rollback().await?;
    ensure!(
        state().await? == (1, 1, 1),
        "rolled back: {:?}",
        state().await?
    );
    let mut tx = s.begin().await?;
    tx.free_slot_locks(&obj.key()).await?;
    tx.stop_waiting(obj).await?;
    drop(tx);
    ensure!(state().await? == (1, 1, 1), "dropped: {:?}", state().await?);

    // Seen by the transaction's next statement: the slot, freed, can be
    // taken by another owner in the same transaction.
    let mut tx = s.begin().await?;
    tx.free_slot_locks(&obj.key()).await?;
    tx.acquire_slot_locks("lease:999", &key).await?;
    tx.release_slot_locks("lease:999").await?;
    tx.commit().await?;
    ensure!(holders().await? == 0);

    // Kept with a commit, whether they rode with a lease write or went
    // alone at the commit.
    let mut tx = s.begin().await?;
    tx.acquire_slot_locks(&obj.key(), &key).await?;
    tx.commit().await?;
    let mut tx = s.begin().await?;
    writes(&mut tx, command, Some("with the sides")).await?;
    tx.commit().await?;
    ensure!(
        state().await? == (0, 0, 0),
        "committed: {:?}",
        state().await?
    );
    ensure!(s.lease(lease.id).await?.failure.as_deref() == Some("with the sides"));
    let command = setup().await?;
    let mut tx = s.begin().await?;
    writes(&mut tx, command, None).await?;
    tx.commit().await?;
    ensure!(state().await? == (0, 0, 0), "alone: {:?}", state().await?);
    Ok(())
}

/// Write a note into lease `id` under its lock, as its worker would.
async fn write_lease(s: &Store, id: LeaseId, note: &str) -> anyhow::Result<()> {
    let lock = s
        .try_lock(&ObjectRef::lease(id).key(), "w", TTL)
        .await?
        .expect("lock");
    let mut lease = s.lease(id).await?;
    lease.failure = Some(note.into());
    let mut tx = s.begin().await?;
    tx.save_lease(&lease, &lock).await?;
    tx.commit().await?;
    s.unlock(lock).await?;
    Ok(())
}

/// Schedule a `test.after` task within 5 s, or fail saying `stuck`.
async fn schedule_within(s: &Store, stuck: &str) -> anyhow::Result<drydock_model::TaskId> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut tx = s.begin().await?;
        let id = tx.schedule(NewTask::new("test.after")).await?;
        tx.commit().await?;
        anyhow::Ok(id)
    })
    .await
    .map_err(|_| anyhow::anyhow!("{stuck}"))?
}

/// Records which tasks ran, in order, and whether each held its object's
/// lock while it ran.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, bool)>>);

impl Handler for Recorder {
    async fn handle(&self, task: &ClaimedTask) -> Handled {
        let key = task.object_key.clone().unwrap_or_default();
        let locked = task.lock.is_some();
        self.0.lock().unwrap().push((key, locked));
        Outcome::Done.into()
    }
}

async fn a_busy_worker_claims_its_next_task_with_the_last_ones_completion(
    db: &TestDb,
) -> anyhow::Result<()> {
    // Three runnable tasks, one worker: a claim, then each completion
    // claims the next in its own transaction (with the next object's
    // lock), and the last completion finds none — 4 commits, not 6.
    let s = db.store.clone();
    let mut ids = Vec::new();
    for (key, priority) in [("lease:1", 3), ("lease:2", 2), ("lease:3", 1)] {
        let task = NewTask::new("test.chain").object(key).priority(priority);
        ids.push(s.schedule(task).await?);
    }
    let before = s.commits();
    let handler = std::sync::Arc::new(Recorder::default());
    let mut cfg = WorkerConfig::new("w");
    cfg.claim_ttl = Duration::from_secs(600);
    cfg.poll = Duration::from_secs(600);
    one_worker_until_done(&s, handler.clone(), cfg, &ids).await?;
    let ran = handler.0.lock().unwrap().clone();
    let expected: Vec<(String, bool)> = ["lease:1", "lease:2", "lease:3"]
        .iter()
        .map(|k| (k.to_string(), true))
        .collect();
    ensure!(ran == expected, "ran {ran:?}");
    let commits = s.commits() - before;
    ensure!(commits == 4, "{commits} commits for three tasks");
    Ok(())
}

async fn a_task_behind_a_live_claim_is_not_due_until_the_claim_ends_and_then_runs_at_once(
    db: &TestDb,
) -> anyhow::Result<()> {
    // Another process claimed A; B, of the same object, waits behind it.
    // Idle workers must not count B due (they would claim in a loop,
    // finding nothing, until A ends), and A's completion must tell them.
    let other = db.connect_again().await;
    let object = "test:blocked";
    other
        .schedule(NewTask::new("test.a").object(object))
        .await?;
    let a = other.claim("other", TTL).await?.context("A")?;
    let b = other
        .schedule(NewTask::new("test.b").object(object))
        .await?;
    ensure!(a.kind == "test.a" && b != a.id);
    let s = db.store.clone();
    let due = s.next_due().await?.context("something is due")?;
    ensure!(
        due > now_ms() + 10_000,
        "B counted due {} ms from now behind A's live claim",
        due - now_ms()
    );

    // A worker here (poll 20 s) runs a task of its own, then idles behind A.
    let handler = std::sync::Arc::new(Recorder::default());
    let mut cfg = WorkerConfig::new("w");
    cfg.poll = Duration::from_secs(20);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(drydock_store::queue::run_worker(
        s.clone(),
        handler.clone(),
        cfg,
        rx,
    ));
    let c = s.schedule(NewTask::new("test.c")).await?;
    wait_until(
        Duration::from_secs(5),
        "the worker's own task",
        async || s.task(c).await.is_ok_and(|t| t.state == TaskState::Done),
    )
    .await?;
    ensure!(
        handler.0.lock().unwrap().len() == 1,
        "B ran behind A's claim"
    );

    // A ends in the other process: B runs at once (not at the poll).
    other.complete(&a, Completion::Done).await?;
    let ran = wait_until(Duration::from_secs(5), "B, once A ended", async || {
        s.task(b).await.is_ok_and(|t| t.state == TaskState::Done)
    })
    .await;
    stop.send(true).ok();
    tokio::time::timeout(Duration::from_secs(10), worker).await??;
    ran?;
    let keys: Vec<String> = handler
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    ensure!(keys == ["", object], "ran {keys:?}");
    Ok(())
}

async fn a_hand_over_passes_over_a_registration_being_dropped_without_waiting(
    db: &TestDb,
) -> anyhow::Result<()> {
    // Two leases wait for a slot; the first in line is ending its wait
    // (its pass drops its registration, in a transaction still open). A
    // slot handed over meanwhile goes to the second at once: waiting for
    // the first's transaction is how two firings taking rows in different
    // orders deadlocked on PostgreSQL. (SQLite has one writer: there the
    // first's transaction ends before the hand-over begins.)
    use drydock_model::ResourceId;
    let s = &db.store;
    let (first, second) = (
        s.insert_lease(&crate::host_lease()).await?,
        s.insert_lease(&crate::host_lease()).await?,
    );
    let event = "capacity(host)".to_owned();
    let mut tx = s.begin().await?;
    tx.wait_on(first.object(), 0, 1, std::slice::from_ref(&event))
        .await?;
    tx.wait_on(second.object(), 0, 2, std::slice::from_ref(&event))
        .await?;
    tx.commit().await?;

    let mut dropping = s.begin().await?;
    dropping.wait_on(first.object(), 0, 1, &[]).await?;
    let still_open = match db.backend {
        drydock_testkit::Backend::Postgres => Some(dropping),
        drydock_testkit::Backend::Sqlite => {
            dropping.commit().await?;
            None
        }
    };
    let mut handing = s.begin().await?;
    handing.hand_over(&event, ResourceId(9)).await?;
    tokio::time::timeout(Duration::from_secs(3), handing.commit())
        .await
        .context("the hand-over waited for the registration being dropped")??;
    if let Some(dropping) = still_open {
        dropping.commit().await?;
    }
    ensure!(
        s.lease_for_pass(second.id).await?.handed_over,
        "the second in line got nothing"
    );
    ensure!(!s.lease_for_pass(first.id).await?.handed_over);
    ensure!(
        s.waits_of(second.object()).await?.is_empty(),
        "its registration was taken"
    );
    Ok(())
}

/// Run one worker with `handler` until every task of `ids` is done (at
/// most 10 s), then stop it and wait for it to return.
async fn one_worker_until_done<H: Handler + 'static>(
    s: &Store,
    handler: std::sync::Arc<H>,
    cfg: WorkerConfig,
    ids: &[drydock_model::TaskId],
) -> anyhow::Result<()> {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(drydock_store::queue::run_worker(
        s.clone(),
        handler,
        cfg,
        rx,
    ));
    let done = wait_until(Duration::from_secs(10), "the tasks to finish", async || {
        let mut all = true;
        for id in ids {
            all &= s.task(*id).await.is_ok_and(|t| t.state == TaskState::Done);
        }
        all
    })
    .await;
    // Stop it and wait for it, so every commit it made has returned (the
    // last one is visible to readers before its COMMIT has answered).
    stop.send(true).ok();
    let stopped = tokio::time::timeout(Duration::from_secs(10), worker).await;
    done?;
    ensure!(stopped.is_ok_and(|r| r.is_ok()), "the worker did not stop");
    Ok(())
}

/// Writes a log event for its task in a transaction it leaves open for the
/// completion, and ends with the given outcome.
struct TailWriter(Store, Outcome);

impl TailWriter {
    fn event(task: &ClaimedTask) -> String {
        format!("test.tail.{}", task.id.0)
    }
}

impl Handler for TailWriter {
    async fn handle(&self, task: &ClaimedTask) -> Handled {
        let mut tx = self.0.begin().await.expect("a transaction");
        tx.log(drydock_store::log::NewLog::new(Self::event(task)))
            .await
            .expect("a log write");
        Handled {
            outcome: self.1.clone(),
            tail: Some(tx),
        }
    }
}

async fn tail_written(s: &Store, task: &ClaimedTask) -> anyhow::Result<bool> {
    let all = s
        .logs(&drydock_store::log::LogFilter {
            latest: true,
            ..Default::default()
        })
        .await?;
    Ok(all.iter().any(|l| l.kind == TailWriter::event(task)))
}

async fn a_handlers_last_write_commits_with_its_completion_and_only_with_it(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let cfg = WorkerConfig::new("w");
    // Done: the write and the completion are one commit.
    let id = s.schedule(NewTask::new("test.tail")).await?;
    let task = s.claim("w", TTL).await?.expect("task");
    let before = s.commits();
    let done = TailWriter(s.clone(), Outcome::Done);
    ensure!(run_claimed(s, &done, &cfg, &task).await? == Outcome::Done);
    let commits = s.commits() - before;
    ensure!(
        commits == 1,
        "{commits} commits for a write and its completion"
    );
    ensure!(s.task(id).await?.state == TaskState::Done);
    ensure!(tail_written(s, &task).await?, "the tail was not written");

    // Requeued: the write commits first, the task is queued again.
    let id = s.schedule(NewTask::new("test.tail")).await?;
    let task = s.claim("w", TTL).await?.expect("task");
    let requeue = TailWriter(s.clone(), Outcome::Yield(Duration::from_secs(60)));
    run_claimed(s, &requeue, &cfg, &task).await?;
    ensure!(s.task(id).await?.state == TaskState::Queued);
    ensure!(tail_written(s, &task).await?, "a requeue lost the tail");

    // A claim lost to another worker: its completion fails and the write
    // is rolled back with it (fenced by the claim).
    let id = s.schedule(NewTask::new("test.tail.lost")).await?;
    let old = s
        .claim("dead-worker", Duration::from_millis(300))
        .await?
        .expect("task");
    let mut new = None;
    wait_until(Duration::from_secs(5), "claim expiry", async || {
        new = s.claim("w2", TTL).await.unwrap();
        new.is_some()
    })
    .await?;
    ensure!(new.is_some_and(|t| t.id == id));
    let err = run_claimed(s, &done, &cfg, &old).await.unwrap_err();
    ensure!(matches!(err, StoreError::LostClaim { .. }), "{err}");
    ensure!(
        !tail_written(s, &old).await?,
        "a write of a lost claim was committed"
    );
    Ok(())
}

/// A reader woken by this process's write is given the lease as written
/// (no read back); once another process has written it, nothing is given
/// (the reader must read), until this process writes it again.
async fn a_lease_reader_is_given_what_this_process_wrote_but_reads_another_processes_write(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let other = db.connect_again().await;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    listening(s).await?;
    let mut signal = s.lease_signal(lease.id).await;
    ensure!(signal.written().is_none(), "nothing written yet");
    write_lease(s, lease.id, "here").await?;
    ensure!(
        signal.wait(Duration::from_secs(5)).await,
        "woken by the write"
    );
    let mut next = s.lease_signal(lease.id).await;
    drop(signal);
    let given = next.written().cloned().context("the write is given")?;
    ensure!(given == s.lease(lease.id).await?, "given {given:?}");
    ensure!(given.failure.as_deref() == Some("here"));

    // Another process writes: its change is heard (NOTIFY, or the SQLite
    // watch, which may not have its baseline yet: it writes until heard),
    // and what this process wrote is no longer given.
    let started = Instant::now();
    loop {
        write_lease(&other, lease.id, "there").await?;
        if next.wait(Duration::from_millis(100)).await {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "the other process's write was not heard"
        );
    }
    let mut last = s.lease_signal(lease.id).await;
    drop(next);
    ensure!(
        last.written().is_none(),
        "gave {:?} after another process wrote",
        last.written()
    );
    write_lease(s, lease.id, "here again").await?;
    ensure!(last.wait(Duration::from_secs(5)).await);
    let again = s.lease_signal(lease.id).await;
    let given = again.written().context("the new write is given")?;
    ensure!(given.failure.as_deref() == Some("here again"), "{given:?}");
    ensure!(*given == s.lease(lease.id).await?);
    Ok(())
}

/// PostgreSQL: the workers' and readers' notifications follow the commit
/// that made the work, in a transaction of their own: in it, they would
/// hold PostgreSQL's notification-queue lock until the commit is on disk,
/// and notifying commits would wait for each other's flushes. So a
/// notification that fails leaves the work committed, and said to be.
/// (Made to fail here by hiding the daemon list notifications are routed
/// by.)
async fn notifications_follow_their_commit_and_failing_do_not_undo_it(
    db: &TestDb,
) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    if db.store.dialect() == drydock_store::Dialect::Sqlite {
        return Ok(());
    }
    let s = &db.store;
    let mut admin = sqlx::PgConnection::connect(&db.url).await?;
    sqlx::raw_sql("ALTER TABLE daemons RENAME TO daemons_hidden")
        .execute(&mut admin)
        .await?;
    let mut tx = s.begin().await?;
    let task = tx.schedule(NewTask::new("test.echo")).await?;
    let committed = tx.commit().await;
    let queued =
        drydock_store::log::NewLog::new("lease.queued").data(serde_json::json!({ "type": "host" }));
    let requested = s.request_lease(&crate::host_lease(), queued).await;
    let sent = match &requested {
        Ok(lease) => {
            s.enqueue_command(
                "user:a",
                lease.object(),
                drydock_model::CommandKind::Release,
                serde_json::json!({}),
            )
            .await
        }
        Err(_) => Err(StoreError::Database("no lease to send to".into())),
    };
    sqlx::raw_sql("ALTER TABLE daemons_hidden RENAME TO daemons")
        .execute(&mut admin)
        .await?;
    committed.context("a transaction that made work")?;
    let lease = requested.context("a lease request")?;
    let command = sent.context("a command")?;
    ensure!(s.task(task).await?.state == TaskState::Queued);
    ensure!(s.lease(lease.id).await? == lease);
    ensure!(
        s.pending_commands(lease.object())
            .await?
            .iter()
            .any(|c| c.id == command),
        "the command is stored"
    );
    Ok(())
}
