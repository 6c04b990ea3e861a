//! Who is calling: API tokens, roles, sessions, and a limit on guessing.
//!
//! A token is a random secret (`ddt_` + 40 hex digits) shown once at
//! creation; the store keeps only its SHA-256 (a high-entropy secret needs
//! no slow hash). Every API request carries it as `Authorization: Bearer
//! …`; the web UI keeps it in an HttpOnly, SameSite=Strict session cookie
//! set by the login form; Conduit calls pass it as `api.token` or
//! `__conduit__.token`.
//!
//! Roles: `admin` may do everything; `viewer` may read everything and
//! change nothing; `client` may request leases — always on behalf of its
//! own authorizing object — and see, use, renew and release only those,
//! and read blueprints. Another client's lease answers 404, exactly like
//! a lease that does not exist.
//!
//! After [`MAX_FAILURES`] failed authentications from one address within
//! [`FAILURE_WINDOW`], that address gets `429` until the window passes.

use drydock_store::token::TokenInfo;
use drydock_store::{Store, StoreError};
use sha2::Digest;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Name of the web session cookie.
pub const SESSION_COOKIE: &str = "drydock_session";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Client,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "client" => Ok(Role::Client),
            "viewer" => Ok(Role::Viewer),
            _ => Err(format!("unknown role {s:?} (admin, client or viewer)")),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
    /// The authorizing object of its leases (clients).
    pub object: String,
}

impl Principal {
    /// How its actions are recorded (commands, decisions, blueprint edits).
    pub fn actor(&self) -> String {
        format!("token:{}", self.name)
    }

    pub fn can_write(&self) -> bool {
        self.role != Role::Viewer
    }
}

/// A token just created: the only moment its secret exists outside the
/// caller's hands.
pub struct NewToken {
    pub info: TokenInfo,
    pub secret: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .field("secret", &"[redacted]")
            .finish()
    }
}

pub fn hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Invalid {
        what: "token",
        reason: format!("no system randomness: {e}"),
    })?;
    Ok(format!(
        "ddt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Check a client's authorizing object: printable, and not a name that
/// would borrow someone else's rights (the administrator's, or a
/// blueprint's transitive authorizations).
pub fn check_object(object: &str) -> Result<(), String> {
    if object.is_empty()
        || object.len() > 200
        || object.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "authorizing object {object:?} must be 1 to 200 printable characters without spaces"
        ));
    }
    if object == drydock_engine::ADMIN
        || object.starts_with("blueprint:")
        || object.starts_with("viewer:")
    {
        return Err(format!("authorizing object {object:?} is reserved"));
    }
    Ok(())
}

/// Create a token. Clients act as `object` (default `client:NAME`).
pub async fn create_token(
    store: &Store,
    name: &str,
    role: Role,
    object: Option<&str>,
    by: &str,
) -> Result<NewToken, StoreError> {
    let object = match role {
        Role::Admin => drydock_engine::ADMIN.to_owned(),
        Role::Viewer => format!("viewer:{name}"),
        Role::Client => {
            let o = object.map_or_else(|| format!("client:{name}"), str::to_owned);
            check_object(&o).map_err(|reason| StoreError::Invalid {
                what: "token",
                reason,
            })?;
            o
        }
    };
    let secret = new_secret()?;
    let info = store
        .create_token(name, role.as_str(), &object, &hash(&secret), by)
        .await?;
    Ok(NewToken { info, secret })
}

/// The caller a secret belongs to, if it is a live token.
pub async fn authenticate(store: &Store, secret: &str) -> Result<Option<Principal>, StoreError> {
    if !secret.starts_with("ddt_") || secret.len() > 100 {
        return Ok(None);
    }
    Ok(store.token_by_hash(&hash(secret)).await?.and_then(|t| {
        Some(Principal {
            token_id: t.id,
            role: t.role.parse().ok()?,
            name: t.name,
            object: t.object,
        })
    }))
}

/// Why a request is not let in.
#[derive(Debug)]
pub enum Refusal {
    /// Too many failures from this address lately.
    RateLimited,
    /// No token given.
    Missing,
    /// An unknown or revoked token (counted against the address).
    Invalid,
    Store(StoreError),
}

/// Who is calling, with the failure limit applied: the one check every
/// entry point (API, metrics, Conduit, web login) goes through.
pub async fn identify(
    store: &Store,
    limiter: &Limiter,
    ip: Option<IpAddr>,
    secret: Option<&str>,
) -> Result<Principal, Refusal> {
    if limiter.blocked(ip) {
        return Err(Refusal::RateLimited);
    }
    let secret = secret.ok_or(Refusal::Missing)?;
    match authenticate(store, secret).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            limiter.failed(ip);
            Err(Refusal::Invalid)
        }
        Err(e) => Err(Refusal::Store(e)),
    }
}

/// Failed authentications per address.
#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Limiter {
    /// Whether `ip` has failed too often lately.
    pub fn blocked(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    pub fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Bounded memory: forget windows that are over.
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// What a role may do on an API route (by its route pattern).
pub fn api_allows(role: Role, method: &axum::http::Method, route: &str) -> bool {
    use axum::http::Method;
    match role {
        Role::Admin => true,
        Role::Viewer => method == Method::GET,
        Role::Client => {
            let reads = [
                "/api/v1/leases",
                "/api/v1/leases/{id}",
                "/api/v1/leases/{id}/wait",
                "/api/v1/leases/{id}/commands",
                "/api/v1/blueprints",
                "/api/v1/blueprints/{id}",
                "/api/v1/blueprint-types",
            ];
            let writes = [
                "/api/v1/leases",
                "/api/v1/leases/{id}/release",
                "/api/v1/leases/{id}/renew",
                "/api/v1/leases/{id}/command",
            ];
            (method == Method::GET && reads.contains(&route))
                || (method == Method::POST && writes.contains(&route))
        }
    }
}

/// Authenticate a bearer-token request (API, metrics) and check its role
/// against the route; the caller becomes an [`Principal`] extension.
pub async fn require_token(
    axum::extract::State(s): axum::extract::State<crate::AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::error::ApiError;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let unauthenticated = |message: &str| {
        (
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message),
        )
            .into_response()
    };
    let secret = bearer(req.headers()).map(str::to_owned);
    let principal = match identify(&s.store, &s.limiter, ip, secret.as_deref()).await {
        Ok(p) => p,
        Err(Refusal::RateLimited) => {
            return (
                [(axum::http::header::RETRY_AFTER, "60")],
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-failures",
                    "too many failed authentications from this address; wait a minute",
                ),
            )
                .into_response();
        }
        Err(Refusal::Missing) => {
            return unauthenticated(
                "send a token: Authorization: Bearer <token> (see drydock token create)",
            );
        }
        Err(Refusal::Invalid) => {
            return unauthenticated("the token is not valid (unknown or revoked)");
        }
        Err(Refusal::Store(e)) => return ApiError::from(e).into_response(),
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let allowed = match route.as_deref() {
        Some("/metrics") => principal.role != Role::Client,
        Some(r) => api_allows(principal.role, req.method(), r),
        // Unknown routes answer 404 to anyone authenticated.
        None => true,
    };
    if !allowed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a {} token may not {} {}",
                principal.role.as_str(),
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
