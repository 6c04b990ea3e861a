//! The OpenAPI document served at `/api/openapi.json` equals the checked-in
//! snapshot `crates/drydock-server/openapi.json`. After an intended API
//! change, regenerate it with `UPDATE_SNAPSHOTS=1 cargo nextest run -p
//! drydock-server openapi` and review the diff.

use anyhow::{Context, ensure};
use drydock_testkit::{Backend, TestDb, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_served_document_matches_the_snapshot() {
    run(Backend::Sqlite, async |db: &TestDb| {
        let s = crate::harness::Server::start(db).await;
        let served: serde_json::Value = s
            .http
            .get(s.at("/api/openapi.json"))
            .send()
            .await?
            .json()
            .await?;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let pretty = serde_json::to_string_pretty(&served)? + "\n";
        if std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
            std::fs::write(path, &pretty)?;
        }
        let snapshot = std::fs::read_to_string(path).context("the snapshot file")?;
        ensure!(
            snapshot == pretty,
            "the API document changed; if intended, run with UPDATE_SNAPSHOTS=1 and commit {path}"
        );
        // Every route a client needs is described.
        for route in [
            "/api/v1/leases",
            "/api/v1/leases/{id}",
            "/api/v1/leases/{id}/wait",
            "/api/v1/leases/{id}/release",
            "/api/v1/leases/{id}/renew",
            "/api/v1/leases/{id}/command",
            "/api/v1/leases/{id}/commands",
            "/api/v1/resources",
            "/api/v1/resources/{id}",
            "/api/v1/resources/{id}/release",
            "/api/v1/blueprints",
            "/api/v1/blueprints/{id}",
            "/api/v1/blueprints/{id}/disable",
            "/api/v1/blueprints/{id}/enable",
            "/api/v1/blueprint-types",
            "/api/v1/logs",
            "/api/v1/authorizations",
            "/api/{method}",
        ] {
            ensure!(
                served["paths"][route].is_object(),
                "{route} is not documented"
            );
        }
        ensure!(
            served["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        Ok(())
    })
    .await
}
