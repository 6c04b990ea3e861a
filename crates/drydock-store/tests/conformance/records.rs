//! Blueprints with their audit trail, leases, resources, logs,
//! authorizations and daemon heartbeats.

use anyhow::ensure;
use drydock_model::{BlueprintId, LeaseStatus, ResourceStatus};
use drydock_store::StoreError;
use drydock_store::authorization::BlueprintAuthState;
use drydock_store::lease::{LeaseFilter, NewLease};
use drydock_store::log::{LogFilter, NewLog};
use drydock_store::resource::NewResource;
use drydock_testkit::{Backend, TestDb, run};
use serde_json::{Map, Value, json};
use std::time::Duration;

backend_tests!(
    a_transactions_events_are_written_in_order_when_it_commits_and_never_when_it_rolls_back,
    blueprint_edits_are_audited_and_bad_input_changes_nothing,
    leases_are_inserted_listed_and_saved_under_their_lock,
    resources_are_inserted_and_saved_under_their_lock,
    each_resource_counts_the_leases_that_hold_or_wait_for_it,
    logs_are_queried_by_object_time_and_cursor,
    authorization_decisions_are_recorded_and_declines_stick,
    daemon_heartbeats_show_who_is_alive,
    a_failed_statement_poisons_its_transaction_even_when_its_error_was_ignored,
);

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// A resource of `bp`, inserted in a transaction of its own.
async fn resource(
    s: &drydock_store::Store,
    bp: BlueprintId,
    status: ResourceStatus,
    attributes: Value,
) -> anyhow::Result<drydock_store::resource::Resource> {
    let mut tx = s.begin().await?;
    let r = tx
        .insert_resource(&NewResource {
            blueprint_id: bp,
            resource_type: "host".into(),
            status,
            attributes: map(attributes),
            until: None,
        })
        .await?;
    tx.commit().await?;
    Ok(r)
}

async fn blueprint_edits_are_audited_and_bad_input_changes_nothing(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let bp = s
        .create_blueprint(
            "admin",
            "local",
            "host.local",
            map(json!({"root": "/tmp/dd"})),
        )
        .await?;
    ensure!(
        bp.name == "local"
            && bp.kind == "host.local"
            && !bp.disabled
            && bp.fields["root"] == "/tmp/dd"
    );
    let dup = s
        .create_blueprint("admin", "local", "host.local", Map::new())
        .await
        .unwrap_err();
    ensure!(dup.to_string().contains("already exists"), "{dup}");
    let bp2 = s
        .edit_blueprint(
            "alice",
            bp.id,
            Some(bp.version),
            Some("local-2"),
            &map(json!({"root": "/srv", "limit": 3})),
        )
        .await?;
    ensure!(bp2.name == "local-2" && bp2.fields["limit"] == 3 && bp2.version == bp.version + 1);
    let stale = s
        .edit_blueprint(
            "bob",
            bp.id,
            Some(bp.version),
            None,
            &map(json!({"limit": 9})),
        )
        .await
        .unwrap_err();
    ensure!(
        matches!(stale, StoreError::Stale { .. }),
        "edit based on an old version must fail: {stale}"
    );
    let huge = map(json!({"blob": "x".repeat(70_000)}));
    ensure!(matches!(
        s.edit_blueprint("bob", bp.id, None, None, &huge).await,
        Err(StoreError::Invalid { .. })
    ));
    ensure!(matches!(
        s.edit_blueprint("bob", bp.id, None, Some(" "), &Map::new())
            .await,
        Err(StoreError::Invalid { .. })
    ));
    ensure!(
        s.blueprint(bp.id).await? == bp2,
        "failed edits changed nothing"
    );
    let bp3 = s.set_blueprint_disabled("carol", bp.id, true).await?;
    ensure!(bp3.disabled);
    s.set_blueprint_disabled("carol", bp.id, true).await?; // no change, no audit row
    let edits = s.blueprint_edits(bp.id).await?;
    let fields: Vec<(&str, &str)> = edits
        .iter()
        .map(|e| (e.author.as_str(), e.field.as_str()))
        .collect();
    ensure!(
        fields
            == vec![
                ("admin", "type"),
                ("admin", "name"),
                ("admin", "fields.root"),
                ("alice", "fields.limit"),
                ("alice", "fields.root"),
                ("alice", "name"),
                ("carol", "disabled")
            ],
        "{fields:?}"
    );
    let root_edit = edits
        .iter()
        .find(|e| e.author == "alice" && e.field == "fields.root")
        .unwrap();
    ensure!(
        root_edit.old_value.as_deref() == Some("\"/tmp/dd\"")
            && root_edit.new_value.as_deref() == Some("\"/srv\"")
    );
    ensure!(s.blueprint_by_name("local-2").await?.id == bp.id);
    ensure!(
        s.blueprints(Some("host.ssh")).await?.is_empty() && s.blueprints(None).await?.len() == 1
    );
    ensure!(matches!(
        s.blueprint(BlueprintId(404)).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

async fn leases_are_inserted_listed_and_saved_under_their_lock(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let new = NewLease {
        resource_type: "host".into(),
        blueprint_ids: vec![BlueprintId(1), BlueprintId(2)],
        authorizing: "ci:plan/42".into(),
        owner: Some("build/7".into()),
        attributes: map(json!({"platform": "linux"})),
        priority: 5,
        until: Some(4_000_000_000_000),
    };
    let a = s.insert_lease(&new).await?;
    ensure!(
        a.status == LeaseStatus::Pending && a.blueprint_ids == new.blueprint_ids && a.priority == 5
    );
    ensure!(a.attributes["platform"] == "linux" && a.until == new.until && a.version == 1);
    let b = s
        .insert_lease(&NewLease {
            owner: None,
            ..new.clone()
        })
        .await?;
    let bad = NewLease {
        attributes: map(json!({"x": "y".repeat(70_000)})),
        ..new.clone()
    };
    ensure!(matches!(
        s.insert_lease(&bad).await,
        Err(StoreError::Invalid { .. })
    ));
    ensure!(matches!(
        s.insert_lease(&NewLease {
            resource_type: String::new(),
            ..new.clone()
        })
        .await,
        Err(StoreError::Invalid { .. })
    ));

    let lock = s
        .try_lock(&a.object().key(), "worker", Duration::from_secs(30))
        .await?
        .unwrap();
    let mut active = a.clone();
    active.status = LeaseStatus::Active;
    active.activated_at = Some(123);
    active.waiting = Some(json!({"reason": "at-limit", "blueprint": 1}));
    let mut tx = s.begin().await?;
    let saved = tx.save_lease(&active, &lock).await?;
    tx.commit().await?;
    ensure!(
        saved.status == LeaseStatus::Active
            && saved.version == 2
            && saved.waiting.as_ref().unwrap()["reason"] == "at-limit"
    );

    let all = s.leases(&LeaseFilter::default()).await?;
    ensure!(
        all.iter().map(|l| l.id).collect::<Vec<_>>() == vec![b.id, a.id],
        "newest first"
    );
    let pending = s
        .leases(&LeaseFilter {
            statuses: vec![LeaseStatus::Pending],
            ..Default::default()
        })
        .await?;
    ensure!(pending.len() == 1 && pending[0].id == b.id);
    let owned = s
        .leases(&LeaseFilter {
            owners: vec!["build/7".into()],
            ..Default::default()
        })
        .await?;
    ensure!(owned.len() == 1 && owned[0].id == a.id);
    let page = s
        .leases(&LeaseFilter {
            before: Some(b.id),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    ensure!(page.len() == 1 && page[0].id == a.id);
    Ok(())
}

async fn resources_are_inserted_and_saved_under_their_lock(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let bp = s
        .create_blueprint("admin", "bp", "host.local", Map::new())
        .await?;
    let r = resource(s, bp.id, ResourceStatus::Pending, json!({"dir": "/tmp/r1"})).await?;
    ensure!(r.status == ResourceStatus::Pending && r.attributes["dir"] == "/tmp/r1");
    let mut tx = s.begin().await?;
    let bad = tx
        .insert_resource(&NewResource {
            blueprint_id: bp.id,
            resource_type: "host".into(),
            status: ResourceStatus::Destroyed,
            attributes: Map::new(),
            until: None,
        })
        .await;
    ensure!(matches!(bad, Err(StoreError::Invalid { .. })));
    drop(tx);
    let lock = s
        .try_lock(&r.object().key(), "w", Duration::from_secs(30))
        .await?
        .unwrap();
    let mut next = r.clone();
    next.status = ResourceStatus::Active;
    let mut tx = s.begin().await?;
    let saved = tx.save_resource(&next, &lock).await?;
    tx.commit().await?;
    ensure!(saved.status == ResourceStatus::Active && saved.version == r.version + 1);
    ensure!(
        s.resources(Some(bp.id), Some(ResourceStatus::Active), 10)
            .await?
            .len()
            == 1
    );
    ensure!(
        s.resources(None, Some(ResourceStatus::Pending), 10)
            .await?
            .is_empty()
    );
    Ok(())
}

async fn logs_are_queried_by_object_time_and_cursor(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    use drydock_model::{LeaseId, ResourceId};
    let start = drydock_store::now_ms();
    let a = s.log(NewLog::new("lease.queued").lease(LeaseId(1))).await?;
    let b = s
        .log(
            NewLog::new("lease.acquired")
                .lease(LeaseId(1))
                .resource(ResourceId(2))
                .blueprint(BlueprintId(3)),
        )
        .await?;
    let c = s
        .log(
            NewLog::new("resource.reclaim")
                .resource(ResourceId(2))
                .data(json!({"by": "lease:9"})),
        )
        .await?;
    let d = s
        .log(
            NewLog::new("lease.output")
                .lease(LeaseId(5))
                .data(json!({"text": "z".repeat(100_000)})),
        )
        .await?;
    let ids =
        |v: Vec<drydock_store::log::LogEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    ensure!(
        ids(s
            .logs(&LogFilter {
                lease: Some(LeaseId(1)),
                ..Default::default()
            })
            .await?)
            == vec![a, b]
    );
    ensure!(
        ids(s
            .logs(&LogFilter {
                resource: Some(ResourceId(2)),
                ..Default::default()
            })
            .await?)
            == vec![b, c]
    );
    ensure!(
        ids(s
            .logs(&LogFilter {
                blueprint: Some(BlueprintId(3)),
                ..Default::default()
            })
            .await?)
            == vec![b]
    );
    ensure!(
        ids(s
            .logs(&LogFilter {
                after: Some(b),
                ..Default::default()
            })
            .await?)
            == vec![c, d]
    );
    ensure!(
        ids(s
            .logs(&LogFilter {
                limit: Some(2),
                ..Default::default()
            })
            .await?)
            == vec![a, b]
    );
    ensure!(
        ids(s
            .logs(&LogFilter {
                limit: Some(2),
                latest: true,
                ..Default::default()
            })
            .await?)
            == vec![c, d],
        "the latest two, oldest first"
    );
    ensure!(
        s.logs(&LogFilter {
            since: Some(start),
            ..Default::default()
        })
        .await?
        .len()
            == 4
    );
    ensure!(
        s.logs(&LogFilter {
            until: Some(start - 1),
            ..Default::default()
        })
        .await?
        .is_empty()
    );
    let all = s.logs(&LogFilter::default()).await?;
    ensure!(all[2].data["by"] == "lease:9" && all[2].kind == "resource.reclaim");
    ensure!(
        all[3].data["truncated"] == true,
        "oversized data is replaced, the event kept"
    );
    ensure!(matches!(
        s.log(NewLog::new("")).await,
        Err(StoreError::Invalid { .. })
    ));
    Ok(())
}

async fn authorization_decisions_are_recorded_and_declines_stick(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let bp = s
        .create_blueprint("admin", "hosts", "host.ssh", Map::new())
        .await?;
    let a = s.request_authorization("ci:plan/1", bp.id).await?;
    ensure!(
        a.blueprint_state == BlueprintAuthState::Requested
            && a.object_active
            && a.decided_by.is_none()
    );
    ensure!(!s.is_authorized("ci:plan/1", bp.id).await?);
    let a = s
        .decide_authorization(a.id, BlueprintAuthState::Authorized, "admin:root")
        .await?;
    ensure!(a.decided_by.as_deref() == Some("admin:root") && a.decided_at.is_some());
    ensure!(s.is_authorized("ci:plan/1", bp.id).await?);
    s.decide_authorization(a.id, BlueprintAuthState::Declined, "admin:root")
        .await?;
    let again = s.request_authorization("ci:plan/1", bp.id).await?;
    ensure!(
        again.id == a.id && again.blueprint_state == BlueprintAuthState::Declined,
        "a decline sticks"
    );
    ensure!(s.authorizations(Some(bp.id), None).await?.len() == 1);
    ensure!(s.authorizations(None, Some("nobody")).await?.is_empty());
    ensure!(matches!(
        s.decide_authorization(
            drydock_model::AuthorizationId(77),
            BlueprintAuthState::Authorized,
            "x"
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

async fn daemon_heartbeats_show_who_is_alive(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    s.daemon_heartbeat("d1", "host-a", 100).await?;
    s.daemon_heartbeat("d2", "host-b", 200).await?;
    s.daemon_heartbeat("d1", "host-a", 100).await?;
    ensure!(s.live_daemons(Duration::from_secs(10)).await?.len() == 2);
    s.daemon_stopped("d2").await?;
    let live = s.live_daemons(Duration::from_secs(10)).await?;
    ensure!(live.len() == 1 && live[0].id == "d1" && live[0].pid == 100);
    Ok(())
}

async fn each_resource_counts_the_leases_that_hold_or_wait_for_it(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let bp = s
        .create_blueprint("admin", "bp", "host.local", Map::new())
        .await?;
    let mut resources = Vec::new();
    for dir in ["/tmp/r1", "/tmp/r2"] {
        resources.push(resource(s, bp.id, ResourceStatus::Active, json!({ "dir": dir })).await?);
    }
    let (r1, r2) = (resources[0].id, resources[1].id);
    let counts = async || -> anyhow::Result<Vec<i64>> {
        let room = s.active_resources_with_room(&[(bp.id, None)]).await?;
        Ok([r1, r2]
            .iter()
            .map(|id| {
                room.iter()
                    .find(|(r, _)| r.id == *id)
                    .map_or(-1, |(_, n)| *n)
            })
            .collect())
    };
    let new = crate::host_lease();
    let (a, b) = (s.insert_lease(&new).await?, s.insert_lease(&new).await?);
    let step = async |id, status, resource: Option<drydock_model::ResourceId>| {
        let lock = s
            .try_lock(
                &drydock_model::ObjectRef::lease(id).key(),
                "w",
                Duration::from_secs(30),
            )
            .await?
            .expect("lock");
        let mut lease = s.lease(id).await?;
        lease.status = status;
        lease.resource_id = resource;
        let mut tx = s.begin().await?;
        tx.save_lease(&lease, &lock).await?;
        tx.commit().await?;
        s.unlock(lock).await?;
        anyhow::Ok(())
    };
    ensure!(
        counts().await? == [0, 0],
        "pending leases without a resource count nowhere"
    );
    step(a.id, LeaseStatus::Acquired, Some(r1)).await?;
    step(b.id, LeaseStatus::Acquired, Some(r1)).await?;
    ensure!(counts().await? == [2, 0]);
    step(a.id, LeaseStatus::Active, Some(r1)).await?;
    ensure!(
        counts().await? == [2, 0],
        "acquired -> active on the same resource changes nothing"
    );
    // Reacquired elsewhere: leaves r1, joins r2.
    step(b.id, LeaseStatus::Pending, None).await?;
    ensure!(counts().await? == [1, 0]);
    step(b.id, LeaseStatus::Acquired, Some(r2)).await?;
    ensure!(counts().await? == [1, 1]);
    step(a.id, LeaseStatus::Released, Some(r1)).await?;
    step(b.id, LeaseStatus::Broken, Some(r2)).await?;
    ensure!(
        counts().await? == [0, 0],
        "released and broken leases no longer count"
    );
    step(a.id, LeaseStatus::Destroyed, Some(r1)).await?;
    ensure!(counts().await? == [0, 0]);
    ensure!(s.live_lease_drift().await?.is_empty());
    Ok(())
}

/// PostgreSQL: leases acquired on one resource do not queue for its row
/// (each shares it, and the live-lease count is written at commit), while a
/// release of the resource, which must see every lease acquired on it,
/// still waits for them. (SQLite has one writer: nothing to show there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_leases_on_one_resource_share_its_row_and_its_release_waits_for_them() {
    run(Backend::Postgres, async |db: &TestDb| {
        let s = &db.store;
        let bp = s
            .create_blueprint("admin", "bp", "host.local", Map::new())
            .await?;
        let r = resource(s, bp.id, ResourceStatus::Active, json!({})).await?;
        let new = crate::host_lease();
        let (a, b) = (s.insert_lease(&new).await?, s.insert_lease(&new).await?);
        let acquire = async |lease: &drydock_store::lease::Lease| {
            let lock = s
                .try_lock(&lease.object().key(), "w", Duration::from_secs(30))
                .await?
                .expect("lock");
            let mut tx = s.begin().await?;
            let fresh = tx.resource_to_acquire(r.id).await?;
            ensure!(fresh.status == ResourceStatus::Active);
            let mut next = lease.clone();
            next.status = LeaseStatus::Acquired;
            next.resource_id = Some(r.id);
            tx.save_lease(&next, &lock).await?;
            anyhow::Ok(tx)
        };
        let first = acquire(&a).await?;
        // The second acquisition commits while the first is still open.
        let second = tokio::time::timeout(Duration::from_secs(10), async {
            acquire(&b).await?.commit().await?;
            anyhow::Ok(())
        })
        .await;
        ensure!(
            matches!(second, Ok(Ok(()))),
            "the second lease queued behind the first one's transaction: {second:?}"
        );
        // A release locks the row: it waits for the open acquisition...
        let releaser = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut tx = s.begin().await?;
                tx.resource_for_update(r.id).await?;
                let seen = tx.live_leases_on(r.id).await?.len();
                tx.rollback().await?;
                anyhow::Ok(seen)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.sessions_waiting_for_locks().await == 0 {
            ensure!(
                std::time::Instant::now() < deadline,
                "the release did not wait for the open acquisition"
            );
            tokio::task::yield_now().await;
        }
        ensure!(!releaser.is_finished());
        // ... and then sees it.
        first.commit().await?;
        ensure!(releaser.await?? == 2, "the release saw both leases");
        let room = s.active_resources_with_room(&[(bp.id, None)]).await?;
        ensure!(room.iter().any(|(x, n)| x.id == r.id && *n == 2));
        ensure!(s.live_lease_drift().await?.is_empty());
        Ok(())
    })
    .await
}

/// Events recorded in a transaction are written together when it commits
/// (in the order recorded, each with its own object and data, an oversized
/// payload truncated), and not at all when it rolls back; a bad event is
/// refused when it is recorded.
async fn a_transactions_events_are_written_in_order_when_it_commits_and_never_when_it_rolls_back(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_model::{LeaseId, ResourceId};
    let s = &db.store;
    let of = |lease: i64| LogFilter {
        lease: Some(LeaseId(lease)),
        ..Default::default()
    };
    let mut tx = s.begin().await?;
    tx.log(NewLog::new("lease.queued").lease(LeaseId(41)))
        .await?;
    ensure!(
        tx.log(NewLog::new("").lease(LeaseId(41))).await.is_err(),
        "an empty type is refused"
    );
    tx.rollback().await?;
    ensure!(
        s.logs(&of(41)).await?.is_empty(),
        "rolled back, yet written"
    );

    let mut tx = s.begin().await?;
    tx.log(NewLog::new("lease.queued").lease(LeaseId(42)))
        .await?;
    tx.log(
        NewLog::new("lease.acquired")
            .lease(LeaseId(42))
            .resource(ResourceId(7))
            .data(json!({"n": 1})),
    )
    .await?;
    tx.log(
        NewLog::new("lease.output")
            .lease(LeaseId(42))
            .data(json!({"text": "z".repeat(100_000)})),
    )
    .await?;
    tx.commit().await?;
    let written = s.logs(&of(42)).await?;
    let kinds: Vec<&str> = written.iter().map(|e| e.kind.as_str()).collect();
    ensure!(
        kinds == ["lease.queued", "lease.acquired", "lease.output"],
        "{kinds:?}"
    );
    ensure!(written.windows(2).all(|w| w[0].id < w[1].id));
    ensure!(written[1].resource == Some(ResourceId(7)) && written[1].data == json!({"n": 1}));
    ensure!(written[0].resource.is_none() && written[0].data == json!({}));
    ensure!(
        written[2].data["truncated"] == json!(true),
        "{}",
        written[2].data
    );

    // Events written early, with a statement that carries the transaction's
    // side writes (PostgreSQL), still go back with a rollback and keep
    // their order with the ones written at the commit.
    let waiter = drydock_model::ObjectRef::lease(LeaseId(43));
    let events = ["capacity(host)".to_owned()];
    for commit in [false, true] {
        let mut tx = s.begin().await?;
        tx.log(NewLog::new("first").lease(LeaseId(43))).await?;
        tx.stop_waiting(waiter).await?;
        tx.wait_on(waiter, 0, 0, &events).await?;
        tx.log(NewLog::new("second").lease(LeaseId(43))).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        let kinds: Vec<String> = s.logs(&of(43)).await?.into_iter().map(|e| e.kind).collect();
        let want: &[&str] = if commit { &["first", "second"] } else { &[] };
        ensure!(kinds == want, "committed {commit}: {kinds:?}");
    }
    Ok(())
}

/// A statement that fails inside a transaction poisons it: its caller may
/// ignore the error, but `commit` answers it and nothing of the transaction
/// is stored (PostgreSQL answers such a `COMMIT` with a rollback, not an
/// error; SQLite would have committed the statements around it). A later
/// transaction on the same connection is not poisoned by it.
async fn a_failed_statement_poisons_its_transaction_even_when_its_error_was_ignored(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let mut tx = s.begin().await?;
    let lease = tx.insert_lease(&crate::host_lease()).await?;
    // No blueprint 999999: the foreign key refuses the row.
    let refused = tx
        .insert_resource(&NewResource {
            blueprint_id: BlueprintId(999_999),
            resource_type: "host".into(),
            status: ResourceStatus::Pending,
            attributes: Map::new(),
            until: None,
        })
        .await;
    ensure!(refused.is_err(), "the resource was inserted: {refused:?}");
    let committed = tx.commit().await;
    ensure!(
        committed.is_err(),
        "commit of a transaction with a failed statement said Ok"
    );
    let message = committed.unwrap_err().to_string();
    ensure!(
        message.contains("nothing of the transaction was committed"),
        "{message}"
    );
    ensure!(
        matches!(s.lease(lease.id).await, Err(StoreError::NotFound { .. })),
        "the lease written before the failed statement was committed"
    );
    // The next transaction starts clean.
    let mut tx = s.begin().await?;
    let lease = tx.insert_lease(&crate::host_lease()).await?;
    tx.commit().await?;
    s.lease(lease.id).await?;
    Ok(())
}
