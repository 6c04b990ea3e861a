//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! Counters and histograms recorded while working (task outcomes,
//! allocator pass time, lease wait time, HTTP requests) go through the
//! `metrics` facade to a process-wide Prometheus recorder. Counts of what
//! is in the database (leases by status, resources by blueprint and
//! status, waiting reasons, queue depth and age) are read fresh at each
//! scrape with grouped, indexed queries, so they are right even when the
//! work is done by daemons in other processes.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use drydock_model::{LeaseStatus, ResourceStatus};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// Histogram buckets, in seconds: 1 ms to 5 minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder (once; later calls reuse it). `None`
/// if another recorder was installed first.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// `/metrics` needs an admin or viewer token; the health checks are open,
/// for load balancers and orchestrators.
pub fn routes(state: AppState) -> Router<AppState> {
    let token = axum::middleware::from_fn_with_state(state, crate::auth::require_token);
    Router::new()
        .route("/metrics", get(scrape).route_layer(token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Count requests and time them, by route pattern (never the raw path, so
/// ids do not explode the label set).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("drydock_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("drydock_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The database-derived gauges, as Prometheus text.
async fn gauges(s: &AppState) -> Result<String, drydock_store::StoreError> {
    let mut out = String::new();
    let leases = s.store.lease_status_counts().await?;
    family(&mut out, "drydock_leases", "gauge", "Leases by status.");
    for status in LeaseStatus::ALL {
        let n = leases
            .iter()
            .find(|(st, _)| st == status.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "drydock_leases{{status=\"{status}\"}} {n}");
    }
    let blueprints = s.store.blueprints(None).await?;
    let resources = s.store.resource_counts_by_blueprint().await?;
    family(
        &mut out,
        "drydock_resources",
        "gauge",
        "Resources by blueprint and status.",
    );
    for bp in &blueprints {
        for status in ResourceStatus::ALL {
            let n = resources
                .iter()
                .find(|(b, st, _)| *b == bp.id.0 && st == status.as_str())
                .map_or(0, |(_, _, n)| *n);
            let _ = writeln!(
                out,
                "drydock_resources{{blueprint=\"{}\",blueprint_id=\"{}\",status=\"{status}\"}} {n}",
                label(&bp.name),
                bp.id
            );
        }
    }
    family(
        &mut out,
        "drydock_waiting_leases",
        "gauge",
        "Pending leases by the reason they wait.",
    );
    for (reason, n) in s.store.waiting_reason_counts().await? {
        let _ = writeln!(
            out,
            "drydock_waiting_leases{{reason=\"{}\"}} {n}",
            label(&reason)
        );
    }
    let q = s.store.queue_stats().await?;
    family(
        &mut out,
        "drydock_task_queue_depth",
        "gauge",
        "Tasks queued (due now or scheduled later) and claimed by a worker.",
    );
    let _ = writeln!(out, "drydock_task_queue_depth{{state=\"due\"}} {}", q.due);
    let _ = writeln!(
        out,
        "drydock_task_queue_depth{{state=\"scheduled\"}} {}",
        q.scheduled
    );
    let _ = writeln!(
        out,
        "drydock_task_queue_depth{{state=\"claimed\"}} {}",
        q.running
    );
    family(
        &mut out,
        "drydock_task_queue_oldest_due_seconds",
        "gauge",
        "How long the oldest due task has waited for a worker.",
    );
    let _ = writeln!(
        out,
        "drydock_task_queue_oldest_due_seconds {}",
        q.oldest_due_ms as f64 / 1000.0
    );
    family(
        &mut out,
        "drydock_command_queue_depth",
        "gauge",
        "Commands (release, reclaim, renew) not yet consumed by their object's worker.",
    );
    let _ = writeln!(
        out,
        "drydock_command_queue_depth {}",
        s.store.command_queue_depth().await?
    );
    Ok(out)
}

async fn scrape(State(s): State<AppState>) -> Response {
    let mut body = match gauges(&s).await {
        Ok(text) => text,
        Err(e) => {
            tracing::error!("metrics: reading the database failed: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database could not be read; see the server log\n",
            )
                .into_response();
        }
    };
    if let Some(handle) = recorder() {
        body.push_str(&handle.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and a daemon is alive to do the work.
async fn readyz(State(s): State<AppState>) -> Response {
    match s
        .store
        .live_daemons(drydock_engine::daemon::ALIVE_WITHIN)
        .await
    {
        Ok(d) if !d.is_empty() => {
            let skew = drydock_store::clock::skew_ms();
            let mut body =
                serde_json::json!({ "ready": true, "daemons": d.len(), "clock_skew_ms": skew });
            if skew.abs() > drydock_store::clock::SKEW_WARNING_MS {
                body["warning"] = format!(
                    "this server's clock differs from the database's by {skew} ms (stored times are corrected; synchronize the clocks)"
                )
                .into();
            }
            Json(body).into_response()
        }
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ready": false,
                "reason": "no daemon is running: leases would wait forever (start `drydock daemon`)"
            })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!("readyz: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    serde_json::json!({ "ready": false, "reason": "the database does not answer" }),
                ),
            )
                .into_response()
        }
    }
}
