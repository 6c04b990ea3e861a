//! `drydock serve` (the HTTP server) and `drydock up` (server and daemon in
//! one process, with a ready `host.local` blueprint on a fresh database).

use crate::admin::{daemon_id, daemon_parts, stop_on_signal};
use crate::config::Settings;
use anyhow::{Context, bail};
use clap::Args;
use drydock_engine::client;
use drydock_server::AppState;
use drydock_store::Store;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:6060]. Port 0 picks a free port.
    #[arg(long, env = "DRYDOCK_LISTEN")]
    pub listen: Option<String>,
    /// Serve plain HTTP on a non-loopback address. Only behind a proxy that
    /// terminates TLS: tokens would otherwise cross the network in clear.
    #[arg(long)]
    pub allow_plain_http: bool,
}

/// Drydock serves plain HTTP; tokens must not cross a network in clear. So
/// a non-loopback address needs an explicit statement that TLS is
/// terminated in front.
fn check_listen(addr: SocketAddr, allow_plain_http: bool) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && !allow_plain_http {
        bail!(
            "refusing to listen on {addr}: Drydock serves plain HTTP, so API tokens and session \
             cookies would cross the network unencrypted. Listen on a loopback address \
             (127.0.0.1 or ::1) behind a TLS-terminating proxy, or, if that proxy reaches Drydock \
             over a network you trust, pass --allow-plain-http."
        );
    }
    Ok(())
}

async fn bind(addr: SocketAddr, allow_plain_http: bool) -> anyhow::Result<tokio::net::TcpListener> {
    check_listen(addr, allow_plain_http)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

fn state(store: &Store) -> AppState {
    // Counters and histograms of this process go to /metrics.
    drydock_server::metrics::recorder();
    AppState::new(store.clone(), Arc::new(drydock_blueprints::registry()))
}

async fn until_stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

pub async fn serve(
    store: &Store,
    settings: &Settings,
    args: &ServeArgs,
) -> anyhow::Result<ExitCode> {
    let listener = bind(settings.listen, args.allow_plain_http).await?;
    let addr = listener.local_addr()?;
    say(&format!(
        "Drydock is serving on http://{addr}/ (API: http://{addr}/api/v1/)\n"
    ));
    if store
        .live_daemons(drydock_engine::daemon::ALIVE_WITHIN)
        .await?
        .is_empty()
    {
        eprintln!(
            "drydock serve: no daemon is running on this database; leases will wait until one \
             starts (`drydock daemon`, or use `drydock up` for both in one process)"
        );
    }
    let stop = stop_on_signal("serve");
    drydock_server::serve(listener, state(store), until_stopped(stop)).await?;
    Ok(ExitCode::SUCCESS)
}

/// Print to stdout, ignoring a closed pipe (`drydock up | head -1` must not
/// take the broker down).
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Name of the blueprint `drydock up` offers on a fresh database.
pub const STARTER_BLUEPRINT: &str = "local";

/// On a database without blueprints, create a `host.local` one leasing
/// directories under `./drydock-leases`, so a first lease works at once.
async fn seed(store: &Store) -> anyhow::Result<Option<i64>> {
    if !store.blueprints(None).await?.is_empty() {
        return Ok(None);
    }
    let root = std::env::current_dir()?.join("drydock-leases");
    let mut fields = Map::new();
    fields.insert(
        "root".into(),
        Value::String(root.to_string_lossy().into_owned()),
    );
    fields.insert("limit".into(), Value::String("4".into()));
    let bp = client::create_blueprint(
        store,
        &drydock_blueprints::registry(),
        "drydock up",
        STARTER_BLUEPRINT,
        "host.local",
        &fields,
    )
    .await?;
    Ok(Some(bp.id.0))
}

/// On a database without tokens, an admin token for the local user, whose
/// secret is printed once.
async fn first_token(store: &Store) -> anyhow::Result<Option<String>> {
    if !store.tokens().await?.is_empty() {
        return Ok(None);
    }
    let t = drydock_server::auth::create_token(
        store,
        "local-admin",
        drydock_server::auth::Role::Admin,
        None,
        "drydock up",
    )
    .await?;
    Ok(Some(t.secret))
}

pub async fn up(store: &Store, settings: &Settings, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let listener = bind(settings.listen, args.allow_plain_http).await?;
    let addr = listener.local_addr()?;
    let seeded = seed(store).await?;
    let token = first_token(store).await?;
    let (engine, cfg) = daemon_parts(store, settings);
    let id = daemon_id();
    let stop = stop_on_signal("up");
    let daemon = {
        let stop = stop.clone();
        let id = id.clone();
        tokio::spawn(async move { drydock_engine::daemon::run(engine, cfg, &id, stop).await })
    };
    let server = tokio::spawn(drydock_server::serve(
        listener,
        state(store),
        until_stopped(stop.clone()),
    ));
    let url = format!("http://{addr}");
    let mut banner = format!(
        "Drydock is up: {url}/\n  database: {}\n",
        drydock_store::redact_url(&settings.database)
    );
    if let Some(bp) = seeded {
        banner += &format!(
            "  created blueprint {bp} ({STARTER_BLUEPRINT}, host.local): lease directories on this machine\n"
        );
    }
    match &token {
        Some(secret) => {
            banner +=
                &format!("  admin token (shown once; log in to the web UI with it): {secret}\n");
        }
        None => {
            banner +=
                "  tokens: drydock token list / drydock token create --name NAME --role admin\n"
        }
    }
    banner += &format!(
        "  lease a host:  curl -s -X POST {url}/api/v1/leases -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' -d '{{\"type\": \"host\"}}'\n  \
         API document:  {url}/api/openapi.json    metrics: {url}/metrics\nStop with Ctrl-C.\n"
    );
    say(&banner);
    let served = server.await.context("the server task failed")?;
    let ran = daemon.await.context("the daemon task failed")?;
    served.context("serving HTTP")?;
    ran.context("running the daemon")?;
    Ok(ExitCode::SUCCESS)
}
