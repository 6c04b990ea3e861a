//! Crash loop: daemons killed with SIGKILL at random points while leases are
//! requested, allocated, activated, released and destroyed. Afterwards every
//! lease went through active to destroyed, no lock or slot leaked, no task
//! was lost, and no exclusive resource ever had two leases at once.

use crate::audit::{
    Audit, LIMIT, all_leases, drain, exclusive_hosts, release, release_resource, spawn_daemon,
    stop_daemons,
};
use anyhow::ensure;
use drydock_engine::{ADMIN, client};
use drydock_model::{LeaseStatus, ResourceStatus};
use drydock_store::lease::NewLease;
use drydock_testkit::{Rng, TestDb};
use std::time::{Duration, Instant};

backend_tests!(
    crash_loop_with_sigkilled_daemons,
    crash_loop_on_working_copies_kills_during_activation_and_destruction,
);

const ITERATIONS: usize = 50;
const BOUND: Duration = Duration::from_secs(150);

async fn crash_loop_with_sigkilled_daemons(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bp = exclusive_hosts(&db.store, "exclusive", dir.path()).await?;
    let start = Instant::now();
    let mut rng = Rng(0x5EED ^ ((db.backend as u64 + 1) * 0x9E37_79B9));
    let mut daemons = vec![spawn_daemon(&db.url, 2)?, spawn_daemon(&db.url, 2)?];
    let mut kills = 0;
    let new = NewLease {
        resource_type: "host".into(),
        authorizing: ADMIN.into(),
        blueprint_ids: vec![bp],
        ..Default::default()
    };
    for _ in 0..ITERATIONS {
        ensure!(start.elapsed() < BOUND, "crash loop exceeded {BOUND:?}");
        for _ in 0..2 {
            client::request_lease(&db.store, &new).await?;
        }
        for l in all_leases(&db.store).await? {
            if l.status == LeaseStatus::Active && rng.below(2) == 0 {
                release(&db.store, &l).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        let victim = rng.below(daemons.len() as u64) as usize;
        daemons[victim].kill()?; // SIGKILL
        daemons[victim].wait()?;
        kills += 1;
        daemons[victim] = spawn_daemon(&db.url, 2)?;
    }
    drain(&db.store, start, BOUND).await?;
    stop_daemons(daemons)?;
    let audit = Audit::of(&db.store, LIMIT).await?;
    println!(
        "{:?}: {ITERATIONS} iterations, {kills} SIGKILLs in {:?}: {audit}",
        db.backend,
        start.elapsed(),
    );
    ensure!(audit.leases == ITERATIONS * 2);
    audit.ensure_clean()
}

/// What was under way when a daemon was killed, read from the database
/// just before the kill.
#[derive(Default, Debug)]
struct Phases {
    allocation: usize,
    activation: usize,
    destruction: usize,
}

impl Phases {
    async fn note(&mut self, store: &drydock_store::Store) -> anyhow::Result<()> {
        let leases = all_leases(store).await?;
        let resources = store.resources(None, None, 10_000).await?;
        self.allocation += leases.iter().any(|l| l.status == LeaseStatus::Pending) as usize;
        self.activation += resources
            .iter()
            .any(|r| r.status == ResourceStatus::Pending) as usize;
        self.destruction += resources
            .iter()
            .any(|r| r.status == ResourceStatus::Released) as usize;
        Ok(())
    }
}

/// Working copies take real time to activate (a host lease, then `git
/// clone`) and to destroy (remove the copy, release the host lease), across
/// two daemon processes: kills land inside those steps.
async fn crash_loop_on_working_copies_kills_during_activation_and_destruction(
    db: &TestDb,
) -> anyhow::Result<()> {
    const WC_ITERATIONS: usize = 30;
    let dir = tempfile::tempdir()?;
    let (repo, a, b) = crate::working_copy::repository(dir.path())?;
    exclusive_hosts(&db.store, "hosts", &dir.path().join("hosts")).await?;
    let wc_fields = serde_json::json!({
        "host-blueprints": "hosts", "repositories": format!("app={repo}"), "limit": LIMIT.to_string()
    });
    let wc = client::create_blueprint(
        &db.store,
        &drydock_blueprints::registry(),
        "test",
        "wc",
        "working-copy",
        wc_fields.as_object().unwrap(),
    )
    .await?;
    let start = Instant::now();
    let mut rng = Rng(0xC0FFEE ^ ((db.backend as u64 + 1) * 0x9E37_79B9));
    let mut daemons = vec![spawn_daemon(&db.url, 2)?, spawn_daemon(&db.url, 2)?];
    let mut phases = Phases::default();
    for i in 0..WC_ITERATIONS {
        ensure!(start.elapsed() < BOUND, "crash loop exceeded {BOUND:?}");
        for commit in [&a, &b] {
            let new = NewLease {
                resource_type: "working-copy".into(),
                authorizing: ADMIN.into(),
                blueprint_ids: vec![wc.id],
                attributes: serde_json::json!({"repository": "app", "commit": commit})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ..Default::default()
            };
            client::request_lease(&db.store, &new).await?;
        }
        for l in all_leases(&db.store).await? {
            if l.status == LeaseStatus::Active
                && l.resource_type == "working-copy"
                && rng.below(2) == 0
            {
                release(&db.store, &l).await?;
            }
        }
        // Now and then a copy is retired, so destruction runs too.
        let mut retired = 0;
        for r in db.store.resources(None, None, 1000).await? {
            if r.status == ResourceStatus::Active
                && r.resource_type == "working-copy"
                && rng.below(3) == 0
            {
                release_resource(&db.store, &r).await?;
                retired += 1;
            }
        }
        if retired > 0 && rng.below(2) == 0 {
            // Aim the kill at the destruction: as soon as a retired copy is
            // `released` (its teardown under way), or soon after anyway.
            let store = &db.store;
            let _ = drydock_testkit::wait_until(
                Duration::from_millis(300),
                "a copy being destroyed",
                async || {
                    store
                        .resources(None, None, 1000)
                        .await
                        .is_ok_and(|rs| rs.iter().any(|r| r.status == ResourceStatus::Released))
                },
            )
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        }
        phases.note(&db.store).await?;
        let victim = i % daemons.len();
        daemons[victim].kill()?; // SIGKILL
        daemons[victim].wait()?;
        daemons[victim] = spawn_daemon(&db.url, 2)?;
    }
    drain(&db.store, start, BOUND).await?;
    // Retire the copies: their destruction releases their host leases.
    for r in db.store.resources(None, None, 1000).await? {
        if r.resource_type == "working-copy" {
            release_resource(&db.store, &r).await?;
        }
    }
    let store = &db.store;
    drydock_testkit::wait_until(
        BOUND.saturating_sub(start.elapsed()),
        "every lease destroyed",
        async || {
            all_leases(store)
                .await
                .is_ok_and(|ls| ls.iter().all(|l| l.status == LeaseStatus::Destroyed))
        },
    )
    .await?;
    stop_daemons(daemons)?;
    let audit = Audit::of(&db.store, LIMIT).await?;
    println!(
        "{:?}: working copies, {WC_ITERATIONS} SIGKILLs (under way at the kill: allocation {}, activation {}, destruction {}) in {:?}: {audit}",
        db.backend,
        phases.allocation,
        phases.activation,
        phases.destruction,
        start.elapsed(),
    );
    audit.ensure_clean()
}
