//! The JSON API's routes doing their jobs, on SQLite and PostgreSQL.

use crate::harness::Server;
use anyhow::{Context, ensure};
use drydock_testkit::{TestDb, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

backend_tests!(
    a_lease_is_requested_waited_for_used_and_released,
    command_output_streams_while_the_command_runs,
    lists_filter_and_page_with_cursors,
    blueprints_are_created_edited_disabled_and_enabled,
    renew_moves_the_expiry,
    a_resource_release_releases_its_leases,
);

async fn a_lease_is_requested_waited_for_used_and_released(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (status, lease) = s
        .post(
            "/api/v1/leases",
            json!({"type": "host", "attributes": {"purpose": "test"}, "priority": 5, "ttl": "1h", "owner": "ci:build/1"}),
        )
        .await;
    ensure!(status == StatusCode::CREATED, "{status} {lease}");
    ensure!(
        lease["status"] == "pending" && lease["priority"] == 5,
        "{lease}"
    );
    ensure!(lease["owner"] == "ci:build/1" && lease["until"].as_i64().is_some());
    let id = lease["id"].as_i64().context("id")?;
    let active = s.wait(id, "active").await?;
    ensure!(active["resource_id"].as_i64().is_some(), "{active}");
    ensure!(active["attributes"]["purpose"] == "test");
    let (status, got) = s.get(&format!("/api/v1/leases/{id}")).await;
    ensure!(
        status == StatusCode::OK && got["status"] == "active",
        "{got}"
    );

    let resp = s
        .http
        .post(s.at(&format!("/api/v1/leases/{id}/command")))
        .json(&json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"], "env": {"X": "1"}}))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK);
    ensure!(
        resp.headers()["content-type"] == "application/x-ndjson",
        "{:?}",
        resp.headers()
    );
    let lines: Vec<Value> = resp
        .text()
        .await?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let text = |stream: &str| {
        lines
            .iter()
            .filter(|l| l["stream"] == stream)
            .filter_map(|l| l["data"].as_str())
            .collect::<String>()
    };
    ensure!(
        text("stdout") == "out\n" && text("stderr") == "err\n",
        "{lines:?}"
    );
    ensure!(lines.last().unwrap()["exit_code"] == 3, "{lines:?}");

    let (status, accepted) = s
        .post(&format!("/api/v1/leases/{id}/release"), json!({}))
        .await;
    ensure!(status == StatusCode::ACCEPTED, "{status} {accepted}");
    let command = accepted["command"].as_i64().context("command id")?;
    s.wait(id, "destroyed").await?;
    let (_, commands) = s.get(&format!("/api/v1/leases/{id}/commands")).await;
    ensure!(
        commands
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == command && c["command"] == "release" && c["consumed"] == true),
        "{commands}"
    );
    // Releasing again is refused with a reason, not silently repeated.
    let (status, again) = s
        .post(&format!("/api/v1/leases/{id}/release"), json!({}))
        .await;
    ensure!(
        status == StatusCode::CONFLICT && Server::code(&again) == "conflict",
        "{again}"
    );
    // Its log, oldest first, paged with `after`.
    let (_, page1) = s.get(&format!("/api/v1/logs?lease={id}&limit=2")).await;
    let first: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    ensure!(first[0] == "lease.queued" && first.len() == 2, "{page1}");
    let next = page1["next"].as_i64().context("next")?;
    let (_, rest) = s
        .get(&format!("/api/v1/logs?lease={id}&after={next}&limit=100"))
        .await;
    let types: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    ensure!(
        types.contains(&"lease.activated") && types.last() == Some(&"lease.destroyed"),
        "{types:?}"
    );
    ensure!(
        rest["data"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "log events carry a description"
    );
    Ok(())
}

async fn command_output_streams_while_the_command_runs(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let id = lease["id"].as_i64().unwrap();
    let dir = std::path::PathBuf::from(lease["attributes"]["path"].as_str().context("path")?);
    // The command prints, then waits for a file only the test creates after
    // it has seen the first output: the output must arrive before the end.
    let mut resp = s
        .http
        .post(s.at(&format!("/api/v1/leases/{id}/command")))
        .json(&json!({"argv": ["sh", "-c", "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second"], "timeout": "60s"}))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK);
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = resp
            .chunk()
            .await?
            .context("stream ended before any output")?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    ensure!(
        !seen.contains("exit_code"),
        "the command cannot have ended yet: {seen}"
    );
    std::fs::write(dir.join("go"), "")?;
    while let Some(chunk) = resp.chunk().await? {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    ensure!(
        seen.contains("second") && seen.contains("\"exit_code\":0"),
        "{seen}"
    );
    Ok(())
}

async fn lists_filter_and_page_with_cursors(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, l) = s
            .post(
                "/api/v1/leases",
                json!({"type": "host", "owner": format!("owner-{}", i % 2)}),
            )
            .await;
        ensure!(status == StatusCode::CREATED, "{l}");
        ids.push(l["id"].as_i64().unwrap());
    }
    for id in &ids {
        s.wait(*id, "active").await?;
    }
    // Pages of two, newest first, each cursor continuing the last.
    let mut seen = Vec::new();
    let mut path = "/api/v1/leases?limit=2".to_owned();
    loop {
        let (status, page) = s.get(&path).await;
        ensure!(status == StatusCode::OK, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["id"].as_i64().unwrap()),
        );
        match page["next"].as_i64() {
            Some(n) => path = format!("/api/v1/leases?limit=2&before={n}"),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    ensure!(seen == expected, "{seen:?} vs {expected:?}");
    let (_, owned) = s.get("/api/v1/leases?owner=owner-1").await;
    ensure!(owned["data"].as_array().unwrap().len() == 2, "{owned}");
    let (_, none) = s.get("/api/v1/leases?status=pending,released").await;
    ensure!(none["data"].as_array().unwrap().is_empty(), "{none}");
    let (_, active) = s.get("/api/v1/leases?status=active").await;
    ensure!(active["data"].as_array().unwrap().len() == 5);
    // Resources: listed, filtered by blueprint, each readable.
    let (_, rs) = s
        .get(&format!(
            "/api/v1/resources?blueprint={}&status=active",
            s.blueprint
        ))
        .await;
    let rs = rs["data"].as_array().unwrap().clone();
    ensure!(!rs.is_empty() && rs.len() <= 3, "limit 3: {rs:?}");
    let rid = rs[0]["id"].as_i64().unwrap();
    let (status, r) = s.get(&format!("/api/v1/resources/{rid}")).await;
    ensure!(status == StatusCode::OK && r["type"] == "host" && r.get("attributes").is_none());
    let (_, by_resource) = s.get(&format!("/api/v1/leases?resource={rid}")).await;
    ensure!(
        by_resource["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["resource_id"] == rid)
    );
    let (_, bps) = s
        .get("/api/v1/blueprints?type=host.local&disabled=false")
        .await;
    let bps = &bps["data"];
    ensure!(
        bps.as_array().unwrap().len() == 1 && bps[0]["name"] == "local",
        "{bps}"
    );
    Ok(())
}

async fn blueprints_are_created_edited_disabled_and_enabled(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (_, types) = s.get("/api/v1/blueprint-types").await;
    let local = types
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "host.local")
        .context("host.local listed")?;
    ensure!(local["resource_type"] == "host");
    ensure!(
        local["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "limit")
    );

    let (status, bp) = s
        .post(
            "/api/v1/blueprints",
            json!({"name": "second", "type": "host.local", "fields": {"limit": "2"}}),
        )
        .await;
    ensure!(status == StatusCode::CREATED, "{bp}");
    let id = bp["id"].as_i64().unwrap();
    ensure!(
        bp["fields"]["limit"] == 2,
        "text parsed by the field's kind: {bp}"
    );
    let (status, edited) = s
        .patch(
            &format!("/api/v1/blueprints/{id}"),
            json!({"name": "renamed", "fields": {"limit": 5, "lease-limit": 1}}),
        )
        .await;
    ensure!(status == StatusCode::OK, "{edited}");
    ensure!(edited["name"] == "renamed" && edited["fields"]["limit"] == 5);
    ensure!(edited["fields"]["lease-limit"] == 1);
    let (_, reset) = s
        .patch(
            &format!("/api/v1/blueprints/{id}"),
            json!({"fields": {"lease-limit": null}}),
        )
        .await;
    ensure!(
        reset["fields"].get("lease-limit").is_none(),
        "null unsets: {reset}"
    );
    let (status, d) = s
        .post(&format!("/api/v1/blueprints/{id}/disable"), json!({}))
        .await;
    ensure!(status == StatusCode::OK && d["disabled"] == true, "{d}");
    let (_, listed) = s.get("/api/v1/blueprints?disabled=true").await;
    ensure!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["id"] == id),
        "{listed}"
    );
    // Pages of one, oldest first, following `next`.
    let (_, first) = s.get("/api/v1/blueprints?limit=1").await;
    ensure!(first["data"][0]["id"] == s.blueprint, "{first}");
    let next = first["next"].as_i64().context("a second page")?;
    let (_, second) = s
        .get(&format!("/api/v1/blueprints?limit=1&after={next}"))
        .await;
    ensure!(
        second["data"][0]["id"] == id && second["next"].is_null(),
        "{second}"
    );
    let (status, e) = s
        .post(&format!("/api/v1/blueprints/{id}/enable"), json!({}))
        .await;
    ensure!(status == StatusCode::OK && e["disabled"] == false);

    // Refusals name the problem and change nothing.
    let (status, err) = s
        .patch(
            &format!("/api/v1/blueprints/{id}"),
            json!({"fields": {"limit": "many"}}),
        )
        .await;
    ensure!(status == StatusCode::BAD_REQUEST && Server::code(&err) == "bad-request");
    ensure!(
        err["error"]["message"].as_str().unwrap().contains("limit"),
        "{err}"
    );
    let (status, err) = s
        .post(
            "/api/v1/blueprints",
            json!({"name": "renamed", "type": "host.local"}),
        )
        .await;
    ensure!(status == StatusCode::BAD_REQUEST, "a taken name: {err}");
    ensure!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{err}"
    );
    let (status, err) = s
        .post(
            "/api/v1/blueprints",
            json!({"name": "x", "type": "host.nope"}),
        )
        .await;
    ensure!(
        status == StatusCode::BAD_REQUEST
            && err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("host.nope")
    );
    let (status, err) = s
        .post(
            "/api/v1/blueprints",
            json!({"name": "y", "type": "host.local", "fields": {"colour": "red"}}),
        )
        .await;
    ensure!(
        status == StatusCode::BAD_REQUEST
            && err["error"]["message"].as_str().unwrap().contains("colour")
    );
    let (_, after) = s.get(&format!("/api/v1/blueprints/{id}")).await;
    ensure!(
        after["fields"]["limit"] == 5 && after["name"] == "renamed",
        "{after}"
    );
    Ok(())
}

async fn renew_moves_the_expiry(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (_, lease) = s
        .post("/api/v1/leases", json!({"type": "host", "ttl": "1h"}))
        .await;
    let id = lease["id"].as_i64().unwrap();
    let until = lease["until"].as_i64().unwrap();
    s.wait(id, "active").await?;
    let (status, r) = s
        .post(&format!("/api/v1/leases/{id}/renew"), json!({"ttl": "3h"}))
        .await;
    ensure!(status == StatusCode::ACCEPTED, "{r}");
    let store = s.store.clone();
    wait_until(Duration::from_secs(20), "renewed", async || {
        store
            .lease(drydock_model::LeaseId(id))
            .await
            .unwrap()
            .until
            .is_some_and(|u| u > until + 3_600_000)
    })
    .await?;
    let (status, err) = s
        .post(
            &format!("/api/v1/leases/{id}/renew"),
            json!({"ttl": "1h", "until": 5}),
        )
        .await;
    ensure!(status == StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = s
        .post(&format!("/api/v1/leases/{id}/renew"), json!({"until": 5}))
        .await;
    ensure!(
        status == StatusCode::BAD_REQUEST
            && err["error"]["message"].as_str().unwrap().contains("future"),
        "{err}"
    );
    Ok(())
}

async fn a_resource_release_releases_its_leases(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let id = lease["id"].as_i64().unwrap();
    let rid = lease["resource_id"].as_i64().unwrap();
    let (status, _) = s
        .post(&format!("/api/v1/resources/{rid}/release"), json!({}))
        .await;
    ensure!(status == StatusCode::ACCEPTED);
    s.wait(id, "destroyed").await?;
    let store = s.store.clone();
    wait_until(Duration::from_secs(20), "resource destroyed", async || {
        store
            .resource(drydock_model::ResourceId(rid))
            .await
            .unwrap()
            .status
            == drydock_model::ResourceStatus::Destroyed
    })
    .await?;
    let (_, commands) = s.get(&format!("/api/v1/resources/{rid}/commands")).await;
    ensure!(
        commands[0]["command"] == "release" && commands[0]["author"] == "token:test-admin",
        "{commands}"
    );
    Ok(())
}
