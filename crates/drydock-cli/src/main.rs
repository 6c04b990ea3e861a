//! The `drydock` binary: command-line parsing and wiring only. Every
//! command converts its flags into plain values and calls the engine's
//! client functions or the store; no lifecycle logic lives here.

mod admin;
mod auth_cmd;
mod bench;
mod config;
mod exec_cmd;
mod lease_cmd;
mod output;
mod serve;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drydock_store::{Store, redact_url};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "drydock",
    version,
    about = "Drydock: a resource broker that hands out leases on hosts and working copies"
)]
struct Cli {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB
    /// [default: sqlite://drydock.db].
    #[arg(long, global = true, env = "DRYDOCK_DATABASE_URL")]
    database: Option<String>,

    /// Settings file (TOML); flags and environment variables override it.
    #[arg(long, global = true, env = "DRYDOCK_CONFIG")]
    config: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start Drydock: HTTP server, web UI and daemon in one process.
    Up(UpArgs),
    /// Run the HTTP server (API, web UI, metrics) without a daemon.
    Serve(serve::ServeArgs),
    /// Measure the broker (latency, throughput, memory) on a scratch database.
    Bench(bench::BenchArgs),
    /// Check a settings file and print the settings in force.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Apply pending schema migrations and report the schema version.
    Migrate,
    /// Run update workers and garbage collection until SIGTERM or Ctrl-C.
    Daemon(admin::DaemonArgs),
    /// Create, list, show, edit, disable and enable blueprints.
    #[command(subcommand)]
    Blueprint(admin::BlueprintCmd),
    /// Request a lease and wait until it is active (or list/show leases).
    Lease(lease_cmd::LeaseArgs),
    /// List or show resources.
    #[command(subcommand)]
    Resource(admin::ResourceCmd),
    /// Ask leases to be released (through the command queue).
    ReleaseLease(IdArgs),
    /// Ask resources to be released, with their leases.
    ReleaseResource(IdArgs),
    /// Move a lease's expiry (through the command queue).
    RenewLease(admin::RenewArgs),
    /// Run one update pass over leases in the foreground.
    UpdateLease(IdArgs),
    /// Run one update pass over resources in the foreground.
    UpdateResource(IdArgs),
    /// Ask idle active resources to be reclaimed.
    Reclaim(admin::ReclaimArgs),
    /// Show log events, oldest first.
    Log(admin::LogArgs),
    /// Run a command on an active lease: drydock command --lease ID -- ARGV...
    Command(exec_cmd::CommandArgs),
    /// Lease, run a command, release: drydock run --type host -- ARGV...
    Run(exec_cmd::RunArgs),
    /// Read, write and list files in an active lease's directory.
    #[command(subcommand)]
    File(exec_cmd::FileCmd),
    /// List, approve and decline authorizations (who may use which blueprint).
    #[command(subcommand)]
    Authorization(auth_cmd::AuthorizationCmd),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(auth_cmd::TokenCmd),
    /// Store and list secrets (SSH private keys).
    #[command(subcommand)]
    Credential(exec_cmd::CredentialCmd),
}

#[derive(Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    serve: serve::ServeArgs,
    #[command(flatten)]
    daemon: admin::DaemonArgs,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Validate a settings file (default: --config) and print the result.
    Check { path: Option<PathBuf> },
}

#[derive(Args, Debug)]
struct IdArgs {
    /// Object id (repeatable).
    #[arg(long = "id", required = true)]
    ids: Vec<i64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRYDOCK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drydock: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drydock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Open the database named on the command line, migrating it if needed.
pub(crate) async fn open(url: &str) -> anyhow::Result<Store> {
    Store::open(url)
        .await
        .with_context(|| format!("opening {}", redact_url(url)))
}

/// The settings in force: defaults, the `--config` file, then flags and
/// environment variables.
fn settings(cli: &Cli, file: Option<&std::path::Path>) -> anyhow::Result<config::Settings> {
    let loaded = file.map(config::FileConfig::load).transpose()?;
    let mut o = config::Overrides {
        database: cli.database.clone(),
        ..Default::default()
    };
    match &cli.command {
        Cmd::Up(a) => {
            o.listen = a.serve.listen.clone();
            a.daemon.apply(&mut o);
        }
        Cmd::Serve(a) => o.listen = a.listen.clone(),
        Cmd::Daemon(a) => a.apply(&mut o),
        _ => {}
    }
    config::resolve(loaded.as_ref(), &o)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    if let Cmd::Config(ConfigCmd::Check { path }) = &cli.command {
        let Some(path) = path.as_ref().or(cli.config.as_ref()) else {
            anyhow::bail!("give a file: drydock config check PATH (or --config PATH)");
        };
        let s = settings(&cli, Some(path))?;
        let shown = config::Settings {
            database: redact_url(&s.database),
            ..s
        };
        output::print(json, &shown, || {
            format!(
                "{}: OK\n  database = {}\n  server.listen = {}\n  daemon.workers = {}\n  daemon.claim_ttl = {}\n  daemon.reclaim_grace = {}\n  daemon.retention = {}",
                path.display(),
                shown.database,
                shown.listen,
                shown.workers,
                humantime::format_duration(shown.claim_ttl),
                humantime::format_duration(shown.reclaim_grace),
                humantime::format_duration(shown.retention),
            )
        });
        return Ok(ExitCode::SUCCESS);
    }
    let settings = settings(&cli, cli.config.as_deref())?;
    let db = settings.database.as_str();
    match cli.command {
        Cmd::Config(_) => unreachable!("handled above"),
        Cmd::Up(args) => serve::up(&open(db).await?, &settings, &args.serve).await,
        Cmd::Serve(args) => serve::serve(&open(db).await?, &settings, &args).await,
        Cmd::Migrate => {
            let store = Store::connect(db)
                .await
                .with_context(|| format!("opening {}", redact_url(db)))?;
            let applied = store.migrate().await?;
            let version = store.applied_migrations().await?;
            output::print(
                json,
                &serde_json::json!({
                    "database": redact_url(db),
                    "dialect": store.dialect().as_str(),
                    "applied": applied,
                    "schema_version": version,
                }),
                || {
                    format!(
                        "{} ({}): applied {applied} migration(s); schema version {version}",
                        redact_url(db),
                        store.dialect().as_str()
                    )
                },
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Daemon(_) => admin::daemon(&open(db).await?, &settings).await,
        Cmd::Blueprint(cmd) => admin::blueprint(&open(db).await?, cmd, json).await,
        Cmd::Lease(args) => lease_cmd::lease(&open(db).await?, args, json).await,
        Cmd::Resource(cmd) => admin::resource(&open(db).await?, cmd, json).await,
        Cmd::ReleaseLease(ids) => admin::release(&open(db).await?, true, &ids.ids, json).await,
        Cmd::ReleaseResource(ids) => admin::release(&open(db).await?, false, &ids.ids, json).await,
        Cmd::RenewLease(args) => admin::renew(&open(db).await?, args, json).await,
        Cmd::UpdateLease(ids) => admin::update(&open(db).await?, true, &ids.ids, json).await,
        Cmd::UpdateResource(ids) => admin::update(&open(db).await?, false, &ids.ids, json).await,
        Cmd::Reclaim(args) => admin::reclaim(&open(db).await?, args, json).await,
        Cmd::Log(args) => admin::log(&open(db).await?, args, json).await,
        Cmd::Command(args) => exec_cmd::command(&open(db).await?, args).await,
        Cmd::Run(args) => exec_cmd::run(&open(db).await?, args, json).await,
        Cmd::File(cmd) => exec_cmd::file(&open(db).await?, cmd, json).await,
        Cmd::Credential(cmd) => exec_cmd::credential(&open(db).await?, cmd, json).await,
        Cmd::Authorization(cmd) => auth_cmd::authorization(&open(db).await?, cmd, json).await,
        Cmd::Token(cmd) => auth_cmd::token(&open(db).await?, cmd, json).await,
        Cmd::Bench(args) => bench::bench(&open(db).await?, db, args).await,
    }
}
