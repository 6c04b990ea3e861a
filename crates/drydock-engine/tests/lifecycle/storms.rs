//! Concurrency by stress: many actors against one real database, bounded in
//! time, invariants checked at the end.

use crate::harness::{Harness, none};
use anyhow::ensure;
use drydock_engine::client;
use drydock_model::{LeaseId, LeaseStatus, ResourceStatus};
use drydock_store::log::LogFilter;
use drydock_testkit::TestDb;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

backend_tests!(release_storm_releases_once, limits_hold_under_contention);

async fn release_storm_releases_once(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 4).await;
    h.blueprint("pool", json!({})).await?;
    let lease = h.lease(none()).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    let start = Instant::now();
    let mut requesters = Vec::new();
    for i in 0..100 {
        let store = if i % 10 == 0 {
            db.connect_again().await
        } else {
            db.store.clone()
        };
        requesters.push(tokio::spawn(async move {
            client::release_lease(&store, lease.id, &format!("requester{i}")).await
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for r in requesters {
        match r.await? {
            Ok(_) => accepted += 1,
            Err(client::ClientError::NotReleasable { .. }) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    let logs = h.lease_logs(lease.id).await?;
    let released = logs.iter().filter(|l| *l == "lease.released").count();
    let destroyed = logs.iter().filter(|l| *l == "lease.destroyed").count();
    let hooks = h.probe.did_release.lock().unwrap()[&lease.id.0];
    println!(
        "{:?}: 100 concurrent releases ({accepted} accepted, {refused} refused as already destroyed): {released} released log, {destroyed} destroyed log, release hook ran {hooks}x, {:?}",
        db.backend,
        start.elapsed()
    );
    ensure!(released == 1 && destroyed == 1 && hooks == 1);
    h.stop().await;
    Ok(())
}

async fn limits_hold_under_contention(db: &TestDb) -> anyhow::Result<()> {
    const LIMIT: usize = 3;
    const LEASES: usize = 24;
    let h = Harness::start(db, 4).await;
    let bp = h
        .blueprint(
            "scarce",
            json!({"limit": LIMIT, "lease-limit": 1, "resource-activation": "ok"}),
        )
        .await?;
    let start = Instant::now();
    let mut ids: Vec<LeaseId> = Vec::new();
    for _ in 0..LEASES {
        ids.push(h.lease(none()).await?.id);
    }
    let mut max_live = 0;
    let mut served = std::collections::HashSet::new();
    while served.len() < LEASES {
        if start.elapsed() >= Duration::from_secs(90) {
            h.dump().await;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "only {} of {LEASES} leases served",
            served.len()
        );
        let live = h
            .store
            .resources(Some(bp), None, 1000)
            .await?
            .into_iter()
            .filter(|r| r.status != ResourceStatus::Destroyed)
            .count();
        max_live = max_live.max(live);
        ensure!(live <= LIMIT, "{live} live resources with limit {LIMIT}");
        for id in &ids {
            if !served.contains(id) && h.store.lease(*id).await?.status == LeaseStatus::Active {
                served.insert(*id);
                client::release_lease(&h.store, *id, "holder").await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in &ids {
        h.wait_status(*id, LeaseStatus::Destroyed).await?;
    }
    let total_resources = h.store.resources(Some(bp), None, 1000).await?.len();
    let max_holding = h.probe.max_holding.load(Ordering::SeqCst);
    let slot_conflicts = h
        .store
        .logs(&LogFilter::default())
        .await?
        .iter()
        .filter(|l| l.kind == "lease.waiting" && l.data["reason"] == "contention")
        .count();
    println!(
        "{:?}: {LEASES} leases, limit {LIMIT}, 4 workers: all served in {:?}; max live resources {max_live}, resources built {total_resources}, max leases on one resource {max_holding}, contention waits {slot_conflicts}",
        db.backend,
        start.elapsed()
    );
    ensure!(
        max_holding == 1,
        "an exclusive resource had {max_holding} leases at once"
    );
    ensure!(
        h.store
            .all_slot_locks()
            .await?
            .iter()
            .all(|(k, _)| k.starts_with("limit(")),
        "lease slot locks leaked"
    );
    let drift = h.store.live_lease_drift().await?;
    ensure!(drift.is_empty(), "live-lease counts wrong: {drift:?}");
    h.stop().await;
    Ok(())
}
