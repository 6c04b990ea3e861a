//! The Conduit search methods, called the three ways Conduit clients call
//! them, answering in Conduit's shape.

use crate::harness::Server;
use anyhow::{Context, ensure};
use drydock_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};

backend_tests!(
    the_three_request_styles_give_the_same_answer,
    constraints_and_cursors_work_like_conduit,
    blueprint_and_authorization_search,
    errors_come_back_in_conduit_shape,
);

/// Plain form fields, PHP-style (`constraints[ids][0]=1`), with the token
/// as `api.token` unless the fields carry one.
async fn form(s: &Server, method: &str, fields: &[(&str, &str)]) -> anyhow::Result<Value> {
    let mut fields = fields.to_vec();
    if !fields
        .iter()
        .any(|(k, _)| *k == "api.token" || *k == "params")
    {
        fields.push(("api.token", &s.admin_token));
    }
    let resp = s
        .anonymous
        .post(s.at(&format!("/api/{method}")))
        .form(&fields)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    Ok(resp.json().await?)
}

/// A form field `params` with JSON, as the Python and PHP clients send.
async fn params(s: &Server, method: &str, p: Value) -> anyhow::Result<Value> {
    let mut p = p;
    p["__conduit__"] = json!({"token": s.admin_token});
    let text = p.to_string();
    form(
        s,
        method,
        &[("params", &text), ("output", "json"), ("__conduit__", "1")],
    )
    .await
}

async fn body(s: &Server, method: &str, p: Value) -> anyhow::Result<Value> {
    let resp = s
        .http
        .post(s.at(&format!("/api/{method}")))
        .json(&p)
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::OK);
    Ok(resp.json().await?)
}

fn ids(answer: &Value) -> Vec<i64> {
    answer["result"]["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["id"].as_i64()).collect())
        .unwrap_or_default()
}

async fn the_three_request_styles_give_the_same_answer(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let a = s.active_lease().await?;
    let b = s.active_lease().await?;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let by_form = form(
        &s,
        "drydock.lease.search",
        &[
            ("api.token", &s.admin_token),
            ("constraints[statuses][0]", "active"),
            ("limit", "10"),
        ],
    )
    .await?;
    let by_params = params(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"statuses": ["active"]}, "limit": 10}),
    )
    .await?;
    let by_body = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"statuses": ["active"]}, "limit": 10}),
    )
    .await?;
    ensure!(ids(&by_form) == vec![b, a], "{by_form}");
    ensure!(
        by_form == by_params && by_params == by_body,
        "{by_form}\n{by_params}\n{by_body}"
    );
    ensure!(by_form["error_code"].is_null() && by_form["error_info"].is_null());
    let lease = &by_form["result"]["data"][1];
    ensure!(lease["type"] == "DRYL" && lease["phid"].as_str().unwrap().starts_with("PHID-DRYL-"));
    let f = &lease["fields"];
    ensure!(
        f["status"] == json!({"value": "active", "name": "Active"}),
        "{f}"
    );
    ensure!(
        f["resourceType"] == "host"
            && f["resourcePHID"]
                .as_str()
                .unwrap()
                .starts_with("PHID-DRYR-")
    );
    ensure!(f["dateCreated"].as_i64().is_some() && f["until"].is_null());
    ensure!(by_form["result"]["cursor"]["limit"] == 10 && by_form["result"]["maps"] == json!({}));
    ensure!(
        !by_form.to_string().contains("api-secret-token"),
        "the token is never echoed"
    );

    let methods = form(&s, "conduit.query", &[]).await?;
    for m in [
        "drydock.blueprint.search",
        "drydock.resource.search",
        "drydock.lease.search",
        "drydock.authorization.search",
        "conduit.query",
    ] {
        ensure!(
            methods["result"][m]["description"].is_string(),
            "{m} in {methods}"
        );
    }
    Ok(())
}

async fn constraints_and_cursors_work_like_conduit(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(s.active_lease().await?["id"].as_i64().unwrap());
    }
    all.reverse();
    // Pages of two, newest first, following `cursor.after`.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut p = json!({"queryKey": "all", "limit": 2, "order": "newest"});
        if let Some(a) = &after {
            p["after"] = json!(a);
        }
        let page = body(&s, "drydock.lease.search", p).await?;
        ensure!(page["error_code"].is_null(), "{page}");
        seen.extend(ids(&page));
        pages += 1;
        match page["result"]["cursor"]["after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
        ensure!(pages < 10, "cursor never ends");
    }
    ensure!(
        seen == all && pages == 3,
        "{seen:?} vs {all:?} in {pages} pages"
    );
    // `before` goes back a page.
    let back = body(
        &s,
        "drydock.lease.search",
        json!({"queryKey": "all", "limit": 2, "before": all[2].to_string()}),
    )
    .await?;
    ensure!(ids(&back) == all[..2].to_vec(), "{back}");
    // ids, phids, resourcePHIDs, ownerPHIDs, statuses.
    let one = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"ids": [all[1]]}}),
    )
    .await?;
    ensure!(ids(&one) == vec![all[1]]);
    let phid = one["result"]["data"][0]["phid"]
        .as_str()
        .context("phid")?
        .to_owned();
    let rphid = one["result"]["data"][0]["fields"]["resourcePHID"]
        .as_str()
        .context("resource")?
        .to_owned();
    let by_phid = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"phids": [phid]}}),
    )
    .await?;
    ensure!(ids(&by_phid) == vec![all[1]]);
    let on_resource = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"resourcePHIDs": [rphid.clone()]}}),
    )
    .await?;
    ensure!(ids(&on_resource).contains(&all[1]));
    let owned = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"ownerPHIDs": ["token:test-admin"]}}),
    )
    .await?;
    ensure!(ids(&owned).len() == 5);
    let gone = body(
        &s,
        "drydock.lease.search",
        json!({"constraints": {"statuses": ["destroyed"]}}),
    )
    .await?;
    ensure!(ids(&gone).is_empty());
    // Resources: the active query, blueprint constraint.
    let bphid = format!("PHID-DRYB-{:020}", s.blueprint);
    let rs = body(
        &s,
        "drydock.resource.search",
        json!({"queryKey": "active", "constraints": {"blueprintPHIDs": [bphid]}}),
    )
    .await?;
    let rdata = rs["result"]["data"].as_array().context("data")?;
    ensure!(
        !rdata.is_empty()
            && rdata
                .iter()
                .all(|r| r["fields"]["status"]["value"] == "active"),
        "{rs}"
    );
    ensure!(rdata.iter().any(|r| r["phid"] == rphid.as_str()));
    Ok(())
}

async fn blueprint_and_authorization_search(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let (status, wc) = s
        .post(
            "/api/v1/blueprints",
            json!({"name": "Working Copies", "type": "working-copy", "fields": {"host-blueprints": [s.blueprint.to_string()], "repositories": "app=/srv/git/app.git"}}),
        )
        .await;
    ensure!(status == StatusCode::CREATED, "{wc}");
    let wc_id = wc["id"].as_i64().unwrap();
    s.post(&format!("/api/v1/blueprints/{wc_id}/disable"), json!({}))
        .await;
    let found = form(
        &s,
        "drydock.blueprint.search",
        &[("constraints[match]", "working")],
    )
    .await?;
    ensure!(ids(&found) == vec![wc_id], "{found}");
    let bp = &found["result"]["data"][0]["fields"];
    ensure!(
        bp["name"] == "Working Copies" && bp["type"] == "working-copy",
        "{bp}"
    );
    ensure!(
        bp["custom.host-blueprints"] == json!([s.blueprint.to_string()]),
        "{bp}"
    );
    let active = form(&s, "drydock.blueprint.search", &[("queryKey", "active")]).await?;
    ensure!(
        ids(&active) == vec![s.blueprint],
        "disabled ones are not active: {active}"
    );
    let disabled = form(
        &s,
        "drydock.blueprint.search",
        &[("constraints[isDisabled]", "1")],
    )
    .await?;
    ensure!(ids(&disabled) == vec![wc_id]);
    let auths = body(
        &s,
        "drydock.authorization.search",
        json!({"constraints": {"blueprintPHIDs": [format!("PHID-DRYB-{:020}", s.blueprint)]}}),
    )
    .await?;
    let a = &auths["result"]["data"][0]["fields"];
    ensure!(a["objectPHID"] == format!("blueprint:{wc_id}"), "{auths}");
    ensure!(
        a["blueprintAuthorizationState"]["value"] == "authorized",
        "{a}"
    );
    ensure!(a["objectAuthorizationState"]["value"] == "active", "{a}");
    // The same through the JSON API.
    let (status, listed) = s
        .get(&format!("/api/v1/authorizations?blueprint={}", s.blueprint))
        .await;
    ensure!(status == StatusCode::OK, "{listed}");
    let only = &listed["data"][0];
    ensure!(
        only["object"] == format!("blueprint:{wc_id}") && only["state"] == "authorized",
        "{listed}"
    );
    let (_, none) = s.get("/api/v1/authorizations?object=ci:nobody").await;
    ensure!(
        none["data"].as_array().unwrap().is_empty() && none["next"].is_null(),
        "{none}"
    );
    Ok(())
}

async fn errors_come_back_in_conduit_shape(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    for (method, p, mention) in [
        (
            "drydock.lease.search",
            json!({"constraints": {"colour": ["red"]}}),
            "colour",
        ),
        (
            "drydock.lease.search",
            json!({"constraints": {"statuses": ["sleepy"]}}),
            "sleepy",
        ),
        ("drydock.lease.search", json!({"limit": 1000}), "limit"),
        (
            "drydock.lease.search",
            json!({"queryKey": "mine"}),
            "queryKey",
        ),
        ("drydock.lease.search", json!({"order": "random"}), "order"),
        ("drydock.lease.search", json!({"after": "x"}), "after"),
        (
            "drydock.lease.search",
            json!({"constraints": {"phids": ["PHID-USER-1"]}}),
            "PHID-USER-1",
        ),
        (
            "drydock.resource.search",
            json!({"constraints": "all"}),
            "constraints",
        ),
        (
            "drydock.authorization.search",
            json!({"queryKey": "active"}),
            "queryKey",
        ),
        (
            "drydock.lease.search",
            json!({"frobnicate": 1}),
            "frobnicate",
        ),
    ] {
        let answer = body(&s, method, p).await?;
        ensure!(
            answer["result"].is_null()
                && answer["error_code"] == "ERR-CONDUIT-CORE"
                && answer["error_info"]
                    .as_str()
                    .unwrap_or("")
                    .contains(mention),
            "{method}: {answer}"
        );
    }
    let unknown = body(&s, "drydock.lease.destroy", json!({})).await?;
    ensure!(unknown["error_code"] == "ERR-CONDUIT-CALL", "{unknown}");
    let resp = s
        .http
        .post(s.at("/api/drydock.lease.search"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    let answer: Value = resp.json().await?;
    ensure!(answer["error_code"] == "ERR-CONDUIT-CORE", "{answer}");
    let bad_params = form(&s, "drydock.lease.search", &[("params", "[1")]).await?;
    ensure!(
        bad_params["error_info"]
            .as_str()
            .unwrap()
            .contains("params"),
        "{bad_params}"
    );
    Ok(())
}
