//! `working-copy` on hosts leased over a real OpenSSH server, with real git
//! repositories made by the test.

use crate::{drydock, stderr, stdout};
use anyhow::ensure;
use drydock_testkit::{Sshd, TestDb, wait_until};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

backend_tests!(
    working_copy_is_reused_clean_at_the_next_commit_and_destroyed_with_its_host_lease,
    working_copy_limit_makes_the_second_lease_wait,
    malicious_working_copy_requests_are_refused_before_any_command,
    a_client_authorized_on_working_copies_gets_hosts_through_the_blueprint,
);

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A bare repository with commits A and B on `main` and a `feature` branch.
/// Returns (url, A, B).
pub fn repository(root: &Path) -> anyhow::Result<(String, String, String)> {
    let bare = root.join("app.git");
    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    git(root, &["init", "-q", "--bare", &bare.to_string_lossy()])?;
    git(&work, &["init", "-q", "-b", "main"])?;
    git(&work, &["config", "user.email", "t@example.com"])?;
    git(&work, &["config", "user.name", "Test"])?;
    std::fs::write(work.join("f"), "A\n")?;
    std::fs::write(work.join(".gitignore"), "ignored/\n")?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-qm", "A"])?;
    let a = git(&work, &["rev-parse", "HEAD"])?;
    std::fs::write(work.join("f"), "B\n")?;
    git(&work, &["commit", "-qam", "B"])?;
    let b = git(&work, &["rev-parse", "HEAD"])?;
    git(&work, &["checkout", "-qb", "feature"])?;
    std::fs::write(work.join("g"), "feature\n")?;
    git(&work, &["add", "g"])?;
    git(&work, &["commit", "-qm", "F"])?;
    git(
        &work,
        &["push", "-q", &bare.to_string_lossy(), "main", "feature"],
    )?;
    Ok((bare.to_string_lossy().into_owned(), a, b))
}

/// Credential, host.ssh blueprint 1 and working-copy blueprint 2.
fn setup(url: &str, sshd: &Sshd, repo: &str, wc_limit: Option<&str>) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = drydock(url, args);
        ensure!(out.status.success(), "{args:?}: {}", stderr(&out));
        Ok(())
    };
    run(&[
        "credential",
        "create",
        "--name",
        "builder",
        "--ssh-key-file",
        &sshd.client_key().to_string_lossy(),
    ])?;
    run(&[
        "blueprint",
        "create",
        "--type",
        "host.ssh",
        "--name",
        "builders",
        "--set",
        &format!("hosts=127.0.0.1:{}", sshd.port),
        "--set",
        &format!("user={}", Sshd::user()),
        "--set",
        "credential=builder",
        "--set",
        &format!("root={}/remote", sshd.dir.path().display()),
    ])?;
    let repos = format!("repositories=app={repo}");
    let mut args = vec![
        "blueprint",
        "create",
        "--type",
        "working-copy",
        "--name",
        "wc",
        "--set",
        "host-blueprints=builders",
        "--set",
        &repos,
    ];
    let limit;
    if let Some(l) = wc_limit {
        limit = format!("limit={l}");
        args.extend(["--set", &limit]);
    }
    run(&args)
}

fn wc_lease(url: &str, attrs: &[&str]) -> std::process::Output {
    let mut args = vec!["lease", "--type", "working-copy", "--timeout", "60s"];
    for a in attrs {
        args.extend(["--attribute", a]);
    }
    drydock(url, &args)
}

async fn working_copy_is_reused_clean_at_the_next_commit_and_destroyed_with_its_host_lease(
    db: &TestDb,
) -> anyhow::Result<()> {
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let repos = tempfile::tempdir()?;
    let (repo, a, b) = repository(repos.path())?;
    let url = &db.url;
    setup(url, &sshd, &repo, None)?;
    // The working copy's host leases are checked as the working-copy
    // blueprint, authorized on the host blueprint by its configuring admin.
    let auths = db.store.authorizations(None, Some("blueprint:2")).await?;
    ensure!(auths.len() == 1 && auths[0].blueprint.0 == 1, "{auths:?}");
    ensure!(
        auths[0].blueprint_state == drydock_store::authorization::BlueprintAuthState::Authorized
            && auths[0].decided_by.is_some()
    );
    let out = wc_lease(url, &["repository=app", &format!("commit={a}")]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let first = stdout(&out);
    let head = stdout(&drydock(
        url,
        &[
            "command",
            "--lease",
            &first,
            "--",
            "git",
            "rev-parse",
            "HEAD",
        ],
    ));
    ensure!(head == a, "checked out at A: {head}");
    let out = drydock(
        url,
        &[
            "command",
            "--lease",
            &first,
            "--",
            "sh",
            "-c",
            "echo dirty > f; mkdir -p ignored; touch ignored/cache untracked",
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let lease: Value =
        serde_json::from_str(&stdout(&drydock(url, &["--json", "lease", "show", &first])))?;
    let resource = lease["resource_id"].clone();
    ensure!(
        drydock(url, &["release-lease", "--id", &first])
            .status
            .success()
    );

    let out = wc_lease(url, &["repository=app", &format!("commit={b}")]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let second = stdout(&out);
    let lease: Value = serde_json::from_str(&stdout(&drydock(
        url,
        &["--json", "lease", "show", &second],
    )))?;
    ensure!(
        lease["resource_id"] == resource,
        "the same working copy is reused"
    );
    ensure!(lease["attributes"]["head"] == b.as_str());
    let listing = stdout(&drydock(
        url,
        &[
            "command",
            "--lease",
            &second,
            "--",
            "sh",
            "-c",
            "cat f; ls -A",
        ],
    ));
    ensure!(listing.starts_with("B\n"), "clean checkout at B: {listing}");
    ensure!(
        !listing.contains("ignored") && !listing.contains("untracked"),
        "ignored and untracked files are gone: {listing}"
    );
    ensure!(
        drydock(url, &["release-lease", "--id", &second])
            .status
            .success()
    );

    // A branch, by name.
    let out = wc_lease(url, &["repository=app", "ref=feature"]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let third = stdout(&out);
    let g = stdout(&drydock(
        url,
        &["command", "--lease", &third, "--", "cat", "g"],
    ));
    ensure!(g == "feature", "{g}");
    let path = serde_json::from_str::<Value>(&stdout(&drydock(
        url,
        &["--json", "lease", "show", &third],
    )))?["attributes"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        drydock(url, &["release-lease", "--id", &third])
            .status
            .success()
    );

    // Destroying the working copy removes its directory, then its host lease.
    let rid = resource.as_i64().unwrap_or_default().to_string();
    let out = drydock(url, &["release-resource", "--id", &rid]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let store = &db.store;
    wait_until(
        Duration::from_secs(30),
        "host lease destroyed",
        async || {
            store
                .leases(&Default::default())
                .await
                .unwrap()
                .iter()
                .filter(|l| l.resource_type == "host")
                .all(|l| l.status == drydock_model::LeaseStatus::Destroyed)
        },
    )
    .await?;
    ensure!(
        !Path::new(&path).exists(),
        "working copy directory {path} removed"
    );
    Ok(())
}

async fn working_copy_limit_makes_the_second_lease_wait(db: &TestDb) -> anyhow::Result<()> {
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let repos = tempfile::tempdir()?;
    let (repo, a, _) = repository(repos.path())?;
    let url = &db.url;
    setup(url, &sshd, &repo, Some("1"))?;
    let out = wc_lease(url, &["repository=app", &format!("commit={a}")]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let first = stdout(&out);
    let second = Command::new(env!("CARGO_BIN_EXE_drydock"))
        .args([
            "--database",
            url,
            "lease",
            "--type",
            "working-copy",
            "--attribute",
            "repository=app",
            "--attribute",
            "ref=main",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let store = &db.store;
    wait_until(
        Duration::from_secs(30),
        "second lease to wait",
        async || {
            store
                .leases(&Default::default())
                .await
                .unwrap()
                .iter()
                .any(|l| l.resource_type == "working-copy" && l.waiting.is_some())
        },
    )
    .await?;
    ensure!(
        drydock(url, &["release-lease", "--id", &first])
            .status
            .success()
    );
    let out = second.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the second lease becomes active once the first is released: {}",
        stderr(&out)
    );
    let wcs = db
        .store
        .resources(None, None, 100)
        .await?
        .into_iter()
        .filter(|r| r.resource_type == "working-copy")
        .count();
    ensure!(wcs == 1, "{wcs} working copies with limit 1");
    Ok(())
}

async fn malicious_working_copy_requests_are_refused_before_any_command(
    db: &TestDb,
) -> anyhow::Result<()> {
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let repos = tempfile::tempdir()?;
    let (repo, _, _) = repository(repos.path())?;
    let url = &db.url;
    setup(url, &sshd, &repo, None)?;
    let marker = repos.path().join("pwned");
    let huge = format!("ref={}", "a".repeat(70_000));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "repository=app".into(),
                format!("ref=--upload-pack=touch {}", marker.display()),
            ],
            "not a valid branch or tag name",
        ),
        (
            vec![
                "repository=app".into(),
                format!("commit=--upload-pack=touch {}", marker.display()),
            ],
            "hexadecimal",
        ),
        (
            vec!["repository=../../etc".into(), "ref=main".into()],
            "repository name",
        ),
        (
            vec!["repository=nope".into(), "ref=main".into()],
            "has no repository \"nope\"",
        ),
        (
            vec![
                "repository=app".into(),
                "ref=main".into(),
                "merge=-x".into(),
            ],
            "not a valid branch or tag name",
        ),
        (vec!["repository=app".into(), huge], "lease attributes"),
    ];
    for (attrs, expected) in cases {
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let out = wc_lease(url, &attrs);
        ensure!(!out.status.success(), "{attrs:?} must fail");
        ensure!(
            stderr(&out).contains(expected),
            "expected {expected:?}: {}",
            stderr(&out)
        );
    }
    ensure!(!marker.exists(), "an injected option ran");
    // A working-copy blueprint's repository names are checked too.
    let out = drydock(
        url,
        &[
            "blueprint",
            "create",
            "--type",
            "working-copy",
            "--name",
            "evil",
            "--set",
            "host-blueprints=builders",
            "--set",
            "repositories=../x=/tmp/r",
        ],
    );
    let out2 = drydock(
        url,
        &[
            "lease",
            "--type",
            "working-copy",
            "--blueprint",
            "evil",
            "--attribute",
            "repository=../x",
            "--attribute",
            "ref=main",
            "--timeout",
            "20s",
        ],
    );
    ensure!(
        out.status.success() && !out2.status.success(),
        "{}",
        stderr(&out2)
    );
    ensure!(
        db.store
            .resources(None, None, 100)
            .await?
            .iter()
            .all(|r| r.resource_type != "working-copy"),
        "no working copy was built"
    );
    Ok(())
}

/// Authorization is transitive exactly as documented (spec §11): a client
/// authorized on the working-copy blueprint gets working copies on hosts
/// it has no authorization of its own for, because the working copy leases
/// its host as the working-copy blueprint, which its configuring admin
/// authorized on the host blueprint. Declining that authorization stops
/// new host leases for working copies.
async fn a_client_authorized_on_working_copies_gets_hosts_through_the_blueprint(
    db: &TestDb,
) -> anyhow::Result<()> {
    use drydock_engine::client;
    use drydock_model::{LeaseStatus, ResourceStatus};
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let repos = tempfile::tempdir()?;
    let (repo, a, _b) = repository(repos.path())?;
    let url = &db.url;
    setup(url, &sshd, &repo, None)?;
    let store = db.store.clone();
    let registry = std::sync::Arc::new(drydock_blueprints::registry());
    let engine = std::sync::Arc::new(drydock_engine::Engine::new(
        store.clone(),
        registry.clone(),
        drydock_engine::EngineConfig::new("test"),
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = tokio::spawn(drydock_engine::daemon::run(
        engine,
        drydock_engine::daemon::DaemonConfig::default(),
        "test",
        stop_rx,
    ));
    let request = |commit: &str| client::LeaseRequest {
        resource_type: "working-copy".into(),
        authorizing: "ci:plan/5".into(),
        attributes: serde_json::json!({"repository": "app", "commit": commit})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    let lease = client::queue_lease(&store, &registry, &request(&a)).await?;
    // It asks for the working-copy blueprint only, and waits for approval.
    let asked = store.authorizations(None, Some("ci:plan/5")).await?;
    ensure!(asked.len() == 1 && asked[0].blueprint.0 == 2, "{asked:?}");
    let out = drydock(url, &["authorization", "approve", &asked[0].id.to_string()]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let lease_id = lease.id;
    wait_until(Duration::from_secs(60), "working copy active", async || {
        store.lease(lease_id).await.unwrap().status == LeaseStatus::Active
    })
    .await?;
    // The host came through the blueprint: the client has no rights on it.
    ensure!(
        !store
            .is_authorized("ci:plan/5", drydock_model::BlueprintId(1))
            .await?
    );
    // Decline the working copy's authorization on the hosts, and make the
    // next working copy need a new host lease.
    let wc_auth = store.authorizations(None, Some("blueprint:2")).await?[0].clone();
    let out = drydock(url, &["authorization", "decline", &wc_auth.id.to_string()]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let rid = store.lease(lease_id).await?.resource_id.unwrap();
    client::release_resource(&store, rid, "test").await?;
    wait_until(
        Duration::from_secs(60),
        "working copy destroyed",
        async || store.resource(rid).await.unwrap().status == ResourceStatus::Destroyed,
    )
    .await?;
    client::queue_lease(&store, &registry, &request(&a)).await?;
    wait_until(Duration::from_secs(60), "host lease refused", async || {
        store
            .leases(&drydock_store::lease::LeaseFilter {
                authorizing: Some("blueprint:2".into()),
                statuses: vec![LeaseStatus::Broken, LeaseStatus::Destroyed],
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .any(|l| {
                l.failure
                    .as_deref()
                    .is_some_and(|f| f.contains("blueprint:2 is not authorized"))
            })
    })
    .await?;
    let _ = stop.send(true);
    let _ = daemon.await;
    Ok(())
}
