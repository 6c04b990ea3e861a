//! `drydock command` (run a command on a leased resource), `drydock run`
//! (lease, run, release — the CI use in one line) and `drydock credential`.

use crate::admin::pairs;
use crate::lease_cmd::{InProcess, RequestArgs, acquire};
use crate::output::print;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use drydock_engine::blueprint::{CommandSpec, InterfaceError};
use drydock_engine::client;
use drydock_model::LeaseId;
use drydock_store::Store;
use secrecy::SecretString;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct CommandFlags {
    /// Working directory, relative to the lease's directory.
    #[arg(long = "cd")]
    cd: Option<String>,
    /// Environment variable KEY=VALUE for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Kill the command after this long.
    #[arg(long = "command-timeout", value_parser = humantime::parse_duration)]
    command_timeout: Option<Duration>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

impl CommandFlags {
    fn spec(&self) -> anyhow::Result<CommandSpec> {
        let env = pairs(&self.env, "--env")?
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let spec = CommandSpec {
            argv: self.argv.clone(),
            cwd: self.cd.clone(),
            env,
            timeout: self.command_timeout,
        };
        spec.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(spec)
    }
}

#[derive(Args, Debug)]
pub struct CommandArgs {
    #[arg(long)]
    lease: i64,
    #[command(flatten)]
    flags: CommandFlags,
}

/// Run the command on the lease, streaming its output; its exit code.
async fn run_on(store: &Store, lease: LeaseId, flags: &CommandFlags) -> anyhow::Result<ExitCode> {
    let spec = flags.spec()?;
    let registry = drydock_blueprints::registry();
    let iface = client::command_interface(store, &registry, lease).await?;
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let result = tokio::select! {
        r = iface.run(&spec, &mut out, &mut err) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("drydock: interrupted");
            return Ok(ExitCode::from(130));
        }
    };
    use tokio::io::AsyncWriteExt;
    let _ = out.flush().await;
    match result {
        Ok(code) => Ok(ExitCode::from(
            u8::try_from(code.clamp(0, 255)).unwrap_or(255),
        )),
        Err(InterfaceError::TimedOut(d)) => {
            eprintln!(
                "drydock: command timed out after {}",
                humantime::format_duration(d)
            );
            Ok(ExitCode::from(124))
        }
        Err(e) => bail!("{e}"),
    }
}

pub async fn command(store: &Store, args: CommandArgs) -> anyhow::Result<ExitCode> {
    run_on(store, LeaseId(args.lease), &args.flags).await
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    request: RequestArgs,
    #[command(flatten)]
    flags: CommandFlags,
}

/// Lease, run the command, and release the lease whatever happens.
pub async fn run(store: &Store, args: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    args.flags.spec()?;
    let workers = InProcess::start_if_no_daemon(store).await?;
    let code = match acquire(store, &args.request, &workers, json).await {
        Ok(Ok(lease)) => {
            let result = run_on(store, lease.id, &args.flags).await;
            let released = workers.release(store, lease.id, "cli:run").await;
            if let Err(e) = &released {
                eprintln!("drydock: releasing lease {} failed: {e:#}", lease.id);
            }
            match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("drydock: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Err(code)) => code,
        Err(e) => {
            workers.stop().await;
            return Err(e);
        }
    };
    workers.stop().await;
    Ok(code)
}

#[derive(Subcommand, Debug)]
pub enum CredentialCmd {
    /// Store an SSH private key (from a file, or `-` for stdin); prints its id.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "ssh-key-file")]
        ssh_key_file: String,
    },
    /// List credentials (never their secrets).
    List,
}

pub async fn credential(store: &Store, cmd: CredentialCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CredentialCmd::Create { name, ssh_key_file } => {
            let text = if ssh_key_file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), 64 * 1024),
                    &mut s,
                )
                .context("reading the key from stdin")?;
                s
            } else {
                std::fs::read_to_string(&ssh_key_file)
                    .with_context(|| format!("reading {ssh_key_file}"))?
            };
            let by = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "admin".into())
            );
            let c = store
                .create_ssh_credential(&name, &SecretString::from(text), &by)
                .await?;
            print(json, &c, || c.id.to_string());
        }
        CredentialCmd::List => {
            let all = store.credentials().await?;
            print(json, &all, || {
                let mut lines = vec![format!(
                    "{:>4}  {:<20}  {:<8}  created by",
                    "id", "name", "kind"
                )];
                lines.extend(all.iter().map(|c| {
                    format!(
                        "{:>4}  {:<20}  {:<8}  {}",
                        c.id, c.name, c.kind, c.created_by
                    )
                }));
                lines.join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Largest file `drydock file read` returns.
const MAX_READ: u64 = 64 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum FileCmd {
    /// Print a file of the lease's directory to stdout.
    Read {
        #[arg(long)]
        lease: i64,
        path: String,
    },
    /// Write stdin (or --from FILE) to a file of the lease's directory.
    Write {
        #[arg(long)]
        lease: i64,
        path: String,
        #[arg(long)]
        from: Option<String>,
    },
    /// List a directory of the lease's directory.
    List {
        #[arg(long)]
        lease: i64,
        #[arg(default_value = "")]
        path: String,
    },
}

pub async fn file(store: &Store, cmd: FileCmd, json: bool) -> anyhow::Result<ExitCode> {
    let registry = drydock_blueprints::registry();
    let lease = match &cmd {
        FileCmd::Read { lease, .. }
        | FileCmd::Write { lease, .. }
        | FileCmd::List { lease, .. } => LeaseId(*lease),
    };
    let fs = client::filesystem_interface(store, &registry, lease).await?;
    match cmd {
        FileCmd::Read { path, .. } => {
            let data = fs.read(&path, MAX_READ).await?;
            use std::io::Write;
            std::io::stdout().write_all(&data)?;
        }
        FileCmd::Write { path, from, .. } => {
            let data = match from {
                Some(f) => std::fs::read(&f).with_context(|| format!("reading {f}"))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(std::io::stdin(), MAX_READ + 1),
                        &mut buf,
                    )?;
                    if buf.len() as u64 > MAX_READ {
                        bail!("input is larger than {MAX_READ} bytes");
                    }
                    buf
                }
            };
            fs.write(&path, &data).await?;
            if !json {
                eprintln!("Wrote {} bytes to {path}", data.len());
            }
        }
        FileCmd::List { path, .. } => {
            let entries = fs.list(&path).await?;
            print(json, &entries, || {
                entries
                    .iter()
                    .map(|e| format!("{}{}  {}", e.name, if e.dir { "/" } else { "" }, e.size))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
