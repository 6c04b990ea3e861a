//! A real headless Chromium, driven through ChromeDriver (the W3C WebDriver
//! protocol over loopback HTTP), clicks through the web UI: the lease list,
//! a lease, its Release button, and watches it reach Destroyed. A
//! screenshot is left in `target/browser-artifacts/` (not in the repo).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them the test is skipped, except under `CI=true`.

use crate::harness::Server;
use anyhow::{Context, bail, ensure};
use drydock_testkit::{Backend, TestDb, run};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> anyhow::Result<Option<Driver>> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                bail!(
                    "{CHROMEDRIVER} or {CHROMIUM} missing under CI=true (apt install chromium chromium-driver)"
                );
            }
            eprintln!("\n!!! SKIPPING browser test: install chromium and chromium-driver\n");
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile = tempfile::tempdir()?;
        let mut d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                break;
            }
            ensure!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                    "--window-size=1200,900",
                    format!("--user-data-dir={}", d._profile.path().display()),
                ]
            }
        }}});
        let v = d.call(reqwest::Method::POST, "/session", caps).await?;
        d.session = v["sessionId"].as_str().context("session id")?.to_owned();
        Ok(Some(d))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut r = self.http.request(method, url);
        if !body.is_null() {
            r = r.json(&body);
        }
        let v: Value = r.send().await?.json().await?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("webdriver {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await?;
        Ok(())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        // The W3C element reference is the object's only value.
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no element {css}"))
    }

    /// Wait until an element is on the page (a click's navigation may still
    /// be under way when the click returns).
    async fn wait_for(&self, css: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.find(css).await {
                Ok(e) => return Ok(e),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.wait_for(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await?;
        Ok(())
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        let e = self.find(css).await?;
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{e}/text"),
                Value::Null,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    async fn screenshot(&self, name: &str) -> anyhow::Result<std::path::PathBuf> {
        let v = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v.as_str().context("screenshot data")?,
        )?;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-artifacts");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clicking_release_in_chromium_destroys_the_lease() {
    run(Backend::Sqlite, async |db: &TestDb| {
        let Some(driver) = Driver::start().await? else {
            return Ok(());
        };
        let s = Server::start(db).await;
        let lease = s.active_lease().await?;
        let id = lease["id"].as_i64().unwrap();
        // Log in with the admin token, as a person would.
        driver.goto(&s.at("/leases")).await?;
        let field = driver.wait_for("#token").await?;
        driver
            .call(
                reqwest::Method::POST,
                &format!("/element/{field}/value"),
                json!({ "text": s.admin_token }),
            )
            .await?;
        driver.click("#login").await?;
        // Logged in: the overview (only shown with a session).
        driver.wait_for("#overview").await?;
        driver.goto(&s.at("/leases")).await?;
        driver.click(&format!("a[href=\"/leases/{id}\"]")).await?;
        driver.wait_for("#status").await?;
        ensure!(driver.text("#status").await? == "Active");
        driver.click("#release").await?;
        // The page refreshes itself while the release is under way.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match driver.text("#status").await {
                Ok(t) if t == "Destroyed" => break,
                // Between reloads the element may be gone or stale.
                Ok(_) | Err(_) => {}
            }
            if Instant::now() > deadline {
                let shot = driver.screenshot("lease-release-timeout.png").await?;
                bail!(
                    "the lease page never showed Destroyed (screenshot: {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let shot = driver.screenshot("lease-released.png").await?;
        eprintln!("screenshot: {}", shot.display());
        let released = s.store.lease(drydock_model::LeaseId(id)).await?;
        ensure!(released.status == drydock_model::LeaseStatus::Destroyed);
        let commands = s.store.commands_for(released.object()).await?;
        ensure!(
            commands.iter().any(|c| c.author == "web:test-admin"),
            "released from the web UI by the logged-in token: {commands:?}"
        );
        let _ = driver.call(reqwest::Method::DELETE, "", Value::Null).await;
        Ok(())
    })
    .await
}
