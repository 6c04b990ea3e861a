//! The web UI: server-rendered pages (askama templates in `templates/`,
//! no JavaScript). Lists are paged by id, so pages stay fast however many
//! leases exist. Buttons that change something are POST forms carrying a
//! CSRF token that must match the `drydock_csrf` cookie (double submit,
//! SameSite=Strict), and a cross-origin `Origin` is refused. Release
//! buttons enqueue a command; the page shows "Releasing" until the
//! object's worker has acted, and refreshes itself while anything is in
//! motion.

use crate::AppState;
use crate::auth::{self, Principal, Role};
use crate::views::next_cursor;
use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use drydock_engine::blueprint::FieldSpec;
use drydock_engine::client;
use drydock_engine::events::{describe_log, describe_waiting};
use drydock_model::{BlueprintId, LeaseId, LeaseStatus, LogId, ResourceId, ResourceStatus};
use drydock_store::lease::{Lease, LeaseFilter};
use drydock_store::log::{LogEntry, LogFilter};
use drydock_store::resource::{Resource, ResourceFilter};
use drydock_store::{Store, StoreError};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::{Duration, UNIX_EPOCH};

const CSRF_COOKIE: &str = "drydock_csrf";
/// Rows per list page.
const PAGE: i64 = 50;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/", get(index))
        .route("/leases", get(leases))
        .route("/leases/{id}", get(lease))
        .route("/leases/{id}/release", post(release_lease))
        .route("/resources", get(resources))
        .route("/resources/{id}", get(resource))
        .route("/resources/{id}/release", post(release_resource))
        .route("/blueprints", get(blueprints))
        .route("/blueprints/new", get(new_blueprint).post(create_blueprint))
        .route("/blueprints/{id}", get(blueprint))
        .route("/blueprints/{id}/edit", get(edit_form).post(edit_blueprint))
        .route("/blueprints/{id}/{switch}", post(switch_blueprint))
        .route("/authorizations", get(authorizations))
        .route("/authorizations/{id}", get(authorization))
        .route(
            "/authorizations/{id}/{decision}",
            post(decide_authorization),
        )
        .route("/logs", get(logs))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state, require_session))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Who the web actions are recorded as.
fn web_actor(p: &Principal) -> String {
    format!("web:{}", p.name)
}

/// Every page but the login form needs a session (or a bearer token) of
/// an admin or viewer; viewers can look but not change anything.
async fn require_session(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/login" {
        return next.run(req).await;
    }
    let headers = req.headers();
    let secret =
        cookie(headers, auth::SESSION_COOKIE).or_else(|| auth::bearer(headers).map(str::to_owned));
    let principal = match secret {
        Some(secret) => match auth::authenticate(&s.store, &secret).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        },
        None => None,
    };
    let Some(p) = principal else {
        if req.method() == axum::http::Method::GET {
            return Redirect::to("/login").into_response();
        }
        return message(
            StatusCode::UNAUTHORIZED,
            "Log in first",
            "Your session has ended.",
        );
    };
    if p.role == Role::Client {
        return message(
            StatusCode::FORBIDDEN,
            "Not for client tokens",
            "The web UI is for administrators and viewers; client programs use the API.",
        );
    }
    if req.method() != axum::http::Method::GET && !p.can_write() && path != "/logout" {
        return message(
            StatusCode::FORBIDDEN,
            "Read only",
            "A viewer token can look at everything but change nothing.",
        );
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    title: &'a str,
    refresh: bool,
    csrf: String,
    error: Option<&'a str>,
}

async fn login_form(headers: HeaderMap) -> Response {
    let csrf = csrf(&headers);
    render(
        &LoginPage {
            title: "Log in",
            refresh: false,
            csrf: csrf.token.clone(),
            error: None,
        },
        StatusCode::OK,
        Some(&csrf),
    )
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = check_post(&headers, &form) {
        return r;
    }
    let ip = connect.map(|c| c.0.0.ip());
    let csrf = csrf(&headers);
    let again = |status, error| {
        render(
            &LoginPage {
                title: "Log in",
                refresh: false,
                csrf: csrf.token.clone(),
                error: Some(error),
            },
            status,
            Some(&csrf),
        )
    };
    let secret = form_value(&form, "token")
        .unwrap_or_default()
        .trim()
        .to_owned();
    match auth::identify(&s.store, &s.limiter, ip, Some(&secret)).await {
        Ok(p) if p.role != Role::Client => {
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{}={secret}; Path=/; HttpOnly; SameSite=Strict",
                auth::SESSION_COOKIE
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(_) => again(
            StatusCode::FORBIDDEN,
            "Client tokens are for the API; log in with an admin or viewer token.",
        ),
        Err(auth::Refusal::RateLimited) => again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts from this address; wait a minute.",
        ),
        Err(auth::Refusal::Missing | auth::Refusal::Invalid) => {
            again(StatusCode::UNAUTHORIZED, "That is not a valid token.")
        }
        Err(auth::Refusal::Store(e)) => store_error(e),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return message(
            StatusCode::FORBIDDEN,
            "Request refused",
            "The form was posted from another site.",
        );
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::SESSION_COOKIE
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Headers for every page: no scripts, no framing, no sniffing, no
/// referrer leaks to other sites; forms post only to this origin.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: with no referrer at all, browsers send
    // `Origin: null` on our own form posts, which the origin check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ------------------------------------------------------------ plumbing

/// The CSRF token of this browser, and whether it is new (then the page
/// sets the cookie).
struct Csrf {
    token: String,
    new: bool,
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn csrf(headers: &HeaderMap) -> Csrf {
    match cookie(headers, CSRF_COOKIE) {
        Some(t) if t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) => Csrf {
            token: t,
            new: false,
        },
        _ => {
            let mut bytes = [0u8; 16];
            // Without randomness there is no safe token: refuse to make one
            // (every form post will then be refused, loudly).
            if getrandom::fill(&mut bytes).is_err() {
                tracing::error!("no system randomness for CSRF tokens");
            }
            Csrf {
                token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
                new: true,
            }
        }
    }
}

/// Whether a form post may act: its token matches the cookie, and it does
/// not come from another origin.
/// Whether a request comes from this origin (or says nothing of where).
fn same_origin(headers: &HeaderMap) -> bool {
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin.split_once("://").map_or(origin, |(_, h)| h) == host,
        _ => true,
    }
}

fn check_post(headers: &HeaderMap, form: &[(String, String)]) -> Result<(), Response> {
    let refuse = |why: &str| {
        message(
            StatusCode::FORBIDDEN,
            "Request refused",
            &format!("{why} Reload the page and try again."),
        )
    };
    if !same_origin(headers) {
        return Err(refuse("The form was posted from another site."));
    }
    match (cookie(headers, CSRF_COOKIE), form_value(form, "csrf")) {
        (Some(c), Some(s)) if c.len() == 32 && constant_eq(c.as_bytes(), s.as_bytes()) => Ok(()),
        _ => Err(refuse("The form's security token is missing or stale.")),
    }
}

/// A button's POST: the id from the path, the origin and CSRF checks, the
/// action, then back to the object's page (`{page}/{id}`).
async fn button(
    headers: &HeaderMap,
    text: &str,
    form: &[(String, String)],
    page: &str,
    action: impl AsyncFnOnce(i64) -> Result<(), client::ClientError>,
) -> Response {
    let id = match id(text) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Err(r) = check_post(headers, form) {
        return r;
    }
    match action(id).await {
        Ok(()) => Redirect::to(&format!("{page}/{id}")).into_response(),
        Err(e) => client_error(e),
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn render(t: &impl Template, status: StatusCode, csrf: Option<&Csrf>) -> Response {
    match t.render() {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            if let Some(c) = csrf.filter(|c| c.new)
                && let Ok(v) = HeaderValue::from_str(&format!(
                    "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    c.token
                ))
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::error!("rendering a page failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
    refresh: bool,
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    render(
        &MessagePage {
            title,
            message: text,
            refresh: false,
        },
        status,
        None,
    )
}

async fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound { .. } => message(StatusCode::NOT_FOUND, "Not found", &e.to_string()),
        e => {
            tracing::error!("web: {e}");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "The database could not be read; see the server log.",
            )
        }
    }
}

fn client_error(e: client::ClientError) -> Response {
    match e {
        client::ClientError::Store(s) => store_error(s),
        e => message(StatusCode::CONFLICT, "Not done", &e.to_string()),
    }
}

fn id(text: &str) -> Result<i64, Response> {
    text.parse::<i64>().ok().filter(|i| *i > 0).ok_or_else(|| {
        message(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such object.",
        )
    })
}

/// `2026-11-29 23:14:08 UTC`.
fn when(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn maybe_when(ms: Option<i64>, none: &str) -> String {
    ms.map_or_else(|| none.to_owned(), when)
}

/// Query strings of list pages: unknown parameters are ignored (browsers
/// and people add things), bad values just show everything.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    before: Option<String>,
    after: Option<String>,
    blueprint: Option<String>,
    disabled: Option<String>,
    lease: Option<String>,
    resource: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The statuses a list page shows (unknown ones ignored), and the same as
/// the filter text its links carry.
fn status_filter<T: std::str::FromStr + std::fmt::Display>(
    text: &Option<String>,
) -> (Vec<T>, String) {
    let statuses: Vec<T> = text
        .iter()
        .flat_map(|t| t.split(','))
        .filter_map(|t| t.parse().ok())
        .collect();
    let filter = statuses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    (statuses, filter)
}

fn num(t: &Option<String>) -> Option<i64> {
    t.as_deref().and_then(|t| t.parse().ok())
}

// ------------------------------------------------------------- rows

struct LogRow {
    when: String,
    message: String,
    lease_id: Option<i64>,
    resource_id: Option<i64>,
    blueprint_id: Option<i64>,
    kind: String,
}

fn log_rows(entries: &[LogEntry]) -> Vec<LogRow> {
    entries
        .iter()
        .map(|e| LogRow {
            when: when(e.epoch),
            message: describe_log(&e.kind, &e.data),
            lease_id: e.lease.map(|l| l.0),
            resource_id: e.resource.map(|r| r.0),
            blueprint_id: e.blueprint.map(|b| b.0),
            kind: e.kind.clone(),
        })
        .collect()
}

/// The latest `n` events matching `filter`, oldest first.
async fn recent_logs(
    store: &Store,
    filter: LogFilter,
    n: i64,
) -> Result<Vec<LogEntry>, StoreError> {
    store
        .logs(&LogFilter {
            limit: Some(n),
            latest: true,
            ..filter
        })
        .await
}

struct CommandRow {
    id: i64,
    author: String,
    command: String,
    consumed: bool,
    when: String,
}

async fn command_rows(
    store: &Store,
    object: drydock_model::ObjectRef,
) -> Result<Vec<CommandRow>, StoreError> {
    Ok(store
        .commands_for(object)
        .await?
        .iter()
        .map(|c| CommandRow {
            id: c.id.0,
            author: c.author.clone(),
            command: c.command.to_string(),
            consumed: c.consumed,
            when: when(c.created_at),
        })
        .collect())
}

struct LeaseRow {
    id: i64,
    kind: String,
    status: &'static str,
    resource_id: Option<i64>,
    owner: String,
    created: String,
    waiting: String,
}

fn lease_row(l: &Lease) -> LeaseRow {
    LeaseRow {
        id: l.id.0,
        kind: l.resource_type.clone(),
        status: l.status.as_str(),
        resource_id: l.resource_id.map(|r| r.0),
        owner: l.owner.clone().unwrap_or_default(),
        created: when(l.created_at),
        waiting: l
            .waiting
            .as_ref()
            .filter(|_| l.status == LeaseStatus::Pending)
            .map(describe_waiting)
            .unwrap_or_default(),
    }
}

struct ResourceRow {
    id: i64,
    kind: String,
    status: &'static str,
    blueprint_id: i64,
    created: String,
}

fn resource_row(r: &Resource) -> ResourceRow {
    ResourceRow {
        id: r.id.0,
        kind: r.resource_type.clone(),
        status: r.status.as_str(),
        blueprint_id: r.blueprint_id.0,
        created: when(r.created_at),
    }
}

struct AuthRow {
    id: i64,
    blueprint_id: i64,
    object: String,
    state: &'static str,
    object_active: bool,
    decided: String,
    created: String,
}

fn auth_row(a: &drydock_store::authorization::Authorization) -> AuthRow {
    AuthRow {
        id: a.id.0,
        blueprint_id: a.blueprint.0,
        object: a.object.clone(),
        state: a.blueprint_state.as_str(),
        object_active: a.object_active,
        decided: match (&a.decided_by, a.decided_at) {
            (Some(by), Some(at)) => format!("by {by} at {}", when(at)),
            _ => "not yet".into(),
        },
        created: when(a.created_at),
    }
}

fn title_case(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------ index

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    title: &'static str,
    refresh: bool,
    leases: Vec<(String, i64)>,
    resources: Vec<(String, i64)>,
    blueprints: usize,
    daemons: usize,
}

async fn index(State(s): State<AppState>) -> Response {
    let page = async {
        Ok::<_, StoreError>(IndexPage {
            title: "Overview",
            refresh: false,
            leases: s.store.lease_status_counts().await?,
            resources: s.store.resource_status_counts().await?,
            blueprints: s.store.blueprints(None).await?.len(),
            daemons: s
                .store
                .live_daemons(drydock_engine::daemon::ALIVE_WITHIN)
                .await?
                .len(),
        })
    };
    match page.await {
        Ok(p) => render(&p, StatusCode::OK, None),
        Err(e) => store_error(e),
    }
}

// ----------------------------------------------------------- leases

#[derive(Template)]
#[template(path = "leases.html")]
struct LeasesPage {
    title: &'static str,
    refresh: bool,
    leases: Vec<LeaseRow>,
    filter: String,
    statuses: Vec<String>,
    next: Option<i64>,
}

async fn leases(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let (statuses, filter) = status_filter::<LeaseStatus>(&q.status);
    let rows = match s
        .store
        .leases(&LeaseFilter {
            statuses,
            resources: num(&q.resource).map(ResourceId).into_iter().collect(),
            before: num(&q.before).map(LeaseId),
            limit: Some(PAGE),
            ..Default::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let next = next_cursor(&rows, PAGE, |l| l.id.0);
    render(
        &LeasesPage {
            title: "Leases",
            refresh: false,
            leases: rows.iter().map(lease_row).collect(),
            filter,
            statuses: LeaseStatus::ALL.iter().map(|s| s.to_string()).collect(),
            next,
        },
        StatusCode::OK,
        None,
    )
}

struct LeaseDetail {
    id: i64,
    kind: String,
    status: &'static str,
    status_name: String,
    waiting: Option<String>,
    failure: Option<String>,
    resource_id: Option<i64>,
    owner: String,
    authorizing: String,
    blueprints: Vec<i64>,
    priority: i64,
    until: String,
    created: String,
    acquired: String,
    activated: String,
    attributes: String,
}

#[derive(Template)]
#[template(path = "lease.html")]
struct LeasePage {
    title: String,
    refresh: bool,
    l: LeaseDetail,
    releasing: bool,
    releasable: bool,
    csrf: String,
    commands: Vec<CommandRow>,
    logs: Vec<LogRow>,
}

/// Whether a release command is waiting for the object's worker.
async fn releasing(store: &Store, object: drydock_model::ObjectRef) -> Result<bool, StoreError> {
    Ok(store
        .pending_commands(object)
        .await?
        .iter()
        .any(|c| c.command == drydock_model::CommandKind::Release))
}

async fn lease(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => LeaseId(i),
        Err(r) => return r,
    };
    let csrf = csrf(&headers);
    let page = async {
        // Commands first, then the row: a worker consumes a release and
        // writes the new status in one commit, so this order never sees
        // "no release pending" next to a status from before it.
        let releasing = releasing(&s.store, drydock_model::ObjectRef::lease(id)).await?;
        let l = s.store.lease(id).await?;
        let logs = recent_logs(
            &s.store,
            LogFilter {
                lease: Some(id),
                ..Default::default()
            },
            200,
        )
        .await?;
        Ok::<_, StoreError>(LeasePage {
            title: format!("Lease {id}"),
            refresh: !l.status.is_terminal() && (l.status != LeaseStatus::Active || releasing),
            releasable: l.status.is_releasable(),
            releasing,
            csrf: csrf.token.clone(),
            commands: command_rows(&s.store, l.object()).await?,
            logs: log_rows(&logs),
            l: LeaseDetail {
                id: l.id.0,
                kind: l.resource_type.clone(),
                status: l.status.as_str(),
                status_name: title_case(l.status.as_str()),
                waiting: l
                    .waiting
                    .as_ref()
                    .filter(|_| l.status == LeaseStatus::Pending)
                    .map(describe_waiting),
                failure: l.failure.clone(),
                resource_id: l.resource_id.map(|r| r.0),
                owner: l.owner.clone().unwrap_or_default(),
                authorizing: l.authorizing.clone(),
                blueprints: l.blueprint_ids.iter().map(|b| b.0).collect(),
                priority: l.priority,
                until: maybe_when(l.until, "never"),
                created: when(l.created_at),
                acquired: maybe_when(l.acquired_at, "not acquired"),
                activated: maybe_when(l.activated_at, "not activated"),
                attributes: serde_json::to_string_pretty(&l.attributes).unwrap_or_default(),
            },
        })
    };
    match page.await {
        Ok(p) => render(&p, StatusCode::OK, Some(&csrf)),
        Err(e) => store_error(e),
    }
}

// -------------------------------------------------------- resources

#[derive(Template)]
#[template(path = "resources.html")]
struct ResourcesPage {
    title: &'static str,
    refresh: bool,
    resources: Vec<ResourceRow>,
    filter: String,
    statuses: Vec<String>,
    next: Option<i64>,
}

async fn resources(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let (statuses, filter) = status_filter::<ResourceStatus>(&q.status);
    let rows = match s
        .store
        .resources_matching(&ResourceFilter {
            statuses,
            blueprints: num(&q.blueprint).map(BlueprintId).into_iter().collect(),
            before: num(&q.before).map(ResourceId),
            limit: Some(PAGE),
            ..Default::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let next = next_cursor(&rows, PAGE, |r| r.id.0);
    render(
        &ResourcesPage {
            title: "Resources",
            refresh: false,
            resources: rows.iter().map(resource_row).collect(),
            filter,
            statuses: ResourceStatus::ALL.iter().map(|s| s.to_string()).collect(),
            next,
        },
        StatusCode::OK,
        None,
    )
}

struct ResourceDetail {
    id: i64,
    kind: String,
    status: &'static str,
    status_name: String,
    blueprint_id: i64,
    blueprint_name: String,
    failure: Option<String>,
    until: String,
    created: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "resource.html")]
struct ResourcePage {
    title: String,
    refresh: bool,
    r: ResourceDetail,
    releasing: bool,
    releasable: bool,
    csrf: String,
    leases: Vec<LeaseRow>,
    commands: Vec<CommandRow>,
    logs: Vec<LogRow>,
}

async fn resource(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => ResourceId(i),
        Err(r) => return r,
    };
    let csrf = csrf(&headers);
    let page = async {
        // Commands before the row, as on the lease page.
        let releasing = releasing(&s.store, drydock_model::ObjectRef::resource(id)).await?;
        let r = s.store.resource(id).await?;
        let bp = s.store.blueprint(r.blueprint_id).await?;
        let leases = s
            .store
            .leases(&LeaseFilter {
                resources: vec![id],
                limit: Some(100),
                ..Default::default()
            })
            .await?;
        let logs = recent_logs(
            &s.store,
            LogFilter {
                resource: Some(id),
                ..Default::default()
            },
            200,
        )
        .await?;
        Ok::<_, StoreError>(ResourcePage {
            title: format!("Resource {id}"),
            refresh: !r.status.is_terminal() && (r.status != ResourceStatus::Active || releasing),
            releasable: r.status.is_releasable(),
            releasing,
            csrf: csrf.token.clone(),
            leases: leases.iter().map(lease_row).collect(),
            commands: command_rows(&s.store, r.object()).await?,
            logs: log_rows(&logs),
            r: ResourceDetail {
                id: r.id.0,
                kind: r.resource_type.clone(),
                status: r.status.as_str(),
                status_name: title_case(r.status.as_str()),
                blueprint_id: bp.id.0,
                blueprint_name: bp.name.clone(),
                failure: r.failure.clone(),
                until: maybe_when(r.until, "never"),
                created: when(r.created_at),
                last_used: when(r.last_used_at),
            },
        })
    };
    match page.await {
        Ok(p) => render(&p, StatusCode::OK, Some(&csrf)),
        Err(e) => store_error(e),
    }
}

// ------------------------------------------------------- blueprints

struct BlueprintRow {
    id: i64,
    name: String,
    kind: String,
    disabled: bool,
}

#[derive(Template)]
#[template(path = "blueprints.html")]
struct BlueprintsPage {
    title: &'static str,
    refresh: bool,
    blueprints: Vec<BlueprintRow>,
    filter: String,
}

async fn blueprints(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let disabled = q.disabled.as_deref().and_then(|d| d.parse::<bool>().ok());
    let all = match s.store.blueprints(q.kind.as_deref()).await {
        Ok(a) => a,
        Err(e) => return store_error(e),
    };
    render(
        &BlueprintsPage {
            title: "Blueprints",
            refresh: false,
            blueprints: all
                .iter()
                .filter(|b| disabled.is_none_or(|d| b.disabled == d))
                .map(|b| BlueprintRow {
                    id: b.id.0,
                    name: b.name.clone(),
                    kind: b.kind.clone(),
                    disabled: b.disabled,
                })
                .collect(),
            filter: disabled.map(|d| d.to_string()).unwrap_or_default(),
        },
        StatusCode::OK,
        None,
    )
}

/// A field value as the forms show it (the text `parse_field` reads).
fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(m) => m
            .iter()
            .map(|(k, x)| {
                format!(
                    "{k}={}",
                    x.as_str().map_or_else(|| x.to_string(), str::to_owned)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn specs_of<'r>(s: &'r AppState, kind: &str) -> &'r [FieldSpec] {
    s.registry.get(kind).map_or(&[], |i| i.fields())
}

#[derive(Template)]
#[template(path = "blueprint.html")]
struct BlueprintPage {
    title: String,
    refresh: bool,
    b: BlueprintRow,
    csrf: String,
    fields: Vec<(String, String)>,
    resources: Vec<ResourceRow>,
    authorizations: Vec<AuthRow>,
    edits: Vec<(String, String, String, String, String)>,
    logs: Vec<LogRow>,
}

async fn blueprint(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => BlueprintId(i),
        Err(r) => return r,
    };
    let csrf = csrf(&headers);
    let page = async {
        let b = s.store.blueprint(id).await?;
        let specs = specs_of(&s, &b.kind);
        let fields = b
            .fields
            .iter()
            .map(|(k, v)| {
                let secret = specs.iter().any(|f| f.name == k && f.secret);
                (
                    k.clone(),
                    if secret {
                        "(hidden)".into()
                    } else {
                        field_text(v)
                    },
                )
            })
            .collect();
        let resources = s
            .store
            .resources_matching(&ResourceFilter {
                statuses: vec![ResourceStatus::Pending, ResourceStatus::Active],
                blueprints: vec![id],
                limit: Some(100),
                ..Default::default()
            })
            .await?;
        let authorizations = s.store.authorizations(Some(id), None).await?;
        let edits = s
            .store
            .blueprint_edits(id)
            .await?
            .into_iter()
            .map(|e| {
                (
                    when(e.epoch),
                    e.author,
                    e.field,
                    e.old_value.unwrap_or_default(),
                    e.new_value.unwrap_or_default(),
                )
            })
            .collect();
        let logs = recent_logs(
            &s.store,
            LogFilter {
                blueprint: Some(id),
                ..Default::default()
            },
            100,
        )
        .await?;
        Ok::<_, StoreError>(BlueprintPage {
            title: format!("Blueprint {id}"),
            refresh: false,
            csrf: csrf.token.clone(),
            fields,
            resources: resources.iter().map(resource_row).collect(),
            authorizations: authorizations.iter().map(auth_row).collect(),
            edits,
            logs: log_rows(&logs),
            b: BlueprintRow {
                id: b.id.0,
                name: b.name,
                kind: b.kind,
                disabled: b.disabled,
            },
        })
    };
    match page.await {
        Ok(p) => render(&p, StatusCode::OK, Some(&csrf)),
        Err(e) => store_error(e),
    }
}

struct FormField {
    name: &'static str,
    required: bool,
    value: String,
    help: String,
}

#[derive(Template)]
#[template(path = "blueprint_form.html")]
struct BlueprintForm {
    title: String,
    refresh: bool,
    error: Option<String>,
    csrf: String,
    /// Empty: choose a type first.
    kind: String,
    types: Vec<(String, String)>,
    action: String,
    name: String,
    fields: Vec<FormField>,
}

fn form_fields(specs: &[FieldSpec], values: &dyn Fn(&str) -> String) -> Vec<FormField> {
    specs
        .iter()
        .map(|f| FormField {
            name: f.name,
            required: f.required,
            value: if f.secret {
                String::new()
            } else {
                values(f.name)
            },
            help: match f.default {
                Some(d) => format!("{} ({}; default {d})", f.description, f.kind.as_str()),
                None => format!("{} ({})", f.description, f.kind.as_str()),
            },
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn blueprint_form(
    s: &AppState,
    csrf: &Csrf,
    title: String,
    kind: &str,
    action: String,
    name: String,
    values: &dyn Fn(&str) -> String,
    error: Option<String>,
) -> Response {
    let specs = specs_of(s, kind);
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(
        &BlueprintForm {
            title,
            refresh: false,
            error,
            csrf: csrf.token.clone(),
            kind: kind.to_owned(),
            types: s
                .registry
                .iter()
                .map(|i| (i.type_name().to_owned(), i.resource_type().to_owned()))
                .collect(),
            action,
            name,
            fields: form_fields(specs, values),
        },
        status,
        Some(csrf),
    )
}

async fn new_blueprint(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let csrf = csrf(&headers);
    let kind = q
        .kind
        .filter(|k| s.registry.get(k).is_some())
        .unwrap_or_default();
    blueprint_form(
        &s,
        &csrf,
        "Create a blueprint".into(),
        &kind,
        "/blueprints/new".into(),
        String::new(),
        &|_| String::new(),
        None,
    )
}

fn form_value<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn create_blueprint(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = check_post(&headers, &form) {
        return r;
    }
    let csrf = csrf(&headers);
    let kind = form_value(&form, "type").unwrap_or_default().to_owned();
    let name = form_value(&form, "name")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut fields = Map::new();
    for (k, v) in &form {
        if let Some(f) = k.strip_prefix("field.")
            && !v.trim().is_empty()
        {
            fields.insert(f.to_owned(), Value::String(v.trim().to_owned()));
        }
    }
    match client::create_blueprint(
        &s.store,
        &s.registry,
        &web_actor(&who),
        &name,
        &kind,
        &fields,
    )
    .await
    {
        Ok(bp) => Redirect::to(&format!("/blueprints/{}", bp.id)).into_response(),
        Err(client::ClientError::Store(e)) if !matches!(e, StoreError::Invalid { .. }) => {
            store_error(e)
        }
        Err(e) => {
            let values = |f: &str| {
                form_value(&form, &format!("field.{f}"))
                    .unwrap_or_default()
                    .to_owned()
            };
            blueprint_form(
                &s,
                &csrf,
                "Create a blueprint".into(),
                if s.registry.get(&kind).is_some() {
                    &kind
                } else {
                    ""
                },
                "/blueprints/new".into(),
                name,
                &values,
                Some(e.to_string()),
            )
        }
    }
}

async fn edit_form(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => BlueprintId(i),
        Err(r) => return r,
    };
    let csrf = csrf(&headers);
    match s.store.blueprint(id).await {
        Ok(b) => {
            let values = |f: &str| b.fields.get(f).map(field_text).unwrap_or_default();
            blueprint_form(
                &s,
                &csrf,
                format!("Edit blueprint {id}"),
                &b.kind,
                format!("/blueprints/{id}/edit"),
                b.name.clone(),
                &values,
                None,
            )
        }
        Err(e) => store_error(e),
    }
}

async fn edit_blueprint(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Path(text): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => BlueprintId(i),
        Err(r) => return r,
    };
    if let Err(r) = check_post(&headers, &form) {
        return r;
    }
    let csrf = csrf(&headers);
    let b = match s.store.blueprint(id).await {
        Ok(b) => b,
        Err(e) => return store_error(e),
    };
    let specs = specs_of(&s, &b.kind);
    let mut changes = Map::new();
    for spec in specs {
        let Some(text) = form_value(&form, &format!("field.{}", spec.name)) else {
            continue;
        };
        let text = text.trim();
        let current = b.fields.get(spec.name).map(field_text).unwrap_or_default();
        if text.is_empty() {
            // Secret fields are never shown, so empty means "keep".
            if !spec.secret && b.fields.contains_key(spec.name) {
                changes.insert(spec.name.into(), Value::Null);
            }
        } else if text != current {
            // Text as typed: the field's declaration parses it.
            changes.insert(spec.name.into(), Value::String(text.into()));
        }
    }
    let name = form_value(&form, "name")
        .map(str::trim)
        .filter(|n| *n != b.name);
    match client::edit_blueprint(&s.store, &s.registry, &web_actor(&who), id, name, &changes).await
    {
        Ok(_) => Redirect::to(&format!("/blueprints/{id}")).into_response(),
        Err(client::ClientError::Store(e))
            if !matches!(e, StoreError::Invalid { .. } | StoreError::Stale { .. }) =>
        {
            store_error(e)
        }
        Err(e) => {
            let values = |f: &str| {
                form_value(&form, &format!("field.{f}"))
                    .unwrap_or_default()
                    .to_owned()
            };
            blueprint_form(
                &s,
                &csrf,
                format!("Edit blueprint {id}"),
                &b.kind,
                format!("/blueprints/{id}/edit"),
                form_value(&form, "name").unwrap_or_default().to_owned(),
                &values,
                Some(e.to_string()),
            )
        }
    }
}

// --------------------------------------------------- authorizations

#[derive(Template)]
#[template(path = "authorizations.html")]
struct AuthorizationsPage {
    title: &'static str,
    refresh: bool,
    authorizations: Vec<AuthRow>,
}

async fn authorizations(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    match s
        .store
        .authorizations(num(&q.blueprint).map(BlueprintId), None)
        .await
    {
        Ok(all) => render(
            &AuthorizationsPage {
                title: "Authorizations",
                refresh: false,
                authorizations: all.iter().map(auth_row).collect(),
            },
            StatusCode::OK,
            None,
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Template)]
#[template(path = "authorization.html")]
struct AuthorizationPage {
    title: String,
    refresh: bool,
    a: AuthRow,
    csrf: String,
}

async fn authorization(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let id = match id(&text) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let csrf = csrf(&headers);
    match s
        .store
        .authorization(drydock_model::AuthorizationId(id))
        .await
    {
        Ok(a) => render(
            &AuthorizationPage {
                title: format!("Authorization {id}"),
                refresh: false,
                a: auth_row(&a),
                csrf: csrf.token.clone(),
            },
            StatusCode::OK,
            Some(&csrf),
        ),
        Err(e) => store_error(e),
    }
}

// ------------------------------------------------------------- logs

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    title: String,
    refresh: bool,
    logs: Vec<LogRow>,
    next: Option<i64>,
    more: String,
}

async fn logs(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let filter = LogFilter {
        lease: num(&q.lease).map(LeaseId),
        resource: num(&q.resource).map(ResourceId),
        blueprint: num(&q.blueprint).map(BlueprintId),
        after: num(&q.after).map(LogId),
        limit: Some(PAGE * 4),
        ..Default::default()
    };
    let mut title = String::from("Log");
    let mut more = String::from("/logs?");
    for (name, v) in [
        ("lease", filter.lease.map(|l| l.0)),
        ("resource", filter.resource.map(|r| r.0)),
        ("blueprint", filter.blueprint.map(|b| b.0)),
    ] {
        if let Some(v) = v {
            title += &format!(" of {name} {v}");
            more += &format!("{name}={v}&");
        }
    }
    match s.store.logs(&filter).await {
        Ok(entries) => render(
            &LogsPage {
                title,
                refresh: false,
                next: next_cursor(&entries, PAGE * 4, |e| e.id.0),
                logs: log_rows(&entries),
                more,
            },
            StatusCode::OK,
            None,
        ),
        Err(e) => store_error(e),
    }
}

// ------------------------------------------------------------ buttons

async fn release_lease(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Path(text): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    button(&headers, &text, &form, "/leases", async |id| {
        client::release_lease(&s.store, LeaseId(id), &web_actor(&who))
            .await
            .map(drop)
    })
    .await
}

async fn release_resource(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Path(text): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    button(&headers, &text, &form, "/resources", async |id| {
        client::release_resource(&s.store, ResourceId(id), &web_actor(&who))
            .await
            .map(drop)
    })
    .await
}

/// `/blueprints/{id}/disable` and `…/enable`.
async fn switch_blueprint(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Path((text, switch)): Path<(String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let disabled = match switch.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return not_found().await,
    };
    button(&headers, &text, &form, "/blueprints", async |id| {
        client::set_blueprint_disabled(&s.store, &web_actor(&who), BlueprintId(id), disabled)
            .await
            .map(drop)
    })
    .await
}

/// `/authorizations/{id}/approve` and `…/decline` (with `release_leases`).
async fn decide_authorization(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<Principal>,
    headers: HeaderMap,
    Path((text, decision)): Path<(String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let decision = match decision.as_str() {
        "approve" => client::Decision::Approve,
        "decline" => client::Decision::Decline {
            release_leases: form_value(&form, "release_leases").is_some(),
        },
        _ => return not_found().await,
    };
    button(&headers, &text, &form, "/authorizations", async |id| {
        client::decide_authorization(
            &s.store,
            drydock_model::AuthorizationId(id),
            decision,
            &web_actor(&who),
        )
        .await
        .map(drop)
    })
    .await
}
