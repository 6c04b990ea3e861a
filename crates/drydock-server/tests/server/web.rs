//! The web UI over HTTP: pages render what the database holds, forms
//! change things only with a valid CSRF token from this origin, pages
//! carry security headers.

use crate::harness::Server;
use anyhow::{Context, ensure};
use drydock_testkit::{TestDb, wait_until};
use reqwest::StatusCode;
use std::time::Duration;

backend_tests!(
    pages_show_objects_and_release_needs_a_csrf_token,
    blueprint_forms_create_edit_and_disable
);

/// GET a page; returns status, body and the CSRF token (cookie) it set.
async fn page(s: &Server, path: &str) -> anyhow::Result<(StatusCode, String, Option<String>)> {
    let resp = s.http.get(s.at(path)).send().await?;
    let status = resp.status();
    let csrf = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.strip_prefix("drydock_csrf="))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    if status == StatusCode::OK {
        let h = resp.headers();
        ensure!(
            h["content-security-policy"]
                .to_str()?
                .contains("default-src 'none'")
        );
        ensure!(h["x-frame-options"] == "DENY" && h["x-content-type-options"] == "nosniff");
    }
    Ok((status, resp.text().await?, csrf))
}

async fn post_form(
    s: &Server,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    fields: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, String, Option<String>)> {
    let mut r = s.http.post(s.at(path)).form(fields);
    if let Some(c) = cookie {
        r = r.header("cookie", format!("drydock_csrf={c}"));
    }
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    let resp = r.send().await?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, resp.text().await?, location))
}

async fn pages_show_objects_and_release_needs_a_csrf_token(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let lease = s.active_lease().await?;
    let id = lease["id"].as_i64().unwrap();
    let rid = lease["resource_id"].as_i64().unwrap();
    let (status, html, _) = page(&s, "/").await?;
    ensure!(
        status == StatusCode::OK && html.contains("active: 1"),
        "{html}"
    );
    let (_, html, _) = page(&s, "/leases").await?;
    ensure!(html.contains(&format!("href=\"/leases/{id}\"")), "{html}");
    let (_, html, _) = page(&s, "/leases?status=destroyed").await?;
    ensure!(!html.contains(&format!("href=\"/leases/{id}\"")));
    let (status, html, csrf) = page(&s, &format!("/leases/{id}")).await?;
    ensure!(
        status == StatusCode::OK && html.contains(">Active<"),
        "{html}"
    );
    ensure!(html.contains(&format!("/resources/{rid}")) && html.contains("lease.activated"));
    let token = csrf.context("the lease page sets a CSRF cookie")?;
    ensure!(html.contains(&format!("value=\"{token}\"")));
    for path in [
        format!("/resources/{rid}"),
        "/resources".into(),
        format!("/blueprints/{}", s.blueprint),
        "/blueprints".into(),
        "/authorizations".into(),
        format!("/logs?lease={id}"),
        "/logs".into(),
        "/blueprints/new".into(),
        "/blueprints/new?type=host.local".into(),
    ] {
        let (status, html, _) = page(&s, &path).await?;
        ensure!(status == StatusCode::OK, "{path}: {status} {html}");
    }
    for path in [
        "/leases/999999",
        "/leases/abc",
        "/nowhere",
        "/authorizations/5",
    ] {
        let (status, _, _) = page(&s, path).await?;
        ensure!(status == StatusCode::NOT_FOUND, "{path}: {status}");
    }
    // Refused: no token, a wrong token, a foreign origin. Nothing is sent.
    let release = format!("/leases/{id}/release");
    for (cookie, sent, origin) in [
        (None, token.as_str(), None),
        (
            Some(token.as_str()),
            "0123456789abcdef0123456789abcdef",
            None,
        ),
        (
            Some(token.as_str()),
            token.as_str(),
            Some("http://evil.example"),
        ),
    ] {
        let (status, html, _) = post_form(&s, &release, cookie, origin, &[("csrf", sent)]).await?;
        ensure!(status == StatusCode::FORBIDDEN, "{status} {html}");
    }
    ensure!(
        s.store
            .pending_commands(drydock_model::ObjectRef::lease(drydock_model::LeaseId(id)))
            .await?
            .is_empty()
            && s.store.lease(drydock_model::LeaseId(id)).await?.status
                == drydock_model::LeaseStatus::Active
    );
    // Accepted: same origin, matching token; back to the lease page.
    let origin = s.url.clone();
    let (status, _, location) = post_form(
        &s,
        &release,
        Some(&token),
        Some(&origin),
        &[("csrf", &token)],
    )
    .await?;
    ensure!(
        status == StatusCode::SEE_OTHER
            && location.as_deref() == Some(&format!("/leases/{id}")[..])
    );
    let store = s.store.clone();
    wait_until(Duration::from_secs(20), "destroyed", async || {
        store
            .lease(drydock_model::LeaseId(id))
            .await
            .unwrap()
            .status
            == drydock_model::LeaseStatus::Destroyed
    })
    .await?;
    let (_, html, _) = page(&s, &format!("/leases/{id}")).await?;
    ensure!(
        html.contains(">Destroyed<") && html.contains("release") && html.contains("web"),
        "{html}"
    );
    ensure!(
        html.contains("id=\"release\" class=\"danger\" type=\"submit\" disabled"),
        "no release button on a destroyed lease"
    );
    Ok(())
}

async fn blueprint_forms_create_edit_and_disable(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (_, _, csrf) = page(&s, "/blueprints/new?type=host.local").await?;
    let t = csrf.context("token")?;
    // Invalid: the form comes back with the error and the values typed.
    let (status, html, _) = post_form(
        &s,
        "/blueprints/new",
        Some(&t),
        None,
        &[
            ("csrf", &t),
            ("type", "host.local"),
            ("name", "more"),
            ("field.limit", "lots"),
        ],
    )
    .await?;
    ensure!(
        status == StatusCode::BAD_REQUEST
            && html.contains("limit")
            && html.contains("value=\"lots\""),
        "{html}"
    );
    let (status, _, location) = post_form(
        &s,
        "/blueprints/new",
        Some(&t),
        None,
        &[
            ("csrf", &t),
            ("type", "host.local"),
            ("name", "more"),
            ("field.limit", "2"),
            ("field.lease-limit", ""),
        ],
    )
    .await?;
    ensure!(status == StatusCode::SEE_OTHER, "{status}");
    let location = location.context("redirect")?;
    let id: i64 = location.trim_start_matches("/blueprints/").parse()?;
    let bp = s.store.blueprint(drydock_model::BlueprintId(id)).await?;
    ensure!(bp.name == "more" && bp.fields["limit"] == 2 && !bp.fields.contains_key("lease-limit"));
    let (_, html, _) = page(&s, &format!("/blueprints/{id}/edit")).await?;
    ensure!(
        html.contains("value=\"more\"") && html.contains("value=\"2\""),
        "{html}"
    );
    let (status, _, _) = post_form(
        &s,
        &format!("/blueprints/{id}/edit"),
        Some(&t),
        None,
        &[
            ("csrf", &t),
            ("name", "most"),
            ("field.limit", "7"),
            ("field.root", ""),
            ("field.lease-limit", "1"),
        ],
    )
    .await?;
    ensure!(status == StatusCode::SEE_OTHER);
    let bp = s.store.blueprint(drydock_model::BlueprintId(id)).await?;
    ensure!(
        bp.name == "most" && bp.fields["limit"] == 7 && bp.fields["lease-limit"] == 1,
        "{bp:?}"
    );
    let (status, _, _) = post_form(
        &s,
        &format!("/blueprints/{id}/disable"),
        Some(&t),
        None,
        &[("csrf", &t)],
    )
    .await?;
    ensure!(status == StatusCode::SEE_OTHER);
    ensure!(
        s.store
            .blueprint(drydock_model::BlueprintId(id))
            .await?
            .disabled
    );
    let (_, html, _) = page(&s, &format!("/blueprints/{id}")).await?;
    ensure!(
        html.contains("Enable Blueprint") && html.contains("fields.limit"),
        "{html}"
    );
    // Authorization buttons: approve, then decline (revoke); an unknown
    // decision is not a route.
    let auth = s
        .store
        .request_authorization("ci:web", drydock_model::BlueprintId(id))
        .await?;
    let a = auth.id.0;
    let (status, _, location) = post_form(
        &s,
        &format!("/authorizations/{a}/approve"),
        Some(&t),
        None,
        &[("csrf", &t)],
    )
    .await?;
    ensure!(
        status == StatusCode::SEE_OTHER
            && location.as_deref() == Some(&format!("/authorizations/{a}")[..])
    );
    let decided = s.store.authorization(auth.id).await?;
    ensure!(
        decided.blueprint_state == drydock_store::authorization::BlueprintAuthState::Authorized
            && decided.decided_by.as_deref() == Some("web:test-admin")
    );
    let (status, _, _) = post_form(
        &s,
        &format!("/authorizations/{a}/decline"),
        Some(&t),
        None,
        &[("csrf", &t), ("release_leases", "1")],
    )
    .await?;
    ensure!(status == StatusCode::SEE_OTHER);
    ensure!(
        s.store.authorization(auth.id).await?.blueprint_state
            == drydock_store::authorization::BlueprintAuthState::Declined
    );
    let (status, _, _) = post_form(
        &s,
        &format!("/authorizations/{a}/frobnicate"),
        Some(&t),
        None,
        &[("csrf", &t)],
    )
    .await?;
    ensure!(status == StatusCode::NOT_FOUND);
    Ok(())
}
