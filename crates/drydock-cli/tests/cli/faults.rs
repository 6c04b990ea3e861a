//! Fault tests beyond the crash loop: PostgreSQL restarted in the middle of
//! a load run (on a private cluster, never the shared server), and SQLite
//! under many concurrent CLI processes. Each ends with the same audit as
//! the crash loop and prints its counts.

use crate::audit::{
    Audit, LIMIT, all_leases, drain, exclusive_hosts, release, spawn_daemon, stop_daemons,
};
use crate::{drydock, stderr, stdout};
use anyhow::{Context, ensure};
use drydock_engine::{ADMIN, client};
use drydock_model::{BlueprintId, LeaseStatus};
use drydock_store::Store;
use drydock_store::lease::NewLease;
use drydock_testkit::{PrivatePostgres, wait_until};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(150);

/// `drydock serve` on a free loopback port; returns it and its base URL.
fn spawn_server(url: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["--database", url, "serve", "--listen", "127.0.0.1:0"])
        .env("DRYDOCK_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no URL in {first:?}"))?
        .trim_end_matches('/')
        .to_owned();
    Ok((child, base))
}

/// Counts kept by the load generator.
#[derive(Default)]
struct Load {
    requested: AtomicUsize,
    failed_requests: AtomicUsize,
    errors: AtomicUsize,
    stop: AtomicBool,
}

/// Request leases two at a time and release active ones, until stopped;
/// errors (the outage) are counted and the loop goes on.
async fn generate(store: Store, bp: BlueprintId, load: Arc<Load>) {
    let new = NewLease {
        resource_type: "host".into(),
        authorizing: ADMIN.into(),
        blueprint_ids: vec![bp],
        ..Default::default()
    };
    while !load.stop.load(Ordering::Relaxed) {
        for _ in 0..2 {
            match client::request_lease(&store, &new).await {
                Ok(_) => load.requested.fetch_add(1, Ordering::Relaxed),
                Err(_) => load.failed_requests.fetch_add(1, Ordering::Relaxed),
            };
        }
        match all_leases(&store).await {
            Ok(leases) => {
                for l in leases.iter().filter(|l| l.status == LeaseStatus::Active) {
                    if release(&store, l).await.is_err() {
                        load.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(_) => {
                load.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn ensure_alive(daemons: &mut [Child], server: &mut Child, when: &str) -> anyhow::Result<()> {
    for d in daemons.iter_mut() {
        ensure!(d.try_wait()?.is_none(), "a daemon exited {when}");
    }
    ensure!(server.try_wait()?.is_none(), "the server exited {when}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_in_the_middle_of_a_load_run() -> anyhow::Result<()> {
    let Some(pg) = PrivatePostgres::start().await else {
        return Ok(());
    };
    let url = pg.url();
    let store = Store::open(&url).await?;
    let dir = tempfile::tempdir()?;
    let bp = exclusive_hosts(&store, "exclusive", dir.path()).await?;
    let token = stdout(&drydock(
        &url,
        &["token", "create", "--name", "fault", "--role", "admin"],
    ));
    let token = token
        .split_whitespace()
        .find(|w| w.starts_with("ddt_"))
        .with_context(|| format!("no token in {token:?}"))?
        .to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (mut server, base) = spawn_server(&url)?;
    let mut daemons = vec![spawn_daemon(&url, 2)?, spawn_daemon(&url, 2)?];
    let start = Instant::now();
    let load = Arc::new(Load::default());
    let generator = tokio::spawn(generate(store.clone(), bp, load.clone()));
    let requested = || load.requested.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(60),
        "20 leases before the outage",
        async || requested() >= 20,
    )
    .await?;

    // The outage: every connection cut at once, as a crash or failover does.
    pg.stop_now();
    let outage = Instant::now();
    let before = requested();
    let cli = drydock(&url, &["lease", "list"]);
    ensure!(
        !cli.status.success(),
        "the CLI succeeded without a database"
    );
    let said = stderr(&cli);
    ensure!(
        said.contains("database unavailable") && said.contains(&format!("127.0.0.1:{}", pg.port)),
        "the CLI does not say the database is unreachable: {said}"
    );
    let answer = http
        .get(format!("{base}/api/v1/leases"))
        .bearer_auth(&token)
        .send()
        .await?;
    let status = answer.status();
    let retry_after = answer.headers().get("retry-after").cloned();
    let body: serde_json::Value = answer.json().await?;
    ensure!(
        status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && body["error"]["code"] == "database-unavailable"
            && retry_after.is_some(),
        "the API during the outage answered {status} {body}"
    );
    let api_answered_in = outage.elapsed();
    // The database stays down until the load has felt it for a while (100
    // requests refused, about two seconds of the generator's loop): long
    // enough for the daemons' retries to meet it too.
    let refused = load.failed_requests.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(60),
        "the load to meet the outage",
        async || load.failed_requests.load(Ordering::Relaxed) >= refused + 100,
    )
    .await?;
    ensure_alive(&mut daemons, &mut server, "during the outage")?;
    let outage_lasted = outage.elapsed();
    pg.start_again();

    // Work goes on without anyone restarting the daemons or the server.
    wait_until(
        Duration::from_secs(60),
        "20 leases after the outage",
        async || requested() >= before + 20,
    )
    .await?;
    load.stop.store(true, Ordering::Relaxed);
    generator.await?;
    drain(&store, start, BOUND).await?;
    let answer = http
        .get(format!("{base}/api/v1/leases"))
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "the API after the outage: {}",
        answer.status()
    );
    ensure_alive(&mut daemons, &mut server, "after the outage")?;
    stop_daemons(daemons)?;
    stop_daemons(vec![server])?;
    let audit = Audit::of(&store, LIMIT).await?;
    let (ok, failed) = (requested(), load.failed_requests.load(Ordering::Relaxed));
    println!(
        "postgres restart: outage of {outage_lasted:?} (API answered 503 after {api_answered_in:?}), \
         {ok} requests accepted, {failed} refused during the outage, {} other errors, in {:?}: {audit}",
        load.errors.load(Ordering::Relaxed),
        start.elapsed()
    );
    // A request cut off at its commit may or may not have been stored.
    ensure!(
        (ok..=ok + failed).contains(&audit.leases),
        "{} leases stored for {ok} accepted requests (+{failed} refused): a lease was lost",
        audit.leases
    );
    audit.ensure_clean()
}

/// Run `drydock --database URL ARGS…` for every ARGS at once; the stderr
/// of each that failed.
fn at_once(url: &str, runs: &[Vec<&str>]) -> anyhow::Result<Vec<String>> {
    let children = runs
        .iter()
        .map(|args| {
            Command::new(env!("CARGO_BIN_EXE_drydock"))
                .args(["--database", url])
                .args(args)
                .env("DRYDOCK_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut failed = Vec::new();
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    Ok(failed)
}

/// SQLite has one writer at a time: many `drydock` processes writing at
/// once (requests, releases, reads, beside a daemon) wait their turn; none
/// fails with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_under_concurrent_cli_processes() -> anyhow::Result<()> {
    const CLIENTS: usize = 12;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("drydock.db").display());
    let store = Store::open(&url).await?;
    let bp = exclusive_hosts(&store, "exclusive", dir.path()).await?;
    let daemons = vec![spawn_daemon(&url, 4)?];
    let start = Instant::now();
    let mut runs = 0;
    let mut failures = Vec::new();
    let mut released = std::collections::HashSet::new();
    for _ in 0..ROUNDS {
        // CLIENTS processes at once: each queues a lease (the limit is 3, so
        // most wait), and as many list the leases.
        let bp = bp.0.to_string();
        let requests: Vec<Vec<&str>> = (0..CLIENTS * 2)
            .map(|i| match i % 2 {
                0 => vec!["lease", "--type", "host", "--blueprint", &bp, "--no-wait"],
                _ => vec!["lease", "list"],
            })
            .collect();
        failures.extend(at_once(&url, &requests)?);
        runs += requests.len();
        // And releases from CLI processes, all at once, for the active ones.
        // (Once each: a lease released in an earlier round may still show
        // active until the daemon gets to it.)
        let active: Vec<String> = all_leases(&store)
            .await?
            .iter()
            .filter(|l| l.status == LeaseStatus::Active && released.insert(l.id))
            .map(|l| l.id.0.to_string())
            .collect();
        let releases: Vec<Vec<&str>> = active
            .iter()
            .map(|id| vec!["release-lease", "--id", id])
            .collect();
        failures.extend(at_once(&url, &releases)?);
        runs += releases.len();
    }
    drain(&store, start, BOUND).await?;
    stop_daemons(daemons)?;
    let audit = Audit::of(&store, LIMIT).await?;
    println!(
        "sqlite busy: {runs} CLI processes ({CLIENTS} writers and {CLIENTS} readers at once, {ROUNDS} rounds, plus releases), {} failed, in {:?}: {audit}",
        failures.len(),
        start.elapsed()
    );
    ensure!(failures.is_empty(), "CLI runs failed: {failures:?}");
    ensure!(
        audit.leases == CLIENTS * ROUNDS,
        "{} leases for {} requests",
        audit.leases,
        CLIENTS * ROUNDS
    );
    audit.ensure_clean()
}
