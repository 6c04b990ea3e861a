//! The blueprint contract (spec §10.1) and the registry of implementations.
//!
//! An implementation says how to build, activate and destroy resources of
//! one type and how to hand leases out on them. It never writes lease or
//! resource rows: it returns what should change (templates, acquisitions,
//! attributes) and the engine writes it, fenced, under the object's lock.

use async_trait::async_trait;
use drydock_store::Store;
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::Lease;
use drydock_store::resource::Resource;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a blueprint operation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BlueprintError {
    /// Not ready yet (a dependency is still activating): try again after
    /// `after`. Not a failure.
    #[error("waiting: {reason}")]
    Yield { after: Duration, reason: String },
    /// A transient failure (connection dropped, host busy): retried with
    /// backoff a bounded number of times, then the object breaks.
    #[error("{0}")]
    Temporary(String),
    /// Cannot succeed (bad configuration, invalid request): the object breaks.
    #[error("{0}")]
    Permanent(String),
}

pub type BlueprintResult<T> = Result<T, BlueprintError>;

/// The kind of value a blueprint field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// A non-negative integer.
    Count,
    Bool,
    /// Comma-separated list of text.
    List,
    /// Comma-separated `name=value` pairs.
    Pairs,
    /// A credential, given by id or name, stored as its id.
    Credential,
    /// Blueprints, comma-separated ids or names, stored as ids. Leases the
    /// blueprint takes from them are checked as the blueprint itself.
    Blueprints,
}

impl FieldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Count => "count",
            Self::Bool => "bool",
            Self::List => "list",
            Self::Pairs => "pairs",
            Self::Credential => "credential",
            Self::Blueprints => "blueprints",
        }
    }
}

/// One configuration field of a blueprint type, declared once and used by
/// the CLI, the API and the web forms to validate input.
#[derive(Clone, Copy, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    pub required: bool,
    pub default: Option<&'static str>,
    pub description: &'static str,
    /// Secret values are never shown back.
    pub secret: bool,
}

/// A problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Parse one field value from text (as `--set KEY=VALUE` gives it).
pub fn parse_field(spec: &FieldSpec, text: &str) -> Result<Value, String> {
    let text = text.trim();
    match spec.kind {
        FieldKind::Text | FieldKind::Credential => Ok(Value::String(text.to_owned())),
        FieldKind::Count => text
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a whole number ≥ 0, got {text:?}")),
        FieldKind::Bool => match text {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {text:?}")),
        },
        FieldKind::List | FieldKind::Blueprints => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        FieldKind::Pairs => {
            let mut map = Map::new();
            for pair in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected name=value, got {pair:?}"))?;
                if k.trim().is_empty() {
                    return Err(format!("empty name in {pair:?}"));
                }
                map.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
            }
            Ok(Value::Object(map))
        }
    }
}

/// Check a whole field map against the declaration: unknown fields, missing
/// required fields and values of the wrong kind are all reported, by name.
/// Defaults are filled in.
pub fn validate_fields(
    specs: &[FieldSpec],
    fields: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut out = Map::new();
    for key in fields.keys() {
        if !specs.iter().any(|s| s.name == key) {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            errors.push(FieldError {
                field: key.clone(),
                message: format!("unknown field (known: {})", known.join(", ")),
            });
        }
    }
    for spec in specs {
        let value = match fields.get(spec.name) {
            Some(Value::String(s))
                if !matches!(spec.kind, FieldKind::Text | FieldKind::Credential) =>
            {
                match parse_field(spec, s) {
                    Ok(v) => Some(v),
                    Err(m) => {
                        errors.push(FieldError {
                            field: spec.name.into(),
                            message: m,
                        });
                        continue;
                    }
                }
            }
            Some(v) => Some(v.clone()),
            None => spec
                .default
                .map(|d| parse_field(spec, d).unwrap_or(Value::Null)),
        };
        let ok = match (&value, spec.kind) {
            (None, _) => !spec.required,
            (Some(Value::String(s)), FieldKind::Text | FieldKind::Credential) => {
                !(spec.required && s.is_empty())
            }
            (Some(Value::Number(n)), FieldKind::Count) => n.is_u64(),
            (Some(Value::Bool(_)), FieldKind::Bool) => true,
            (Some(Value::Array(a)), FieldKind::List | FieldKind::Blueprints) => {
                a.iter().all(Value::is_string) && !(spec.required && a.is_empty())
            }
            (Some(Value::Object(m)), FieldKind::Pairs) => {
                m.values().all(Value::is_string) && !(spec.required && m.is_empty())
            }
            _ => false,
        };
        if !ok {
            let message = match value {
                None => "required".to_owned(),
                Some(v) => format!("expected {}, got {v}", spec.kind.as_str()),
            };
            errors.push(FieldError {
                field: spec.name.into(),
                message,
            });
        } else if let Some(v) = value {
            out.insert(spec.name.into(), v);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The blueprint ids stored in a `Blueprints` field.
pub fn blueprint_list(bp: &Blueprint, field: &str) -> Vec<drydock_model::BlueprintId> {
    bp.fields
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str()?.parse().ok())
                .map(drydock_model::BlueprintId)
                .collect()
        })
        .unwrap_or_default()
}

/// What the allocator asked a blueprint to build.
#[derive(Clone, Debug, Default)]
pub struct ResourceTemplate {
    pub attributes: Map<String, Value>,
    /// Created `active` (no activation step) instead of `pending`.
    pub activate_now: bool,
    /// Slot locks the resource holds until destroyed (e.g. one per host).
    pub slot_locks: Vec<String>,
}

/// How a lease is acquired on a resource.
#[derive(Clone, Debug, Default)]
pub struct Acquisition {
    /// Slot locks the lease holds until destroyed (e.g. one lease per
    /// working copy).
    pub slot_locks: Vec<String>,
    /// Go straight to `active` (no activation step).
    pub activate_now: bool,
}

/// A command to run on a leased resource.
#[derive(Clone, Debug, Default)]
pub struct CommandSpec {
    /// Program and arguments: passed as words, never pasted into a shell
    /// (where a shell is in the way, every word is quoted).
    pub argv: Vec<String>,
    /// Working directory relative to the lease's directory.
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    /// Killed after this long.
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    /// Check every part of the spec; the error names the bad part.
    pub fn validate(&self) -> Result<Option<String>, InterfaceError> {
        drydock_model::input::argv(&self.argv).map_err(InterfaceError::Invalid)?;
        for (k, _) in &self.env {
            drydock_model::input::env_name(k).map_err(InterfaceError::Invalid)?;
        }
        if self.env.iter().any(|(_, v)| v.contains('\0')) {
            return Err(InterfaceError::Invalid(
                "an environment value contains a NUL byte".into(),
            ));
        }
        self.cwd
            .as_deref()
            .map(drydock_model::input::relative_path)
            .transpose()
            .map_err(InterfaceError::Invalid)
    }
}

/// How running something on a resource failed (not a non-zero exit: that
/// is a result).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterfaceError {
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The resource could not be reached (after bounded retries).
    #[error("cannot reach the resource: {0}")]
    Unreachable(String),
    /// The host is not who it should be (its key does not match): a
    /// configuration or security problem, never retried.
    #[error("host key verification failed: {0}")]
    HostKey(String),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Where a command's output goes.
pub type Output<'a> = &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send);

/// Run commands on a leased resource (spec §10.4).
#[async_trait]
pub trait CommandInterface: Send + Sync {
    /// Run `spec`, streaming its output; returns its exit code.
    async fn run(
        &self,
        spec: &CommandSpec,
        stdout: Output<'_>,
        stderr: Output<'_>,
    ) -> Result<i32, InterfaceError>;
}

/// Run a command and collect its output (for blueprints' own commands).
pub async fn capture(
    iface: &dyn CommandInterface,
    spec: &CommandSpec,
) -> Result<(i32, Vec<u8>, Vec<u8>), InterfaceError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = iface.run(spec, &mut out, &mut err).await?;
    Ok((code, out, err))
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    pub name: String,
    pub dir: bool,
    pub size: u64,
}

/// Read, write and list files inside a lease's directory (spec §10.4).
/// Paths are relative to that directory and can never leave it (no `..`,
/// no absolute paths, no escape through symbolic links).
#[async_trait]
pub trait FilesystemInterface: Send + Sync {
    /// A whole file; refused if larger than `max_bytes`.
    async fn read(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, InterfaceError>;
    /// Create or replace a file (and its parent directories).
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), InterfaceError>;
    /// A directory's entries, by name.
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, InterfaceError>;
}

/// What hooks may read: the store (never to write lease or resource rows)
/// and the blueprint's configuration.
pub struct Context<'a> {
    pub store: &'a Store,
    pub blueprint: &'a Blueprint,
}

impl Context<'_> {
    /// Whether the claim (the object's lock) this hook runs under is still
    /// held. A hook is stopped at its next await once the claim is lost;
    /// between awaits — before a destructive or external step that cannot
    /// be undone (removing a directory, creating a container) — it asks
    /// with [`Context::ensure_claim`].
    pub fn claim_held(&self) -> bool {
        drydock_store::queue::claim_held()
    }

    /// `Ok` while the claim is held; else a yield (another worker owns the
    /// object now, or will: this pass must not act).
    pub fn ensure_claim(&self) -> BlueprintResult<()> {
        if self.claim_held() {
            Ok(())
        } else {
            Err(BlueprintError::Yield {
                after: Duration::ZERO,
                reason: "the object's claim was lost; another worker takes it over".into(),
            })
        }
    }
}

/// A blueprint implementation (spec §10.1).
#[async_trait]
pub trait BlueprintImpl: Send + Sync + 'static {
    /// The implementation's name, stored as the blueprint's type
    /// (`host.local`, `host.ssh`, `working-copy`).
    fn type_name(&self) -> &'static str;
    /// The resource type it builds (`host`, `working-copy`).
    fn resource_type(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// Configuration fields.
    fn fields(&self) -> &'static [FieldSpec];

    /// Most resources this blueprint may have at once (not destroyed).
    /// Enforced exactly by slot locks. Default: the `limit` field, if any.
    fn limit(&self, bp: &Blueprint) -> Option<u64> {
        bp.fields
            .get("limit")
            .and_then(Value::as_u64)
            .filter(|l| *l > 0)
    }

    /// Most live leases on one resource at once. Enforced exactly by slot
    /// locks. Default: the `lease-limit` field, if any.
    fn lease_limit(&self, bp: &Blueprint) -> Option<u64> {
        bp.fields
            .get("lease-limit")
            .and_then(Value::as_u64)
            .filter(|l| *l > 0)
    }

    /// Could this blueprint ever satisfy the lease (configuration-level)?
    fn can_ever_allocate(&self, _bp: &Blueprint, _lease: &Lease) -> BlueprintResult<bool> {
        Ok(true)
    }

    /// Soft check, without locks, whether allocating now makes sense.
    async fn can_allocate(&self, _ctx: &Context<'_>, _lease: &Lease) -> bool {
        true
    }

    /// Describe a new resource for `lease`. The engine inserts it with its
    /// slot locks (and the limit slot) in one transaction.
    async fn allocate(&self, ctx: &Context<'_>, lease: &Lease)
    -> BlueprintResult<ResourceTemplate>;

    /// Bring a pending resource up. Returns attributes to merge.
    async fn activate_resource(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
    ) -> BlueprintResult<Map<String, Value>> {
        Ok(Map::new())
    }

    /// Tear a resource down (it is released or broken).
    async fn destroy_resource(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
    ) -> BlueprintResult<()> {
        Ok(())
    }

    /// Coarse, lock-free compatibility of a lease with an active resource.
    fn can_acquire(&self, _bp: &Blueprint, _resource: &Resource, _lease: &Lease) -> bool {
        true
    }

    /// How to acquire `lease` on `resource`.
    fn acquire(
        &self,
        bp: &Blueprint,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Acquisition>;

    /// Set the lease up on its resource. Returns lease attributes to merge.
    async fn activate_lease(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Map<String, Value>> {
        Ok(Map::new())
    }

    /// Whether [`BlueprintImpl::activate_lease`],
    /// [`BlueprintImpl::did_release_lease`] and
    /// [`BlueprintImpl::destroy_lease`] are quick work on this machine only
    /// — no network, no waiting on other processes, no writes through the
    /// store — so the engine may run them inside the transaction before
    /// them: activation in the one that acquired the lease (pending ->
    /// active in one commit), teardown in the one that consumed its release
    /// (released -> destroyed in one commit). Default: no; what came before
    /// is committed before a hook starts.
    fn lease_hooks_are_local(&self, _bp: &Blueprint) -> bool {
        false
    }

    /// Called once the lease is released (at least once).
    async fn did_release_lease(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<()> {
        Ok(())
    }

    /// Remove per-lease state.
    async fn destroy_lease(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<()> {
        Ok(())
    }

    /// Prefer growing the pool over sharing a resource that has leases.
    fn should_allocate_supplemental(
        &self,
        _bp: &Blueprint,
        _resource: &Resource,
        _lease: &Lease,
    ) -> bool {
        false
    }

    /// Affinity: higher ranks are tried first among free resources (e.g. a
    /// working copy already at the requested commit).
    async fn rank(&self, _ctx: &Context<'_>, _resource: &Resource, _lease: &Lease) -> i64 {
        0
    }

    /// The filesystem interface of an active lease on `resource`, rooted at
    /// the lease's directory.
    async fn filesystem_interface(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Arc<dyn FilesystemInterface>> {
        Err(BlueprintError::Permanent(format!(
            "{} resources offer no filesystem interface",
            self.type_name()
        )))
    }

    /// The command interface of an active lease on `resource`, rooted at
    /// the lease's directory.
    async fn command_interface(
        &self,
        _ctx: &Context<'_>,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Arc<dyn CommandInterface>> {
        Err(BlueprintError::Permanent(format!(
            "{} resources offer no command interface",
            self.type_name()
        )))
    }
}

/// The implementations a process knows, by type name.
#[derive(Clone, Default)]
pub struct Registry {
    impls: BTreeMap<&'static str, Arc<dyn BlueprintImpl>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, imp: Arc<dyn BlueprintImpl>) {
        self.impls.insert(imp.type_name(), imp);
    }

    pub fn with(mut self, imp: Arc<dyn BlueprintImpl>) -> Self {
        self.register(imp);
        self
    }

    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn BlueprintImpl>> {
        self.impls.get(type_name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn BlueprintImpl>> {
        self.impls.values()
    }

    /// Implementations that build resources of `resource_type`.
    pub fn for_resource_type(&self, resource_type: &str) -> Vec<&Arc<dyn BlueprintImpl>> {
        self.impls
            .values()
            .filter(|i| i.resource_type() == resource_type)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPECS: &[FieldSpec] = &[
        FieldSpec {
            name: "root",
            kind: FieldKind::Text,
            required: true,
            default: None,
            description: "",
            secret: false,
        },
        FieldSpec {
            name: "limit",
            kind: FieldKind::Count,
            required: false,
            default: None,
            description: "",
            secret: false,
        },
        FieldSpec {
            name: "hosts",
            kind: FieldKind::List,
            required: false,
            default: Some("a,b"),
            description: "",
            secret: false,
        },
        FieldSpec {
            name: "repos",
            kind: FieldKind::Pairs,
            required: false,
            default: None,
            description: "",
            secret: false,
        },
        FieldSpec {
            name: "fast",
            kind: FieldKind::Bool,
            required: false,
            default: None,
            description: "",
            secret: false,
        },
    ];

    #[test]
    fn fields_are_parsed_defaulted_and_every_error_is_named() {
        let ok = validate_fields(
            SPECS,
            json!({"root": "/srv", "limit": "3", "repos": "app=/git/app.git, lib=/git/lib", "fast": "yes"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(ok["limit"], 3);
        assert_eq!(ok["hosts"], json!(["a", "b"]));
        assert_eq!(
            ok["repos"],
            json!({"app": "/git/app.git", "lib": "/git/lib"})
        );
        assert_eq!(ok["fast"], true);
        let errs = validate_fields(
            SPECS,
            json!({"limit": "-1", "colour": "red", "repos": "x"})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        let names: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, vec!["colour", "root", "limit", "repos"], "{errs:?}");
        assert!(errs[0].message.contains("unknown field"));
        assert!(errs[1].message.contains("required"));
    }
}
