//! Crash loop: daemons killed with SIGKILL at random points while leases are
//! requested, allocated, activated, released and destroyed. Afterwards every
//! lease went through active to destroyed, no lock or slot leaked, no task
//! was lost, and no exclusive resource ever had two leases at once.

use anyhow::ensure;
use drydock_engine::{ADMIN, client};
use drydock_model::{LeaseStatus, ResourceId};
use drydock_store::lease::{Lease, LeaseFilter, NewLease};
use drydock_testkit::{Rng, TestDb};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

backend_tests!(crash_loop_with_sigkilled_daemons);

const ITERATIONS: usize = 50;
const BOUND: Duration = Duration::from_secs(150);

fn spawn_daemon(url: &str) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args([
            "--database",
            url,
            "daemon",
            "--workers",
            "2",
            "--claim-ttl",
            "1s",
        ])
        .env("DRYDOCK_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Release a lease the test saw active; it may have moved on meanwhile.
async fn release(db: &TestDb, l: &Lease) -> anyhow::Result<()> {
    match client::release_lease(&db.store, l.id, "test").await {
        Ok(_) | Err(client::ClientError::NotReleasable { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn all_leases(db: &TestDb) -> anyhow::Result<Vec<Lease>> {
    Ok(db
        .store
        .leases(&LeaseFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await?)
}

async fn crash_loop_with_sigkilled_daemons(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let registry = drydock_blueprints::registry();
    let fields =
        serde_json::json!({"root": dir.path().to_string_lossy(), "limit": "3", "lease-limit": "1"});
    let bp = client::create_blueprint(
        &db.store,
        &registry,
        "test",
        "exclusive",
        "host.local",
        fields.as_object().unwrap(),
    )
    .await?;
    let start = Instant::now();
    let mut rng = Rng(0x5EED ^ ((db.backend as u64 + 1) * 0x9E37_79B9));
    let mut daemons = vec![spawn_daemon(&db.url)?, spawn_daemon(&db.url)?];
    let mut kills = 0;
    let new = NewLease {
        resource_type: "host".into(),
        authorizing: ADMIN.into(),
        blueprint_ids: vec![bp.id],
        ..Default::default()
    };
    for _ in 0..ITERATIONS {
        ensure!(start.elapsed() < BOUND, "crash loop exceeded {BOUND:?}");
        for _ in 0..2 {
            client::request_lease(&db.store, &new).await?;
        }
        for l in all_leases(db).await? {
            if l.status == LeaseStatus::Active && rng.below(2) == 0 {
                release(db, &l).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        let victim = rng.below(daemons.len() as u64) as usize;
        daemons[victim].kill()?; // SIGKILL
        daemons[victim].wait()?;
        kills += 1;
        daemons[victim] = spawn_daemon(&db.url)?;
    }
    // Drain: release every lease as soon as it is active, until all are gone.
    loop {
        ensure!(
            start.elapsed() < BOUND,
            "leases not all served within {BOUND:?}: {:?}",
            {
                let mut by: HashMap<String, usize> = HashMap::new();
                for l in all_leases(db).await? {
                    *by.entry(l.status.to_string()).or_default() += 1;
                }
                by
            }
        );
        let leases = all_leases(db).await?;
        if leases.iter().all(|l| l.status == LeaseStatus::Destroyed) {
            break;
        }
        for l in leases.iter().filter(|l| l.status == LeaseStatus::Active) {
            if !db
                .store
                .has_pending_command(l.object(), drydock_model::CommandKind::Release)
                .await?
            {
                release(db, l).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for mut d in daemons {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()?;
        d.wait()?;
    }
    let leases = all_leases(db).await?;
    let never_active = leases.iter().filter(|l| l.activated_at.is_none()).count();
    let broken = leases.iter().filter(|l| l.failure.is_some()).count();
    // Exclusive resources: the leases of one resource never overlap in time.
    let mut per_resource: HashMap<ResourceId, Vec<(i64, i64)>> = HashMap::new();
    for l in &leases {
        if let (Some(r), Some(acquired)) = (l.resource_id, l.acquired_at) {
            per_resource
                .entry(r)
                .or_default()
                .push((acquired, l.modified_at));
        }
    }
    let mut overlaps = 0;
    for spans in per_resource.values_mut() {
        spans.sort();
        overlaps += spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
    }
    // Locks of killed daemons expire (1 s claim TTL); nothing may stay held.
    let store = &db.store;
    let _ = drydock_testkit::wait_until(Duration::from_secs(10), "locks to be free", async || {
        store
            .held_locks()
            .await
            .map(|h| h.is_empty())
            .unwrap_or(false)
    })
    .await;
    let held = db.store.held_locks().await?;
    let slots = db.store.all_slot_locks().await?;
    let live_resources: Vec<String> = db
        .store
        .resources(None, None, 1000)
        .await?
        .into_iter()
        .filter(|r| r.status != drydock_model::ResourceStatus::Destroyed)
        .map(|r| r.object().key())
        .collect();
    let leaked_slots = slots
        .iter()
        .filter(|(_, owner)| !live_resources.contains(owner))
        .count();
    let lost = db.store.orphaned_objects(1000).await?;
    println!(
        "{:?}: {ITERATIONS} iterations, {kills} SIGKILLs, {} leases in {:?}: never active {never_active}, broken {broken}, overlapping exclusive leases {overlaps}, locks held {}, leaked slot locks {leaked_slots}, objects without a task {}",
        db.backend,
        leases.len(),
        start.elapsed(),
        held.len(),
        lost.len()
    );
    ensure!(leases.len() == ITERATIONS * 2);
    ensure!(
        never_active == 0 && broken == 0,
        "{never_active} never active, {broken} broken"
    );
    ensure!(
        overlaps == 0,
        "{overlaps} overlapping leases on an exclusive resource"
    );
    ensure!(held.is_empty(), "locks leaked: {held:?}");
    ensure!(leaked_slots == 0, "slot locks leaked: {slots:?}");
    ensure!(lost.is_empty(), "objects without a task: {lost:?}");
    Ok(())
}
