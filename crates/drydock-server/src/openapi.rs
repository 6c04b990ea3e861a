//! The OpenAPI document of the JSON API, generated from the handlers'
//! declarations and served at `/api/openapi.json`. A snapshot test keeps
//! the checked-in copy (`crates/drydock-server/openapi.json`) identical,
//! so every API change shows up in review.

use crate::AppState;
use crate::{api, conduit, error, views};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drydock API",
        description = "Lease hosts and working copies, run commands on them, release them. \
                       Every change to a lease or resource is a command for its worker.",
        license(name = "Apache-2.0")
    ),
    paths(
        api::list_leases, api::create_lease, api::get_lease, api::wait_lease,
        api::release_lease, api::renew_lease, api::run_command, api::lease_commands,
        api::list_resources, api::get_resource, api::release_resource, api::resource_commands,
        api::list_blueprints, api::create_blueprint, api::get_blueprint, api::edit_blueprint,
        api::disable_blueprint, api::enable_blueprint, api::blueprint_types,
        api::list_logs, api::list_authorizations, api::get_authorization,
        api::approve_authorization, api::decline_authorization, conduit::call,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, views::LeaseView, views::ResourceView,
        views::BlueprintView, views::LogView, views::CommandView, views::AuthorizationView,
        views::BlueprintTypeView, views::FieldView, api::OutputLine, api::BlueprintPage,
        api::AuthorizationPage, api::LeasePage, api::ResourcePage, api::LogPage,
    )),
    tags(
        (name = "leases", description = "Request, wait for, use and release leases"),
        (name = "resources", description = "What leases are on"),
        (name = "blueprints", description = "How resources are built"),
        (name = "logs", description = "What happened, oldest first"),
        (name = "authorizations", description = "Which objects may use which blueprints"),
        (name = "conduit", description = "Read-compatible search methods of Phorge's Conduit API"),
    )
)]
pub struct ApiDoc;

/// The document, with this build's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()) }))
}
