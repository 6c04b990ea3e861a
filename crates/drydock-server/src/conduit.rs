//! Read-compatible Conduit search methods of Phorge's Drydock (spec §14),
//! for users migrating scripts and bots:
//! `drydock.blueprint.search`, `drydock.resource.search`,
//! `drydock.lease.search`, `drydock.authorization.search` and
//! `conduit.query`, at `POST /api/<method>`.
//!
//! Requests are accepted the three ways Conduit clients send them: plain
//! form fields (`api.token=...&constraints[ids][0]=3&limit=10`, as in the
//! original's curl examples), a form field `params` holding JSON with the
//! token in `__conduit__.token` (the Python and PHP clients), or a JSON
//! body. Answers have Conduit's shape, `{"result", "error_code",
//! "error_info"}`, and like Conduit report errors with HTTP 200 and an
//! error code. Objects are named by stable PHIDs derived from their ids
//! (`PHID-DRYL-00000000000000000042`).
//!
//! The token (`api.token`, `__conduit__.token`, or an `Authorization:
//! Bearer` header) is a Drydock API token; it is never echoed. A client
//! token searches only its own leases.

use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use drydock_model::{BlueprintId, LeaseId, LeaseStatus, ResourceId, ResourceStatus};
use drydock_store::lease::LeaseFilter;
use drydock_store::resource::ResourceFilter;
use serde_json::{Map, Value, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/{method}", post(call))
}

/// A Conduit error: `error_code` and `error_info` of the answer.
#[derive(Debug)]
pub struct Fault(pub &'static str, pub String);

fn core(message: impl Into<String>) -> Fault {
    Fault("ERR-CONDUIT-CORE", message.into())
}

type Answer = Result<Value, Fault>;

/// Methods served, with their parameters (for `conduit.query`).
const METHODS: &[(&str, &str)] = &[
    (
        "drydock.blueprint.search",
        "Read information about Drydock blueprints.",
    ),
    (
        "drydock.resource.search",
        "Retrieve information about Drydock resources.",
    ),
    (
        "drydock.lease.search",
        "Retrieve information about Drydock leases.",
    ),
    (
        "drydock.authorization.search",
        "Retrieve information about Drydock authorizations.",
    ),
    (
        "conduit.query",
        "Returns the parameters of the Conduit methods.",
    ),
];

#[utoipa::path(post, path = "/api/{method}", tag = "conduit",
    params(("method" = String, Path, description = "drydock.blueprint.search, drydock.resource.search, drydock.lease.search, drydock.authorization.search or conduit.query")),
    request_body(content = Object, content_type = "application/x-www-form-urlencoded",
        description = "Form fields (api.token, queryKey, constraints[statuses][0]=active, attachments, order, before, after, limit), a form field `params` holding the same as JSON (token in __conduit__.token), or a JSON body"),
    responses((status = 200, description = "`{\"result\": {\"data\", \"maps\", \"query\", \"cursor\"}, \"error_code\": null, \"error_info\": null}`; errors set error_code and error_info", body = Object)))]
pub async fn call(
    State(s): State<AppState>,
    Path(method): Path<String>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, Json<Value>) {
    let ip = connect.map(|c| c.0.0.ip());
    let answer = match body {
        Ok(body) => match parse_request(&headers, &body) {
            Ok((params, token)) => {
                let token = token.or_else(|| crate::auth::bearer(&headers).map(str::to_owned));
                match authenticate(&s, ip, token.as_deref()).await {
                    Ok(caller) => dispatch(&s, &caller, &method, &params).await,
                    Err(f) => Err(f),
                }
            }
            Err(f) => Err(f),
        },
        Err(e) => Err(core(format!(
            "the request could not be read: {}",
            e.body_text()
        ))),
    };
    match answer {
        Ok(result) => (
            StatusCode::OK,
            Json(json!({ "result": result, "error_code": null, "error_info": null })),
        ),
        Err(Fault(code, info)) => {
            // Conduit answers errors with 200; authentication failures are
            // 401/403/429 here so HTTP-level tools see them too.
            let status = match code {
                "ERR-INVALID-AUTH" => StatusCode::UNAUTHORIZED,
                "ERR-FORBIDDEN" => StatusCode::FORBIDDEN,
                "ERR-RATE-LIMIT" => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::OK,
            };
            (
                status,
                Json(json!({ "result": null, "error_code": code, "error_info": info })),
            )
        }
    }
}

async fn authenticate(
    s: &AppState,
    ip: Option<std::net::IpAddr>,
    token: Option<&str>,
) -> Result<crate::auth::Principal, Fault> {
    match crate::auth::identify(&s.store, &s.limiter, ip, token).await {
        Ok(p) => Ok(p),
        Err(crate::auth::Refusal::RateLimited) => Err(Fault(
            "ERR-RATE-LIMIT",
            "too many failed authentications from this address; wait a minute".into(),
        )),
        Err(crate::auth::Refusal::Missing) => Err(Fault(
            "ERR-INVALID-AUTH",
            "send an API token as api.token (see drydock token create)".into(),
        )),
        Err(crate::auth::Refusal::Invalid) => Err(Fault(
            "ERR-INVALID-AUTH",
            "the API token is not valid".into(),
        )),
        Err(crate::auth::Refusal::Store(e)) => Err(internal(e)),
    }
}

/// The request's parameters as one JSON object, whichever way it came, and
/// the token it carried (taken out of the parameters).
pub fn parse_request(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Map<String, Value>, Option<String>), Fault> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut params = if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(core("the JSON body must be an object of parameters")),
            Err(e) => return Err(core(format!("the JSON body is malformed: {e}"))),
        }
    } else {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| core(format!("the form body is malformed: {e}")))?;
        match pairs.iter().find(|(k, _)| k == "params") {
            Some((_, text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(core("`params` must hold a JSON object")),
                Err(e) => return Err(core(format!("`params` is not valid JSON: {e}"))),
            },
            None => nest(&pairs)?,
        }
    };
    // Credentials are never part of the query.
    let from_conduit = params
        .remove("__conduit__")
        .and_then(|c| c.get("token").and_then(Value::as_str).map(str::to_owned));
    let plain = params
        .remove("api.token")
        .and_then(|t| t.as_str().map(str::to_owned));
    params.remove("output");
    Ok((params, plain.or(from_conduit)))
}

/// PHP-style form fields (`constraints[ids][0]=3`) as nested JSON; maps
/// whose keys are 0..n become lists.
fn nest(pairs: &[(String, String)]) -> Result<Map<String, Value>, Fault> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let (head, rest) = key.split_once('[').unwrap_or((key, ""));
        let mut path = vec![head.to_owned()];
        let mut rest = rest;
        if !rest.is_empty() {
            rest = rest
                .strip_suffix(']')
                .ok_or_else(|| core(format!("malformed field name {key:?}")))?;
            path.extend(rest.split("][").map(str::to_owned));
        }
        if path.len() > 4 || path.iter().any(|p| p.is_empty() && path.len() == 1) {
            return Err(core(format!("malformed field name {key:?}")));
        }
        let mut node = &mut root;
        for (i, part) in path.iter().enumerate() {
            let Value::Object(map) = node else {
                return Err(core(format!("field {key:?} conflicts with another")));
            };
            let part = if part.is_empty() {
                map.len().to_string()
            } else {
                part.clone()
            };
            node = if i + 1 == path.len() {
                map.insert(part.clone(), Value::String(value.clone()));
                map.get_mut(&part).expect("just inserted")
            } else {
                map.entry(part).or_insert_with(|| Value::Object(Map::new()))
            };
        }
    }
    fn listify(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let is_list = !m.is_empty() && (0..m.len()).all(|i| m.contains_key(&i.to_string()));
                if is_list {
                    let mut m = m;
                    Value::Array(
                        (0..m.len())
                            .map(|i| listify(m.remove(&i.to_string()).unwrap_or(Value::Null)))
                            .collect(),
                    )
                } else {
                    Value::Object(m.into_iter().map(|(k, v)| (k, listify(v))).collect())
                }
            }
            v => v,
        }
    }
    match listify(root) {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

async fn dispatch(
    s: &AppState,
    caller: &crate::auth::Principal,
    method: &str,
    params: &Map<String, Value>,
) -> Answer {
    if caller.role == crate::auth::Role::Client
        && !matches!(method, "conduit.query" | "drydock.lease.search")
    {
        return Err(Fault(
            "ERR-FORBIDDEN",
            format!("a client token may call conduit.query and drydock.lease.search, not {method}"),
        ));
    }
    match method {
        "conduit.query" => Ok(conduit_query()),
        "drydock.blueprint.search" => {
            blueprint_search(
                s,
                &Search::parse(
                    params,
                    &["ids", "phids", "match", "isDisabled", "projects"],
                    &["active", "all"],
                )?,
            )
            .await
        }
        "drydock.resource.search" => {
            resource_search(
                s,
                &Search::parse(
                    params,
                    &["ids", "phids", "statuses", "blueprintPHIDs"],
                    &["active", "all"],
                )?,
            )
            .await
        }
        "drydock.lease.search" => {
            lease_search(
                s,
                caller,
                &Search::parse(
                    params,
                    &["ids", "phids", "statuses", "ownerPHIDs", "resourcePHIDs"],
                    &["active", "all"],
                )?,
            )
            .await
        }
        "drydock.authorization.search" => {
            authorization_search(
                s,
                &Search::parse(
                    params,
                    &["ids", "phids", "blueprintPHIDs", "objectPHIDs"],
                    &["all"],
                )?,
            )
            .await
        }
        _ => Err(Fault(
            "ERR-CONDUIT-CALL",
            format!(
                "Conduit method {method:?} does not exist here (served: {})",
                METHODS
                    .iter()
                    .map(|(m, _)| *m)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn conduit_query() -> Value {
    let search_params = json!({
        "queryKey": "optional string",
        "constraints": "optional map<string, wild>",
        "attachments": "optional map<string, bool>",
        "order": "optional order",
        "before": "optional string",
        "after": "optional string",
        "limit": "optional int (default = 100)",
    });
    let mut out = Map::new();
    for (name, description) in METHODS {
        let params = if *name == "conduit.query" {
            json!({})
        } else {
            search_params.clone()
        };
        out.insert(
            (*name).into(),
            json!({ "description": description, "params": params, "return": "map<string, wild>" }),
        );
    }
    Value::Object(out)
}

/// The standard search parameters.
struct Search {
    /// The builtin query named, or `None` for none (then only the
    /// constraints apply, as in Phorge).
    query_key: Option<String>,
    constraints: Map<String, Value>,
    before: Option<i64>,
    after: Option<i64>,
    limit: i64,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_i64() != Some(0)),
        Value::String(s) => match s.as_str() {
            "1" | "true" => Some(true),
            "0" | "false" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A list constraint (a JSON list, or a map of index to value).
fn list<'a>(name: &str, v: &'a Value) -> Result<Vec<&'a Value>, Fault> {
    match v {
        Value::Array(a) => Ok(a.iter().collect()),
        Value::Object(m) => Ok(m.values().collect()),
        _ => Err(core(format!("constraint {name:?} must be a list"))),
    }
}

fn text_list(name: &str, v: &Value) -> Result<Vec<String>, Fault> {
    list(name, v)?
        .into_iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(core(format!(
                "constraint {name:?} must be a list of strings"
            ))),
        })
        .collect()
}

fn id_list(name: &str, v: &Value) -> Result<Vec<i64>, Fault> {
    list(name, v)?
        .into_iter()
        .map(|x| int(x).ok_or_else(|| core(format!("constraint {name:?} must be a list of ids"))))
        .collect()
}

/// PHIDs of our objects: a type code and the id, zero-padded to the
/// original's 20 characters.
fn phid(kind: &str, id: i64) -> String {
    format!("PHID-{kind}-{id:020}")
}

fn phid_ids(name: &str, kind: &str, v: &Value) -> Result<Vec<i64>, Fault> {
    text_list(name, v)?
        .into_iter()
        .map(|p| {
            p.strip_prefix(&format!("PHID-{kind}-"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    core(format!(
                        "constraint {name:?}: {p:?} is not a PHID-{kind}-... PHID"
                    ))
                })
        })
        .collect()
}

impl Search {
    fn parse(p: &Map<String, Value>, allowed: &[&str], keys: &[&str]) -> Result<Search, Fault> {
        for k in p.keys() {
            if ![
                "queryKey",
                "constraints",
                "attachments",
                "order",
                "before",
                "after",
                "limit",
            ]
            .contains(&k.as_str())
            {
                return Err(core(format!("unknown parameter {k:?}")));
            }
        }
        let query_key = match p.get("queryKey") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) if k.is_empty() => None,
            Some(Value::String(k)) if keys.contains(&k.as_str()) => Some(k.clone()),
            Some(k) => {
                return Err(core(format!(
                    "unknown queryKey {k}; builtin queries: {}",
                    keys.join(", ")
                )));
            }
        };
        let constraints = match p.get("constraints") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(Value::Array(a)) if a.is_empty() => Map::new(),
            Some(_) => return Err(core("constraints must be a map")),
        };
        for k in constraints.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(core(format!(
                    "Constraint {k:?} is not a valid constraint for this query (valid: {}).",
                    allowed.join(", ")
                )));
            }
        }
        if let Some(a) = p.get("attachments")
            && !matches!(a, Value::Null | Value::Object(_) | Value::Array(_))
        {
            return Err(core("attachments must be a map"));
        }
        match p.get("order") {
            None | Some(Value::Null) => {}
            Some(Value::String(o)) if o == "newest" => {}
            Some(o) => return Err(core(format!("unsupported order {o}; supported: newest"))),
        }
        let cursor = |name: &str| match p.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(v) => int(v)
                .map(Some)
                .ok_or_else(|| core(format!("{name} must be a cursor id"))),
        };
        let limit = match p.get("limit") {
            None | Some(Value::Null) => 100,
            Some(v) => match int(v) {
                Some(n) if (1..=100).contains(&n) => n,
                _ => return Err(core("limit must be between 1 and 100")),
            },
        };
        Ok(Search {
            query_key,
            constraints,
            before: cursor("before")?,
            after: cursor("after")?,
            limit,
        })
    }

    fn c(&self, name: &str) -> Option<&Value> {
        self.constraints.get(name).filter(|v| !v.is_null())
    }

    /// Ids allowed by `ids` and `phids` (None: any).
    fn ids(&self, kind: &str) -> Result<Option<Vec<i64>>, Fault> {
        let mut out: Option<Vec<i64>> = None;
        if let Some(v) = self.c("ids") {
            out = Some(id_list("ids", v)?);
        }
        if let Some(v) = self.c("phids") {
            let p = phid_ids("phids", kind, v)?;
            out = Some(match out {
                Some(ids) => ids.into_iter().filter(|i| p.contains(i)).collect(),
                None => p,
            });
        }
        Ok(out)
    }

    /// The result envelope for items sorted newest first, `more` telling
    /// whether another page follows.
    fn result(&self, data: Vec<Value>, first: Option<i64>, last: Option<i64>, more: bool) -> Value {
        let paging_back = self.before.is_some();
        json!({
            "data": data,
            "maps": {},
            "query": { "queryKey": self.query_key },
            "cursor": {
                "limit": self.limit,
                "after": if more || paging_back { last.map(|l| l.to_string()) } else { None },
                "before": if self.after.is_some() || (paging_back && more) { first.map(|f| f.to_string()) } else { None },
                "order": null,
            }
        })
    }

    /// Apply the cursor and the limit to items sorted newest first.
    fn page<T>(&self, mut items: Vec<T>, id: impl Fn(&T) -> i64) -> (Vec<T>, bool) {
        items.retain(|x| {
            self.after.is_none_or(|a| id(x) < a) && self.before.is_none_or(|b| id(x) > b)
        });
        let limit = self.limit as usize;
        if self.before.is_some() {
            // The page just newer than `before`: the last `limit` of them.
            let more = items.len() > limit;
            let skip = items.len().saturating_sub(limit);
            (items.into_iter().skip(skip).collect(), more)
        } else {
            let more = items.len() > limit;
            items.truncate(limit);
            (items, more)
        }
    }
}

fn seconds(ms: i64) -> i64 {
    ms / 1000
}

fn status(value: &str) -> Value {
    let mut name = value.to_owned();
    if let Some(f) = name.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    json!({ "value": value, "name": name })
}

/// One result before paging: what is particular to its type.
struct Item {
    id: i64,
    created: i64,
    modified: i64,
    fields: Value,
}

impl Search {
    /// The `statuses` constraint, else the builtin `active` query's.
    fn statuses<T>(&self, active: &[T]) -> Result<Vec<T>, Fault>
    where
        T: std::str::FromStr + Clone + PartialEq,
        T::Err: std::fmt::Display,
    {
        let mut out = match self.c("statuses") {
            Some(v) => text_list("statuses", v)?
                .iter()
                .map(|t| t.parse::<T>().map_err(|e| core(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?,
            None if self.query_key.as_deref() == Some("active") => active.to_vec(),
            None => vec![],
        };
        out.dedup();
        Ok(out)
    }

    /// The answer for `items` sorted newest first: one page, its cursor,
    /// and the fields every object has.
    fn answer(&self, kind: &str, items: Vec<Item>) -> Value {
        let (page, more) = self.page(items, |i| i.id);
        let data = page
            .iter()
            .map(|i| {
                let mut fields = i.fields.clone();
                fields["dateCreated"] = json!(seconds(i.created));
                fields["dateModified"] = json!(seconds(i.modified));
                fields["policy"] = json!({ "view": "users", "edit": "admin" });
                json!({ "id": i.id, "type": kind, "phid": phid(kind, i.id), "fields": fields, "attachments": {} })
            })
            .collect();
        self.result(
            data,
            page.first().map(|i| i.id),
            page.last().map(|i| i.id),
            more,
        )
    }
}

async fn blueprint_search(s: &AppState, q: &Search) -> Answer {
    let ids = q.ids("DRYB")?;
    let name = match q.c("match") {
        None => None,
        Some(Value::String(m)) => Some(m.to_lowercase()),
        Some(_) => return Err(core("constraint \"match\" must be a string")),
    };
    let disabled = match q.c("isDisabled") {
        None => None,
        Some(v) => Some(truthy(v).ok_or_else(|| core("constraint \"isDisabled\" must be a bool"))?),
    };
    if let Some(p) = q.c("projects")
        && !list("projects", p)?.is_empty()
    {
        // Drydock has no projects: nothing is tagged.
        return Ok(q.result(vec![], None, None, false));
    }
    let mut all = s.store.blueprints(None).await.map_err(internal)?;
    all.reverse();
    all.retain(|b| {
        ids.as_ref().is_none_or(|ids| ids.contains(&b.id.0))
            && name
                .as_ref()
                .is_none_or(|n| b.name.to_lowercase().contains(n))
            && disabled.is_none_or(|d| b.disabled == d)
            && (q.query_key.as_deref() != Some("active") || !b.disabled)
    });
    let items = all
        .iter()
        .map(|b| {
            let mut fields = json!({
                "name": b.name,
                "type": s.registry.get(&b.kind).map_or(b.kind.as_str(), |i| i.resource_type()),
            });
            for (k, v) in &b.fields {
                fields[format!("custom.{k}")] = v.clone();
            }
            Item {
                id: b.id.0,
                created: b.created_at,
                modified: b.modified_at,
                fields,
            }
        })
        .collect();
    Ok(q.answer("DRYB", items))
}

async fn resource_search(s: &AppState, q: &Search) -> Answer {
    let statuses = q.statuses(&[ResourceStatus::Pending, ResourceStatus::Active])?;
    let blueprints = match q.c("blueprintPHIDs") {
        Some(v) => phid_ids("blueprintPHIDs", "DRYB", v)?
            .into_iter()
            .map(BlueprintId)
            .collect(),
        None => vec![],
    };
    let ids = q.ids("DRYR")?;
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(q.result(vec![], None, None, false));
    }
    let mut rows = s
        .store
        .resources_matching(&ResourceFilter {
            statuses,
            ids: ids
                .unwrap_or_default()
                .into_iter()
                .map(ResourceId)
                .collect(),
            blueprints,
            before: q.after.map(ResourceId),
            after: q.before.map(ResourceId),
            ascending: q.before.is_some(),
            limit: Some(q.limit + 1),
        })
        .await
        .map_err(internal)?;
    if q.before.is_some() {
        rows.reverse();
    }
    let items = rows
        .iter()
        .map(|r| Item {
            id: r.id.0,
            created: r.created_at,
            modified: r.modified_at,
            fields: json!({
                "blueprintPHID": phid("DRYB", r.blueprint_id.0),
                "status": status(r.status.as_str()),
            }),
        })
        .collect();
    Ok(q.answer("DRYR", items))
}

async fn lease_search(s: &AppState, caller: &crate::auth::Principal, q: &Search) -> Answer {
    let statuses = q.statuses(&[
        LeaseStatus::Pending,
        LeaseStatus::Acquired,
        LeaseStatus::Active,
    ])?;
    let resources = match q.c("resourcePHIDs") {
        Some(v) => phid_ids("resourcePHIDs", "DRYR", v)?
            .into_iter()
            .map(ResourceId)
            .collect(),
        None => vec![],
    };
    let owners = match q.c("ownerPHIDs") {
        Some(v) => text_list("ownerPHIDs", v)?,
        None => vec![],
    };
    let ids = q.ids("DRYL")?;
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(q.result(vec![], None, None, false));
    }
    let mut rows = s
        .store
        .leases(&LeaseFilter {
            statuses,
            ids: ids.unwrap_or_default().into_iter().map(LeaseId).collect(),
            resources,
            owners,
            authorizing: (caller.role == crate::auth::Role::Client).then(|| caller.object.clone()),
            before: q.after.map(LeaseId),
            after: q.before.map(LeaseId),
            ascending: q.before.is_some(),
            limit: Some(q.limit + 1),
        })
        .await
        .map_err(internal)?;
    if q.before.is_some() {
        rows.reverse();
    }
    let items = rows
        .iter()
        .map(|l| Item {
            id: l.id.0,
            created: l.created_at,
            modified: l.modified_at,
            fields: json!({
                "resourcePHID": l.resource_id.map(|r| phid("DRYR", r.0)),
                "resourceType": l.resource_type,
                "until": l.until.map(seconds),
                "ownerPHID": l.owner,
                "authorizingPHID": l.authorizing,
                "status": status(l.status.as_str()),
            }),
        })
        .collect();
    Ok(q.answer("DRYL", items))
}

async fn authorization_search(s: &AppState, q: &Search) -> Answer {
    let ids = q.ids("DRYA")?;
    let blueprints = match q.c("blueprintPHIDs") {
        Some(v) => Some(phid_ids("blueprintPHIDs", "DRYB", v)?),
        None => None,
    };
    let objects = match q.c("objectPHIDs") {
        Some(v) => Some(text_list("objectPHIDs", v)?),
        None => None,
    };
    let mut all = s.store.authorizations(None, None).await.map_err(internal)?;
    all.reverse();
    all.retain(|a| {
        ids.as_ref().is_none_or(|i| i.contains(&a.id.0))
            && blueprints
                .as_ref()
                .is_none_or(|b| b.contains(&a.blueprint.0))
            && objects.as_ref().is_none_or(|o| o.contains(&a.object))
    });
    let items = all
        .iter()
        .map(|a| Item {
            id: a.id.0,
            created: a.created_at,
            modified: a.modified_at,
            fields: json!({
                "blueprintPHID": phid("DRYB", a.blueprint.0),
                "blueprintAuthorizationState": status(a.blueprint_state.as_str()),
                "objectPHID": a.object,
                "objectAuthorizationState": status(if a.object_active { "active" } else { "inactive" }),
            }),
        })
        .collect();
    Ok(q.answer("DRYA", items))
}

fn internal(e: drydock_store::StoreError) -> Fault {
    tracing::error!("conduit: {e}");
    core("the server could not read its database; see its log")
}
