//! The `drydock` binary: command-line parsing and wiring only. Every
//! command converts its flags into plain values and calls the engine's
//! client functions or the store; no lifecycle logic lives here.

mod admin;
mod exec_cmd;
mod lease_cmd;
mod output;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drydock_store::{DEFAULT_DATABASE_URL, Store, redact_url};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "drydock",
    version,
    about = "Drydock: a resource broker that hands out leases on hosts and working copies"
)]
struct Cli {
    /// Database URL: sqlite://PATH (embedded default) or postgres://USER@HOST:PORT/DB.
    #[arg(long, global = true, env = "DRYDOCK_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database: String,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
    /// Store and list secrets (SSH private keys).
    #[command(subcommand)]
    Credential(exec_cmd::CredentialCmd),
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Cmd::Migrate => {
            let store = Store::connect(&cli.database)
                .await
                .with_context(|| format!("opening {}", redact_url(&cli.database)))?;
            let applied = store.migrate().await?;
            let version = store.applied_migrations().await?;
            output::print(
                json,
                &serde_json::json!({
                    "database": redact_url(&cli.database),
                    "dialect": store.dialect().as_str(),
                    "applied": applied,
                    "schema_version": version,
                }),
                || {
                    format!(
                        "{} ({}): applied {applied} migration(s); schema version {version}",
                        redact_url(&cli.database),
                        store.dialect().as_str()
                    )
                },
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Daemon(args) => admin::daemon(&open(&cli.database).await?, args).await,
        Cmd::Blueprint(cmd) => admin::blueprint(&open(&cli.database).await?, cmd, json).await,
        Cmd::Lease(args) => lease_cmd::lease(&open(&cli.database).await?, args, json).await,
        Cmd::Resource(cmd) => admin::resource(&open(&cli.database).await?, cmd, json).await,
        Cmd::ReleaseLease(ids) => {
            admin::release(&open(&cli.database).await?, true, &ids.ids, json).await
        }
        Cmd::ReleaseResource(ids) => {
            admin::release(&open(&cli.database).await?, false, &ids.ids, json).await
        }
        Cmd::RenewLease(args) => admin::renew(&open(&cli.database).await?, args, json).await,
        Cmd::UpdateLease(ids) => {
            admin::update(&open(&cli.database).await?, true, &ids.ids, json).await
        }
        Cmd::UpdateResource(ids) => {
            admin::update(&open(&cli.database).await?, false, &ids.ids, json).await
        }
        Cmd::Reclaim(args) => admin::reclaim(&open(&cli.database).await?, args, json).await,
        Cmd::Log(args) => admin::log(&open(&cli.database).await?, args, json).await,
        Cmd::Command(args) => exec_cmd::command(&open(&cli.database).await?, args).await,
        Cmd::Run(args) => exec_cmd::run(&open(&cli.database).await?, args, json).await,
        Cmd::File(cmd) => exec_cmd::file(&open(&cli.database).await?, cmd, json).await,
        Cmd::Credential(cmd) => exec_cmd::credential(&open(&cli.database).await?, cmd, json).await,
    }
}
