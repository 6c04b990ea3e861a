//! `host.ssh` against a real OpenSSH server on loopback, driven through the
//! `drydock` binary.

use crate::{drydock, stderr, stdout};
use anyhow::ensure;
use drydock_testkit::{Sshd, TestDb};
use std::process::Output;

backend_tests!(
    ssh_lease_runs_commands_with_exit_codes_quoting_and_large_output,
    ssh_host_keys_are_enforced_and_bad_hosts_refused,
    ssh_host_going_down_is_reported_not_hung
);

/// A credential and a host.ssh blueprint for `sshd`; `extra` adds `--set`s.
fn setup(url: &str, sshd: &Sshd, extra: &[&str]) -> anyhow::Result<()> {
    let key = sshd.client_key();
    let out = drydock(
        url,
        &[
            "credential",
            "create",
            "--name",
            "builder",
            "--ssh-key-file",
            &key.to_string_lossy(),
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let hosts = format!("hosts=127.0.0.1:{}", sshd.port);
    let user = format!("user={}", Sshd::user());
    let root = format!("root={}/remote", sshd.dir.path().display());
    let mut args = vec![
        "blueprint",
        "create",
        "--type",
        "host.ssh",
        "--name",
        "builders",
        "--set",
        &hosts,
        "--set",
        &user,
        "--set",
        "credential=builder",
        "--set",
        &root,
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    let out = drydock(url, &args);
    ensure!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

fn lease(url: &str) -> anyhow::Result<String> {
    let out = drydock(url, &["lease", "--type", "host", "--timeout", "60s"]);
    ensure!(out.status.success(), "lease failed: {}", stderr(&out));
    Ok(stdout(&out))
}

fn command(url: &str, id: &str, argv: &[&str]) -> Output {
    let mut args = vec!["command", "--lease", id, "--"];
    args.extend(argv);
    drydock(url, &args)
}

async fn ssh_lease_runs_commands_with_exit_codes_quoting_and_large_output(
    db: &TestDb,
) -> anyhow::Result<()> {
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let url = &db.url;
    setup(url, &sshd, &[])?;
    let listed = stdout(&drydock(url, &["--json", "credential", "list"]));
    ensure!(
        listed.contains("builder") && !listed.contains("PRIVATE KEY"),
        "no secret in listings: {listed}"
    );
    let id = lease(url)?;
    let out = command(url, &id, &["pwd"]);
    ensure!(out.status.success(), "{}", stderr(&out));
    let dir = stdout(&out);
    ensure!(
        dir.ends_with(&format!("/remote/lease-{id}")),
        "commands run in the lease's directory: {dir}"
    );
    let out = command(url, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    ensure!(
        out.status.code() == Some(3),
        "exit code preserved: {:?}",
        out.status.code()
    );
    ensure!(stdout(&out) == "out" && stderr(&out).contains("err"));
    // Every word arrives as one argument, shell syntax and all.
    let marker = sshd.dir.path().join("pwned");
    let injection = format!("$(touch {})", marker.display());
    let out = command(
        url,
        &id,
        &["printf", "%s|", "a b", &injection, ";rm -rf", "'q'"],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(
        stdout(&out) == format!("a b|{injection}|;rm -rf|'q'|"),
        "{}",
        stdout(&out)
    );
    ensure!(!marker.exists(), "an argument was run by the remote shell");
    let out = command(
        url,
        &id,
        &["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"],
    );
    ensure!(
        out.status.success() && out.stdout.len() == 3_000_000,
        "large output: {} bytes",
        out.stdout.len()
    );
    let out = drydock(
        url,
        &["command", "--lease", &id, "--cd", "../..", "--", "ls"],
    );
    ensure!(
        !out.status.success() && stderr(&out).contains("must not contain `..`"),
        "{}",
        stderr(&out)
    );
    // Files over SFTP, inside the lease's directory only.
    let payload = sshd.dir.path().join("payload");
    std::fs::write(&payload, "file body\n")?;
    let out = drydock(
        url,
        &[
            "file",
            "write",
            "--lease",
            &id,
            "sub/dir/f.txt",
            "--from",
            &payload.to_string_lossy(),
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let out = drydock(url, &["file", "read", "--lease", &id, "sub/dir/f.txt"]);
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "file body\n",
        "{}",
        stderr(&out)
    );
    let listing: serde_json::Value = serde_json::from_str(&stdout(&drydock(
        url,
        &["--json", "file", "list", "--lease", &id, "sub/dir"],
    )))?;
    ensure!(
        listing[0]["name"] == "f.txt" && listing[0]["size"] == 10,
        "{listing}"
    );
    let secret = sshd.dir.path().join("outside.txt");
    std::fs::write(&secret, "secret")?;
    command(
        url,
        &id,
        &["ln", "-s", &sshd.dir.path().to_string_lossy(), "escape"],
    );
    for bad in ["../outside.txt", "escape/outside.txt", "/etc/passwd"] {
        let out = drydock(url, &["file", "read", "--lease", &id, bad]);
        ensure!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("secret"),
            "{bad:?} must be refused"
        );
    }
    // Disabling a host keeps its active lease working but gives it no new one.
    let disabled = format!("disabled-hosts=127.0.0.1:{}", sshd.port);
    ensure!(
        drydock(url, &["blueprint", "edit", "builders", "--set", &disabled])
            .status
            .success()
    );
    ensure!(
        command(url, &id, &["true"]).status.success(),
        "an active lease survives its host being disabled"
    );
    let out = drydock(url, &["lease", "--type", "host", "--timeout", "1s"]);
    ensure!(
        out.status.code() == Some(2),
        "no new lease on a disabled host: {}",
        stderr(&out)
    );
    ensure!(
        drydock(
            url,
            &["blueprint", "edit", "builders", "--set", "disabled-hosts="]
        )
        .status
        .success()
    );

    let out = drydock(url, &["release-lease", "--id", &id]);
    ensure!(out.status.success(), "{}", stderr(&out));
    ensure!(
        !std::path::Path::new(&dir).exists(),
        "the lease's directory on the host is removed"
    );
    let show = stdout(&drydock(url, &["--json", "resource", "show", "1"]));
    ensure!(
        show.contains("known-hosts") && show.contains("ssh-ed25519"),
        "the host key was learned and recorded: {show}"
    );
    ensure!(!show.contains("PRIVATE KEY"));
    // `run`: lease, command, release, exit with the command's code.
    let out = drydock(url, &["run", "--type", "host", "--", "sh", "-c", "exit 5"]);
    ensure!(
        out.status.code() == Some(5),
        "{:?} {}",
        out.status.code(),
        stderr(&out)
    );
    let leases = stdout(&drydock(
        url,
        &["--json", "lease", "list", "--status", "active"],
    ));
    ensure!(leases.trim() == "[]", "run released its lease: {leases}");
    Ok(())
}

async fn ssh_host_keys_are_enforced_and_bad_hosts_refused(db: &TestDb) -> anyhow::Result<()> {
    let Some(sshd) = Sshd::start().await else {
        return Ok(());
    };
    let url = &db.url;
    // Pinned to a key that is not the server's: nothing may connect.
    let other = tempfile::tempdir()?;
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(other.path().join("k"))
        .status()?;
    let wrong = std::fs::read_to_string(other.path().join("k.pub"))?;
    let pinned = format!("known-hosts=[127.0.0.1]:{} {}", sshd.port, wrong.trim());
    setup(url, &sshd, &[&pinned])?;
    let out = drydock(url, &["lease", "--type", "host", "--timeout", "5s"]);
    ensure!(
        !out.status.success(),
        "a host with the wrong key must not be leased"
    );
    let resources = stdout(&drydock(url, &["--json", "resource", "list"]));
    ensure!(
        resources.contains("host key verification failed"),
        "the failure names the cause: {resources}"
    );
    // Option-like host names never reach ssh.
    let marker = sshd.dir.path().join("proxy-ran");
    let evil = format!("hosts=-oProxyCommand=touch {}", marker.display());
    let out = drydock(
        url,
        &[
            "blueprint",
            "edit",
            "builders",
            "--set",
            &evil,
            "--set",
            "known-hosts=",
        ],
    );
    ensure!(out.status.success(), "{}", stderr(&out));
    let out = drydock(url, &["lease", "--type", "host", "--timeout", "20s"]);
    ensure!(
        !out.status.success() && stderr(&out).contains("must be HOST or HOST:PORT"),
        "{}",
        stderr(&out)
    );
    ensure!(!marker.exists(), "an option-like host name reached ssh");
    Ok(())
}

async fn ssh_host_going_down_is_reported_not_hung(db: &TestDb) -> anyhow::Result<()> {
    let Some(mut sshd) = Sshd::start().await else {
        return Ok(());
    };
    let url = &db.url;
    setup(url, &sshd, &["connect-timeout=2"])?;
    let id = lease(url)?;
    sshd.stop();
    let started = std::time::Instant::now();
    let out = command(url, &id, &["true"]);
    ensure!(
        !out.status.success(),
        "a command on a dead host cannot succeed"
    );
    ensure!(
        stderr(&out).contains("cannot reach the resource"),
        "{}",
        stderr(&out)
    );
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "gave up in {:?}",
        started.elapsed()
    );
    Ok(())
}
