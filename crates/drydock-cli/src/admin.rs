//! Administrative commands: daemon, blueprints, resources, releases,
//! foreground updates, reclaim and logs.

use crate::config::Settings;
use crate::output::{self, print};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use drydock_engine::daemon::{ALIVE_WITHIN, DaemonConfig};
use drydock_engine::{Engine, EngineConfig, client};
use drydock_model::{BlueprintId, LeaseId, ObjectRef, ResourceId, ResourceStatus};
use drydock_store::Store;
use drydock_store::log::{LogEntry, LogFilter};
use drydock_store::queue::Outcome;
use serde_json::{Map, Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The identity this process writes as lock and claim owner.
pub fn owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// An engine over every built-in blueprint implementation.
pub fn engine(store: &Store) -> Arc<Engine> {
    Arc::new(Engine::new(
        store.clone(),
        Arc::new(drydock_blueprints::registry()),
        EngineConfig::new(owner()),
    ))
}

/// Whether some `drydock daemon` is alive on this database.
pub async fn daemon_alive(store: &Store) -> anyhow::Result<bool> {
    Ok(!store.live_daemons(ALIVE_WITHIN).await?.is_empty())
}

/// A blueprint named by id or by name.
pub async fn resolve_blueprint(store: &Store, text: &str) -> anyhow::Result<BlueprintId> {
    Ok(client::find_blueprint(store, text).await?.id)
}

/// Parse `KEY=VALUE` pairs into a map of strings.
pub fn pairs(items: &[String], what: &str) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("{what} {item:?} must be KEY=VALUE"))?;
        if k.is_empty() {
            bail!("{what} {item:?} has an empty key");
        }
        if map
            .insert(k.to_owned(), Value::String(v.to_owned()))
            .is_some()
        {
            bail!("{what} {k:?} given twice");
        }
    }
    Ok(map)
}

#[derive(Args, Debug, Default)]
pub struct DaemonArgs {
    /// Number of concurrent update workers [default: 4].
    #[arg(long, env = "DRYDOCK_WORKERS")]
    pub workers: Option<usize>,
    /// How long a claimed task (and an object lock) stays with a daemon that
    /// stopped answering before another daemon takes it over [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub claim_ttl: Option<Duration>,
    /// An idle resource may be reclaimed once no lease touched it for this
    /// long [default: 3m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reclaim_grace: Option<Duration>,
    /// Logs and consumed commands of destroyed objects are deleted after
    /// this long [default: 30days].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
}

impl DaemonArgs {
    pub fn apply(&self, o: &mut crate::config::Overrides) {
        o.workers = self.workers.or(o.workers);
        o.claim_ttl = self.claim_ttl.or(o.claim_ttl);
        o.reclaim_grace = self.reclaim_grace.or(o.reclaim_grace);
        o.retention = self.retention.or(o.retention);
    }
}

/// The engine and daemon settings from `settings`.
pub fn daemon_parts(store: &Store, settings: &Settings) -> (Arc<Engine>, DaemonConfig) {
    let mut cfg = EngineConfig::new(owner());
    cfg.lock_ttl = settings.claim_ttl;
    cfg.reclaim_grace = settings.reclaim_grace;
    cfg.retention = settings.retention;
    let engine = Arc::new(Engine::new(
        store.clone(),
        Arc::new(drydock_blueprints::registry()),
        cfg,
    ));
    let daemon = DaemonConfig {
        workers: settings.workers,
        claim_ttl: settings.claim_ttl,
        database_connections: settings.database_connections,
        ..Default::default()
    };
    (engine, daemon)
}

/// A channel that turns true on SIGTERM or Ctrl-C.
pub fn stop_on_signal(what: &'static str) -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("drydock {what}: cannot watch SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("drydock {what}: stopping after the work in hand");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

pub fn daemon_id() -> String {
    format!("{}:{}", owner(), drydock_store::now_ms())
}

pub async fn daemon(store: &Store, settings: &Settings) -> anyhow::Result<ExitCode> {
    let (engine, cfg) = daemon_parts(store, settings);
    let id = daemon_id();
    eprintln!(
        "drydock daemon {id}: {} worker(s) on {}",
        cfg.workers,
        store.dialect().as_str()
    );
    let stop = stop_on_signal("daemon");
    drydock_engine::daemon::run(engine, cfg, &id, stop).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum BlueprintCmd {
    /// Create a blueprint; prints its id.
    Create {
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        name: String,
        /// Field value (repeatable), checked against the type's fields.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List blueprints.
    List,
    /// Show one blueprint and its edit history.
    Show { id: String },
    /// Change fields (and optionally the name).
    Edit {
        id: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop giving out new leases from this blueprint.
    Disable { id: String },
    /// Give out leases from this blueprint again.
    Enable { id: String },
    /// List blueprint types and their fields.
    Types,
}

pub async fn blueprint(store: &Store, cmd: BlueprintCmd, json: bool) -> anyhow::Result<ExitCode> {
    let registry = drydock_blueprints::registry();
    let author = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "admin".into())
    );
    match cmd {
        BlueprintCmd::Create { kind, name, set } => {
            let fields = pairs(&set, "--set")?;
            let bp =
                client::create_blueprint(store, &registry, &author, &name, &kind, &fields).await?;
            print(json, &bp, || bp.id.to_string());
        }
        BlueprintCmd::List => {
            let all = store.blueprints(None).await?;
            print(json, &all, || {
                let mut lines = vec![format!(
                    "{:>4}  {:<20}  {:<14}  state",
                    "id", "name", "type"
                )];
                lines.extend(all.iter().map(output::blueprint_line));
                lines.join("\n")
            });
        }
        BlueprintCmd::Show { id } => {
            let bp = store
                .blueprint(resolve_blueprint(store, &id).await?)
                .await?;
            let edits = store.blueprint_edits(bp.id).await?;
            print(json, &json!({ "blueprint": bp, "edits": edits }), || {
                let mut out = output::blueprint_detail(&bp);
                out.push_str("\n  history:");
                for e in &edits {
                    out.push_str(&format!(
                        "\n    {}  {}  {}: {} -> {}",
                        output::time(e.epoch),
                        e.author,
                        e.field,
                        e.old_value.as_deref().unwrap_or("-"),
                        e.new_value.as_deref().unwrap_or("-")
                    ));
                }
                out
            });
        }
        BlueprintCmd::Edit { id, set, name } => {
            let id = resolve_blueprint(store, &id).await?;
            let bp = client::edit_blueprint(
                store,
                &registry,
                &author,
                id,
                name.as_deref(),
                &pairs(&set, "--set")?,
            )
            .await?;
            print(json, &bp, || output::blueprint_detail(&bp));
        }
        BlueprintCmd::Disable { id } => {
            let bp = client::set_blueprint_disabled(
                store,
                &author,
                resolve_blueprint(store, &id).await?,
                true,
            )
            .await?;
            print(json, &bp, || {
                format!(
                    "Blueprint {} ({}) disabled: it gives out no new leases",
                    bp.id, bp.name
                )
            });
        }
        BlueprintCmd::Enable { id } => {
            let bp = client::set_blueprint_disabled(
                store,
                &author,
                resolve_blueprint(store, &id).await?,
                false,
            )
            .await?;
            print(json, &bp, || {
                format!("Blueprint {} ({}) enabled", bp.id, bp.name)
            });
        }
        BlueprintCmd::Types => {
            let types: Vec<Value> = registry
                .iter()
                .map(|i| {
                    json!({
                        "type": i.type_name(),
                        "resource_type": i.resource_type(),
                        "description": i.description(),
                        "fields": i.fields().iter().map(|f| json!({
                            "name": f.name, "kind": f.kind.as_str(), "required": f.required,
                            "default": f.default, "description": f.description, "secret": f.secret,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print(json, &types, || {
                let mut out = Vec::new();
                for i in registry.iter() {
                    out.push(format!(
                        "{} (resource type {}): {}",
                        i.type_name(),
                        i.resource_type(),
                        i.description()
                    ));
                    for f in i.fields() {
                        let flags = [
                            if f.required {
                                Some("required".to_owned())
                            } else {
                                None
                            },
                            f.default.map(|d| format!("default {d}")),
                            if f.secret {
                                Some("secret".to_owned())
                            } else {
                                None
                            },
                        ];
                        let flags: Vec<String> = flags.into_iter().flatten().collect();
                        out.push(format!(
                            "    {:<14} {:<6} {} {}",
                            f.name,
                            f.kind.as_str(),
                            f.description,
                            if flags.is_empty() {
                                String::new()
                            } else {
                                format!("({})", flags.join(", "))
                            }
                        ));
                    }
                }
                out.join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum ResourceCmd {
    /// List resources, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one resource.
    Show { id: i64 },
}

pub async fn resource(store: &Store, cmd: ResourceCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        ResourceCmd::List {
            status,
            blueprint,
            limit,
        } => {
            let status = status.map(|s| ResourceStatus::parse(&s)).transpose()?;
            let blueprint = match blueprint {
                Some(b) => Some(resolve_blueprint(store, &b).await?),
                None => None,
            };
            let all = store.resources(blueprint, status, limit).await?;
            print(json, &all, || {
                let mut lines = vec![format!(
                    "{:>6}  {:<9}  {:<12}  blueprint",
                    "id", "status", "type"
                )];
                lines.extend(all.iter().map(output::resource_line));
                lines.join("\n")
            });
        }
        ResourceCmd::Show { id } => {
            let r = store.resource(ResourceId(id)).await?;
            print(json, &r, || output::resource_detail(&r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Without a daemon, carry out here everything that is due — the object's
/// passes and whatever they cause (a resource's release cascading to its
/// leases, a working copy releasing its host lease) — until nothing is
/// runnable now or `limit` passes (the original's in-process mode, spec
/// §17.7, extended to the cascade).
pub async fn drain(engine: &Arc<Engine>, limit: Duration) {
    let mut cfg = drydock_store::queue::WorkerConfig::new(format!("{}/cli", engine.cfg.owner));
    cfg.retry_base = Duration::from_millis(200);
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        match engine.store.claim(&cfg.owner, cfg.claim_ttl).await {
            Ok(Some(task)) => {
                if let Err(e) =
                    drydock_store::queue::run_claimed(&engine.store, engine.as_ref(), &cfg, &task)
                        .await
                {
                    tracing::warn!("recording a task outcome failed: {e}");
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("claiming a task failed: {e}");
                break;
            }
        }
    }
}

pub async fn release(
    store: &Store,
    lease: bool,
    ids: &[i64],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let author = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "admin".into())
    );
    let in_process = !daemon_alive(store).await?;
    let engine = engine(store);
    let mut failed = false;
    let mut results = Vec::new();
    for &id in ids {
        let (what, result) = if lease {
            (
                "lease",
                client::release_lease(store, LeaseId(id), &author).await,
            )
        } else {
            (
                "resource",
                client::release_resource(store, ResourceId(id), &author).await,
            )
        };
        match result {
            Ok(command) => {
                if in_process {
                    drain(&engine, Duration::from_secs(60)).await;
                }
                if !json {
                    println!("Release of {what} {id} requested (command {command})");
                }
                results.push(json!({ "id": id, "released": true, "command": command }));
            }
            Err(e) => {
                failed = true;
                if !json {
                    eprintln!("drydock: {e}");
                }
                results.push(json!({ "id": id, "released": false, "error": e.to_string() }));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn update(
    store: &Store,
    lease: bool,
    ids: &[i64],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let engine = engine(store);
    let mut results = Vec::new();
    for &id in ids {
        let object = if lease {
            ObjectRef::lease(LeaseId(id))
        } else {
            ObjectRef::resource(ResourceId(id))
        };
        let outcome = engine.update_now(object).await;
        let text = match &outcome {
            Outcome::Done => "done".to_owned(),
            Outcome::Yield(d) => format!(
                "waiting (next look in {})",
                humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
            ),
            Outcome::Retry(e) => format!("temporary failure: {e}"),
            Outcome::Fail(e) => format!("failed: {e}"),
        };
        if !json {
            println!("Updated {object}: {text}");
        }
        results.push(json!({ "object": object.key(), "outcome": text }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ReclaimArgs {
    /// Only resources of this blueprint (id or name).
    #[arg(long)]
    blueprint: Option<String>,
}

pub async fn reclaim(store: &Store, args: ReclaimArgs, json: bool) -> anyhow::Result<ExitCode> {
    let blueprint = match args.blueprint {
        Some(b) => Some(resolve_blueprint(store, &b).await?),
        None => None,
    };
    let author = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "admin".into())
    );
    let sent = client::reclaim(store, blueprint, &author).await?;
    let engine = engine(store);
    let in_process = !daemon_alive(store).await?;
    let mut results = Vec::new();
    for id in &sent {
        if in_process {
            drain(&engine, Duration::from_secs(60)).await;
        }
        let status = store.resource(*id).await?.status;
        let reclaimed = matches!(status, ResourceStatus::Released | ResourceStatus::Destroyed);
        if !json {
            if in_process {
                println!(
                    "Resource {id} {}",
                    if reclaimed {
                        "was reclaimed"
                    } else {
                        "could not be reclaimed (in use or recently used)"
                    }
                );
            } else {
                println!("Reclaim of resource {id} requested");
            }
        }
        results.push(json!({ "resource": id, "status": status }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else if sent.is_empty() {
        println!("No active resources to reclaim");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LogArgs {
    #[arg(long)]
    lease: Option<i64>,
    #[arg(long)]
    resource: Option<i64>,
    #[arg(long)]
    blueprint: Option<String>,
    /// Most events to show.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
}

pub async fn log(store: &Store, args: LogArgs, json: bool) -> anyhow::Result<ExitCode> {
    let blueprint = match args.blueprint {
        Some(b) => Some(resolve_blueprint(store, &b).await?),
        None => None,
    };
    let filter = LogFilter {
        lease: args.lease.map(LeaseId),
        resource: args.resource.map(ResourceId),
        blueprint,
        limit: Some(args.limit),
        ..Default::default()
    };
    let events: Vec<LogEntry> = store.logs(&filter).await?;
    for e in &events {
        if json {
            // One JSON object per line, for scripts.
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!("{}", output::log_line(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    #[arg(long)]
    id: i64,
    /// New expiry, counted from now (e.g. 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    until: Duration,
}

pub async fn renew(store: &Store, args: RenewArgs, json: bool) -> anyhow::Result<ExitCode> {
    let author = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "admin".into())
    );
    let until = drydock_store::now_ms() + drydock_store::ms(args.until);
    let command = client::renew_lease(store, LeaseId(args.id), until, &author).await?;
    if !daemon_alive(store).await? {
        drain(&engine(store), Duration::from_secs(60)).await;
    }
    print(
        json,
        &json!({ "id": args.id, "until": until, "command": command }),
        || format!("Lease {} renewed until {}", args.id, output::time(until)),
    );
    Ok(ExitCode::SUCCESS)
}
