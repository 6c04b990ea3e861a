//! Drydock's HTTP face, one axum router:
//!
//! - `/api/v1/...`: the JSON API ([`api`]) for client programs, described
//!   by the OpenAPI document at `/api/openapi.json` ([`openapi`]);
//! - `/api/drydock.*.search`, `/api/conduit.query`: read-compatible search
//!   methods of Phorge's Conduit API ([`conduit`]);
//! - `/`, `/leases`, ...: the server-rendered web UI ([`web`]);
//! - `/metrics`, `/healthz`, `/readyz` ([`metrics`]).
//!
//! Handlers only read the store and call the engine's client functions:
//! every change to a lease or resource is a command for its worker.

pub mod api;
mod api_stream;
pub mod auth;
pub mod conduit;
pub mod error;
pub mod metrics;
pub mod openapi;
mod views;
// Web handlers answer with a whole page, errors included: an `Err` *is* the
// response to send, so its size is no concern.
#[allow(clippy::result_large_err)]
pub mod web;

use axum::Router;
use drydock_engine::blueprint::Registry;
use drydock_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body accepted, in bytes (JSON API, Conduit, forms).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    /// Failed authentications per address.
    pub limiter: Arc<auth::Limiter>,
}

impl AppState {
    pub fn new(store: Store, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            limiter: Arc::default(),
        }
    }
}

/// The whole application: API, Conduit methods, web UI and metrics.
pub fn app(state: AppState) -> Router {
    let token = axum::middleware::from_fn_with_state(state.clone(), auth::require_token);
    Router::new()
        .nest("/api/v1", api::routes().route_layer(token))
        .merge(conduit::routes())
        .merge(openapi::routes())
        .merge(metrics::routes(state.clone()))
        .merge(web::routes(state.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// Serve `app` on `listener` until `shutdown` resolves; requests in flight
/// finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
