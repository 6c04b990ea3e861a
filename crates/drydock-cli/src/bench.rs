//! `drydock bench`: a load generator driving the real system — the engine
//! in this process (like `drydock up`) or N `drydock daemon` processes —
//! against a scratch database, reporting the measures of issue 7 as
//! percentiles and writing a Markdown table.
//!
//! Latencies are taken from the database's own timestamps (lease created,
//! activated, destroyed; command sent), so they measure the broker, not
//! how fast this client notices.

use crate::admin::daemon_id;
use anyhow::{Context, bail, ensure};
use clap::Args;
use drydock_engine::client::{self, LeaseRequest};
use drydock_model::{LeaseId, LeaseStatus};
use drydock_store::Store;
use drydock_store::lease::Lease;
use serde_json::{Map, json};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Daemon processes to start (0: the engine runs in this process, as
    /// in `drydock up`).
    #[arg(long, default_value_t = 0)]
    daemons: usize,
    /// A short run (seconds instead of minutes), for CI.
    #[arg(long)]
    quick: bool,
    /// Also measure allocation with 10,000 busy resources and 1,000,000
    /// finished leases in the database (bulk-inserted; adds minutes), and
    /// the daemon's memory then. With --quick: 100 and 10,000.
    #[arg(long)]
    scale: bool,
    /// Append the Markdown table to this file.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
}

/// Percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

struct Row {
    measure: String,
    target: String,
    value: String,
    /// By how much each missed part of the target was missed; empty: met.
    misses: Vec<String>,
    /// Whether the target is this measure's (it is judged), or given for
    /// orientation only.
    judged: bool,
}

impl Row {
    fn verdict(&self) -> String {
        if !self.judged {
            "not judged (another measure's target)".into()
        } else if self.misses.is_empty() {
            "met".into()
        } else {
            format!("missed: {}", self.misses.join("; "))
        }
    }

    fn missed(&self) -> bool {
        self.judged && !self.misses.is_empty()
    }
}

/// Whether `measured` keeps a target's bound (`Bound::AtMost(limit)`: no
/// more than; `AtLeast`: no less than); if not, by how much it misses it,
/// in the unit and as a share of the bound ("p99 31 ms, 24 % over 25 ms").
fn miss(what: &str, measured: f64, bound: Bound, unit: &str) -> Option<String> {
    let (limit, over) = match bound {
        Bound::AtMost(l) => (l, true),
        Bound::AtLeast(l) => (l, false),
    };
    let kept = if over {
        measured <= limit
    } else {
        measured >= limit
    };
    if kept {
        return None;
    }
    let share = (measured - limit).abs() / limit.abs().max(f64::MIN_POSITIVE) * 100.0;
    let digits = if unit == "×" { 2 } else { 0 };
    Some(format!(
        "{what}{measured:.digits$}{unit}, {share:.0} % {} {limit:.digits$}{unit}",
        if over { "over" } else { "short of" }
    ))
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

struct Bench {
    store: Store,
    registry: Arc<drydock_engine::blueprint::Registry>,
    root: tempfile::TempDir,
    rows: Vec<Row>,
}

impl Bench {
    async fn blueprint(
        &self,
        name: &str,
        limit: u64,
        lease_limit: Option<u64>,
    ) -> anyhow::Result<String> {
        let mut fields = Map::new();
        fields.insert(
            "root".into(),
            json!(self.root.path().join(name).to_string_lossy()),
        );
        fields.insert("limit".into(), json!(limit));
        if let Some(l) = lease_limit {
            fields.insert("lease-limit".into(), json!(l));
        }
        let bp = client::create_blueprint(
            &self.store,
            &self.registry,
            "bench",
            name,
            "host.local",
            &fields,
        )
        .await?;
        Ok(bp.id.to_string())
    }

    async fn lease(&self, bp: &str, until: Option<i64>) -> anyhow::Result<Lease> {
        self.lease_from(Some(bp), until).await
    }

    /// A lease from blueprint `bp`, or from any blueprint of the type.
    async fn lease_from(&self, bp: Option<&str>, until: Option<i64>) -> anyhow::Result<Lease> {
        Ok(client::queue_lease(
            &self.store,
            &self.registry,
            &LeaseRequest {
                resource_type: "host".into(),
                blueprints: bp.map(str::to_owned).into_iter().collect(),
                authorizing: drydock_engine::ADMIN.into(),
                owner: Some("bench".into()),
                until,
                ..Default::default()
            },
        )
        .await?)
    }

    async fn wait(&self, id: LeaseId, status: LeaseStatus) -> anyhow::Result<Lease> {
        let l = client::wait_for_lease(&self.store, id, Duration::from_secs(60), |l| {
            l.status == status || l.status == LeaseStatus::Broken
        })
        .await?;
        ensure!(
            l.status == status,
            "lease {id} is {} ({:?}), not {status}",
            l.status,
            l.failure
        );
        Ok(l)
    }

    /// When the lease was destroyed (its last write).
    async fn destroyed_at(&self, id: LeaseId) -> anyhow::Result<i64> {
        Ok(self.wait(id, LeaseStatus::Destroyed).await?.modified_at)
    }

    /// A measure judged against its target: `misses` says by how much
    /// each part of it was missed (`None`: kept).
    fn row(&mut self, measure: &str, target: &str, value: String, misses: Vec<Option<String>>) {
        self.push(Row {
            measure: measure.into(),
            target: target.into(),
            value,
            misses: misses.into_iter().flatten().collect(),
            judged: true,
        });
    }

    /// A measure shown beside another measure's target, not judged by it.
    fn shown(&mut self, measure: &str, target: &str, value: String) {
        self.push(Row {
            measure: measure.into(),
            target: target.into(),
            value,
            misses: Vec::new(),
            judged: false,
        });
    }

    fn push(&mut self, row: Row) {
        let (measure, target) = (&row.measure, &row.target);
        eprintln!(
            "  {measure}: {}   (target {target}: {})",
            row.value,
            row.verdict()
        );
        self.rows.push(row);
    }

    /// A latency row: percentiles, judged at p99 against `p99` (and at the
    /// median against `p50`, where the target names one).
    fn latency(&mut self, measure: &str, target: &str, ms: Vec<f64>, p50: Option<f64>, p99: f64) {
        let s = sorted(ms);
        let (median, high) = (pct(&s, 0.5), pct(&s, 0.99));
        let value = format!(
            "p50 {median:.0} ms, p99 {high:.0} ms, max {:.0} ms (n={})",
            s.last().copied().unwrap_or(f64::NAN),
            s.len()
        );
        let misses = vec![
            p50.and_then(|l| miss("p50 ", median, Bound::AtMost(l), " ms")),
            miss("p99 ", high, Bound::AtMost(p99), " ms"),
        ];
        self.row(measure, target, value, misses);
    }
}

fn spawn_daemons(url: &str, n: usize) -> anyhow::Result<Vec<Child>> {
    let exe = std::env::current_exe()?;
    (0..n)
        .map(|_| {
            Command::new(&exe)
                .args(["--database", url, "daemon", "--workers", "4"])
                .env("DRYDOCK_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a daemon")
        })
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time the machine spent working (user, system, interrupts; not idle,
/// I/O wait or time stolen by a hypervisor), from `/proc/stat`, in ms.
/// Unlike throughput, it hardly moves with what else the host runs, so it
/// is the measure to compare builds by on a shared machine.
fn machine_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100.
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    Some(busy as f64 * 10.0)
}

pub async fn bench(store: &Store, url: &str, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !store.blueprints(None).await?.is_empty() {
        bail!(
            "drydock bench needs a scratch database (this one has blueprints); pass --database sqlite:///tmp/bench.db or an empty PostgreSQL database"
        );
    }
    let registry = Arc::new(drydock_blueprints::registry());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut in_process = None;
    let mut children = Vec::new();
    if args.daemons == 0 {
        let engine = Arc::new(drydock_engine::Engine::new(
            store.clone(),
            registry.clone(),
            drydock_engine::EngineConfig::new(crate::admin::owner()),
        ));
        let id = daemon_id();
        in_process = Some(tokio::spawn(async move {
            drydock_engine::daemon::run(engine, Default::default(), &id, stop_rx).await
        }));
    } else {
        children = spawn_daemons(url, args.daemons)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .live_daemons(drydock_engine::daemon::ALIVE_WITHIN)
        .await?
        .len()
        < args.daemons.max(1)
    {
        ensure!(Instant::now() < deadline, "the daemons did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut b = Bench {
        store: store.clone(),
        registry,
        root: tempfile::tempdir()?,
        rows: Vec::new(),
    };
    let setup = if args.daemons == 0 {
        format!(
            "{}, engine in the client's process",
            store.dialect().as_str()
        )
    } else {
        format!(
            "{}, {} daemon process(es) × 4 workers",
            store.dialect().as_str(),
            args.daemons
        )
    };
    eprintln!("drydock bench: {setup}");
    let result = run(&mut b, &args, url, &children).await;
    let _ = stop_tx.send(true);
    if let Some(t) = in_process {
        let _ = t.await;
    }
    for mut c in children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }
    result?;
    let missed: Vec<&str> = b
        .rows
        .iter()
        .filter(|r| r.missed())
        .map(|r| r.measure.as_str())
        .collect();
    let judged = b.rows.iter().filter(|r| r.judged).count();
    eprintln!(
        "targets: {} of {judged} met{}",
        judged - missed.len(),
        if missed.is_empty() {
            String::new()
        } else {
            format!("; missed: {}", missed.join(", "))
        }
    );
    let mut table = format!(
        "\n### {setup}{}\n\n| measure | target | measured | verdict |\n|---|---|---|---|\n",
        if args.quick { " (quick)" } else { "" }
    );
    for r in &b.rows {
        table += &format!(
            "| {} | {} | {} | {} |\n",
            r.measure,
            r.target,
            r.value,
            r.verdict()
        );
    }
    println!("{table}");
    if let Some(path) = args.markdown {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(table.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(b: &mut Bench, args: &BenchArgs, url: &str, children: &[Child]) -> anyhow::Result<()> {
    let n = if args.quick { 30 } else { 300 };
    // 1. Queued → active, reusing an active resource (one anchor lease
    // keeps it active; the others share it).
    let shared = b.blueprint("shared", 1, None).await?;
    let anchor = b.lease(&shared, None).await?;
    b.wait(anchor.id, LeaseStatus::Active).await?;
    let mut waits = Vec::new();
    let mut releases = Vec::new();
    for _ in 0..n {
        let l = b.lease(&shared, None).await?;
        let active = b.wait(l.id, LeaseStatus::Active).await?;
        waits.push((active.activated_at.unwrap_or(0) - active.created_at) as f64);
        client::release_lease(&b.store, l.id, "bench").await?;
        let gone = b.destroyed_at(l.id).await?;
        let command_at = b
            .store
            .commands_for(l.object())
            .await?
            .first()
            .map_or(gone, |c| c.created_at);
        releases.push((gone - command_at) as f64);
    }
    b.latency(
        "queued → active, reusing an active resource",
        "p50 ≤ 5 ms, p99 ≤ 25 ms",
        waits,
        Some(5.0),
        25.0,
    );
    b.latency("release → destroyed", "≤ 10 ms (p99)", releases, None, 10.0);

    // 2. `drydock lease` CLI wall time against the warm broker.
    let exe = std::env::current_exe()?;
    let mut walls = Vec::new();
    for _ in 0..(if args.quick { 3 } else { 10 }) {
        let t = Instant::now();
        let out = Command::new(&exe)
            .args([
                "--database",
                url,
                "lease",
                "--type",
                "host",
                "--blueprint",
                &shared,
                "--until",
                "10m",
            ])
            .env("DRYDOCK_LOG", "error")
            .output()?;
        walls.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            out.status.success(),
            "drydock lease: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        client::release_lease(&b.store, LeaseId(id), "bench").await?;
    }
    b.latency(
        "`drydock lease` CLI wall time, warm daemon",
        "≤ 50 ms (p99)",
        walls,
        None,
        50.0,
    );

    // 3. 50 leases requested at once → all active.
    let burst = join_all((0..50).map(|_| b.lease(&shared, None))).await?;
    let mut last = 0;
    for l in &burst {
        last = last.max(
            b.wait(l.id, LeaseStatus::Active)
                .await?
                .activated_at
                .unwrap_or(0),
        );
    }
    let first = burst.iter().map(|l| l.created_at).min().unwrap_or(0);
    let all_active = (last - first) as f64;
    b.row(
        "50 leases requested at once → all active",
        "≤ 100 ms",
        format!("{all_active:.0} ms"),
        vec![miss("", all_active, Bound::AtMost(100.0), " ms")],
    );
    for l in &burst {
        client::release_lease(&b.store, l.id, "bench").await?;
    }
    client::release_lease(&b.store, anchor.id, "bench").await?;

    // 4. Full cycles per second, 8 clients.
    let cycles_bp = b.blueprint("cycles", 8, None).await?;
    let span = Duration::from_secs(if args.quick { 2 } else { 10 });
    let (commits, written) = (b.store.commits(), b.store.commits_written());
    let cpu = machine_cpu_ms();
    let started = Instant::now();
    let counts = join_all((0..8).map(|_| {
        let b = &*b;
        let bp = cycles_bp.clone();
        async move {
            let mut done = 0u64;
            while started.elapsed() < span {
                let l = b.lease(&bp, None).await?;
                b.wait(l.id, LeaseStatus::Active).await?;
                client::release_lease(&b.store, l.id, "bench").await?;
                b.wait(l.id, LeaseStatus::Destroyed).await?;
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }
    }))
    .await?;
    let total: u64 = counts.iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    let per_cycle = |n: u64| n as f64 / total.max(1) as f64;
    let (commits, written) = (
        per_cycle(b.store.commits() - commits),
        per_cycle(b.store.commits_written() - written),
    );
    // SQLite groups transactions into fewer COMMITs (the store's `group`).
    let written = if (written - commits).abs() >= 0.05 {
        format!(" in {written:.1} COMMITs")
    } else {
        String::new()
    };
    let cpu = match (cpu, machine_cpu_ms()) {
        (Some(before), Some(after)) => {
            format!(
                "; {:.2} ms of CPU per cycle",
                (after - before) / total.max(1) as f64
            )
        }
        _ => String::new(),
    };
    let rate = total as f64 / elapsed;
    let floor = match b.store.dialect() {
        drydock_store::Dialect::Sqlite => 1_000.0,
        drydock_store::Dialect::Postgres => 700.0,
    };
    b.row(
        "full lease cycles per second (8 clients)",
        "≥ 1,000 SQLite, ≥ 700 PostgreSQL",
        format!(
            "{rate:.0}/s ({total} in {elapsed:.1} s; {commits:.1} commits{written} per cycle{}{cpu})",
            if args.daemons > 0 {
                " by the clients"
            } else {
                ""
            }
        ),
        vec![miss("", rate, Bound::AtLeast(floor), "/s")],
    );

    // 5. 50 leases sharing 10 exclusive resources, each released once active.
    let exclusive = b.blueprint("exclusive", 10, Some(1)).await?;
    let t0 = drydock_store::now_ms();
    let served = join_all((0..50).map(|_| {
        let b = &*b;
        let bp = exclusive.clone();
        async move {
            let l = b.lease(&bp, None).await?;
            let a = b.wait(l.id, LeaseStatus::Active).await?;
            client::release_lease(&b.store, l.id, "bench").await?;
            Ok::<_, anyhow::Error>(a.activated_at.unwrap_or(0))
        }
    }))
    .await?;
    let all_served = (served.iter().max().copied().unwrap_or(t0) - t0) as f64;
    b.row(
        "50 leases sharing 10 exclusive resources → all served",
        "≤ 500 ms",
        format!("{all_served:.0} ms"),
        vec![miss("", all_served, Bound::AtMost(500.0), " ms")],
    );

    // 6. `until` passed → destroyed.
    let mut late = Vec::new();
    let expiring = join_all((0..(if args.quick { 5 } else { 20 })).map(|i| {
        let b = &*b;
        let bp = cycles_bp.clone();
        async move {
            let until = drydock_store::now_ms() + 300 + i * 10;
            let l = b.lease(&bp, Some(until)).await?;
            Ok::<_, anyhow::Error>((l.id, until))
        }
    }))
    .await?;
    for (id, until) in expiring {
        late.push((b.destroyed_at(id).await? - until) as f64);
    }
    b.latency(
        "`until` passed → destroyed",
        "≤ 100 ms (p99)",
        late,
        None,
        100.0,
    );

    if args.scale {
        scale(b, args.quick).await?;
    }

    // 7. Daemon memory.
    if let Some(c) = children.first()
        && let Some(kib) = rss_kib(c.id())
    {
        let mib = kib as f64 / 1024.0;
        b.row(
            "daemon resident memory (after the runs above)",
            "≤ 25 MiB",
            format!("{mib:.1} MiB"),
            vec![miss("", mib, Bound::AtMost(25.0), " MiB")],
        );
    } else if children.is_empty()
        && let Some(kib) = rss_kib(std::process::id())
    {
        // Engine and client (which seeded the big database) together:
        // the daemon's bound is shown for orientation, not judged.
        b.shown(
            "resident memory of this process (engine + client)",
            "≤ 25 MiB (daemon)",
            format!("{:.1} MiB", kib as f64 / 1024.0),
        );
    }
    Ok(())
}

/// Queued → active latencies (ms) of `n` leases reusing an active
/// resource, from blueprint `bp` or from any blueprint of the type; each
/// is released and destroyed before the next.
async fn reuse_latencies(b: &Bench, bp: Option<&str>, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let l = b.lease_from(bp, None).await?;
        let active = b.wait(l.id, LeaseStatus::Active).await?;
        out.push((active.activated_at.unwrap_or(0) - active.created_at) as f64);
        client::release_lease(&b.store, l.id, "bench").await?;
        b.wait(l.id, LeaseStatus::Destroyed).await?;
    }
    Ok(sorted(out))
}

/// Step 8, allocation with a big database: the same reuse measure before and
/// after adding a fleet of busy resources and a long lease history.
async fn scale(b: &mut Bench, quick: bool) -> anyhow::Result<()> {
    let (resources, history, n) = if quick {
        (100, 10_000, 20)
    } else {
        (10_000, 1_000_000, 200)
    };
    let pool = b.blueprint("pool", 4, None).await?;
    let anchor = b.lease(&pool, None).await?;
    b.wait(anchor.id, LeaseStatus::Active).await?;
    let small_named = reuse_latencies(b, Some(&pool), n).await?;
    let small_any = reuse_latencies(b, None, n).await?;
    let fleet = b.blueprint("fleet", 2 * resources as u64, Some(1)).await?;
    let t = Instant::now();
    b.store
        .seed_fleet(
            fleet.parse::<i64>().map(drydock_model::BlueprintId)?,
            "host",
            resources,
            history,
        )
        .await?;
    eprintln!(
        "  seeded {resources} busy resources and {history} finished leases in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let big_named = reuse_latencies(b, Some(&pool), n).await?;
    let big_any = reuse_latencies(b, None, n).await?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / (v.len().max(1) as f64);
    let times = |small: &[f64], big: &[f64]| mean(big) / mean(small).max(0.1);
    // The latencies come from whole-ms timestamps: means a fraction of a
    // ms apart are within their resolution, whatever their ratio.
    let slower = |what: &str, small: &[f64], big: &[f64]| {
        (mean(big) - mean(small) >= 0.5)
            .then(|| miss(what, times(small, big), Bound::AtMost(1.5), "×"))
            .flatten()
    };
    let show = |small: &[f64], big: &[f64]| {
        format!(
            "mean {:.1} → {:.1} ms (×{:.2}), p99 {:.0} → {:.0} ms",
            mean(small),
            mean(big),
            times(small, big),
            pct(small, 0.99),
            pct(big, 0.99)
        )
    };
    b.row(
        &format!(
            "allocation (reuse), 10 vs {resources} active resources and {history} historical leases"
        ),
        "within 1.5× (or 0.5 ms: the timestamps are whole ms)",
        format!(
            "blueprint named: {}; any blueprint: {}",
            show(&small_named, &big_named),
            show(&small_any, &big_any)
        ),
        vec![
            slower("blueprint named ", &small_named, &big_named),
            slower("any blueprint ", &small_any, &big_any),
        ],
    );
    client::release_lease(&b.store, anchor.id, "bench").await?;
    Ok(())
}

/// Run futures concurrently; all must succeed.
async fn join_all<T, F>(futures: impl Iterator<Item = F>) -> anyhow::Result<Vec<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let all: Vec<_> = futures.collect();
    let mut out = Vec::with_capacity(all.len());
    for r in futures_util::future::join_all(all).await {
        out.push(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_bound_is_met_and_a_missed_one_says_by_how_much() {
        assert_eq!(miss("", 100.0, Bound::AtMost(100.0), " ms"), None);
        assert_eq!(miss("", 701.0, Bound::AtLeast(700.0), "/s"), None);
        assert_eq!(
            miss("", 150.0, Bound::AtMost(100.0), " ms").as_deref(),
            Some("150 ms, 50 % over 100 ms")
        );
        assert_eq!(
            miss("", 385.0, Bound::AtLeast(700.0), "/s").as_deref(),
            Some("385/s, 45 % short of 700/s")
        );
        assert_eq!(
            miss("any blueprint ", 1.8, Bound::AtMost(1.5), "×").as_deref(),
            Some("any blueprint 1.80×, 20 % over 1.50×")
        );
        let row = Row {
            measure: "m".into(),
            target: "t".into(),
            value: "v".into(),
            misses: vec!["p99 31 ms, 24 % over 25 ms".into()],
            judged: true,
        };
        assert_eq!(row.verdict(), "missed: p99 31 ms, 24 % over 25 ms");
        assert!(row.missed());
        let met = Row {
            misses: vec![],
            ..row
        };
        assert_eq!(met.verdict(), "met");
        assert!(!met.missed());
        let shown = Row {
            judged: false,
            ..met
        };
        assert!(shown.verdict().starts_with("not judged") && !shown.missed());
    }
}
