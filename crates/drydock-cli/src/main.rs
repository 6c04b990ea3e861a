//! The `drydock` binary: command-line parsing and wiring only. Every
//! command converts its flags into plain values and calls the store or
//! engine; no lifecycle logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply pending schema migrations and report the schema version.
    Migrate,
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate => {
            let store = Store::connect(&cli.database)
                .await
                .with_context(|| format!("opening {}", redact_url(&cli.database)))?;
            let applied = store.migrate().await?;
            let version = store.applied_migrations().await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "database": redact_url(&cli.database),
                        "dialect": store.dialect().as_str(),
                        "applied": applied,
                        "schema_version": version,
                    })
                );
            } else {
                println!(
                    "{} ({}): applied {applied} migration(s); schema version {version}",
                    redact_url(&cli.database),
                    store.dialect().as_str()
                );
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}
