//! `drydock lease`: request a lease and wait until it is active, showing its
//! log while it waits; `drydock lease list|show`.

use crate::admin::{daemon_alive, engine, pairs};
use crate::output::{self, print};
use anyhow::bail;
use clap::{Args, Subcommand};
use drydock_engine::daemon::DaemonConfig;
use drydock_engine::{ADMIN, client};
use drydock_model::{LeaseId, LeaseStatus};
use drydock_store::Store;
use drydock_store::lease::{Lease, LeaseFilter};
use drydock_store::log::LogFilter;
use drydock_store::queue::{WorkerConfig, run_worker};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LeaseArgs {
    #[command(subcommand)]
    cmd: Option<LeaseCmd>,
    #[command(flatten)]
    request: RequestArgs,
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// Resource type to lease (e.g. host).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Allowed blueprint, by id or name (repeatable; default: every enabled
    /// blueprint of the type).
    #[arg(long = "blueprint")]
    blueprints: Vec<String>,
    /// Attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    attributes: Vec<String>,
    /// Higher priorities are served first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// Release the lease automatically after this long (e.g. 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    until: Option<Duration>,
    /// Queue the lease, print its id and return without waiting.
    #[arg(long)]
    no_wait: bool,
    /// Give up (and release the lease) if it is not active after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
enum LeaseCmd {
    /// List leases, newest first.
    List {
        #[arg(long)]
        status: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one lease.
    Show { id: i64 },
}

pub async fn lease(store: &Store, args: LeaseArgs, json: bool) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Some(LeaseCmd::List { status, limit }) => {
            let statuses = status
                .iter()
                .map(|s| LeaseStatus::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let leases = store
                .leases(&LeaseFilter {
                    statuses,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            print(json, &leases, || {
                let mut lines = vec![format!(
                    "{:>6}  {:<9}  {:<12}  {:>8}  detail",
                    "id", "status", "type", "resource"
                )];
                lines.extend(leases.iter().map(output::lease_line));
                lines.join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        Some(LeaseCmd::Show { id }) => {
            let l = store.lease(LeaseId(id)).await?;
            print(json, &l, || output::lease_detail(&l));
            Ok(ExitCode::SUCCESS)
        }
        None => request(store, args.request, json).await,
    }
}

/// Engine workers run in this process while no daemon is alive (spec
/// §17.7's in-process mode), so the CLI works on a bare database.
pub struct InProcess {
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    pub async fn start_if_no_daemon(store: &Store) -> anyhow::Result<InProcess> {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        if !daemon_alive(store).await? {
            eprintln!("(no drydock daemon is running: doing the work in this process)");
            let engine = engine(store);
            for i in 0..DaemonConfig::default().workers {
                let mut wc = WorkerConfig::new(format!("{}/cli{i}", engine.cfg.owner));
                wc.poll = Duration::from_millis(200);
                workers.push(tokio::spawn(run_worker(
                    store.clone(),
                    engine.clone(),
                    wc,
                    rx.clone(),
                )));
            }
        }
        Ok(InProcess { stop, workers })
    }

    /// Release the lease; with in-process workers, wait (bounded) until it
    /// is destroyed, since nobody else will do it.
    pub async fn release(&self, store: &Store, id: LeaseId, author: &str) -> anyhow::Result<()> {
        match client::release_lease(store, id, author).await {
            Ok(_) | Err(client::ClientError::NotReleasable { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if !self.workers.is_empty() {
            client::wait_for_lease(store, id, Duration::from_secs(30), |l| {
                l.status == LeaseStatus::Destroyed
            })
            .await?;
        }
        Ok(())
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
    }
}

/// Check the flags and queue the lease they describe.
async fn queue(store: &Store, args: &RequestArgs) -> anyhow::Result<Lease> {
    let Some(kind) = args.kind.clone() else {
        bail!("--type is required (e.g. --type host)")
    };
    let request = client::LeaseRequest {
        resource_type: kind,
        blueprints: args.blueprints.clone(),
        authorizing: ADMIN.into(),
        owner: Some(format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "user".into())
        )),
        attributes: pairs(&args.attributes, "--attribute")?,
        priority: args.priority,
        until: args
            .until
            .map(|d| drydock_store::now_ms() + drydock_store::ms(d)),
    };
    Ok(client::queue_lease(store, &drydock_blueprints::registry(), &request).await?)
}

/// Queue a lease as the flags say and wait for it. `Ok(Err(code))` when it
/// did not become active (broken, timed out, interrupted): it has been
/// released and `code` is the exit code to use.
pub async fn acquire(
    store: &Store,
    args: &RequestArgs,
    workers: &InProcess,
    json: bool,
) -> anyhow::Result<Result<Lease, ExitCode>> {
    let lease = queue(store, args).await?;
    eprintln!(
        "Lease {} queued; waiting for it to become active...",
        lease.id
    );
    match wait_active(store, lease.id, args.timeout).await? {
        Waited::Active => Ok(Ok(store.lease(lease.id).await?)),
        Waited::Failed(l) => {
            eprintln!(
                "drydock: lease {} is {}: {}",
                l.id,
                l.status,
                l.failure.as_deref().unwrap_or("no reason recorded")
            );
            if json {
                print(json, &l, String::new);
            }
            Ok(Err(ExitCode::FAILURE))
        }
        Waited::Interrupted => {
            workers.release(store, lease.id, "cli:interrupted").await?;
            eprintln!("drydock: interrupted; released lease {}", lease.id);
            Ok(Err(ExitCode::from(130)))
        }
        Waited::TimedOut => {
            workers.release(store, lease.id, "cli:timeout").await?;
            let waited = humantime::format_duration(args.timeout.unwrap_or_default());
            eprintln!(
                "drydock: lease {} not active after {waited}; released it",
                lease.id
            );
            Ok(Err(ExitCode::from(2)))
        }
    }
}

async fn request(store: &Store, args: RequestArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.no_wait {
        let lease = queue(store, &args).await?;
        print(json, &lease, || lease.id.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    let workers = InProcess::start_if_no_daemon(store).await?;
    let result = acquire(store, &args, &workers, json).await;
    workers.stop().await;
    Ok(match result? {
        Ok(l) => {
            print(json, &l, || l.id.to_string());
            eprintln!(
                "Lease {} is active. Release it with: drydock release-lease --id {}",
                l.id, l.id
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}

enum Waited {
    Active,
    Failed(Box<drydock_store::lease::Lease>),
    TimedOut,
    Interrupted,
}

/// Wait for the lease to become active, printing its log events as they
/// arrive. Ends early on Ctrl-C or the timeout. Woken by the lease's writes
/// (the store's lease signal: this process's commits, or another process's
/// through PostgreSQL notifications or the SQLite watch), with a
/// quarter-second look as the safety net — not by polling.
async fn wait_active(
    store: &Store,
    id: LeaseId,
    timeout: Option<Duration>,
) -> anyhow::Result<Waited> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut after = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Taken before each read, so a write between the read and the wait
    // is not missed.
    let mut signal = store.lease_signal(id).await;
    loop {
        // Status first, then the log: every event up to the status seen is
        // printed before returning.
        let l = store.lease(id).await?;
        let events = store
            .logs(&LogFilter {
                lease: Some(id),
                after,
                ..Default::default()
            })
            .await?;
        for e in &events {
            eprintln!(
                "(Lease {id}) {}",
                drydock_engine::events::describe_log(&e.kind, &e.data)
            );
            after = Some(e.id);
        }
        match l.status {
            LeaseStatus::Active => return Ok(Waited::Active),
            LeaseStatus::Broken | LeaseStatus::Released | LeaseStatus::Destroyed => {
                return Ok(Waited::Failed(Box::new(l)));
            }
            LeaseStatus::Pending | LeaseStatus::Acquired => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Waited::TimedOut);
        }
        let look = deadline.map_or(SAFETY_LOOK, |d| (d - now).min(SAFETY_LOOK));
        tokio::select! {
            _ = signal.wait(look) => {}
            _ = &mut ctrl_c => return Ok(Waited::Interrupted),
        }
        signal = store.lease_signal(id).await;
    }
}

/// How long a wait goes without looking, should a wake-up be lost.
const SAFETY_LOOK: Duration = Duration::from_millis(250);
