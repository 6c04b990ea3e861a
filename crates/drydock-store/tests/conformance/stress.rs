//! Concurrency proven by stress: many actors on separate connection pools
//! (as separate processes would have) against one real database, each test
//! bounded in time, printing what it did.

use anyhow::ensure;
use drydock_model::{ObjectRef, ResourceId, TaskId};
use drydock_store::lease::NewLease;
use drydock_store::queue::{
    ClaimedTask, Handled, Handler, NewTask, Outcome, WorkerConfig, run_worker,
};
use drydock_store::{Store, StoreError};
use drydock_testkit::{Rng, TestDb};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

backend_tests!(
    stress_workers_run_each_task_exactly_once,
    stress_lock_holders_racing_expiry_never_land_a_stale_write,
    stress_slot_locks_never_have_two_owners,
);

const BOUND: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Recorder {
    runs: Mutex<HashMap<TaskId, u32>>,
    running_objects: Mutex<HashSet<String>>,
    overlaps: Mutex<u32>,
}

impl Handler for Recorder {
    async fn handle(&self, task: &ClaimedTask) -> Handled {
        let n = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(task.id).or_default();
            *n += 1;
            *n
        };
        if let Some(key) = &task.object_key
            && !self.running_objects.lock().unwrap().insert(key.clone())
        {
            *self.overlaps.lock().unwrap() += 1;
        }
        tokio::time::sleep(Duration::from_micros(200 * (task.id.0 as u64 % 5))).await;
        if let Some(key) = &task.object_key {
            self.running_objects.lock().unwrap().remove(key);
        }
        // Object tasks yield once, so each object is run twice in a row.
        if task.object_key.is_some() && n == 1 {
            Outcome::Yield(Duration::ZERO).into()
        } else {
            Outcome::Done.into()
        }
    }
}

async fn stress_workers_run_each_task_exactly_once(db: &TestDb) -> anyhow::Result<()> {
    let (plain, objects) = (300, 40);
    let mut ids = Vec::new();
    let mut object_ids = Vec::new();
    for i in 0..plain {
        ids.push(
            db.store
                .schedule(NewTask::new("stress.plain").priority(i % 3))
                .await?,
        );
    }
    for i in 0..objects {
        object_ids.push(
            db.store
                .schedule(NewTask::update(ObjectRef::resource(ResourceId(i + 1))))
                .await?,
        );
    }
    let recorder = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    let start = Instant::now();
    for p in 0..4 {
        let store = db.connect_again().await;
        for w in 0..2 {
            let mut cfg = WorkerConfig::new(format!("proc{p}-w{w}"));
            cfg.poll = Duration::from_millis(50);
            workers.push(tokio::spawn(run_worker(
                store.clone(),
                recorder.clone(),
                cfg,
                stop_rx.clone(),
            )));
        }
    }
    let total = (plain + objects) as usize;
    loop {
        let done = db
            .store
            .task_counts()
            .await?
            .into_iter()
            .find(|(s, _)| s == "done")
            .map(|(_, n)| n)
            .unwrap_or(0);
        if done as usize == total {
            break;
        }
        ensure!(
            start.elapsed() < BOUND,
            "only {done} of {total} tasks done after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true)?;
    for w in workers {
        w.await?;
    }
    let runs = recorder.runs.lock().unwrap();
    let twice_plain = ids.iter().filter(|id| runs.get(id) != Some(&1)).count();
    let wrong_objects = object_ids
        .iter()
        .filter(|id| runs.get(id) != Some(&2))
        .count();
    let overlaps = *recorder.overlaps.lock().unwrap();
    println!(
        "{:?}: 8 workers in 4 pools ran {plain} tasks + {objects} objects x2 in {:?}; plain tasks not run exactly once: {twice_plain}; objects not run exactly twice: {wrong_objects}; overlapping object runs: {overlaps}",
        db.backend,
        start.elapsed()
    );
    ensure!(twice_plain == 0 && wrong_objects == 0 && overlaps == 0);
    Ok(())
}

async fn stress_lock_holders_racing_expiry_never_land_a_stale_write(
    db: &TestDb,
) -> anyhow::Result<()> {
    let lease = db
        .store
        .insert_lease(&NewLease {
            resource_type: "host".into(),
            authorizing: "stress".into(),
            ..Default::default()
        })
        .await?;
    let name = lease.object().key();
    let (successes, stale, contended) = (
        Arc::new(Mutex::new(0u64)),
        Arc::new(Mutex::new(0u64)),
        Arc::new(Mutex::new(0u64)),
    );
    let mut actors = Vec::new();
    let start = Instant::now();
    for a in 0..8u64 {
        let store: Store = if a % 2 == 0 {
            db.connect_again().await
        } else {
            db.store.clone()
        };
        let (name, successes, stale, contended) = (
            name.clone(),
            successes.clone(),
            stale.clone(),
            contended.clone(),
        );
        actors.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (a + 1));
            for _ in 0..30 {
                let Some(lock) = store
                    .try_lock(&name, &format!("actor{a}"), Duration::from_millis(25))
                    .await?
                else {
                    *contended.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(1 + rng.below(5))).await;
                    continue;
                };
                let mut l = store.lease(lease.id).await?;
                // Half of the holders stall past their lock's expiry.
                tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
                let count = l
                    .attributes
                    .get("count")
                    .and_then(|c| c.as_u64())
                    .unwrap_or(0);
                l.attributes.insert("count".into(), (count + 1).into());
                let mut tx = store.begin().await?;
                match tx.save_lease(&l, &lock).await {
                    Ok(_) => {
                        tx.commit().await?;
                        *successes.lock().unwrap() += 1;
                    }
                    Err(StoreError::Stale { .. }) => {
                        tx.rollback().await?;
                        *stale.lock().unwrap() += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
                store.unlock(lock).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for a in actors {
        tokio::time::timeout(BOUND, a).await???;
    }
    let final_count = db
        .store
        .lease(lease.id)
        .await?
        .attributes
        .get("count")
        .and_then(|c| c.as_u64())
        .unwrap_or(0);
    let (ok, st, co) = (
        *successes.lock().unwrap(),
        *stale.lock().unwrap(),
        *contended.lock().unwrap(),
    );
    println!(
        "{:?}: 8 lock holders, {ok} fenced writes landed, {st} stale writes refused, {co} contended tries, final count {final_count}, {:?}",
        db.backend,
        start.elapsed()
    );
    // Every landed write read the value the previous landed write left: a
    // stale write landing would have lost an increment.
    ensure!(
        final_count == ok,
        "lost update: count {final_count} but {ok} writes landed"
    );
    ensure!(ok > 0, "no write landed at all");
    ensure!(db.store.lease(lease.id).await?.version == 1 + ok as i64);
    Ok(())
}

async fn stress_slot_locks_never_have_two_owners(db: &TestDb) -> anyhow::Result<()> {
    let keys: Vec<String> = (0..6).map(|i| format!("slot({i})")).collect();
    let owners: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (taken, refused, violations) = (
        Arc::new(Mutex::new(0u64)),
        Arc::new(Mutex::new(0u64)),
        Arc::new(Mutex::new(0u64)),
    );
    let start = Instant::now();
    let mut actors = Vec::new();
    for a in 0..8u64 {
        let store: Store = if a % 2 == 0 {
            db.connect_again().await
        } else {
            db.store.clone()
        };
        let (keys, owners, taken, refused, violations) = (
            keys.clone(),
            owners.clone(),
            taken.clone(),
            refused.clone(),
            violations.clone(),
        );
        actors.push(tokio::spawn(async move {
            let mut rng = Rng(0xDEAD_BEEF ^ ((a + 1) * 7919));
            let me = format!("lease:{}", a + 1);
            for _ in 0..40 {
                let want = vec![
                    keys[rng.below(6) as usize].clone(),
                    keys[rng.below(6) as usize].clone(),
                ];
                match store.acquire_slot_locks(&me, &want).await {
                    Ok(()) => {
                        *taken.lock().unwrap() += 1;
                        {
                            let mut o = owners.lock().unwrap();
                            for k in &want {
                                if let Some(other) = o.insert(k.clone(), a)
                                    && other != a
                                {
                                    *violations.lock().unwrap() += 1;
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
                        owners.lock().unwrap().retain(|_, v| *v != a);
                        store.release_slot_locks(&me).await?;
                    }
                    Err(StoreError::SlotLocked(_)) => *refused.lock().unwrap() += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for a in actors {
        tokio::time::timeout(BOUND, a).await???;
    }
    let (t, r, v) = (
        *taken.lock().unwrap(),
        *refused.lock().unwrap(),
        *violations.lock().unwrap(),
    );
    println!(
        "{:?}: 8 actors, {t} slot-lock sets taken, {r} refused, {v} double owners, {:?}",
        db.backend,
        start.elapsed()
    );
    ensure!(v == 0, "{v} keys had two owners");
    ensure!(
        t > 0 && r > 0,
        "the test did not produce contention (taken {t}, refused {r})"
    );
    ensure!(
        db.store.all_slot_locks().await?.is_empty(),
        "slot locks leaked"
    );
    Ok(())
}
