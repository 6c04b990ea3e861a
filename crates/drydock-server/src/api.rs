//! The JSON API under `/api/v1`: everything a client program needs to
//! lease, use and release resources, and to manage blueprints. Lists are
//! newest first with a cursor (`next`, passed back as `before`); logs are
//! oldest first (`next` passed back as `after`). Every change to a lease or
//! resource is a command to its worker, answered `202 Accepted`.

use crate::error::{ApiError, ApiResult};
use crate::views::*;
use crate::{AppState, views};
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drydock_engine::ADMIN;
use drydock_engine::blueprint::CommandSpec;
use drydock_engine::client::{self, LeaseRequest};
use drydock_model::{BlueprintId, LeaseId, LeaseStatus, LogId, ResourceId, ResourceStatus};
use drydock_store::lease::LeaseFilter;
use drydock_store::log::LogFilter;
use drydock_store::now_ms;
use drydock_store::resource::ResourceFilter;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// The authenticated caller (set by [`crate::auth::require_token`]).
pub type Caller = axum::Extension<crate::auth::Principal>;

/// A lease the caller may see: a client sees only its own; another's
/// answers exactly like a lease that does not exist.
async fn visible_lease(
    s: &AppState,
    caller: &crate::auth::Principal,
    id: LeaseId,
) -> ApiResult<drydock_store::lease::Lease> {
    let lease = s.store.lease(id).await?;
    if caller.role == crate::auth::Role::Client && lease.authorizing != caller.object {
        return Err(drydock_store::StoreError::NotFound {
            what: "lease",
            id: id.to_string(),
        }
        .into());
    }
    Ok(lease)
}

/// A JSON body whose rejection is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A query string whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A numeric id in the path; anything else is a 400 naming the problem.
pub struct ApiId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for ApiId {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let axum::extract::Path(text) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
        match text.parse::<i64>() {
            Ok(id) if id > 0 => Ok(ApiId(id)),
            _ => Err(ApiError::bad_request(format!(
                "invalid id {text:?}: expected a positive integer"
            ))),
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/leases", get(list_leases).post(create_lease))
        .route("/leases/{id}", get(get_lease))
        .route("/leases/{id}/wait", get(wait_lease))
        .route("/leases/{id}/release", post(release_lease))
        .route("/leases/{id}/renew", post(renew_lease))
        .route("/leases/{id}/command", post(run_command))
        .route("/leases/{id}/commands", get(lease_commands))
        .route("/resources", get(list_resources))
        .route("/resources/{id}", get(get_resource))
        .route("/resources/{id}/release", post(release_resource))
        .route("/resources/{id}/commands", get(resource_commands))
        .route("/blueprints", get(list_blueprints).post(create_blueprint))
        .route("/blueprints/{id}", get(get_blueprint).patch(edit_blueprint))
        .route("/blueprints/{id}/disable", post(disable_blueprint))
        .route("/blueprints/{id}/enable", post(enable_blueprint))
        .route("/blueprint-types", get(blueprint_types))
        .route("/logs", get(list_logs))
        .route("/authorizations", get(list_authorizations))
        .route("/authorizations/{id}", get(get_authorization))
        .route("/authorizations/{id}/approve", post(approve_authorization))
        .route("/authorizations/{id}/decline", post(decline_authorization))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no API route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Parse a comma-separated status list.
fn statuses<T: std::str::FromStr<Err = E>, E: std::fmt::Display>(
    text: &Option<String>,
) -> ApiResult<Vec<T>> {
    text.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .collect()
}

fn limit(limit: Option<i64>, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(100.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} must be between 1 and {max}"
        ))),
    }
}

fn duration(what: &str, text: &str, max: Duration) -> ApiResult<Duration> {
    let d = humantime::parse_duration(text)
        .map_err(|e| ApiError::bad_request(format!("{what} {text:?}: {e} (e.g. 30s, 5m, 2h)")))?;
    if d.is_zero() || d > max {
        return Err(ApiError::bad_request(format!(
            "{what} {text:?} must be more than 0 and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

// ---------------------------------------------------------------- leases

/// Filters for the lease list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// Comma-separated statuses (`pending,acquired,active`).
    pub status: Option<String>,
    /// Only leases on this resource.
    pub resource: Option<i64>,
    /// Only leases of this owner.
    pub owner: Option<String>,
    /// Cursor: only leases with a smaller id (the `next` of the last page).
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of leases, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasePage {
    pub data: Vec<LeaseView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/leases", tag = "leases", params(LeaseQuery),
    responses((status = 200, body = LeasePage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_leases(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiQuery(q): ApiQuery<LeaseQuery>,
) -> ApiResult<Json<LeasePage>> {
    let limit = limit(q.limit, 1000)?;
    let leases = s
        .store
        .leases(&LeaseFilter {
            statuses: statuses::<LeaseStatus, _>(&q.status)?,
            resources: q.resource.map(ResourceId).into_iter().collect(),
            owners: q.owner.into_iter().collect(),
            authorizing: (caller.role == crate::auth::Role::Client).then(|| caller.object.clone()),
            before: q.before.map(LeaseId),
            limit: Some(limit),
            ..Default::default()
        })
        .await?;
    let next = next_cursor(&leases, limit, |l| l.id.0);
    Ok(Json(LeasePage {
        data: leases.iter().map(LeaseView::from).collect(),
        next,
    }))
}

/// A lease request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLease {
    /// Resource type: `host` or `working-copy`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// What the resource must be (for a working copy: `repository`,
    /// `commit` or `ref`, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// Blueprints allowed to satisfy it, by id or name (default: any).
    #[serde(default)]
    pub blueprints: Vec<IdOrName>,
    /// Higher is served first (default 0).
    #[serde(default)]
    pub priority: i64,
    /// Release the lease at this time (Unix epoch ms)...
    pub until: Option<i64>,
    /// ...or after this long (`30m`, `2h`).
    pub ttl: Option<String>,
    /// Who holds the lease, for your own bookkeeping (default `api`).
    pub owner: Option<String>,
}

/// A blueprint id or name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IdOrName {
    Id(i64),
    Name(String),
}

impl IdOrName {
    fn text(&self) -> String {
        match self {
            Self::Id(i) => i.to_string(),
            Self::Name(n) => n.clone(),
        }
    }
}

const MAX_TEXT: usize = 256;

fn short_text(what: &str, text: &str) -> ApiResult<()> {
    if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_TEXT} bytes of printable text"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/leases", tag = "leases", request_body = CreateLease,
    responses((status = 201, description = "Queued; wait for it with /wait", body = LeaseView),
              (status = 400, body = crate::error::ErrorBody)))]
pub async fn create_lease(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiJson(body): ApiJson<CreateLease>,
) -> ApiResult<(StatusCode, Json<LeaseView>)> {
    short_text("type", &body.resource_type)?;
    if let Some(owner) = &body.owner {
        short_text("owner", owner)?;
    }
    let until = match (&body.until, &body.ttl) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give until or ttl, not both"));
        }
        (Some(u), None) => Some(*u),
        (None, Some(ttl)) => Some(
            now_ms()
                + drydock_store::ms(duration(
                    "ttl",
                    ttl,
                    Duration::from_millis(client::MAX_LEASE_MS as u64),
                )?),
        ),
        (None, None) => None,
    };
    let lease = client::queue_lease(
        &s.store,
        &s.registry,
        &LeaseRequest {
            resource_type: body.resource_type,
            blueprints: body.blueprints.iter().map(IdOrName::text).collect(),
            // A client always acts as its own authorizing object; an
            // administrator's leases are the administrator's.
            authorizing: match caller.role {
                crate::auth::Role::Client => caller.object.clone(),
                _ => ADMIN.into(),
            },
            owner: Some(body.owner.unwrap_or_else(|| caller.actor())),
            attributes: body.attributes,
            priority: body.priority,
            until,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(LeaseView::from(&lease))))
}

#[utoipa::path(get, path = "/api/v1/leases/{id}", tag = "leases",
    params(("id" = i64, Path, description = "Lease id")),
    responses((status = 200, body = LeaseView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_lease(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<Json<LeaseView>> {
    Ok(Json(LeaseView::from(
        &visible_lease(&s, &caller, LeaseId(id)).await?,
    )))
}

/// How long to wait and for what.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// The status to wait for (default `active`). The wait also ends when
    /// the lease can no longer reach it (broken, or already past it).
    pub status: Option<String>,
    /// Longest wait, at most 60s (default 30s).
    pub timeout: Option<String>,
}

/// Order of the lifecycle, to tell whether a lease is already past a status.
fn rank(s: LeaseStatus) -> u8 {
    match s {
        LeaseStatus::Pending => 0,
        LeaseStatus::Acquired => 1,
        LeaseStatus::Active => 2,
        LeaseStatus::Released | LeaseStatus::Broken => 3,
        LeaseStatus::Destroyed => 4,
    }
}

#[utoipa::path(get, path = "/api/v1/leases/{id}/wait", tag = "leases",
    params(("id" = i64, Path, description = "Lease id"), WaitQuery),
    responses((status = 200, description = "The lease when it reached the status, could no longer reach it, or the timeout passed (check `status`)", body = LeaseView),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn wait_lease(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Json<LeaseView>> {
    visible_lease(&s, &caller, LeaseId(id)).await?;
    let target = match &q.status {
        Some(t) => t
            .parse::<LeaseStatus>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => LeaseStatus::Active,
    };
    let timeout = match &q.timeout {
        Some(t) => duration("timeout", t, Duration::from_secs(60))?,
        None => Duration::from_secs(30),
    };
    let lease = client::wait_for_lease(&s.store, LeaseId(id), timeout, |l| {
        l.status == target || rank(l.status) > rank(target) || l.status == LeaseStatus::Broken
    })
    .await?;
    Ok(Json(LeaseView::from(&lease)))
}

/// A command accepted for an object's worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The queued command's id (see `/commands`).
    pub command: i64,
}

#[utoipa::path(post, path = "/api/v1/leases/{id}/release", tag = "leases",
    params(("id" = i64, Path, description = "Lease id")),
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "Already released or destroyed", body = crate::error::ErrorBody)))]
pub async fn release_lease(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    visible_lease(&s, &caller, LeaseId(id)).await?;
    let c = client::release_lease(&s.store, LeaseId(id), &caller.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { command: c.0 })))
}

/// A new expiry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    /// Unix epoch ms...
    pub until: Option<i64>,
    /// ...or this long from now (`1h`).
    pub ttl: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/leases/{id}/renew", tag = "leases", request_body = Renew,
    params(("id" = i64, Path, description = "Lease id")),
    responses((status = 202, body = Accepted), (status = 400, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)))]
pub async fn renew_lease(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
    ApiJson(body): ApiJson<Renew>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    visible_lease(&s, &caller, LeaseId(id)).await?;
    let until = match (body.until, body.ttl) {
        (Some(u), None) => u,
        (None, Some(ttl)) => {
            now_ms()
                + drydock_store::ms(duration(
                    "ttl",
                    &ttl,
                    Duration::from_millis(client::MAX_LEASE_MS as u64),
                )?)
        }
        _ => return Err(ApiError::bad_request("give exactly one of until or ttl")),
    };
    let c = client::renew_lease(&s.store, LeaseId(id), until, &caller.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { command: c.0 })))
}

/// A command to run on an active lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// Program and arguments, as words (never a shell string).
    pub argv: Vec<String>,
    /// Working directory relative to the lease's directory.
    pub cwd: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Kill it after this long (default 10m, at most 24h).
    pub timeout: Option<String>,
}

/// One line of a command's streamed output (`application/x-ndjson`):
/// output chunks, then exactly one line with `exit_code` or `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputLine {
    /// `stdout` or `stderr` (output chunks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The chunk, as UTF-8 (invalid bytes replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The command's exit code (last line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the command could not run to its end (last line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/leases/{id}/command", tag = "leases", request_body = RunCommand,
    params(("id" = i64, Path, description = "Lease id")),
    responses((status = 200, description = "Streamed output, one JSON object per line", body = OutputLine, content_type = "application/x-ndjson"),
              (status = 400, body = crate::error::ErrorBody), (status = 409, description = "The lease is not active", body = crate::error::ErrorBody)))]
pub async fn run_command(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
    ApiJson(body): ApiJson<RunCommand>,
) -> ApiResult<Response> {
    visible_lease(&s, &caller, LeaseId(id)).await?;
    let timeout = match &body.timeout {
        Some(t) => duration("timeout", t, Duration::from_secs(86_400))?,
        None => Duration::from_secs(600),
    };
    let spec = CommandSpec {
        argv: body.argv,
        cwd: body.cwd,
        env: body.env.into_iter().collect(),
        timeout: Some(timeout),
    };
    spec.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let iface = client::command_interface(&s.store, &s.registry, LeaseId(id)).await?;
    Ok(crate::api_stream::run(iface, spec).into_response())
}

#[utoipa::path(get, path = "/api/v1/leases/{id}/commands", tag = "leases",
    params(("id" = i64, Path, description = "Lease id")),
    responses((status = 200, body = Vec<CommandView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn lease_commands(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<Json<Vec<CommandView>>> {
    let lease = visible_lease(&s, &caller, LeaseId(id)).await?;
    let commands = s.store.commands_for(lease.object()).await?;
    Ok(Json(commands.iter().map(CommandView::from).collect()))
}

// ------------------------------------------------------------- resources

/// Filters for the resource list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResourceQuery {
    /// Comma-separated statuses (`pending,active`).
    pub status: Option<String>,
    /// Only resources of this blueprint.
    pub blueprint: Option<i64>,
    /// Cursor: only resources with a smaller id.
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of resources, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourcePage {
    pub data: Vec<ResourceView>,
    /// Pass as `before` for the next page.
    pub next: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", params(ResourceQuery),
    responses((status = 200, body = ResourcePage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_resources(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ResourceQuery>,
) -> ApiResult<Json<ResourcePage>> {
    let limit = limit(q.limit, 1000)?;
    let resources = s
        .store
        .resources_matching(&ResourceFilter {
            statuses: statuses::<ResourceStatus, _>(&q.status)?,
            blueprints: q.blueprint.map(BlueprintId).into_iter().collect(),
            before: q.before.map(ResourceId),
            limit: Some(limit),
            ..Default::default()
        })
        .await?;
    let next = next_cursor(&resources, limit, |r| r.id.0);
    Ok(Json(ResourcePage {
        data: resources.iter().map(ResourceView::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/resources/{id}", tag = "resources",
    params(("id" = i64, Path, description = "Resource id")),
    responses((status = 200, body = ResourceView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_resource(
    State(s): State<AppState>,
    ApiId(id): ApiId,
) -> ApiResult<Json<ResourceView>> {
    Ok(Json(ResourceView::from(
        &s.store.resource(ResourceId(id)).await?,
    )))
}

#[utoipa::path(post, path = "/api/v1/resources/{id}/release", tag = "resources",
    params(("id" = i64, Path, description = "Resource id")),
    responses((status = 202, description = "Its leases are released with it", body = Accepted),
              (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn release_resource(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let c = client::release_resource(&s.store, ResourceId(id), &caller.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { command: c.0 })))
}

#[utoipa::path(get, path = "/api/v1/resources/{id}/commands", tag = "resources",
    params(("id" = i64, Path, description = "Resource id")),
    responses((status = 200, body = Vec<CommandView>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn resource_commands(
    State(s): State<AppState>,
    ApiId(id): ApiId,
) -> ApiResult<Json<Vec<CommandView>>> {
    let r = s.store.resource(ResourceId(id)).await?;
    let commands = s.store.commands_for(r.object()).await?;
    Ok(Json(commands.iter().map(CommandView::from).collect()))
}

// ------------------------------------------------------------ blueprints

/// Filters for the blueprint list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BlueprintQuery {
    /// Only blueprints of this implementation (`host.ssh`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Only disabled (`true`) or enabled (`false`) blueprints.
    pub disabled: Option<bool>,
    /// Cursor: only blueprints with a larger id (the `next` of the last page).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of blueprints, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlueprintPage {
    pub data: Vec<BlueprintView>,
    /// Pass as `after` for the next page.
    pub next: Option<i64>,
}

/// One page, oldest first, of `items` (sorted by id) after the cursor.
fn page_after<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> i64,
    after: Option<i64>,
    limit: i64,
) -> (Vec<T>, Option<i64>) {
    let mut items: Vec<T> = items
        .into_iter()
        .filter(|x| after.is_none_or(|a| id(x) > a))
        .collect();
    let limit = usize::try_from(limit).unwrap_or(100);
    let next = (items.len() > limit).then(|| id(&items[limit - 1]));
    items.truncate(limit);
    (items, next)
}

#[utoipa::path(get, path = "/api/v1/blueprints", tag = "blueprints", params(BlueprintQuery),
    responses((status = 200, body = BlueprintPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_blueprints(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<BlueprintQuery>,
) -> ApiResult<Json<BlueprintPage>> {
    let limit = limit(q.limit, 1000)?;
    let all = s.store.blueprints(q.kind.as_deref()).await?;
    let matching = all
        .into_iter()
        .filter(|b| q.disabled.is_none_or(|d| b.disabled == d))
        .collect();
    let (page, next) = page_after(matching, |b| b.id.0, q.after, limit);
    Ok(Json(BlueprintPage {
        data: page.iter().map(BlueprintView::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/blueprints/{id}", tag = "blueprints",
    params(("id" = i64, Path, description = "Blueprint id")),
    responses((status = 200, body = BlueprintView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_blueprint(
    State(s): State<AppState>,
    ApiId(id): ApiId,
) -> ApiResult<Json<BlueprintView>> {
    Ok(Json(BlueprintView::from(
        &s.store.blueprint(BlueprintId(id)).await?,
    )))
}

/// A new blueprint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBlueprint {
    pub name: String,
    /// Implementation: see `/api/v1/blueprint-types`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Field values, as the type declares them.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

#[utoipa::path(post, path = "/api/v1/blueprints", tag = "blueprints", request_body = CreateBlueprint,
    responses((status = 201, body = BlueprintView), (status = 400, description = "Unknown type, invalid or missing fields, name taken", body = crate::error::ErrorBody)))]
pub async fn create_blueprint(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiJson(body): ApiJson<CreateBlueprint>,
) -> ApiResult<(StatusCode, Json<BlueprintView>)> {
    let bp = client::create_blueprint(
        &s.store,
        &s.registry,
        &caller.actor(),
        &body.name,
        &body.kind,
        &body.fields,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(BlueprintView::from(&bp))))
}

/// Changes to a blueprint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBlueprint {
    pub name: Option<String>,
    /// Fields to change; `null` removes a field (back to its default).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

#[utoipa::path(patch, path = "/api/v1/blueprints/{id}", tag = "blueprints", request_body = EditBlueprint,
    params(("id" = i64, Path, description = "Blueprint id")),
    responses((status = 200, body = BlueprintView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn edit_blueprint(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
    ApiJson(body): ApiJson<EditBlueprint>,
) -> ApiResult<Json<BlueprintView>> {
    let bp = client::edit_blueprint(
        &s.store,
        &s.registry,
        &caller.actor(),
        BlueprintId(id),
        body.name.as_deref(),
        &body.fields,
    )
    .await?;
    Ok(Json(BlueprintView::from(&bp)))
}

#[utoipa::path(post, path = "/api/v1/blueprints/{id}/disable", tag = "blueprints",
    params(("id" = i64, Path, description = "Blueprint id")),
    responses((status = 200, description = "No new resources or leases from it; live ones stay", body = BlueprintView),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn disable_blueprint(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<Json<BlueprintView>> {
    let bp =
        client::set_blueprint_disabled(&s.store, &caller.actor(), BlueprintId(id), true).await?;
    Ok(Json(BlueprintView::from(&bp)))
}

#[utoipa::path(post, path = "/api/v1/blueprints/{id}/enable", tag = "blueprints",
    params(("id" = i64, Path, description = "Blueprint id")),
    responses((status = 200, body = BlueprintView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn enable_blueprint(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<Json<BlueprintView>> {
    let bp =
        client::set_blueprint_disabled(&s.store, &caller.actor(), BlueprintId(id), false).await?;
    Ok(Json(BlueprintView::from(&bp)))
}

#[utoipa::path(get, path = "/api/v1/blueprint-types", tag = "blueprints",
    responses((status = 200, body = Vec<BlueprintTypeView>)))]
pub async fn blueprint_types(State(s): State<AppState>) -> Json<Vec<BlueprintTypeView>> {
    Json(views::blueprint_types(&s.registry))
}

// ------------------------------------------------------------------ logs

/// Filters for the log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    pub lease: Option<i64>,
    pub resource: Option<i64>,
    pub blueprint: Option<i64>,
    /// Cursor: only events with a larger id (the `next` of the last page).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of log events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub data: Vec<LogView>,
    /// Pass as `after` for the next page (also to follow new events).
    pub next: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/logs", tag = "logs", params(LogQuery),
    responses((status = 200, body = LogPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_logs(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let limit = limit(q.limit, 1000)?;
    let logs = s
        .store
        .logs(&LogFilter {
            lease: q.lease.map(LeaseId),
            resource: q.resource.map(ResourceId),
            blueprint: q.blueprint.map(BlueprintId),
            after: q.after.map(LogId),
            limit: Some(limit),
            ..Default::default()
        })
        .await?;
    let next = logs.last().map(|l| l.id.0).or(q.after);
    Ok(Json(LogPage {
        data: logs.iter().map(LogView::from).collect(),
        next,
    }))
}

// -------------------------------------------------------- authorizations

/// Filters for authorizations.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuthorizationQuery {
    pub blueprint: Option<i64>,
    /// The authorizing object, e.g. `blueprint:3`.
    pub object: Option<String>,
    /// Cursor: only authorizations with a larger id.
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A page of authorizations, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizationPage {
    pub data: Vec<AuthorizationView>,
    /// Pass as `after` for the next page.
    pub next: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/authorizations", tag = "authorizations", params(AuthorizationQuery),
    responses((status = 200, body = AuthorizationPage), (status = 400, body = crate::error::ErrorBody)))]
pub async fn list_authorizations(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AuthorizationQuery>,
) -> ApiResult<Json<AuthorizationPage>> {
    let limit = limit(q.limit, 1000)?;
    let all = s
        .store
        .authorizations(q.blueprint.map(BlueprintId), q.object.as_deref())
        .await?;
    let (page, next) = page_after(all, |a| a.id.0, q.after, limit);
    Ok(Json(AuthorizationPage {
        data: page.iter().map(AuthorizationView::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/authorizations/{id}", tag = "authorizations",
    params(("id" = i64, Path, description = "Authorization id")),
    responses((status = 200, body = AuthorizationView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_authorization(
    State(s): State<AppState>,
    ApiId(id): ApiId,
) -> ApiResult<Json<AuthorizationView>> {
    let a = s
        .store
        .authorization(drydock_model::AuthorizationId(id))
        .await?;
    Ok(Json(AuthorizationView::from(&a)))
}

/// A decision's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decided {
    pub authorization: AuthorizationView,
    /// Live leases sent `release` (declines with `release_leases`).
    pub released_leases: usize,
}

#[utoipa::path(post, path = "/api/v1/authorizations/{id}/approve", tag = "authorizations",
    params(("id" = i64, Path, description = "Authorization id")),
    responses((status = 200, description = "Approved; the object's waiting leases go ahead", body = Decided),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn approve_authorization(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
) -> ApiResult<Json<Decided>> {
    decide(&s, &caller, id, client::Decision::Approve).await
}

/// Options of a decline.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decline {
    /// Also release the object's live leases on the blueprint's resources.
    #[serde(default)]
    pub release_leases: bool,
}

#[utoipa::path(post, path = "/api/v1/authorizations/{id}/decline", tag = "authorizations",
    request_body = Decline,
    params(("id" = i64, Path, description = "Authorization id")),
    responses((status = 200, description = "Declined (or revoked): no new lease of the object gets the blueprint", body = Decided),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn decline_authorization(
    State(s): State<AppState>,
    axum::Extension(caller): Caller,
    ApiId(id): ApiId,
    body: axum::body::Bytes,
) -> ApiResult<Json<Decided>> {
    // The body is optional: none means the defaults.
    let options: Decline = if body.iter().all(u8::is_ascii_whitespace) {
        Decline::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-json", e.to_string()))?
    };
    let release_leases = options.release_leases;
    decide(
        &s,
        &caller,
        id,
        client::Decision::Decline { release_leases },
    )
    .await
}

async fn decide(
    s: &AppState,
    caller: &crate::auth::Principal,
    id: i64,
    decision: client::Decision,
) -> ApiResult<Json<Decided>> {
    let (a, released_leases) = client::decide_authorization(
        &s.store,
        drydock_model::AuthorizationId(id),
        decision,
        &caller.actor(),
    )
    .await?;
    Ok(Json(Decided {
        authorization: AuthorizationView::from(&a),
        released_leases,
    }))
}
