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
    declined_lease_fails_with_who_declined,
    revoking_stops_new_leases_and_can_release_live_ones,
    at_limit_waits_and_is_served_first_come_first_served_within_priority,
    a_freed_slot_the_first_waiter_cannot_use_is_handed_on,
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

/// A lease requested through the client as `object`: it asks for the
/// authorizations it needs.
async fn client_lease(h: &Harness, object: &str) -> anyhow::Result<drydock_store::lease::Lease> {
    Ok(client::queue_lease(
        &h.store,
        &h.registry,
        &client::LeaseRequest {
            resource_type: "thing".into(),
            authorizing: object.into(),
            ..Default::default()
        },
    )
    .await?)
}

/// The authorization `object` requested on `bp`.
async fn requested(
    h: &Harness,
    object: &str,
    bp: drydock_model::BlueprintId,
) -> anyhow::Result<drydock_store::authorization::Authorization> {
    let all = h.store.authorizations(Some(bp), Some(object)).await?;
    ensure!(all.len() == 1, "{all:?}");
    Ok(all[0].clone())
}

async fn unauthorized_lease_waits_until_approved(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    let bp = h.blueprint("guarded", json!({})).await?;
    let lease = client_lease(&h, "ci:plan/7").await?;
    let waiting = h.wait_reason(lease.id, "not-authorized").await?;
    ensure!(waiting.waiting.unwrap()["blueprints"] == json!([bp.0]));
    // The request itself asked for the authorization.
    let auth = requested(&h, "ci:plan/7", bp).await?;
    ensure!(auth.blueprint_state == BlueprintAuthState::Requested && auth.decided_by.is_none());
    // Approval alone (no new request) serves the waiting lease.
    let (decided, _) =
        client::decide_authorization(&h.store, auth.id, client::Decision::Approve, "admin:ann")
            .await?;
    ensure!(decided.decided_by.as_deref() == Some("admin:ann") && decided.decided_at.is_some());
    h.wait_status(lease.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}

async fn declined_lease_fails_with_who_declined(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 1).await;
    let bp = h.blueprint("guarded", json!({})).await?;
    let lease = client_lease(&h, "ci:plan/8").await?;
    h.wait_reason(lease.id, "not-authorized").await?;
    let auth = requested(&h, "ci:plan/8", bp).await?;
    client::decide_authorization(
        &h.store,
        auth.id,
        client::Decision::Decline {
            release_leases: false,
        },
        "admin:bob",
    )
    .await?;
    let failed = h.wait_status(lease.id, LeaseStatus::Destroyed).await?;
    let reason = failed.failure.unwrap_or_default();
    ensure!(
        reason.contains("ci:plan/8 is not authorized") && reason.contains("declined by admin:bob"),
        "{reason}"
    );
    h.stop().await;
    Ok(())
}

async fn revoking_stops_new_leases_and_can_release_live_ones(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    let bp = h.blueprint("guarded", json!({})).await?;
    let first = client_lease(&h, "ci:plan/9").await?;
    let auth = requested(&h, "ci:plan/9", bp).await?;
    client::decide_authorization(&h.store, auth.id, client::Decision::Approve, "admin").await?;
    h.wait_status(first.id, LeaseStatus::Active).await?;
    // Revoke without releasing: the live lease goes on, a new one fails.
    client::decide_authorization(
        &h.store,
        auth.id,
        client::Decision::Decline {
            release_leases: false,
        },
        "admin",
    )
    .await?;
    let second = client_lease(&h, "ci:plan/9").await?;
    let refused = h.wait_status(second.id, LeaseStatus::Destroyed).await?;
    ensure!(refused.failure.unwrap_or_default().contains("declined"));
    ensure!(h.store.lease(first.id).await?.status == LeaseStatus::Active);
    // Revoke again, releasing live leases.
    let (_, released) = client::decide_authorization(
        &h.store,
        auth.id,
        client::Decision::Decline {
            release_leases: true,
        },
        "admin",
    )
    .await?;
    ensure!(released == 1, "{released}");
    h.wait_status(first.id, LeaseStatus::Destroyed).await?;
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

/// A slot freed on an exclusive resource goes to the first waiter only (no
/// thundering herd); when that waiter cannot use it (it asked for another
/// blueprint), it hands it on, so the next waiter gets it — with the
/// safety poll out of reach, only the hand-off can pass this test.
async fn a_freed_slot_the_first_waiter_cannot_use_is_handed_on(db: &TestDb) -> anyhow::Result<()> {
    let h = Harness::start(db, 2).await;
    let a = h
        .blueprint("a", json!({"limit": 1, "lease-limit": 1}))
        .await?;
    let b = h
        .blueprint("b", json!({"limit": 1, "lease-limit": 1}))
        .await?;
    let from = |bp| drydock_store::lease::NewLease {
        resource_type: "thing".into(),
        authorizing: drydock_engine::ADMIN.into(),
        blueprint_ids: vec![bp],
        ..Default::default()
    };
    let holds_a = client::request_lease(&h.store, &from(a)).await?;
    let holds_b = client::request_lease(&h.store, &from(b)).await?;
    h.wait_status(holds_a.id, LeaseStatus::Active).await?;
    h.wait_status(holds_b.id, LeaseStatus::Active).await?;
    // First in line wants b; second wants a.
    let wants_b = client::request_lease(&h.store, &from(b)).await?;
    h.wait_reason(wants_b.id, "at-limit").await?;
    let wants_a = client::request_lease(&h.store, &from(a)).await?;
    h.wait_reason(wants_a.id, "at-limit").await?;
    client::release_lease(&h.store, holds_a.id, "u").await?;
    h.wait_status(wants_a.id, LeaseStatus::Active).await?;
    ensure!(
        h.store.lease(wants_b.id).await?.status == LeaseStatus::Pending,
        "the lease waiting for b was served from a"
    );
    client::release_lease(&h.store, holds_b.id, "u").await?;
    h.wait_status(wants_b.id, LeaseStatus::Active).await?;
    h.stop().await;
    Ok(())
}
