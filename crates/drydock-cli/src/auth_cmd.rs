//! `drydock authorization …` (who may use which blueprint) and
//! `drydock token …` (API and web credentials).

use crate::output::print;
use clap::Subcommand;
use drydock_engine::client::{self, Decision};
use drydock_model::AuthorizationId;
use drydock_store::Store;
use drydock_store::authorization::BlueprintAuthState;
use std::process::ExitCode;

/// Who the CLI records as the decider.
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "admin".into())
    )
}

#[derive(Subcommand, Debug)]
pub enum AuthorizationCmd {
    /// List authorizations (requested ones first).
    List {
        #[arg(long)]
        blueprint: Option<String>,
        /// The authorizing object, e.g. ci:build-plan/42.
        #[arg(long)]
        object: Option<String>,
        /// requested, authorized or declined.
        #[arg(long)]
        state: Option<String>,
    },
    /// Let the object use the blueprint; its waiting leases go ahead.
    Approve { id: i64 },
    /// Refuse (or revoke): no new lease of the object gets the blueprint.
    Decline {
        id: i64,
        /// Also release the object's live leases on the blueprint's resources.
        #[arg(long)]
        release_leases: bool,
    },
}

pub async fn authorization(
    store: &Store,
    cmd: AuthorizationCmd,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthorizationCmd::List {
            blueprint,
            object,
            state,
        } => {
            let bp = match blueprint {
                Some(b) => Some(crate::admin::resolve_blueprint(store, &b).await?),
                None => None,
            };
            let state = state
                .map(|s| s.parse::<BlueprintAuthState>().map_err(anyhow::Error::msg))
                .transpose()?;
            let mut all = store.authorizations(bp, object.as_deref()).await?;
            all.retain(|a| state.is_none_or(|s| a.blueprint_state == s));
            all.sort_by_key(|a| (a.blueprint_state != BlueprintAuthState::Requested, a.id.0));
            print(json, &all, || {
                if all.is_empty() {
                    return "no authorizations".into();
                }
                all.iter()
                    .map(|a| {
                        format!(
                            "{:>4}  blueprint {:<4} {:<11} {}{}",
                            a.id,
                            a.blueprint,
                            a.blueprint_state.as_str(),
                            a.object,
                            match (&a.decided_by, a.decided_at) {
                                (Some(by), Some(_)) => format!("  (by {by})"),
                                _ => String::new(),
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        AuthorizationCmd::Approve { id } => decide(store, id, Decision::Approve, json).await,
        AuthorizationCmd::Decline { id, release_leases } => {
            decide(store, id, Decision::Decline { release_leases }, json).await
        }
    }
}

async fn decide(
    store: &Store,
    id: i64,
    decision: Decision,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (auth, released) =
        client::decide_authorization(store, AuthorizationId(id), decision, &cli_actor()).await?;
    print(json, &auth, || {
        let mut line = format!(
            "authorization {}: {} may {}use blueprint {}",
            auth.id,
            auth.object,
            if auth.blueprint_state == BlueprintAuthState::Authorized {
                ""
            } else {
                "not "
            },
            auth.blueprint
        );
        if released > 0 {
            line += &format!("; released {released} live lease(s)");
        }
        line
    });
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed once and never again.
    Create {
        #[arg(long)]
        name: String,
        /// admin (everything), client (its own leases), viewer (read only).
        #[arg(long)]
        role: String,
        /// For clients: the authorizing object its leases are made for
        /// (default client:NAME), e.g. ci:build-plan/42.
        #[arg(long)]
        object: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it stops working at once.
    Revoke { id: i64 },
}

pub async fn token(store: &Store, cmd: TokenCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create { name, role, object } => {
            let role: drydock_server::auth::Role = role.parse().map_err(anyhow::Error::msg)?;
            if object.is_some() && role != drydock_server::auth::Role::Client {
                anyhow::bail!(
                    "--object is for client tokens (admin and viewer tokens act as themselves)"
                );
            }
            let t = drydock_server::auth::create_token(
                store,
                &name,
                role,
                object.as_deref(),
                &cli_actor(),
            )
            .await?;
            print(
                json,
                &serde_json::json!({ "token": t.info, "secret": t.secret }),
                || {
                    format!(
                        "token {} ({}, acting as {}):\n{}\nKeep it: it is shown only now.",
                        t.info.name, t.info.role, t.info.object, t.secret
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::List => {
            let all = store.tokens().await?;
            print(json, &all, || {
                if all.is_empty() {
                    return "no tokens".into();
                }
                all.iter()
                    .map(|t| {
                        format!(
                            "{:>4}  {:<20} {:<7} {}{}",
                            t.id,
                            t.name,
                            t.role,
                            t.object,
                            if t.revoked_at.is_some() {
                                "  (revoked)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        TokenCmd::Revoke { id } => {
            let t = store.revoke_token(id).await?;
            print(json, &t, || format!("token {} ({}) revoked", t.id, t.name));
            Ok(ExitCode::SUCCESS)
        }
    }
}
