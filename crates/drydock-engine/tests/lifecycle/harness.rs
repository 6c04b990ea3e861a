//! A scripted blueprint whose behaviour each test sets through its fields,
//! and a harness running real engine workers against a test database.

use async_trait::async_trait;
use drydock_engine::blueprint::{
    Acquisition, BlueprintError, BlueprintImpl, BlueprintResult, Context, FieldKind, FieldSpec,
    Registry, ResourceTemplate,
};
use drydock_engine::{ADMIN, Engine, EngineConfig, client};
use drydock_model::{BlueprintId, LeaseId, LeaseStatus};
use drydock_store::Store;
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::{Lease, NewLease};
use drydock_store::log::LogFilter;
use drydock_store::queue::{WorkerConfig, run_worker};
use drydock_store::resource::Resource;
use drydock_testkit::{TestDb, wait_until};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted blueprint saw happen.
#[derive(Default)]
pub struct Probe {
    pub did_release: Mutex<HashMap<i64, u32>>,
    pub destroyed_resources: Mutex<Vec<i64>>,
    /// Leases currently active-or-activating per resource, and the maximum seen.
    pub holding: Mutex<HashMap<i64, u32>>,
    pub max_holding: AtomicU32,
    pub resource_activations: AtomicU32,
    pub lease_activations: AtomicU32,
    /// While set, lease activation yields ("hold").
    pub hold: AtomicBool,
    /// While set, a "remote" lease teardown waits.
    pub hold_teardown: AtomicBool,
}

pub struct Scripted(pub Arc<Probe>);

const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "limit",
        kind: FieldKind::Count,
        required: false,
        default: None,
        description: "",
        secret: false,
    },
    FieldSpec {
        name: "lease-limit",
        kind: FieldKind::Count,
        required: false,
        default: None,
        description: "",
        secret: false,
    },
    FieldSpec {
        name: "resource-activation",
        kind: FieldKind::Text,
        required: false,
        default: Some("instant"),
        description: "instant|ok|fail|fail-once|hold",
        secret: false,
    },
    FieldSpec {
        name: "lease-activation",
        kind: FieldKind::Text,
        required: false,
        default: Some("ok"),
        description: "ok|instant|fail|flaky-2|temporary|hold|torn-down-once",
        secret: false,
    },
    FieldSpec {
        name: "lease-teardown",
        kind: FieldKind::Text,
        required: false,
        default: Some("local"),
        description: "local|remote (not local: waits while the probe holds teardowns)",
        secret: false,
    },
];

fn field<'a>(bp: &'a Blueprint, name: &str) -> &'a str {
    bp.fields.get(name).and_then(Value::as_str).unwrap_or("")
}

#[async_trait]
impl BlueprintImpl for Scripted {
    fn type_name(&self) -> &'static str {
        "test.scripted"
    }
    fn resource_type(&self) -> &'static str {
        "thing"
    }
    fn description(&self) -> &'static str {
        "a blueprint whose behaviour tests choose"
    }
    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }
    async fn allocate(
        &self,
        ctx: &Context<'_>,
        lease: &Lease,
    ) -> BlueprintResult<ResourceTemplate> {
        let mut attributes = Map::new();
        if let Some(f) = lease.attributes.get("flavor") {
            attributes.insert("flavor".into(), f.clone());
        }
        Ok(ResourceTemplate {
            attributes,
            activate_now: field(ctx.blueprint, "resource-activation") == "instant",
            slot_locks: vec![],
        })
    }
    async fn activate_resource(
        &self,
        ctx: &Context<'_>,
        _r: &Resource,
    ) -> BlueprintResult<Map<String, Value>> {
        let n = self.0.resource_activations.fetch_add(1, Ordering::SeqCst);
        match field(ctx.blueprint, "resource-activation") {
            "fail" => Err(BlueprintError::Permanent(
                "resource activation failed".into(),
            )),
            "fail-once" if n == 0 => Err(BlueprintError::Permanent(
                "first resource activation failed".into(),
            )),
            "hold" if self.0.hold.load(Ordering::SeqCst) => Err(BlueprintError::Yield {
                after: Duration::from_millis(20),
                reason: "held".into(),
            }),
            _ => Ok(Map::new()),
        }
    }
    async fn destroy_resource(&self, _ctx: &Context<'_>, r: &Resource) -> BlueprintResult<()> {
        self.0.destroyed_resources.lock().unwrap().push(r.id.0);
        Ok(())
    }
    fn can_ever_allocate(&self, _bp: &Blueprint, lease: &Lease) -> BlueprintResult<bool> {
        match lease.attributes.get("flavor").and_then(Value::as_str) {
            Some("never") => Err(BlueprintError::Permanent(
                "flavor \"never\" cannot be built".into(),
            )),
            _ => Ok(true),
        }
    }
    fn can_acquire(&self, _bp: &Blueprint, r: &Resource, lease: &Lease) -> bool {
        lease
            .attributes
            .get("flavor")
            .is_none_or(|f| r.attributes.get("flavor") == Some(f))
    }
    fn acquire(
        &self,
        bp: &Blueprint,
        _r: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Acquisition> {
        Ok(Acquisition {
            slot_locks: vec![],
            // "instant": pending -> active in one step (spec's activate-on-acquire).
            activate_now: field(bp, "lease-activation") == "instant",
        })
    }
    async fn activate_lease(
        &self,
        ctx: &Context<'_>,
        r: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Map<String, Value>> {
        let n = self.0.lease_activations.fetch_add(1, Ordering::SeqCst);
        match field(ctx.blueprint, "lease-activation") {
            "fail" => {
                return Err(BlueprintError::Permanent(
                    "lease activation failed: disk full".into(),
                ));
            }
            "temporary" => return Err(BlueprintError::Temporary("connection reset".into())),
            // The first setup meets its resource being torn down under it
            // (released meanwhile) and fails the way a vanished workspace
            // makes a real blueprint fail: permanently.
            "torn-down-once" if n == 0 => {
                let _ = drydock_engine::client::release_resource(ctx.store, r.id, "admin").await;
                let released = async {
                    while ctx.store.resource(r.id).await.ok().map(|x| x.status)
                        == Some(drydock_model::ResourceStatus::Active)
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), released).await;
                return Err(BlueprintError::Permanent(
                    "workspace vanished: not a git repository".into(),
                ));
            }
            "flaky-2" if n < 2 => return Err(BlueprintError::Temporary("connection reset".into())),
            // A hook with a bug: its first four runs panic.
            "panic-4" if n < 4 => panic!("scripted panic in lease activation"),
            "hold" if self.0.hold.load(Ordering::SeqCst) => {
                return Err(BlueprintError::Yield {
                    after: Duration::from_millis(20),
                    reason: "held".into(),
                });
            }
            _ => {}
        }
        let mut holding = self.0.holding.lock().unwrap();
        let h = holding.entry(r.id.0).or_default();
        *h += 1;
        self.0.max_holding.fetch_max(*h, Ordering::SeqCst);
        Ok(Map::new())
    }
    /// Its hooks only count, except the activation that releases its
    /// resource through the store and a "remote" teardown.
    fn lease_hooks_are_local(&self, bp: &Blueprint) -> bool {
        field(bp, "lease-activation") != "torn-down-once" && field(bp, "lease-teardown") != "remote"
    }
    async fn did_release_lease(
        &self,
        _ctx: &Context<'_>,
        _r: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<()> {
        *self
            .0
            .did_release
            .lock()
            .unwrap()
            .entry(lease.id.0)
            .or_default() += 1;
        Ok(())
    }
    async fn destroy_lease(
        &self,
        ctx: &Context<'_>,
        r: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<()> {
        if field(ctx.blueprint, "lease-teardown") == "remote" {
            let released = async {
                while self.0.hold_teardown.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(20), released).await;
        }
        if lease.activated_at.is_some() {
            *self.0.holding.lock().unwrap().entry(r.id.0).or_default() -= 1;
        }
        Ok(())
    }
    fn should_allocate_supplemental(&self, bp: &Blueprint, _r: &Resource, _lease: &Lease) -> bool {
        self.lease_limit(bp).is_some()
    }
}

pub struct Harness {
    pub store: Store,
    pub probe: Arc<Probe>,
    pub registry: Arc<Registry>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

pub fn config(owner: &str) -> EngineConfig {
    let mut cfg = EngineConfig::new(owner);
    // Far beyond any test deadline: a test passes only through wake-up edges.
    cfg.safety_poll = Duration::from_secs(600);
    cfg.reclaim_grace = Duration::ZERO;
    cfg.lock_ttl = Duration::from_secs(10);
    cfg.contention_retry = Duration::from_millis(5);
    cfg.max_attempts = 4;
    cfg
}

impl Harness {
    /// An engine with `workers` worker loops on `pools` separate connection
    /// pools (as separate daemons would have).
    pub async fn start(db: &TestDb, workers: usize) -> Harness {
        let probe = Arc::new(Probe::default());
        let registry = Arc::new(Registry::new().with(Arc::new(Scripted(probe.clone()))));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for i in 0..workers {
            let store = if i % 2 == 1 {
                db.connect_again().await
            } else {
                db.store.clone()
            };
            let e = Arc::new(Engine::new(
                store.clone(),
                registry.clone(),
                config(&format!("worker{i}")),
            ));
            let mut wc = WorkerConfig::new(format!("worker{i}"));
            wc.retry_base = Duration::from_millis(10);
            wc.poll = Duration::from_millis(500);
            handles.push(tokio::spawn(run_worker(store, e, wc, rx.clone())));
        }
        Harness {
            store: db.store.clone(),
            probe,
            registry,
            stop,
            workers: handles,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
    }

    pub async fn blueprint(&self, name: &str, fields: Value) -> anyhow::Result<BlueprintId> {
        let fields = fields.as_object().cloned().unwrap_or_default();
        Ok(client::create_blueprint(
            &self.store,
            &self.registry,
            "admin",
            name,
            "test.scripted",
            &fields,
        )
        .await?
        .id)
    }

    pub async fn lease(&self, attributes: Value) -> anyhow::Result<Lease> {
        self.lease_as(ADMIN, attributes, 0).await
    }

    pub async fn lease_as(
        &self,
        authorizing: &str,
        attributes: Value,
        priority: i64,
    ) -> anyhow::Result<Lease> {
        let new = NewLease {
            resource_type: "thing".into(),
            authorizing: authorizing.into(),
            attributes: attributes.as_object().cloned().unwrap_or_default(),
            priority,
            ..Default::default()
        };
        Ok(client::request_lease(&self.store, &new).await?)
    }

    pub async fn wait_status(&self, id: LeaseId, status: LeaseStatus) -> anyhow::Result<Lease> {
        let store = self.store.clone();
        let waited = wait_until(
            Duration::from_secs(30),
            &format!("lease {id} to be {status}"),
            async || {
                store
                    .lease(id)
                    .await
                    .map(|l| l.status == status)
                    .unwrap_or(false)
            },
        )
        .await;
        if waited.is_err() {
            self.dump().await;
        }
        waited?;
        Ok(self.store.lease(id).await?)
    }

    /// Print the state of every lease and resource with its tasks and waits
    /// (for a failing test's output).
    pub async fn dump(&self) {
        use drydock_model::ObjectRef;
        let mut objects: Vec<ObjectRef> = Vec::new();
        for l in self
            .store
            .leases(&Default::default())
            .await
            .unwrap_or_default()
        {
            eprintln!(
                "lease {} {} res={:?} waiting={:?} v{}",
                l.id, l.status, l.resource_id, l.waiting, l.version
            );
            objects.push(l.object());
        }
        for r in self
            .store
            .resources(None, None, 1000)
            .await
            .unwrap_or_default()
        {
            eprintln!("resource {} {} v{}", r.id, r.status, r.version);
            objects.push(r.object());
        }
        for o in objects {
            for t in self.store.tasks_for(&o.key()).await.unwrap_or_default() {
                eprintln!(
                    "  task {} {} {:?} run_at={} (now {}) attempts={} claim={:?}/{:?} err={:?}",
                    t.id,
                    o,
                    t.state,
                    t.run_at,
                    drydock_store::now_ms(),
                    t.attempts,
                    t.claim_owner,
                    t.claim_expires_at,
                    t.last_error
                );
            }
            eprintln!(
                "  {o} waits on {:?}; commands {:?}",
                self.store.waits_of(o).await.unwrap_or_default(),
                self.store
                    .pending_commands(o)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .map(|c| (c.id, c.command))
                    .collect::<Vec<_>>()
            );
        }
        eprintln!(
            "locks held: {:?}",
            self.store.held_locks().await.unwrap_or_default()
        );
        eprintln!(
            "slot locks: {:?}",
            self.store.all_slot_locks().await.unwrap_or_default()
        );
    }

    pub async fn wait_reason(&self, id: LeaseId, reason: &str) -> anyhow::Result<Lease> {
        let store = self.store.clone();
        wait_until(
            Duration::from_secs(30),
            &format!("lease {id} to wait with {reason}"),
            async || {
                store
                    .lease(id)
                    .await
                    .map(|l| {
                        l.waiting
                            .as_ref()
                            .and_then(|w| w.get("reason"))
                            .and_then(Value::as_str)
                            == Some(reason)
                    })
                    .unwrap_or(false)
            },
        )
        .await?;
        Ok(self.store.lease(id).await?)
    }

    pub async fn lease_logs(&self, id: LeaseId) -> anyhow::Result<Vec<String>> {
        Ok(self
            .store
            .logs(&LogFilter {
                lease: Some(id),
                ..Default::default()
            })
            .await?
            .into_iter()
            .map(|l| l.kind)
            .collect())
    }
}

pub fn none() -> Value {
    json!({})
}

/// Break an object as an operator would: while a worker holds its lock the
/// engine answers "try again shortly", so try again until it is done.
pub async fn break_now(
    engine: &Engine,
    object: drydock_model::ObjectRef,
    reason: &str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match engine.break_object(object, reason).await {
            Err(e) if e.is_temporary() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return Ok(other?),
        }
    }
}
