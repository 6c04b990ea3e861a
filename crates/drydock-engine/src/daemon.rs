//! The daemon loop: worker tasks claiming from the queue, a heartbeat so
//! clients know a daemon is alive, and periodic garbage collection; stops
//! cleanly (finishing the task in hand) when told to.

use crate::Engine;
use drydock_store::now_ms;
use drydock_store::queue::{NewTask, Outcome, WorkerConfig, run_worker};
use std::sync::Arc;
use std::time::Duration;

/// Task kind of garbage collection (one queued at a time, key `gc`).
pub const GC_TASK: &str = "gc";

/// A daemon counts as alive if it beat within this long.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(10);

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub workers: usize,
    pub heartbeat: Duration,
    pub poll: Duration,
    pub claim_ttl: Duration,
    /// PostgreSQL connections (`None`: [`drydock_store::pool_size_for`] the
    /// workers).
    pub database_connections: Option<usize>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            heartbeat: Duration::from_secs(2),
            poll: Duration::from_secs(1),
            claim_ttl: Duration::from_secs(30),
            database_connections: None,
        }
    }
}

/// Run workers until `stop` turns true; then let each finish the task in
/// hand, mark the daemon stopped and return.
pub async fn run(
    engine: Arc<Engine>,
    cfg: DaemonConfig,
    id: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), drydock_store::StoreError> {
    let store = engine.store.clone();
    store.set_pool_size(
        cfg.database_connections
            .unwrap_or_else(|| drydock_store::pool_size_for(cfg.workers.max(1))),
    );
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    store.serve_tasks_as(id).await?;
    store
        .daemon_heartbeat(id, &host, i64::from(std::process::id()))
        .await?;
    store
        .schedule(NewTask::new(GC_TASK).object(GC_TASK))
        .await?;
    let worker = |i: usize| {
        let mut wc = WorkerConfig::new(format!("{id}/w{i}"));
        wc.poll = cfg.poll;
        wc.claim_ttl = cfg.claim_ttl;
        tokio::spawn(run_worker(store.clone(), engine.clone(), wc, stop.clone()))
    };
    let mut workers: Vec<_> = (0..cfg.workers.max(1)).map(worker).collect();
    let mut stop_beat = stop.clone();
    let mut skewed = report_skew(drydock_store::clock::skew_ms(), false);
    while !*stop_beat.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(cfg.heartbeat) => {
                if let Err(e) = store.daemon_heartbeat(id, &host, i64::from(std::process::id())).await {
                    tracing::warn!("daemon heartbeat failed: {e}");
                }
                match store.sync_clock().await {
                    Ok(skew) => skewed = report_skew(skew, skewed),
                    Err(e) => tracing::warn!("reading the database's clock failed: {e}"),
                }
            }
            _ = stop_beat.changed() => {}
        }
        // A worker loop ends only when told to stop; one that ended
        // otherwise died (a panic outside any handler, which are caught):
        // start it again, so a live-looking daemon always has its workers.
        for (i, w) in workers.iter_mut().enumerate() {
            if w.is_finished() && !*stop_beat.borrow() {
                let died = std::mem::replace(w, worker(i));
                let why = match died.await {
                    Err(e) if e.is_panic() => {
                        drydock_store::queue::panic_message(e.into_panic().as_ref())
                    }
                    _ => "it returned".into(),
                };
                tracing::error!(worker = i, "a worker loop died ({why}); started it again");
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
    store.daemon_stopped(id).await
}

/// Say in the log when this host's clock starts or stops differing from
/// the database's by more than a second (stored times follow the
/// database's clock either way, `drydock_store::now_ms`; a large skew
/// still means this host's logs and metrics read wrong). Answers whether
/// it differs now.
fn report_skew(skew_ms: i64, was_skewed: bool) -> bool {
    let skewed = skew_ms.abs() > drydock_store::clock::SKEW_WARNING_MS;
    if skewed && !was_skewed {
        tracing::warn!(
            skew_ms,
            "this host's clock differs from the database's by {skew_ms} ms: Drydock corrects \
             its stored times by it, but keep the clocks synchronized (NTP)"
        );
    } else if was_skewed && !skewed {
        tracing::info!(
            skew_ms,
            "this host's clock agrees with the database's again"
        );
    }
    skewed
}

impl Engine {
    /// Garbage collection: prune old rows of destroyed objects, and
    /// reschedule any unfinished object that lost its task.
    pub(crate) async fn gc_pass(&self) -> Outcome {
        let cutoff = now_ms() - drydock_store::ms(self.cfg.retention);
        loop {
            // Finished tasks are only history: a day is enough.
            let task_cutoff = cutoff.max(now_ms() - 86_400_000);
            match self.store.prune(cutoff, task_cutoff, 1000).await {
                Ok(r) if r.logs == 1000 || r.commands == 1000 || r.tasks == 1000 => continue,
                Ok(r) => {
                    if r.total() > 0 {
                        tracing::info!(
                            logs = r.logs,
                            commands = r.commands,
                            tasks = r.tasks,
                            "pruned"
                        );
                    }
                    break;
                }
                Err(e) => return Outcome::Retry(format!("pruning failed: {e}")),
            }
        }
        // An object whose task failed for good would fail again: break it
        // with the reason (a live one breaks; one whose teardown kept
        // failing is finished, the failure logged).
        match self.store.failed_objects(1000).await {
            Ok(objects) => {
                for (o, error) in objects {
                    let reason = format!("its update task failed for good: {error}");
                    tracing::warn!(object = %o, "breaking an object: {reason}");
                    if let Err(e) = self.break_object(o, &reason).await {
                        tracing::warn!(object = %o, "breaking it failed: {e}");
                    }
                }
            }
            Err(e) => return Outcome::Retry(format!("sweeping for failed tasks failed: {e}")),
        }
        match self.store.orphaned_objects(1000).await {
            Ok(objects) => {
                for o in objects {
                    tracing::warn!(object = %o, "rescheduling an object that had no task");
                    if let Err(e) = self.store.schedule(NewTask::update(o)).await {
                        return Outcome::Retry(format!("rescheduling {o} failed: {e}"));
                    }
                }
            }
            Err(e) => return Outcome::Retry(format!("sweeping for lost tasks failed: {e}")),
        }
        Outcome::Yield(self.cfg.gc_interval)
    }
}
