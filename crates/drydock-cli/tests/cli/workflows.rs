//! The CLI workflows of the original (spec §13), with `--json`.

use crate::{drydock, stderr, stdout};
use anyhow::ensure;
use drydock_testkit::{TestDb, wait_until};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

backend_tests!(
    lease_show_release_and_log_on_a_bare_database,
    interrupting_a_waiting_lease_releases_it,
    a_lease_that_times_out_is_released,
    bad_input_is_refused_clearly_and_changes_nothing,
    daemon_serves_leases_and_stops_cleanly_on_sigterm,
);

async fn lease_show_release_and_log_on_a_bare_database(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("leases");
    let url = db.url.clone();
    let out = drydock(
        &url,
        &[
            "blueprint",
            "create",
            "--type",
            "host.local",
            "--name",
            "local",
            "--set",
            &format!("root={}", root.display()),
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(stdout(&out) == "1");
    let out = drydock(
        &url,
        &[
            "lease",
            "--type",
            "host",
            "--attribute",
            "purpose=test",
            "--blueprint",
            "local",
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out);
    ensure!(
        stderr(&out).contains(&format!("(Lease {id}) active")),
        "progress is shown: {}",
        stderr(&out)
    );
    let show: Value =
        serde_json::from_str(&stdout(&drydock(&url, &["--json", "lease", "show", &id])))?;
    ensure!(show["status"] == "active" && show["attributes"]["purpose"] == "test");
    let path = show["attributes"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        std::path::Path::new(&path).is_dir(),
        "the lease got its own directory {path}"
    );
    let list: Value = serde_json::from_str(&stdout(&drydock(
        &url,
        &["--json", "lease", "list", "--status", "active"],
    )))?;
    ensure!(list.as_array().map(Vec::len) == Some(1));
    let out = drydock(&url, &["release-lease", "--id", &id]);
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(
        !std::path::Path::new(&path).exists(),
        "the lease's directory is gone when it is destroyed"
    );
    // Moved aside at once, then deleted in the background.
    let trash = std::path::Path::new(&path)
        .parent()
        .expect("a root")
        .join(".trash");
    wait_until(
        Duration::from_secs(10),
        "the destroyed lease's directory to be deleted",
        async || std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none()),
    )
    .await?;
    let again = drydock(&url, &["release-lease", "--id", &id]);
    ensure!(
        !again.status.success() && stderr(&again).contains("cannot be released: it is destroyed"),
        "{}",
        stderr(&again)
    );
    let log = stdout(&drydock(&url, &["--json", "log", "--lease", &id]));
    let types: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).map(|v| {
                assert!(v["epoch"].is_i64());
                v["type"].as_str().unwrap_or("").to_owned()
            })
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        types.first().map(String::as_str) == Some("lease.queued")
            && types.last().map(String::as_str) == Some("lease.destroyed"),
        "{types:?}"
    );
    let resources: Value =
        serde_json::from_str(&stdout(&drydock(&url, &["--json", "resource", "list"])))?;
    ensure!(
        resources[0]["status"] == "active",
        "the resource is kept for the next lease"
    );
    let out = drydock(&url, &["update-lease", "--id", &id]);
    ensure!(stdout(&out).contains("done"), "{}", stdout(&out));
    Ok(())
}

fn at_limit_blueprint(url: &str, root: &std::path::Path) -> anyhow::Result<String> {
    let out = drydock(
        url,
        &[
            "blueprint",
            "create",
            "--type",
            "host.local",
            "--name",
            "one",
            "--set",
            &format!("root={}", root.display()),
            "--set",
            "lease-limit=1",
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let first = drydock(url, &["lease", "--type", "host"]);
    ensure!(first.status.success(), "{}", stderr(&first));
    Ok(stdout(&first))
}

async fn interrupting_a_waiting_lease_releases_it(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    at_limit_blueprint(&db.url, dir.path())?;
    let child = Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["--database", &db.url, "lease", "--type", "host"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let store = &db.store;
    wait_until(
        Duration::from_secs(20),
        "second lease to wait at the limit",
        async || {
            store
                .leases(&Default::default())
                .await
                .unwrap()
                .iter()
                .any(|l| l.id.0 == 2 && l.waiting.is_some())
        },
    )
    .await?;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.code() == Some(130),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    ensure!(
        stderr(&out).contains("interrupted; released lease 2"),
        "{}",
        stderr(&out)
    );
    let l = db.store.lease(drydock_model::LeaseId(2)).await?;
    ensure!(
        l.status == drydock_model::LeaseStatus::Destroyed,
        "{}",
        l.status
    );
    Ok(())
}

async fn a_lease_that_times_out_is_released(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    at_limit_blueprint(&db.url, dir.path())?;
    let out = drydock(&db.url, &["lease", "--type", "host", "--timeout", "300ms"]);
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    ensure!(
        stderr(&out).contains("not active after 300ms; released it"),
        "{}",
        stderr(&out)
    );
    ensure!(
        stderr(&out).contains("waiting: blueprint(s) 1 at their limit"),
        "the reason is shown: {}",
        stderr(&out)
    );
    ensure!(
        db.store.lease(drydock_model::LeaseId(2)).await?.status
            == drydock_model::LeaseStatus::Destroyed
    );
    Ok(())
}

async fn bad_input_is_refused_clearly_and_changes_nothing(db: &TestDb) -> anyhow::Result<()> {
    let url = &db.url;
    let cases: &[(&[&str], &str)] = &[
        (
            &["lease", "--type", "host"],
            "no enabled blueprint builds \"host\" resources",
        ),
        (
            &["lease", "--type", "spaceship"],
            "no blueprint type builds \"spaceship\" resources",
        ),
        (
            &["blueprint", "create", "--type", "cloud.vm", "--name", "x"],
            "unknown blueprint type \"cloud.vm\"",
        ),
        (
            &[
                "blueprint",
                "create",
                "--type",
                "host.local",
                "--name",
                "x",
                "--set",
                "limit=lots",
            ],
            "limit: expected a whole number",
        ),
        (
            &[
                "blueprint",
                "create",
                "--type",
                "host.local",
                "--name",
                "x",
                "--set",
                "nonsense",
            ],
            "must be KEY=VALUE",
        ),
        (
            &["lease", "--type", "host", "--blueprint", "nope"],
            "no blueprint \"nope\"",
        ),
        (
            &["lease", "list", "--status", "exploded"],
            "unknown lease status \"exploded\"",
        ),
        (&["release-lease", "--id", "99"], "lease 99 does not exist"),
        (&["lease", "show", "99"], "lease 99 does not exist"),
        (
            &["lease", "--type", "host", "--until", "soon"],
            "invalid value 'soon'",
        ),
    ];
    for (args, expected) in cases {
        let out = drydock(url, args);
        ensure!(!out.status.success(), "{args:?} must fail");
        ensure!(
            stderr(&out).contains(expected),
            "{args:?}: expected {expected:?} in {:?}",
            stderr(&out)
        );
        ensure!(!stderr(&out).contains("panicked"), "{args:?} panicked");
    }
    ensure!(
        db.store.blueprints(None).await?.is_empty()
            && db.store.leases(&Default::default()).await?.is_empty(),
        "nothing was stored"
    );
    Ok(())
}

async fn daemon_serves_leases_and_stops_cleanly_on_sigterm(db: &TestDb) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = &db.url;
    let out = drydock(
        url,
        &[
            "blueprint",
            "create",
            "--type",
            "host.local",
            "--name",
            "local",
            "--set",
            &format!("root={}", dir.path().display()),
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let daemon = Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args(["--database", url, "daemon", "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let store = &db.store;
    wait_until(Duration::from_secs(20), "daemon heartbeat", async || {
        !store
            .live_daemons(Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty()
    })
    .await?;
    let out = drydock(url, &["lease", "--type", "host"]);
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(
        !stderr(&out).contains("no drydock daemon is running"),
        "the daemon did the work: {}",
        stderr(&out)
    );
    let id = stdout(&out);
    let out = drydock(url, &["release-lease", "--id", &id]);
    ensure!(out.status.success());
    wait_until(
        Duration::from_secs(20),
        "lease destroyed by the daemon",
        async || {
            store
                .lease(drydock_model::LeaseId(id.parse().unwrap()))
                .await
                .unwrap()
                .status
                == drydock_model::LeaseStatus::Destroyed
        },
    )
    .await?;
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()?;
    let out = daemon.wait_with_output()?;
    ensure!(
        out.status.success(),
        "daemon exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    ensure!(
        db.store
            .live_daemons(Duration::from_secs(10))
            .await?
            .is_empty(),
        "marked stopped"
    );
    Ok(())
}
