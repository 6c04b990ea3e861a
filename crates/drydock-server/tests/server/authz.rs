//! Who may do what: every API route refuses a missing or bad token (401)
//! and a role that may not use it (403); a client sees only its own
//! leases; a client's lease waits for an administrator's approval; guessing
//! tokens is rate-limited; the web UI needs a session.

use crate::harness::Server;
use anyhow::{Context, ensure};
use drydock_server::auth::Role;
use drydock_testkit::{TestDb, wait_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

backend_tests!(
    every_route_needs_a_token_and_a_role_that_may_use_it,
    a_client_leases_after_approval_and_sees_only_its_own,
);

async fn call(
    c: &reqwest::Client,
    s: &Server,
    m: &Method,
    path: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut r = c.request(m.clone(), s.at(path));
    if *m != Method::GET {
        // A valid body, so only who is asking decides the answer.
        let body = if path.ends_with("/command") {
            json!({"argv": ["true"]})
        } else if path.ends_with("/renew") {
            json!({"ttl": "1h"})
        } else {
            json!({})
        };
        r = r.json(&body);
    }
    let resp = r.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

async fn every_route_needs_a_token_and_a_role_that_may_use_it(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let (l, r, b) = (
        lease["id"].as_i64().unwrap(),
        lease["resource_id"].as_i64().unwrap(),
        s.blueprint,
    );
    let (_, viewer) = s.token("watcher", Role::Viewer, None).await;
    let (_, client) = s.token("robot", Role::Client, None).await;
    let bad = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer ddt_0000000000000000000000000000000000000000".parse()?,
        );
        reqwest::Client::builder().default_headers(h).build()?
    };
    // (method, path, may a viewer, may a client)
    let routes: Vec<(Method, String, bool, bool)> = vec![
        (Method::GET, "/api/v1/leases".into(), true, true),
        (Method::POST, "/api/v1/leases".into(), false, true),
        (Method::GET, format!("/api/v1/leases/{l}"), true, true),
        (
            Method::GET,
            format!("/api/v1/leases/{l}/wait?timeout=1s"),
            true,
            true,
        ),
        (
            Method::GET,
            format!("/api/v1/leases/{l}/commands"),
            true,
            true,
        ),
        (
            Method::POST,
            format!("/api/v1/leases/{l}/renew"),
            false,
            true,
        ),
        (
            Method::POST,
            format!("/api/v1/leases/{l}/command"),
            false,
            true,
        ),
        (
            Method::POST,
            format!("/api/v1/leases/{l}/release"),
            false,
            true,
        ),
        (Method::GET, "/api/v1/resources".into(), true, false),
        (Method::GET, format!("/api/v1/resources/{r}"), true, false),
        (
            Method::GET,
            format!("/api/v1/resources/{r}/commands"),
            true,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/resources/{r}/release"),
            false,
            false,
        ),
        (Method::GET, "/api/v1/blueprints".into(), true, true),
        (Method::POST, "/api/v1/blueprints".into(), false, false),
        (Method::GET, format!("/api/v1/blueprints/{b}"), true, true),
        (
            Method::PATCH,
            format!("/api/v1/blueprints/{b}"),
            false,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/blueprints/{b}/disable"),
            false,
            false,
        ),
        (
            Method::POST,
            format!("/api/v1/blueprints/{b}/enable"),
            false,
            false,
        ),
        (Method::GET, "/api/v1/blueprint-types".into(), true, true),
        (Method::GET, "/api/v1/logs".into(), true, false),
        (Method::GET, "/api/v1/authorizations".into(), true, false),
        (Method::GET, "/api/v1/authorizations/1".into(), true, false),
        (
            Method::POST,
            "/api/v1/authorizations/1/approve".into(),
            false,
            false,
        ),
        (
            Method::POST,
            "/api/v1/authorizations/1/decline".into(),
            false,
            false,
        ),
        (Method::GET, "/metrics".into(), true, false),
    ];
    for (i, (m, path, viewer_may, client_may)) in routes.iter().enumerate() {
        let (status, body) = call(&s.anonymous, &s, m, path).await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED && Server::code(&body) == "unauthenticated",
            "{m} {path} without a token: {status} {body}"
        );
        // A bad token on a few routes only: ten failures from one address
        // would (rightly) lock it out for a minute.
        if i % 5 == 0 {
            let (status, _) = call(&bad, &s, m, path).await?;
            ensure!(
                status == StatusCode::UNAUTHORIZED,
                "{m} {path} with a bad token: {status}"
            );
        }
        let (status, body) = call(&viewer, &s, m, path).await?;
        ensure!(
            (status == StatusCode::FORBIDDEN) != *viewer_may,
            "{m} {path} as a viewer: {status} {body}"
        );
        let (status, body) = call(&client, &s, m, path).await?;
        if !client_may {
            ensure!(
                status == StatusCode::FORBIDDEN && Server::code(&body) == "forbidden",
                "{m} {path} as a client: {status} {body}"
            );
        } else if path.contains(&format!("/leases/{l}")) {
            // The admin's lease is not the client's: as if it did not exist.
            ensure!(
                status == StatusCode::NOT_FOUND && Server::code(&body) == "not-found",
                "{m} {path} as a client: {status} {body}"
            );
        }
    }
    ensure!(
        s.store.lease(drydock_model::LeaseId(l)).await?.status
            == drydock_model::LeaseStatus::Active
    );
    // The health checks and the API document need no token.
    for path in ["/healthz", "/api/openapi.json"] {
        let (status, _) = call(&s.anonymous, &s, &Method::GET, path).await?;
        ensure!(status == StatusCode::OK, "{path}: {status}");
    }
    // Conduit: no token, a bad token, a client on another method.
    let resp = s
        .anonymous
        .post(s.at("/api/drydock.lease.search"))
        .form(&[("limit", "1")])
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await?;
    ensure!(body["error_code"] == "ERR-INVALID-AUTH", "{body}");
    let resp = client
        .post(s.at("/api/drydock.blueprint.search"))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::FORBIDDEN);
    // No response ever carries a token's secret or hash.
    let (_, listed) = s.get("/api/v1/leases").await;
    ensure!(!listed.to_string().contains("ddt_"));
    Ok(())
}

async fn a_client_leases_after_approval_and_sees_only_its_own(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (_, ci) = s.token("ci", Role::Client, Some("ci:build-plan/42")).await;
    let (_, other) = s.token("other", Role::Client, None).await;
    let resp = ci
        .post(s.at("/api/v1/leases"))
        .json(&json!({"type": "host", "owner": "build 7"}))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::CREATED);
    let lease: Value = resp.json().await?;
    let id = lease["id"].as_i64().context("id")?;
    ensure!(lease["authorizing"] == "ci:build-plan/42", "{lease}");
    // It waits, saying why, until an administrator approves the request it made.
    let store = s.store.clone();
    wait_until(Duration::from_secs(20), "not-authorized", async || {
        store
            .lease(drydock_model::LeaseId(id))
            .await
            .unwrap()
            .waiting
            .is_some_and(|w| w["reason"] == "not-authorized")
    })
    .await?;
    let (_, auths) = s
        .get("/api/v1/authorizations?object=ci:build-plan/42")
        .await;
    let auth = auths["data"][0]["id"]
        .as_i64()
        .context("requested authorization")?;
    ensure!(auths["data"][0]["state"] == "requested", "{auths}");
    let (status, decided) = s
        .post(&format!("/api/v1/authorizations/{auth}/approve"), json!({}))
        .await;
    ensure!(
        status == StatusCode::OK && decided["authorization"]["decided_by"] == "token:test-admin",
        "{decided}"
    );
    let waited: Value = ci
        .get(s.at(&format!("/api/v1/leases/{id}/wait?timeout=20s")))
        .send()
        .await?
        .json()
        .await?;
    ensure!(waited["status"] == "active", "{waited}");
    // Another client neither sees nor touches it.
    let listed: Value = other
        .get(s.at("/api/v1/leases"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(listed["data"].as_array().unwrap().is_empty(), "{listed}");
    for (m, path) in [
        (Method::GET, format!("/api/v1/leases/{id}")),
        (Method::POST, format!("/api/v1/leases/{id}/release")),
        (Method::POST, format!("/api/v1/leases/{id}/command")),
    ] {
        let (status, _) = call(&other, &s, &m, &path).await?;
        ensure!(status == StatusCode::NOT_FOUND, "{m} {path}: {status}");
    }
    let mine: Value = ci.get(s.at("/api/v1/leases")).send().await?.json().await?;
    ensure!(mine["data"].as_array().unwrap().len() == 1);
    let found: Value = other
        .post(s.at("/api/drydock.lease.search"))
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        found["result"]["data"].as_array().unwrap().is_empty(),
        "{found}"
    );
    // Its owner releases it; the command names the token.
    let resp = ci
        .post(s.at(&format!("/api/v1/leases/{id}/release")))
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::ACCEPTED);
    let commands = s
        .store
        .commands_for(drydock_model::ObjectRef::lease(drydock_model::LeaseId(id)))
        .await?;
    ensure!(commands.iter().any(|c| c.author == "token:ci"));
    // A revoked token stops working at once.
    let t = s
        .store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.name == "ci")
        .unwrap();
    s.store.revoke_token(t.id).await?;
    let resp = ci.get(s.at("/api/v1/leases")).send().await?;
    ensure!(resp.status() == StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_tokens_is_rate_limited() {
    drydock_testkit::run(drydock_testkit::Backend::Sqlite, async |db: &TestDb| {
        let s = Server::start(db).await;
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", "Bearer ddt_guess".parse()?);
        let guesser = reqwest::Client::builder().default_headers(h).build()?;
        for _ in 0..drydock_server::auth::MAX_FAILURES {
            let r = guesser.get(s.at("/api/v1/leases")).send().await?;
            ensure!(r.status() == StatusCode::UNAUTHORIZED);
        }
        // Now even a good token from this address waits out the window.
        let r = s.http.get(s.at("/api/v1/leases")).send().await?;
        ensure!(
            r.status() == StatusCode::TOO_MANY_REQUESTS,
            "{}",
            r.status()
        );
        ensure!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await?;
        ensure!(body["error"]["code"] == "too-many-failures", "{body}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_ui_needs_a_session_and_viewers_cannot_act() {
    drydock_testkit::run(drydock_testkit::Backend::Sqlite, async |db: &TestDb| {
        let s = Server::start(db).await;
        let lease = s.active_lease().await?;
        let id = lease["id"].as_i64().unwrap();
        // Without a session: to the login form.
        let r = s.anonymous.get(s.at("/leases")).send().await?;
        ensure!(r.status() == StatusCode::SEE_OTHER && r.headers()["location"] == "/login");
        let r = s.anonymous.get(s.at("/login")).send().await?;
        let csrf = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.strip_prefix("drydock_csrf="))
            .and_then(|c| c.split(';').next())
            .context("csrf cookie")?
            .to_owned();
        let login = |token: String| {
            let csrf = csrf.clone();
            let c = s.anonymous.clone();
            let url = s.at("/login");
            async move {
                c.post(url)
                    .header("cookie", format!("drydock_csrf={csrf}"))
                    .form(&[("csrf", csrf.as_str()), ("token", token.as_str())])
                    .send()
                    .await
            }
        };
        let r = login("ddt_wrong".into()).await?;
        ensure!(r.status() == StatusCode::UNAUTHORIZED);
        let (client_token, _) = s.token("robot", Role::Client, None).await;
        let r = login(client_token).await?;
        ensure!(
            r.status() == StatusCode::FORBIDDEN,
            "client tokens are for the API"
        );
        let (viewer_token, _) = s.token("watcher", Role::Viewer, None).await;
        let r = login(viewer_token.clone()).await?;
        ensure!(r.status() == StatusCode::SEE_OTHER);
        let session = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("session cookie")?
            .to_owned();
        ensure!(
            session.starts_with("drydock_session=")
                && session.contains("HttpOnly")
                && session.contains("SameSite=Strict")
        );
        let cookies = format!("drydock_session={viewer_token}; drydock_csrf={csrf}");
        let r = s
            .anonymous
            .get(s.at(&format!("/leases/{id}")))
            .header("cookie", &cookies)
            .send()
            .await?;
        ensure!(r.status() == StatusCode::OK);
        let r = s
            .anonymous
            .post(s.at(&format!("/leases/{id}/release")))
            .header("cookie", &cookies)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await?;
        ensure!(
            r.status() == StatusCode::FORBIDDEN,
            "a viewer cannot release: {}",
            r.status()
        );
        ensure!(
            s.store
                .pending_commands(drydock_model::ObjectRef::lease(drydock_model::LeaseId(id)))
                .await?
                .is_empty()
        );
        // Logging out clears the cookie.
        let r = s
            .anonymous
            .post(s.at("/logout"))
            .header("cookie", &cookies)
            .send()
            .await?;
        ensure!(r.status() == StatusCode::SEE_OTHER);
        ensure!(r.headers()["set-cookie"].to_str()?.contains("Max-Age=0"));
        Ok(())
    })
    .await
}
