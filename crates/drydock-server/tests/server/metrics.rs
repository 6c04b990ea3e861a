//! `/metrics`, `/healthz`, `/readyz`.

use crate::harness::{Options, Server};
use anyhow::ensure;
use drydock_testkit::{Backend, TestDb, run};
use reqwest::StatusCode;

backend_tests!(metrics_count_what_the_database_holds);

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_count_what_the_database_holds(db: &TestDb) -> anyhow::Result<()> {
    let s = Server::start(db).await;
    let a = s.active_lease().await?;
    s.active_lease().await?;
    let id = a["id"].as_i64().unwrap();
    s.post(
        &format!("/api/v1/leases/{id}/release"),
        serde_json::json!({}),
    )
    .await;
    s.wait(id, "destroyed").await?;
    let resp = s.http.get(s.at("/metrics")).send().await?;
    ensure!(resp.status() == StatusCode::OK);
    ensure!(
        resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/plain")
    );
    let text = resp.text().await?;
    ensure!(
        value(&text, "drydock_leases{status=\"active\"}") == Some(1.0),
        "{text}"
    );
    ensure!(
        value(&text, "drydock_leases{status=\"destroyed\"}") == Some(1.0),
        "{text}"
    );
    let bp = s.blueprint;
    ensure!(
        value(
            &text,
            &format!(
                "drydock_resources{{blueprint=\"local\",blueprint_id=\"{bp}\",status=\"active\"}}"
            )
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for family in [
        "# TYPE drydock_waiting_leases gauge",
        "drydock_task_queue_depth{state=\"due\"}",
        "drydock_task_queue_oldest_due_seconds",
        "drydock_command_queue_depth",
        // Recorded in this process by the daemon and the server:
        "drydock_lease_wait_seconds_bucket",
        "drydock_allocator_pass_seconds_bucket",
        "drydock_task_outcomes_total{kind=\"lease.update\",outcome=\"done\"}",
        "drydock_http_requests_total{method=\"POST\",route=\"/api/v1/leases\",status=\"201\"}",
    ] {
        ensure!(text.contains(family), "missing {family} in\n{text}");
    }
    let (status, health) = s.get("/healthz").await;
    ensure!(status == StatusCode::OK && health == "ok\n");
    let (status, ready) = s.get("/readyz").await;
    ensure!(
        status == StatusCode::OK && ready["ready"] == true,
        "{ready}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_says_why_without_a_daemon() {
    run(Backend::Sqlite, async |db: &TestDb| {
        let s = Server::start_with(db, Options { daemon: false }).await;
        let (status, ready) = s.get("/readyz").await;
        ensure!(status == StatusCode::SERVICE_UNAVAILABLE, "{ready}");
        ensure!(
            ready["reason"].as_str().unwrap().contains("no daemon"),
            "{ready}"
        );
        let (status, _) = s.get("/healthz").await;
        ensure!(status == StatusCode::OK);
        // A pending lease shows up as waiting (with no daemon it stays so).
        s.post("/api/v1/leases", serde_json::json!({"type": "host"}))
            .await;
        let text = s.http.get(s.at("/metrics")).send().await?.text().await?;
        ensure!(
            value(&text, "drydock_leases{status=\"pending\"}") == Some(1.0),
            "{text}"
        );
        ensure!(
            value(&text, "drydock_waiting_leases{reason=\"unknown\"}") == Some(1.0),
            "{text}"
        );
        ensure!(
            value(&text, "drydock_task_queue_depth{state=\"due\"}").is_some_and(|n| n >= 1.0),
            "{text}"
        );
        Ok(())
    })
    .await
}
