//! Every transition of the lease and resource state machines.

use crate::harness::{Harness, none};
use anyhow::ensure;
use drydock_engine::client;
use drydock_model::{CommandKind, LeaseStatus, ObjectRef, ResourceStatus};
use drydock_store::log::LogFilter;
use drydock_testkit::{TestDb, wait_until};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

backend_tests!(
    lease_goes_pending_acquired_active_released_destroyed_on_a_new_resource,
    lease_activation_failure_breaks_the_lease_with_its_reason,
    temporary_failures_are_retried_then_succeed,
    temporary_failures_that_persist_break_the_lease,
    resource_activation_failure_breaks_it_and_the_lease_gets_another,
    an_acquired_lease_whose_resource_goes_away_reacquires,
    a_lease_whose_resource_is_torn_down_during_its_setup_reacquires,
    releasing_a_resource_releases_its_leases,
    releasing_a_pending_lease_destroys_it,
    a_broken_resource_releases_its_leases,
    activate_on_acquire_goes_pending_to_active_in_one_step,
    an_impossible_lease_breaks_while_pending_with_the_reason,
    releasing_an_acquired_lease_destroys_it,
    breaking_an_active_lease_destroys_it_with_the_reason,
    releasing_a_pending_resource_destroys_it_and_its_waiting_lease_builds_another,
    expired_lease_is_released_and_renew_extends_it,
    gc_prunes_only_destroyed_objects_and_reschedules_lost_tasks,
    a_reused_lease_is_active_in_one_commit_and_one_write_and_destroyed_in_one,
    a_release_is_committed_before_a_remote_teardown_runs,
    an_object_whose_task_failed_for_good_is_broken_with_the_reason_not_rescheduled,
    a_panicking_blueprint_hook_breaks_its_object_after_its_attempts_and_the_worker_serves_on,
);

async fn lease_goes_pending_acquired_active_released_destroyed_on_a_new_resource(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"resource-activation": "ok"}))
        .await?;
    let lease = h.lease(none()).await?;
    ensure!(lease.status == LeaseStatus::Pending);
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    let rid = active.resource_id.expect("resource");
    ensure!(
        active.acquired_at.is_some() && active.activated_at.is_some() && active.waiting.is_none()
    );
    let r = h.store.resource(rid).await?;
    ensure!(
        r.status == ResourceStatus::Active,
        "resource pending -> active"
    );
    client::release_lease(&h.store, lease.id, "user:test").await?;
    h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    let logs = h.lease_logs(lease.id).await?;
    for expected in [
        "lease.queued",
        "resource.allocated",
        "lease.waiting",
        "lease.acquired",
        "lease.activated",
        "lease.released",
        "lease.destroyed",
    ] {
        ensure!(
            logs.iter().any(|l| l == expected),
            "missing {expected} in {logs:?}"
        );
    }
    let released = h
        .store
        .logs(&LogFilter {
            lease: Some(lease.id),
            ..Default::default()
        })
        .await?;
    let by = released
        .iter()
        .find(|l| l.kind == "lease.released")
        .unwrap();
    ensure!(
        by.data["by"] == "user:test",
        "the release records who asked"
    );
    ensure!(h.probe.did_release.lock().unwrap()[&lease.id.0] == 1);
    ensure!(
        h.store.resource(rid).await?.status == ResourceStatus::Active,
        "the resource is kept for the next lease"
    );
    ensure!(
        h.store
            .slot_locks_of(&lease.object().key())
            .await?
            .is_empty()
    );
    // A second release of a destroyed lease is refused clearly.
    let err = client::release_lease(&h.store, lease.id, "user:test")
        .await
        .unwrap_err();
    ensure!(
        err.to_string()
            .contains("cannot be released: it is destroyed"),
        "{err}"
    );
    h.stop().await;
    Ok(())
}

async fn lease_activation_failure_breaks_the_lease_with_its_reason(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "fail"}))
        .await?;
    let lease = h.lease(none()).await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(
        done.failure.as_deref() == Some("lease activation failed: disk full"),
        "{:?}",
        done.failure
    );
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.contains(&"lease.broken".to_string())
            && logs.last().map(String::as_str) == Some("lease.destroyed"),
        "{logs:?}"
    );
    ensure!(
        !logs.contains(&"lease.released".to_string()),
        "acquired -> broken -> destroyed"
    );
    h.stop().await;
    Ok(())
}

async fn temporary_failures_are_retried_then_succeed(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "flaky-2"}))
        .await?;
    let lease = h.lease(none()).await?;
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    ensure!(active.failure.is_none());
    ensure!(
        h.probe.lease_activations.load(Ordering::SeqCst) == 3,
        "two transient failures, then success"
    );
    h.stop().await;
    Ok(())
}

async fn temporary_failures_that_persist_break_the_lease(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "temporary"}))
        .await?;
    let lease = h.lease(none()).await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    let failure = done.failure.unwrap_or_default();
    ensure!(
        failure.contains("gave up after 4 attempts: connection reset"),
        "{failure}"
    );
    ensure!(
        h.probe.lease_activations.load(Ordering::SeqCst) == 4,
        "bounded retries"
    );
    h.stop().await;
    Ok(())
}

async fn resource_activation_failure_breaks_it_and_the_lease_gets_another(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"resource-activation": "fail-once"}))
        .await?;
    let lease = h.lease(none()).await?;
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    let first = h
        .store
        .resources(None, None, 10)
        .await?
        .into_iter()
        .find(|r| Some(r.id) != active.resource_id)
        .expect("a first resource");
    let store = h.store.clone();
    wait_until(
        Duration::from_secs(10),
        "broken resource destroyed",
        async || store.resource(first.id).await.unwrap().status == ResourceStatus::Destroyed,
    )
    .await?;
    let first = h.store.resource(first.id).await?;
    ensure!(
        first.failure.as_deref() == Some("first resource activation failed"),
        "{:?}",
        first.failure
    );
    let rlogs: Vec<String> = h
        .store
        .logs(&LogFilter {
            resource: Some(first.id),
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|l| l.kind)
        .collect();
    ensure!(
        rlogs.contains(&"resource.broken".into()) && rlogs.contains(&"resource.destroyed".into()),
        "{rlogs:?}"
    );
    h.stop().await;
    Ok(())
}

/// A resource released while a lease is being set up on it is torn down
/// under the setup, which fails; that failure is the teardown's, so the
/// lease starts over on another resource instead of breaking.
async fn a_lease_whose_resource_is_torn_down_during_its_setup_reacquires(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint(
        "pool",
        json!({"lease-activation": "torn-down-once", "limit": 2}),
    )
    .await?;
    let lease = h.lease(none()).await?;
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.contains(&"lease.reacquire".into()) && active.failure.is_none(),
        "{logs:?}"
    );
    let first = h
        .store
        .resources(None, None, 10)
        .await?
        .into_iter()
        .map(|r| r.id)
        .min();
    ensure!(
        active.resource_id != first,
        "still on the torn-down resource"
    );
    h.stop().await;
    Ok(())
}

async fn an_acquired_lease_whose_resource_goes_away_reacquires(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"lease-activation": "hold", "limit": 2}))
        .await?;
    h.probe.hold.store(true, Ordering::SeqCst);
    let lease = h.lease(none()).await?;
    let acquired = h.wait_status(lease.id, LeaseStatus::Acquired).await?;
    let first = acquired.resource_id.unwrap();
    client::release_resource(&h.store, first, "admin").await?;
    let store = h.store.clone();
    wait_until(Duration::from_secs(10), "reacquire", async || {
        store
            .lease(lease.id)
            .await
            .unwrap()
            .resource_id
            .is_some_and(|r| r != first)
    })
    .await?;
    // A late "resource gone" from the first resource (its destroy pass
    // sends one too) must not release the lease from its new resource.
    let stale = h
        .store
        .enqueue_command(
            &ObjectRef::resource(first).key(),
            lease.object(),
            CommandKind::Release,
            json!({ "resource_gone": first.0 }),
        )
        .await?;
    h.probe.hold.store(false, Ordering::SeqCst);
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    ensure!(active.resource_id != Some(first));
    wait_until(
        Duration::from_secs(10),
        "stale command consumed",
        async || {
            let pending = store.pending_commands(lease.object()).await.unwrap();
            pending.iter().all(|c| c.id != stale)
        },
    )
    .await?;
    ensure!(
        h.store.lease(lease.id).await?.status == LeaseStatus::Active,
        "a stale resource-gone command released the lease"
    );
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.contains(&"lease.reacquire".into()) && !logs.contains(&"lease.released".into()),
        "{logs:?}"
    );
    ensure!(h.store.resource(first).await?.status == ResourceStatus::Destroyed);
    h.stop().await;
    Ok(())
}

async fn releasing_a_resource_releases_its_leases(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"limit": 1})).await?;
    let a = h.lease(none()).await?;
    let b = h.lease(none()).await?;
    let ra = h.wait_status(a.id, LeaseStatus::Active).await?.resource_id;
    let rb = h.wait_status(b.id, LeaseStatus::Active).await?.resource_id;
    ensure!(ra == rb, "unlimited leases share the one resource");
    client::release_resource(&h.store, ra.unwrap(), "admin").await?;
    h.wait_status(a.id, LeaseStatus::Destroyed).await?;
    h.wait_status(b.id, LeaseStatus::Destroyed).await?;
    let store = h.store.clone();
    wait_until(Duration::from_secs(10), "resource destroyed", async || {
        store.resource(ra.unwrap()).await.unwrap().status == ResourceStatus::Destroyed
    })
    .await?;
    ensure!(h.probe.destroyed_resources.lock().unwrap().as_slice() == [ra.unwrap().0]);
    ensure!(
        client::release_resource(&h.store, ra.unwrap(), "admin")
            .await
            .is_err(),
        "refused once destroyed"
    );
    h.stop().await;
    Ok(())
}

async fn releasing_a_pending_lease_destroys_it(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    // No blueprint: the lease waits.
    let lease = h.lease(none()).await?;
    h.wait_reason(lease.id, "no-blueprints").await?;
    // Two releases that reach the worker together (in one transaction, so
    // it cannot destroy the lease between them): consumed in order, the
    // second a no-op.
    let mut tx = h.store.begin().await?;
    for _ in 0..2 {
        tx.enqueue_command("user", lease.object(), CommandKind::Release, json!({}))
            .await?;
    }
    tx.commit().await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(done.waiting.is_none() && done.resource_id.is_none());
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.iter().filter(|l| *l == "lease.released").count() == 1,
        "{logs:?}"
    );
    ensure!(
        h.store.waits_of(lease.object()).await?.is_empty(),
        "no wait registration left behind"
    );
    // Once destroyed, a release is refused and says why.
    let refused = client::release_lease(&h.store, lease.id, "user").await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("it is destroyed")),
        "{refused:?}"
    );
    h.stop().await;
    Ok(())
}

async fn expired_lease_is_released_and_renew_extends_it(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({})).await?;
    let mut new = drydock_store::lease::NewLease {
        resource_type: "thing".into(),
        authorizing: drydock_engine::ADMIN.into(),
        until: Some(drydock_store::now_ms() + 400),
        ..Default::default()
    };
    let short = client::request_lease(&h.store, &new).await?;
    new.until = Some(drydock_store::now_ms() + 60_000);
    let renewed = client::request_lease(&h.store, &new).await?;
    h.wait_status(renewed.id, LeaseStatus::Active).await?;
    let target = drydock_store::now_ms() + 120_000;
    client::renew_lease(&h.store, renewed.id, target, "holder").await?;
    let done = h.wait_status(short.id, LeaseStatus::Destroyed).await?;
    let logs = h
        .store
        .logs(&LogFilter {
            lease: Some(short.id),
            ..Default::default()
        })
        .await?;
    let released = logs
        .iter()
        .find(|l| l.kind == "lease.released")
        .expect("released");
    ensure!(released.data["by"] == "expiry", "{:?}", released.data);
    ensure!(
        released.epoch >= done.until.unwrap(),
        "not released before its time"
    );
    let store = h.store.clone();
    wait_until(Duration::from_secs(10), "renewal", async || {
        store.lease(renewed.id).await.unwrap().until == Some(target)
    })
    .await?;
    ensure!(h.store.lease(renewed.id).await?.status == LeaseStatus::Active);
    ensure!(
        client::renew_lease(&h.store, short.id, target, "holder")
            .await
            .is_err(),
        "a destroyed lease cannot be renewed"
    );
    h.stop().await;
    Ok(())
}

async fn gc_prunes_only_destroyed_objects_and_reschedules_lost_tasks(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({})).await?;
    let gone = h.lease(none()).await?;
    let live = h.lease(none()).await?;
    h.wait_status(gone.id, LeaseStatus::Active).await?;
    h.wait_status(live.id, LeaseStatus::Active).await?;
    client::release_lease(&h.store, gone.id, "u").await?;
    h.wait_status(gone.id, LeaseStatus::Destroyed).await?;
    let store = h.store.clone();
    h.stop().await;
    // Everything is older than "now + 1 s": only the destroyed lease's rows go.
    let report = store
        .prune(
            drydock_store::now_ms() + 1000,
            drydock_store::now_ms() + 1000,
            1000,
        )
        .await?;
    ensure!(
        report.logs > 0 && report.commands == 1 && report.tasks > 0,
        "{report:?}"
    );
    // What is left of the destroyed lease's history is what it shares with
    // its still-live resource.
    let left = store
        .logs(&LogFilter {
            lease: Some(gone.id),
            ..Default::default()
        })
        .await?;
    ensure!(left.iter().all(|l| l.resource.is_some()), "{left:?}");
    ensure!(!left.is_empty() && left.len() < 6);
    ensure!(
        !store
            .logs(&LogFilter {
                lease: Some(live.id),
                ..Default::default()
            })
            .await?
            .is_empty(),
        "a live lease's logs are never pruned"
    );
    // A pending lease whose task vanished is found by the sweep.
    let orphan = drydock_store::lease::NewLease {
        resource_type: "thing".into(),
        authorizing: "drydock".into(),
        ..Default::default()
    };
    let orphan = store.insert_lease(&orphan).await?;
    let swept = store.orphaned_objects(100).await?;
    ensure!(swept == vec![orphan.object()], "{swept:?}");
    Ok(())
}

async fn a_broken_resource_releases_its_leases(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"limit": 1})).await?;
    let lease = h.lease(none()).await?;
    let rid = h
        .wait_status(lease.id, LeaseStatus::Active)
        .await?
        .resource_id
        .unwrap();
    let engine = drydock_engine::Engine::new(
        h.store.clone(),
        h.registry.clone(),
        crate::harness::config("operator"),
    );
    crate::harness::break_now(
        &engine,
        drydock_model::ObjectRef::resource(rid),
        "host failed its health check",
    )
    .await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(done.failure.is_none(), "the lease was released, not broken");
    let store = h.store.clone();
    let destroyed = wait_until(
        Duration::from_secs(10),
        "broken resource destroyed",
        async || store.resource(rid).await.unwrap().status == ResourceStatus::Destroyed,
    )
    .await;
    if destroyed.is_err() {
        h.dump().await;
    }
    destroyed?;
    ensure!(
        h.store.resource(rid).await?.failure.as_deref() == Some("host failed its health check")
    );
    let logs = h
        .store
        .logs(&LogFilter {
            lease: Some(lease.id),
            ..Default::default()
        })
        .await?;
    let released = logs
        .iter()
        .find(|l| l.kind == "lease.released")
        .expect("released");
    ensure!(
        released.data["by"] == format!("resource:{rid}"),
        "released by its resource: {:?}",
        released.data
    );
    h.stop().await;
    Ok(())
}

async fn activate_on_acquire_goes_pending_to_active_in_one_step(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "instant"}))
        .await?;
    let lease = h.lease(none()).await?;
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    ensure!(
        active.acquired_at == active.activated_at,
        "acquired and activated at once"
    );
    ensure!(
        h.probe.lease_activations.load(Ordering::SeqCst) == 0,
        "no separate activation step"
    );
    h.stop().await;
    Ok(())
}

async fn releasing_an_acquired_lease_destroys_it(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "hold"}))
        .await?;
    h.probe.hold.store(true, Ordering::SeqCst);
    let lease = h.lease(none()).await?;
    h.wait_status(lease.id, LeaseStatus::Acquired).await?;
    client::release_lease(&h.store, lease.id, "user").await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(done.activated_at.is_none() && done.failure.is_none());
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.contains(&"lease.released".into()) && !logs.contains(&"lease.activated".into()),
        "{logs:?}"
    );
    ensure!(
        h.store
            .slot_locks_of(&lease.object().key())
            .await?
            .is_empty()
    );
    h.stop().await;
    Ok(())
}

async fn breaking_an_active_lease_destroys_it_with_the_reason(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({})).await?;
    let lease = h.lease(none()).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    let engine = drydock_engine::Engine::new(
        h.store.clone(),
        h.registry.clone(),
        crate::harness::config("operator"),
    );
    crate::harness::break_now(&engine, lease.object(), "the holder vanished").await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(done.failure.as_deref() == Some("the holder vanished"));
    let logs = h.lease_logs(lease.id).await?;
    ensure!(
        logs.contains(&"lease.broken".into()) && !logs.contains(&"lease.released".into()),
        "{logs:?}"
    );
    ensure!(
        h.probe
            .did_release
            .lock()
            .unwrap()
            .get(&lease.id.0)
            .is_none(),
        "a broken lease is not 'released'"
    );
    h.stop().await;
    Ok(())
}

async fn releasing_a_pending_resource_destroys_it_and_its_waiting_lease_builds_another(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("pool", json!({"resource-activation": "hold"}))
        .await?;
    h.probe.hold.store(true, Ordering::SeqCst);
    let lease = h.lease(none()).await?;
    let waiting = h.wait_reason(lease.id, "waiting-for-activation").await?;
    let first = drydock_model::ResourceId(waiting.waiting.unwrap()["resource"].as_i64().unwrap());
    ensure!(h.store.resource(first).await?.status == ResourceStatus::Pending);
    client::release_resource(&h.store, first, "admin").await?;
    let store = h.store.clone();
    wait_until(
        Duration::from_secs(10),
        "pending resource destroyed",
        async || store.resource(first).await.unwrap().status == ResourceStatus::Destroyed,
    )
    .await?;
    h.probe.hold.store(false, Ordering::SeqCst);
    let active = h.wait_status(lease.id, LeaseStatus::Active).await?;
    ensure!(
        active.resource_id.is_some_and(|r| r != first),
        "woken by the destroyed resource, it built another"
    );
    h.stop().await;
    Ok(())
}

async fn an_impossible_lease_breaks_while_pending_with_the_reason(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({})).await?;
    let lease = h.lease(json!({"flavor": "never"})).await?;
    let done = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    let failure = done.failure.unwrap_or_default();
    ensure!(
        failure.contains("flavor \"never\" cannot be built"),
        "{failure}"
    );
    ensure!(
        done.resource_id.is_none() && done.acquired_at.is_none(),
        "pending -> broken -> destroyed"
    );
    ensure!(
        h.store.resources(None, None, 10).await?.is_empty(),
        "nothing was built"
    );
    h.stop().await;
    Ok(())
}

/// Claim the next runnable task, which must be `lease`'s, and run one pass
/// over it as a worker would; returns the commits the pass and its
/// completion made.
async fn one_pass(
    h: &Harness,
    engine: &drydock_engine::Engine,
    lease: drydock_model::LeaseId,
) -> anyhow::Result<u64> {
    use drydock_store::queue::{WorkerConfig, run_claimed};
    let cfg = WorkerConfig::new("one-pass");
    let task = h
        .store
        .claim("one-pass", Duration::from_secs(60))
        .await?
        .expect("a runnable task");
    ensure!(
        task.object_key.as_deref() == Some(ObjectRef::lease(lease).key().as_str()),
        "claimed {:?}",
        task.object_key
    );
    let before = h.store.commits();
    run_claimed(&h.store, engine, &cfg, &task).await?;
    Ok(h.store.commits() - before)
}

async fn a_reused_lease_is_active_in_one_commit_and_one_write_and_destroyed_in_one(
    db: &TestDb,
) -> anyhow::Result<()> {
    // No workers: the test runs each pass itself and counts its commits.
    let h = Harness::start(db, 0).await;
    let engine = drydock_engine::Engine::new(
        h.store.clone(),
        h.registry.clone(),
        crate::harness::config("counting"),
    );
    h.blueprint("pool", json!({})).await?;
    let first = h.lease(none()).await?;
    while h.store.lease(first.id).await?.status != LeaseStatus::Active {
        one_pass(&h, &engine, first.id).await?;
    }
    // A second lease shares the active resource: acquiring (resource row
    // locked, lease saved), activating (a local activation) and the task's
    // completion are one transaction.
    let second = h.lease(none()).await?;
    let commits = one_pass(&h, &engine, second.id).await?;
    let active = h.store.lease(second.id).await?;
    ensure!(active.status == LeaseStatus::Active, "{}", active.status);
    ensure!(active.resource_id == h.store.lease(first.id).await?.resource_id);
    ensure!(commits == 1, "{commits} commits from pending to active");
    ensure!(
        active.version == second.version + 1,
        "the lease row was written {} times from pending to active",
        active.version - second.version
    );
    let logs = h.lease_logs(second.id).await?;
    ensure!(
        logs.ends_with(&["lease.acquired".into(), "lease.activated".into()]),
        "{logs:?}"
    );
    let tasks = h.store.tasks_for(&second.object().key()).await?;
    ensure!(
        tasks
            .iter()
            .all(|t| t.state == drydock_store::queue::TaskState::Done),
        "the lease's task is not done"
    );
    // Released: consuming the release, the local teardown, the
    // destruction and the task's completion are one transaction.
    client::release_lease(&h.store, second.id, "user:test").await?;
    let commits = one_pass(&h, &engine, second.id).await?;
    let destroyed = h.store.lease(second.id).await?;
    ensure!(destroyed.status == LeaseStatus::Destroyed, "not destroyed");
    ensure!(commits == 1, "{commits} commits from active to destroyed");
    ensure!(
        destroyed.version == active.version + 1,
        "the lease row was written {} times from active to destroyed",
        destroyed.version - active.version
    );
    let logs = h.lease_logs(second.id).await?;
    ensure!(
        logs.ends_with(&["lease.released".into(), "lease.destroyed".into()]),
        "{logs:?}"
    );
    ensure!(h.probe.did_release.lock().unwrap()[&second.id.0] == 1);
    h.stop().await;
    Ok(())
}

async fn a_release_is_committed_before_a_remote_teardown_runs(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-teardown": "remote"}))
        .await?;
    let lease = h.lease(none()).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    h.probe.hold_teardown.store(true, Ordering::SeqCst);
    client::release_lease(&h.store, lease.id, "user:test").await?;
    // The teardown may be slow remote work: the release is visible to
    // everyone (its transaction committed, the writer free) while it runs.
    h.wait_status(lease.id, LeaseStatus::Released).await?;
    let other = h.lease(none()).await?;
    ensure!(
        h.store.lease(lease.id).await?.status == LeaseStatus::Released,
        "the teardown is held: the lease cannot be destroyed yet"
    );
    h.probe.hold_teardown.store(false, Ordering::SeqCst);
    h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    h.wait_status(other.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}

async fn an_object_whose_task_failed_for_good_is_broken_with_the_reason_not_rescheduled(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_store::queue::{Completion, NewTask, WorkerConfig, run_claimed};
    let store = &db.store;
    let lease = store
        .insert_lease(&drydock_store::lease::NewLease {
            resource_type: "thing".into(),
            authorizing: "drydock".into(),
            ..Default::default()
        })
        .await?;
    // Its update task failed for good (the queue gave up on a crash loop).
    store
        .schedule(NewTask::update(lease.object()).max_attempts(1))
        .await?;
    let task = store
        .claim("w", Duration::from_secs(30))
        .await?
        .expect("its task");
    store
        .complete(&task, Completion::Fail("the worker kept dying".into()))
        .await?;
    ensure!(
        store.orphaned_objects(100).await?.is_empty(),
        "an object whose task failed would be rescheduled to fail again"
    );
    let engine = drydock_engine::Engine::new(
        store.clone(),
        std::sync::Arc::new(drydock_engine::blueprint::Registry::new()),
        crate::harness::config("gc"),
    );
    store
        .schedule(
            NewTask::new(drydock_engine::daemon::GC_TASK).object(drydock_engine::daemon::GC_TASK),
        )
        .await?;
    let gc = store
        .claim("gc", Duration::from_secs(30))
        .await?
        .expect("the gc task");
    ensure!(gc.kind == drydock_engine::daemon::GC_TASK);
    run_claimed(store, &engine, &WorkerConfig::new("gc"), &gc).await?;
    let broken = store.lease(lease.id).await?;
    ensure!(broken.status == LeaseStatus::Broken, "{broken:?}");
    ensure!(
        broken
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("failed for good: the worker kept dying")),
        "{broken:?}"
    );
    Ok(())
}

async fn a_panicking_blueprint_hook_breaks_its_object_after_its_attempts_and_the_worker_serves_on(
    db: &TestDb,
) -> anyhow::Result<()> {
    // One worker: the lease that follows is served by the same loop.
    let h = Harness::start(db, 1).await;
    h.blueprint("pool", json!({"lease-activation": "panic-4"}))
        .await?;
    let lease = h.lease(none()).await?;
    // Broken, then destroyed by its next pass; the failure stays on it.
    let broken = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    ensure!(
        broken
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("panicked") && f.contains("scripted panic")),
        "{broken:?}"
    );
    let logs = h.lease_logs(lease.id).await?;
    let panics = logs.iter().filter(|k| *k == "pass.panicked").count();
    // The harness's engine allows 4 attempts.
    ensure!(panics == 4, "{panics} panics logged: {logs:?}");
    // The worker that ran the panicking hook serves the next lease (whose
    // activation, the fifth, does not panic).
    let next = h.lease(none()).await?;
    h.wait_status(next.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}
