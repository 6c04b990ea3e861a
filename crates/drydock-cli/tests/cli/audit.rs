//! What every fault test checks afterwards, shared: drain the leases, then
//! audit the database — every lease went through active to destroyed, no
//! exclusive resource had two leases at once, the blueprint's limit was
//! never exceeded, no object lock or slot lock leaked, no object lost its
//! task.

use anyhow::{Context, ensure};
use drydock_engine::client;
use drydock_model::{LeaseStatus, ResourceId, ResourceStatus};
use drydock_store::Store;
use drydock_store::lease::{Lease, LeaseFilter};
use drydock_store::resource::Resource;
use std::collections::HashMap;
use std::fmt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fault tests' blueprint shape: a `host.local` blueprint of at most
/// `LIMIT` resources, one lease per resource (exclusive hosts).
pub const LIMIT: usize = 3;

pub async fn exclusive_hosts(
    store: &Store,
    name: &str,
    root: &std::path::Path,
) -> anyhow::Result<drydock_model::BlueprintId> {
    std::fs::create_dir_all(root)?;
    let fields = serde_json::json!({
        "root": root.to_string_lossy(), "limit": LIMIT.to_string(), "lease-limit": "1"
    });
    let bp = client::create_blueprint(
        store,
        &drydock_blueprints::registry(),
        "test",
        name,
        "host.local",
        fields.as_object().context("fields")?,
    )
    .await?;
    Ok(bp.id)
}

/// Start `drydock daemon` with a short claim expiry, so a killed daemon's
/// tasks and locks are taken over quickly.
pub fn spawn_daemon(url: &str, workers: u32) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["--database", url, "daemon", "--workers"])
        .arg(workers.to_string())
        .args(["--claim-ttl", "1s"])
        .env("DRYDOCK_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Release a resource seen active; it may have moved on meanwhile.
pub async fn release_resource(store: &Store, r: &Resource) -> anyhow::Result<()> {
    match client::release_resource(store, r.id, "test").await {
        Ok(_) | Err(client::ClientError::NotReleasable { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Stop daemons with SIGTERM and wait for them.
pub fn stop_daemons(daemons: Vec<Child>) -> anyhow::Result<()> {
    for mut d in daemons {
        Command::new("kill")
            .args(["-TERM", &d.id().to_string()])
            .status()?;
        d.wait()?;
    }
    Ok(())
}

/// Release a lease seen active; it may have moved on meanwhile.
pub async fn release(store: &Store, l: &Lease) -> anyhow::Result<()> {
    match client::release_lease(store, l.id, "test").await {
        Ok(_) | Err(client::ClientError::NotReleasable { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn all_leases(store: &Store) -> anyhow::Result<Vec<Lease>> {
    Ok(store
        .leases(&LeaseFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await?)
}

/// Release every lease as soon as it is active, until all are destroyed.
/// Leases owned by a resource (a working copy's host) are its to release,
/// when it is destroyed: they are not waited for.
pub async fn drain(store: &Store, start: Instant, bound: Duration) -> anyhow::Result<()> {
    loop {
        let leases = all_leases(store).await?;
        if leases
            .iter()
            .all(|l| l.status == LeaseStatus::Destroyed || owned_by_resource(l))
        {
            return Ok(());
        }
        ensure!(
            start.elapsed() < bound,
            "leases not all served within {bound:?}: {:?}",
            {
                let mut by: HashMap<String, Vec<String>> = HashMap::new();
                for l in leases.iter().filter(|l| l.status != LeaseStatus::Destroyed) {
                    by.entry(l.status.to_string()).or_default().push(format!(
                        "lease {} ({}, owner {})",
                        l.id.0,
                        l.resource_type,
                        l.owner.as_deref().unwrap_or("none")
                    ));
                }
                by
            }
        );
        for l in leases
            .iter()
            .filter(|l| l.status == LeaseStatus::Active && !owned_by_resource(l))
        {
            if !store
                .has_pending_command(l.object(), drydock_model::CommandKind::Release)
                .await?
            {
                release(store, l).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn owned_by_resource(l: &Lease) -> bool {
    l.owner
        .as_deref()
        .is_some_and(|o| o.starts_with("resource:"))
}

/// The counts a fault test reports and requires to be zero.
#[derive(Debug, Default)]
pub struct Audit {
    pub leases: usize,
    pub never_active: usize,
    pub broken: usize,
    pub overlaps: usize,
    pub max_live_resources: usize,
    pub limit: usize,
    pub locks_held: usize,
    pub leaked_slots: usize,
    pub lost: usize,
    pub drift: usize,
    /// Why broken leases broke, for the failure message.
    pub failures: Vec<String>,
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} leases: never active {}, broken {}, overlapping exclusive leases {}, \
             most live resources of a blueprint {} (limit {}), locks held {}, leaked slot locks {}, \
             objects without a task {}, wrong live-lease counts {}",
            self.leases,
            self.never_active,
            self.broken,
            self.overlaps,
            self.max_live_resources,
            self.limit,
            self.locks_held,
            self.leaked_slots,
            self.lost,
            self.drift
        )
    }
}

impl Audit {
    /// Audit a drained database whose blueprints each allow `limit`
    /// resources and one lease per resource.
    pub async fn of(store: &Store, limit: usize) -> anyhow::Result<Audit> {
        let leases = all_leases(store).await?;
        // Exclusive resources: the leases of one resource never overlap.
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
        // The limit: resources of one blueprint alive at once, from
        // creation to destruction.
        let resources = store.resources(None, None, 100_000).await?;
        let mut edges: HashMap<_, Vec<(i64, i32)>> = HashMap::new();
        for r in &resources {
            let end = if r.status == ResourceStatus::Destroyed {
                r.modified_at
            } else {
                i64::MAX
            };
            let e = edges.entry(r.blueprint_id).or_default();
            e.extend([(r.created_at, 1), (end, -1)]);
        }
        let mut max_live = 0i32;
        for mut e in edges.into_values() {
            e.sort(); // an end at the same instant as a start counts first
            let mut live = 0;
            for (_, d) in e {
                live += d;
                max_live = max_live.max(live);
            }
        }
        // Locks of killed daemons expire (1 s claims); nothing may stay held.
        let _ =
            drydock_testkit::wait_until(Duration::from_secs(10), "locks to be free", async || {
                store
                    .held_locks()
                    .await
                    .map(|h| h.is_empty())
                    .unwrap_or(false)
            })
            .await;
        let live_owners: Vec<String> = resources
            .iter()
            .filter(|r| r.status != ResourceStatus::Destroyed)
            .map(|r| r.object().key())
            .collect();
        let leaked_slots = store
            .all_slot_locks()
            .await?
            .iter()
            .filter(|(_, owner)| !live_owners.contains(owner))
            .count();
        Ok(Audit {
            leases: leases.len(),
            never_active: leases.iter().filter(|l| l.activated_at.is_none()).count(),
            broken: leases.iter().filter(|l| l.failure.is_some()).count(),
            overlaps,
            max_live_resources: usize::try_from(max_live).unwrap_or(0),
            limit,
            locks_held: store.held_locks().await?.len(),
            leaked_slots,
            lost: store.orphaned_objects(1000).await?.len(),
            drift: store.live_lease_drift().await?.len(),
            failures: leases
                .iter()
                .filter_map(|l| {
                    let f = l.failure.as_ref()?;
                    Some(format!("lease {} ({}): {f}", l.id.0, l.resource_type))
                })
                .collect(),
        })
    }

    /// Every invariant held.
    pub fn ensure_clean(&self) -> anyhow::Result<()> {
        ensure!(
            self.never_active == 0
                && self.broken == 0
                && self.overlaps == 0
                && self.max_live_resources <= self.limit
                && self.locks_held == 0
                && self.leaked_slots == 0
                && self.lost == 0
                && self.drift == 0,
            "invariants violated: {self}; failures: {:?}",
            self.failures
        );
        Ok(())
    }
}
