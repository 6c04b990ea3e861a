//! A server and a daemon over a test database, on a free loopback port,
//! with a `host.local` blueprint leasing directories in a temporary
//! directory; and a small JSON client.

use anyhow::Context;
use drydock_engine::daemon::DaemonConfig;
use drydock_engine::{Engine, EngineConfig};
use drydock_server::AppState;
use drydock_store::Store;
use drydock_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

pub struct Server {
    pub url: String,
    /// Sends the admin token on every request.
    pub http: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    pub admin_token: String,
    pub store: Store,
    /// The starter blueprint's id.
    pub blueprint: i64,
    stop: tokio::sync::watch::Sender<bool>,
    _root: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub struct Options {
    pub daemon: bool,
}

impl Server {
    pub async fn start(db: &TestDb) -> Server {
        Self::start_with(db, Options { daemon: true }).await
    }

    pub async fn start_with(db: &TestDb, opts: Options) -> Server {
        drydock_server::metrics::recorder();
        let store = db.connect_again().await;
        let registry = Arc::new(drydock_blueprints::registry());
        let root = tempfile::tempdir().expect("tempdir");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        if opts.daemon {
            let engine = Arc::new(Engine::new(
                store.clone(),
                registry.clone(),
                EngineConfig::new("test-daemon"),
            ));
            let cfg = DaemonConfig {
                workers: 2,
                ..Default::default()
            };
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                drydock_engine::daemon::run(engine, cfg, "test-daemon", rx).await
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(store.clone(), registry);
        let mut rx = stop_rx.clone();
        tokio::spawn(drydock_server::serve(listener, state, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        let admin = drydock_server::auth::create_token(
            &store,
            "test-admin",
            drydock_server::auth::Role::Admin,
            None,
            "test",
        )
        .await
        .expect("admin token");
        let http = Self::client_with(Some(&admin.secret));
        let mut server = Server {
            url,
            http,
            anonymous: Self::client_with(None),
            admin_token: admin.secret.clone(),
            store,
            blueprint: 0,
            stop,
            _root: root,
        };
        let (status, bp) = server
            .post(
                "/api/v1/blueprints",
                json!({
                    "name": "local",
                    "type": "host.local",
                    "fields": {
                        "root": server._root.path().to_string_lossy(),
                        "limit": 3,
                    }
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{bp}");
        server.blueprint = bp["id"].as_i64().unwrap();
        server
    }

    fn client_with(token: Option<&str>) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// A new token of `role` (clients act as `object`), and a client
    /// sending it.
    pub async fn token(
        &self,
        name: &str,
        role: drydock_server::auth::Role,
        object: Option<&str>,
    ) -> (String, reqwest::Client) {
        let t = drydock_server::auth::create_token(&self.store, name, role, object, "test")
            .await
            .expect("token");
        let client = Self::client_with(Some(&t.secret));
        (t.secret, client)
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        Self::answer(self.http.get(self.at(path)).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .post(self.at(path))
                .json(&body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        Self::answer(
            self.http
                .patch(self.at(path))
                .json(&body)
                .send()
                .await
                .expect("PATCH"),
        )
        .await
    }

    /// A lease on a host, waited for until active.
    pub async fn active_lease(&self) -> anyhow::Result<Value> {
        let (status, lease) = self.post("/api/v1/leases", json!({"type": "host"})).await;
        anyhow::ensure!(status == StatusCode::CREATED, "{status} {lease}");
        let id = lease["id"].as_i64().context("id")?;
        self.wait(id, "active").await
    }

    /// Long-poll until the lease reaches `status` (or can no longer).
    pub async fn wait(&self, id: i64, status: &str) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, lease) = self
                .get(&format!(
                    "/api/v1/leases/{id}/wait?status={status}&timeout=20s"
                ))
                .await;
            anyhow::ensure!(code == StatusCode::OK, "{code} {lease}");
            if lease["status"] == status {
                return Ok(lease);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "lease {id} did not become {status}: {lease}"
            );
            anyhow::ensure!(
                lease["status"] != "broken" && lease["status"] != "destroyed",
                "lease {id} ended {} instead of {status}: {lease}",
                lease["status"]
            );
        }
    }

    /// Error code of an error answer.
    pub fn code(body: &Value) -> &str {
        body["error"]["code"].as_str().unwrap_or("")
    }
}
