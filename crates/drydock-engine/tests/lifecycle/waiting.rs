//! Explainable waiting, and the event that ends every wait (the safety poll
//! is set far beyond the test deadlines, so only wake-up edges can pass).

use crate::harness::{Harness, none};
use anyhow::ensure;
use drydock_engine::{client, events};
use drydock_model::{LeaseStatus, ResourceStatus};
use drydock_store::authorization::BlueprintAuthState;
use drydock_testkit::{TestDb, wait_until};
use serde_json::json;
use std::time::Duration;

backend_tests!(
    no_blueprints_waits_until_one_is_created,
    unauthorized_lease_waits_until_approved,
    at_limit_waits_and_is_served_first_come_first_served_within_priority,
    idle_resource_is_reclaimed_for_a_lease_that_cannot_use_it,
    disabled_blueprint_stops_new_leases_and_enabling_wakes_them,
);

async fn no_blueprints_waits_until_one_is_created(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    let lease = h.lease(none()).await?;
    let waiting = h.wait_reason(lease.id, "no-blueprints").await?;
    ensure!(
        events::describe_waiting(waiting.waiting.as_ref().unwrap())
            .contains("no enabled blueprint")
    );
    h.blueprint("late", json!({})).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}

async fn unauthorized_lease_waits_until_approved(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    let bp = h.blueprint("guarded", json!({})).await?;
    let lease = h.lease_as("ci:plan/7", none(), 0).await?;
    let waiting = h.wait_reason(lease.id, "not-authorized").await?;
    ensure!(waiting.waiting.unwrap()["blueprints"] == json!([bp.0]));
    let auth = h.store.request_authorization("ci:plan/7", bp).await?;
    h.store
        .decide_authorization(auth.id, BlueprintAuthState::Authorized, "admin")
        .await?;
    h.store.fire(&events::authorization("ci:plan/7")).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}

async fn at_limit_waits_and_is_served_first_come_first_served_within_priority(
    db: &TestDb,
) -> anyhow::Result<()> {
    // One worker, so passes run in queue order.
    let h = Harness::start(db, 1).await;
    let bp = h
        .blueprint("one", json!({"limit": 1, "lease-limit": 1}))
        .await?;
    let first = h.lease(none()).await?;
    h.wait_status(first.id, LeaseStatus::Active).await?;
    let low_old = h.lease_as(drydock_engine::ADMIN, none(), 0).await?;
    let low_new = h.lease_as(drydock_engine::ADMIN, none(), 0).await?;
    let high = h.lease_as(drydock_engine::ADMIN, none(), 5).await?;
    for l in [&low_old, &low_new, &high] {
        let w = h.wait_reason(l.id, "at-limit").await?;
        ensure!(w.waiting.unwrap()["blueprints"] == json!([bp.0]));
    }
    let mut order = Vec::new();
    let mut holder = first.id;
    for _ in 0..3 {
        client::release_lease(&h.store, holder, "u").await?;
        let store = h.store.clone();
        let mut next = None;
        wait_until(
            Duration::from_secs(20),
            "the next lease to become active",
            async || {
                for l in [&low_old, &low_new, &high] {
                    if !order.contains(&l.id)
                        && store.lease(l.id).await.unwrap().status == LeaseStatus::Active
                    {
                        next = Some(l.id);
                        return true;
                    }
                }
                false
            },
        )
        .await?;
        holder = next.unwrap();
        order.push(holder);
    }
    ensure!(
        order == vec![high.id, low_old.id, low_new.id],
        "served {order:?}"
    );
    ensure!(
        h.probe
            .max_holding
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1,
        "exclusive resource shared"
    );
    h.stop().await;
    Ok(())
}

async fn idle_resource_is_reclaimed_for_a_lease_that_cannot_use_it(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    h.blueprint("one", json!({"limit": 1})).await?;
    let red = h.lease(json!({"flavor": "red"})).await?;
    let red_res = h
        .wait_status(red.id, LeaseStatus::Active)
        .await?
        .resource_id
        .unwrap();
    client::release_lease(&h.store, red.id, "u").await?;
    h.wait_status(red.id, LeaseStatus::Destroyed).await?;
    let blue = h.lease(json!({"flavor": "blue"})).await?;
    let active = h.wait_status(blue.id, LeaseStatus::Active).await?;
    ensure!(active.resource_id != Some(red_res));
    ensure!(
        h.store.resource(red_res).await?.status == ResourceStatus::Destroyed,
        "the idle red resource was reclaimed"
    );
    let logs = h.lease_logs(blue.id).await?;
    ensure!(logs.contains(&"lease.reclaim".into()), "{logs:?}");
    h.stop().await;
    Ok(())
}

async fn disabled_blueprint_stops_new_leases_and_enabling_wakes_them(
    db: &TestDb,
) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    let bp = h.blueprint("pool", json!({})).await?;
    client::set_blueprint_disabled(&h.store, "admin", bp, true).await?;
    let lease = h.lease(none()).await?;
    h.wait_reason(lease.id, "no-blueprints").await?;
    client::set_blueprint_disabled(&h.store, "admin", bp, false).await?;
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}
