//! `working-copy` (spec §10.3): git working copies built on a host lease.
//!
//! A working-copy resource leases a host from its configured host
//! blueprints (the host lease's owner is the resource, so the host lease
//! wakes it when it activates or dies), clones each configured repository
//! once into `wc/<name>` in the host lease's directory, and is kept for
//! reuse. Each lease on it — at most one at a time — gets a clean checkout:
//! fetch, hard reset, `clean -fdx` (ignored files too, unlike the original),
//! then the requested commit or branch, then optional merges. Every name,
//! ref and commit is validated before any command runs, and every git
//! command takes its arguments after `--` where git allows it.

use crate::exec::quote;
use async_trait::async_trait;
use drydock_engine::blueprint::{
    Acquisition, BlueprintError, BlueprintImpl, BlueprintResult, CommandInterface, CommandSpec,
    Context, DirEntry, FieldKind, FieldSpec, FilesystemInterface, InterfaceError, Output,
    ResourceTemplate, capture,
};
use drydock_engine::client;
use drydock_model::input;
use drydock_model::{BlueprintId, LeaseId, LeaseStatus};
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::{Lease, LeaseFilter, NewLease};
use drydock_store::resource::Resource;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

pub struct WorkingCopy;

const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "host-blueprints",
        kind: FieldKind::Blueprints,
        required: true,
        default: None,
        description: "Host blueprints to lease hosts from (ids or names)",
        secret: false,
    },
    FieldSpec {
        name: "repositories",
        kind: FieldKind::Pairs,
        required: true,
        default: None,
        description: "Repositories as name=url, comma-separated",
        secret: false,
    },
    FieldSpec {
        name: "limit",
        kind: FieldKind::Count,
        required: false,
        default: None,
        description: "Most working copies at once",
        secret: false,
    },
    FieldSpec {
        name: "git-timeout",
        kind: FieldKind::Count,
        required: false,
        default: Some("600"),
        description: "Seconds a git command may take",
        secret: false,
    },
];

/// Where working copies live inside the host lease's directory.
const WC_DIR: &str = "wc";

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn repositories(bp: &Blueprint) -> Map<String, Value> {
    bp.fields
        .get("repositories")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn host_blueprints(bp: &Blueprint) -> Vec<BlueprintId> {
    drydock_engine::blueprint::blueprint_list(bp, "host-blueprints")
}

fn git_timeout(bp: &Blueprint) -> Duration {
    Duration::from_secs(
        bp.fields
            .get("git-timeout")
            .and_then(Value::as_u64)
            .unwrap_or(600),
    )
}

/// What a lease asks for, validated.
struct Request {
    repository: String,
    commit: Option<String>,
    git_ref: Option<String>,
    merges: Vec<String>,
}

fn request(bp: &Blueprint, lease: &Lease) -> BlueprintResult<Request> {
    let bad = |m: String| BlueprintError::Permanent(m);
    let repository = text(&lease.attributes, "repository")
        .ok_or_else(|| bad("the lease needs attribute repository=NAME".into()))?;
    input::repository_name(repository).map_err(bad)?;
    if !repositories(bp).contains_key(repository) {
        let known: Vec<String> = repositories(bp).keys().cloned().collect();
        return Err(bad(format!(
            "blueprint {} has no repository {repository:?} (it has: {})",
            bp.name,
            known.join(", ")
        )));
    }
    let commit = text(&lease.attributes, "commit").map(str::to_owned);
    let git_ref = text(&lease.attributes, "ref").map(str::to_owned);
    match (&commit, &git_ref) {
        (Some(c), None) => input::commit(c).map_err(bad)?,
        (None, Some(r)) => input::git_ref(r).map_err(bad)?,
        (Some(_), Some(_)) => return Err(bad("give either commit= or ref=, not both".into())),
        (None, None) => {
            return Err(bad(
                "the lease needs attribute commit=SHA or ref=BRANCH".into()
            ));
        }
    }
    let merges: Vec<String> = text(&lease.attributes, "merge")
        .map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for m in &merges {
        input::git_ref(m).map_err(bad)?;
    }
    Ok(Request {
        repository: repository.to_owned(),
        commit,
        git_ref,
        merges,
    })
}

/// The live host lease a working-copy resource owns, if any, and the most
/// recent one whatever its state.
async fn host_lease(ctx: &Context<'_>, resource: &Resource) -> BlueprintResult<Option<Lease>> {
    let owned = ctx
        .store
        .leases(&LeaseFilter {
            owners: vec![resource.object().key()],
            limit: Some(10),
            ..Default::default()
        })
        .await
        .map_err(|e| BlueprintError::Temporary(e.to_string()))?;
    Ok(owned.into_iter().next())
}

/// The host lease recorded on an active working copy.
async fn attached_host(ctx: &Context<'_>, resource: &Resource) -> BlueprintResult<Lease> {
    let id = resource
        .attributes
        .get("host_lease")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            BlueprintError::Permanent(format!("working copy {} has no host lease", resource.id))
        })?;
    ctx.store
        .lease(LeaseId(id))
        .await
        .map_err(|e| BlueprintError::Temporary(e.to_string()))
}

async fn host_interface(
    ctx: &Context<'_>,
    host: &Lease,
) -> BlueprintResult<Arc<dyn CommandInterface>> {
    client::command_interface(ctx.store, &crate::registry(), host.id)
        .await
        .map_err(|e| match e {
            client::ClientError::NotActive { .. } => BlueprintError::Temporary(e.to_string()),
            other => BlueprintError::Permanent(other.to_string()),
        })
}

fn iface_error(e: InterfaceError) -> BlueprintError {
    match e {
        InterfaceError::Unreachable(m) => BlueprintError::Temporary(m),
        InterfaceError::TimedOut(d) => BlueprintError::Temporary(format!("timed out after {d:?}")),
        other => BlueprintError::Permanent(other.to_string()),
    }
}

/// Run one git (or shell) step; a non-zero exit is a permanent failure that
/// carries the command and its output.
async fn step(
    iface: &dyn CommandInterface,
    cwd: &str,
    argv: &[&str],
    timeout: Duration,
) -> BlueprintResult<String> {
    let spec = CommandSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: Some(cwd.to_owned()),
        env: vec![("GIT_TERMINAL_PROMPT".into(), "0".into())],
        timeout: Some(timeout),
    };
    let (code, out, err) = capture(iface, &spec).await.map_err(iface_error)?;
    if code != 0 {
        let mut output = String::from_utf8_lossy(&err).trim().to_owned();
        if output.len() > 4000 {
            output.truncate(4000);
        }
        return Err(BlueprintError::Permanent(format!(
            "`{}` failed with exit code {code}: {output}",
            quote(argv).unwrap_or_else(|_| argv.join(" "))
        )));
    }
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// A host command interface rooted in the working copy.
struct InWorkingCopy {
    host: Arc<dyn CommandInterface>,
    dir: String,
}

#[async_trait]
impl CommandInterface for InWorkingCopy {
    async fn run(
        &self,
        spec: &CommandSpec,
        stdout: Output<'_>,
        stderr: Output<'_>,
    ) -> Result<i32, InterfaceError> {
        let cwd = spec.validate()?.unwrap_or_default();
        let cwd = if cwd.is_empty() {
            self.dir.clone()
        } else {
            format!("{}/{cwd}", self.dir)
        };
        self.host
            .run(
                &CommandSpec {
                    cwd: Some(cwd),
                    ..spec.clone()
                },
                stdout,
                stderr,
            )
            .await
    }
}

/// A host filesystem interface rooted in the working copy.
struct FilesInWorkingCopy {
    host: Arc<dyn FilesystemInterface>,
    dir: String,
}

impl FilesInWorkingCopy {
    fn path(&self, path: &str) -> Result<String, InterfaceError> {
        let rel = input::relative_path(path).map_err(InterfaceError::Invalid)?;
        Ok(if rel.is_empty() {
            self.dir.clone()
        } else {
            format!("{}/{rel}", self.dir)
        })
    }
}

#[async_trait]
impl FilesystemInterface for FilesInWorkingCopy {
    async fn read(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, InterfaceError> {
        self.host.read(&self.path(path)?, max_bytes).await
    }
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), InterfaceError> {
        self.host.write(&self.path(path)?, data).await
    }
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, InterfaceError> {
        self.host.list(&self.path(path)?).await
    }
}

#[async_trait]
impl BlueprintImpl for WorkingCopy {
    fn type_name(&self) -> &'static str {
        "working-copy"
    }

    fn resource_type(&self) -> &'static str {
        "working-copy"
    }

    fn description(&self) -> &'static str {
        "Git working copies on leased hosts: cloned once, cleaned and checked out for each lease"
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn can_ever_allocate(&self, bp: &Blueprint, lease: &Lease) -> BlueprintResult<bool> {
        request(bp, lease)?;
        for (name, url) in &repositories(bp) {
            input::repository_name(name).map_err(BlueprintError::Permanent)?;
            let url = url.as_str().unwrap_or_default();
            if url.is_empty() || url.starts_with('-') || url.chars().any(char::is_control) {
                return Err(BlueprintError::Permanent(format!(
                    "repository {name:?} has an invalid URL"
                )));
            }
        }
        Ok(!host_blueprints(bp).is_empty())
    }

    async fn allocate(
        &self,
        ctx: &Context<'_>,
        _lease: &Lease,
    ) -> BlueprintResult<ResourceTemplate> {
        let mut attributes = Map::new();
        attributes.insert(
            "repositories".into(),
            Value::Object(repositories(ctx.blueprint)),
        );
        Ok(ResourceTemplate {
            attributes,
            activate_now: false,
            slot_locks: vec![],
        })
    }

    async fn activate_resource(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
    ) -> BlueprintResult<Map<String, Value>> {
        let host = match host_lease(ctx, resource).await? {
            None => {
                let new = NewLease {
                    resource_type: "host".into(),
                    blueprint_ids: host_blueprints(ctx.blueprint),
                    // Checked as the working-copy blueprint itself (spec §11).
                    authorizing: client::blueprint_object(ctx.blueprint.id),
                    owner: Some(resource.object().key()),
                    ..Default::default()
                };
                let l = client::request_lease(ctx.store, &new)
                    .await
                    .map_err(|e| BlueprintError::Temporary(e.to_string()))?;
                return Err(BlueprintError::Yield {
                    after: Duration::from_secs(30),
                    reason: format!("waiting for host lease {}", l.id),
                });
            }
            Some(h) => h,
        };
        match host.status {
            LeaseStatus::Pending | LeaseStatus::Acquired => {
                return Err(BlueprintError::Yield {
                    after: Duration::from_secs(30),
                    reason: format!("waiting for host lease {}", host.id),
                });
            }
            LeaseStatus::Active => {}
            other => {
                return Err(BlueprintError::Permanent(format!(
                    "host lease {} is {other}: {}",
                    host.id,
                    host.failure.as_deref().unwrap_or("no reason recorded")
                )));
            }
        }
        let iface = host_interface(ctx, &host).await?;
        let timeout = git_timeout(ctx.blueprint);
        step(iface.as_ref(), "", &["mkdir", "-p", "--", WC_DIR], timeout).await?;
        for (name, url) in repositories(ctx.blueprint) {
            let dir = format!("{WC_DIR}/{name}");
            let exists = capture(
                iface.as_ref(),
                &CommandSpec {
                    argv: vec!["test".into(), "-d".into(), format!("{dir}/.git")],
                    ..Default::default()
                },
            )
            .await
            .map_err(iface_error)?
            .0 == 0;
            if !exists {
                // Clone beside it and rename into place: a clone cut off
                // (a daemon killed, a timeout) never leaves a half-made
                // repository that a later activation would take as cloned.
                let partial = format!("{dir}.partial");
                step(
                    iface.as_ref(),
                    "",
                    &["rm", "-rf", "--", &dir, &partial],
                    timeout,
                )
                .await?;
                step(
                    iface.as_ref(),
                    "",
                    &[
                        "git",
                        "clone",
                        "--quiet",
                        "--",
                        url.as_str().unwrap_or_default(),
                        &partial,
                    ],
                    timeout,
                )
                .await?;
                step(
                    iface.as_ref(),
                    "",
                    &["mv", "-T", "--", &partial, &dir],
                    timeout,
                )
                .await?;
            }
        }
        let mut attrs = Map::new();
        attrs.insert("host_lease".into(), json!(host.id.0));
        attrs.insert(
            "root".into(),
            json!(format!(
                "{}/{WC_DIR}",
                text(&host.attributes, "path").unwrap_or_default()
            )),
        );
        Ok(attrs)
    }

    async fn destroy_resource(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
    ) -> BlueprintResult<()> {
        let Some(host) = host_lease(ctx, resource).await? else {
            return Ok(());
        };
        if host.status == LeaseStatus::Active {
            let iface = host_interface(ctx, &host).await?;
            ctx.ensure_claim()?;
            // Failures are retried by the engine and logged; the host lease
            // is released only once the directory is gone.
            step(
                iface.as_ref(),
                "",
                &["rm", "-rf", "--", WC_DIR],
                git_timeout(ctx.blueprint),
            )
            .await
            .map_err(|e| match e {
                BlueprintError::Permanent(m) => BlueprintError::Temporary(m),
                other => other,
            })?;
        }
        match client::release_lease(ctx.store, host.id, &resource.object().key()).await {
            Ok(_) | Err(client::ClientError::NotReleasable { .. }) => Ok(()),
            Err(e) => Err(BlueprintError::Temporary(e.to_string())),
        }
    }

    fn can_acquire(&self, bp: &Blueprint, resource: &Resource, lease: &Lease) -> bool {
        let Ok(req) = request(bp, lease) else {
            return false;
        };
        resource
            .attributes
            .get("repositories")
            .and_then(Value::as_object)
            .is_some_and(|r| r.contains_key(&req.repository))
    }

    /// Prefer a working copy whose last lease was at the requested commit
    /// (2) or on the requested branch (1): less to fetch and check out.
    async fn rank(&self, ctx: &Context<'_>, resource: &Resource, lease: &Lease) -> i64 {
        let Ok(req) = request(ctx.blueprint, lease) else {
            return 0;
        };
        let filter = LeaseFilter {
            resources: vec![resource.id],
            limit: Some(1),
            ..Default::default()
        };
        let Some(last) = ctx
            .store
            .leases(&filter)
            .await
            .ok()
            .and_then(|l| l.into_iter().next())
        else {
            return 0;
        };
        match (&req.commit, &req.git_ref) {
            (Some(c), _)
                if text(&last.attributes, "head").is_some_and(|h| h.starts_with(c.as_str())) =>
            {
                2
            }
            (_, Some(r)) if text(&last.attributes, "ref") == Some(r.as_str()) => 1,
            _ => 0,
        }
    }

    fn acquire(
        &self,
        _bp: &Blueprint,
        resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Acquisition> {
        // At most one lease per working copy.
        Ok(Acquisition {
            slot_locks: vec![format!("working-copy(resource:{}).lease", resource.id)],
            activate_now: false,
        })
    }

    async fn activate_lease(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Map<String, Value>> {
        let req = request(ctx.blueprint, lease)?;
        let host = attached_host(ctx, resource).await?;
        let iface = host_interface(ctx, &host).await?;
        let dir = format!("{WC_DIR}/{}", req.repository);
        let t = git_timeout(ctx.blueprint);
        // A git command cut off by a killed daemon leaves its lock behind;
        // nobody else works in this copy (one lease at a time, under the
        // lease's lock), so it is stale.
        step(
            iface.as_ref(),
            &dir,
            &["rm", "-f", "--", ".git/index.lock"],
            t,
        )
        .await?;
        step(
            iface.as_ref(),
            &dir,
            &["git", "fetch", "--quiet", "--prune", "origin"],
            t,
        )
        .await?;
        step(
            iface.as_ref(),
            &dir,
            &["git", "reset", "--hard", "--quiet"],
            t,
        )
        .await?;
        step(iface.as_ref(), &dir, &["git", "clean", "-fdxq"], t).await?;
        match (&req.commit, &req.git_ref) {
            (Some(c), _) => {
                step(
                    iface.as_ref(),
                    &dir,
                    &["git", "checkout", "--quiet", "--detach", c, "--"],
                    t,
                )
                .await?
            }
            (None, Some(r)) => {
                let remote = format!("refs/remotes/origin/{r}");
                step(
                    iface.as_ref(),
                    &dir,
                    &["git", "checkout", "--quiet", "-B", r, &remote, "--"],
                    t,
                )
                .await?
            }
            (None, None) => unreachable!("request() requires commit or ref"),
        };
        for m in &req.merges {
            let remote = format!("refs/remotes/origin/{m}");
            step(
                iface.as_ref(),
                &dir,
                &[
                    "git",
                    "-c",
                    "user.name=Drydock",
                    "-c",
                    "user.email=drydock@localhost",
                    "merge",
                    "--quiet",
                    "--no-edit",
                    &remote,
                ],
                t,
            )
            .await?;
        }
        let head = step(iface.as_ref(), &dir, &["git", "rev-parse", "HEAD"], t).await?;
        let mut attrs = Map::new();
        attrs.insert(
            "path".into(),
            json!(format!(
                "{}/{}",
                text(&resource.attributes, "root").unwrap_or_default(),
                req.repository
            )),
        );
        attrs.insert("head".into(), json!(head));
        Ok(attrs)
    }

    async fn command_interface(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Arc<dyn CommandInterface>> {
        let req = request(ctx.blueprint, lease)?;
        let host = attached_host(ctx, resource).await?;
        Ok(Arc::new(InWorkingCopy {
            host: host_interface(ctx, &host).await?,
            dir: format!("{WC_DIR}/{}", req.repository),
        }))
    }

    async fn filesystem_interface(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Arc<dyn FilesystemInterface>> {
        let req = request(ctx.blueprint, lease)?;
        let host = attached_host(ctx, resource).await?;
        let files = client::filesystem_interface(ctx.store, &crate::registry(), host.id)
            .await
            .map_err(|e| BlueprintError::Permanent(e.to_string()))?;
        Ok(Arc::new(FilesInWorkingCopy {
            host: files,
            dir: format!("{WC_DIR}/{}", req.repository),
        }))
    }
}
