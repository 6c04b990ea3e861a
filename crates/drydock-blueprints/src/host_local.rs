//! `host.local`: the machine the daemon runs on. By default one resource
//! with any number of leases; each lease gets its own directory under the
//! blueprint's `root`, removed when the lease is destroyed.

use async_trait::async_trait;
use drydock_engine::blueprint::{
    Acquisition, BlueprintError, BlueprintImpl, BlueprintResult, Context, FieldKind, FieldSpec,
    ResourceTemplate,
};
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::Lease;
use drydock_store::resource::Resource;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

pub struct HostLocal;

const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "root",
        kind: FieldKind::Text,
        required: false,
        default: Some("drydock-leases"),
        description: "Directory under which each lease gets its own directory (relative paths are taken from the daemon's working directory)",
        secret: false,
    },
    FieldSpec {
        name: "limit",
        kind: FieldKind::Count,
        required: false,
        default: Some("1"),
        description: "Most resources (local host slots) at once",
        secret: false,
    },
    FieldSpec {
        name: "lease-limit",
        kind: FieldKind::Count,
        required: false,
        default: None,
        description: "Most leases on one resource at once (1 = exclusive); unset = unlimited",
        secret: false,
    },
];

fn lease_dir(resource: &Resource, lease: &Lease) -> BlueprintResult<PathBuf> {
    let root = resource
        .attributes
        .get("root")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            BlueprintError::Permanent(format!("resource {} has no root directory", resource.id))
        })?;
    Ok(PathBuf::from(root).join(format!("lease-{}", lease.id)))
}

/// Move a destroyed lease's directory into `.trash` beside it (a rename on
/// the same filesystem) under a name of its own; returns the trash
/// directory, or `None` when the lease's directory is gone already.
fn move_aside(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let trash = dir.parent().unwrap_or(Path::new(".")).join(".trash");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let moved = std::fs::create_dir_all(&trash)
        .and_then(|()| std::fs::rename(dir, trash.join(format!("{name}.{nanos}"))));
    match moved {
        Ok(()) => Ok(Some(trash)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Delete everything in `trash`, including what a process that died
/// mid-way left behind. Best effort: another process may be emptying it
/// too, and what fails now goes with the next lease's teardown.
fn empty_trash(trash: &Path) {
    let Ok(entries) = std::fs::read_dir(trash) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::debug!("emptying {}: {e}", trash.display());
        }
    }
}

#[async_trait]
impl BlueprintImpl for HostLocal {
    fn type_name(&self) -> &'static str {
        "host.local"
    }

    fn resource_type(&self) -> &'static str {
        "host"
    }

    fn description(&self) -> &'static str {
        "The machine the daemon runs on; each lease gets a directory of its own"
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    async fn allocate(
        &self,
        ctx: &Context<'_>,
        _lease: &Lease,
    ) -> BlueprintResult<ResourceTemplate> {
        let root = ctx
            .blueprint
            .fields
            .get("root")
            .and_then(Value::as_str)
            .unwrap_or("drydock-leases");
        let root = std::path::absolute(root).map_err(|e| {
            BlueprintError::Permanent(format!("root directory {root:?} is not usable: {e}"))
        })?;
        let mut attributes = Map::new();
        attributes.insert("root".into(), json!(root.to_string_lossy()));
        Ok(ResourceTemplate {
            attributes,
            activate_now: true,
            slot_locks: Vec::new(),
        })
    }

    fn acquire(
        &self,
        _bp: &Blueprint,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Acquisition> {
        Ok(Acquisition {
            slot_locks: Vec::new(),
            activate_now: false,
        })
    }

    async fn activate_lease(
        &self,
        _ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Map<String, Value>> {
        let dir = lease_dir(resource, lease)?;
        // One mkdir, run where it is awaited: it may be inside the writer's
        // transaction (see `lease_hooks_are_local`), where a hop to
        // the blocking pool and back would hold the writer idle.
        std::fs::create_dir_all(&dir)
            .map_err(|e| BlueprintError::Temporary(format!("creating {}: {e}", dir.display())))?;
        let mut attrs = Map::new();
        attrs.insert("path".into(), json!(dir.to_string_lossy()));
        Ok(attrs)
    }

    /// Activation makes one local directory; teardown renames it.
    fn lease_hooks_are_local(&self, _bp: &Blueprint) -> bool {
        true
    }

    /// The directory is renamed into the root's trash at once (so its path
    /// is gone when the lease is destroyed) and deleted in the background:
    /// whatever the lease left there, however large, never holds up the
    /// lease's destruction or the worker.
    async fn destroy_lease(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<()> {
        let dir = lease_dir(resource, lease)?;
        ctx.ensure_claim()?;
        match move_aside(&dir) {
            Ok(Some(trash)) => {
                tokio::task::spawn_blocking(move || empty_trash(&trash));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(BlueprintError::Temporary(format!(
                "moving {} aside: {e}",
                dir.display()
            ))),
        }
    }

    async fn command_interface(
        &self,
        _ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<std::sync::Arc<dyn drydock_engine::blueprint::CommandInterface>> {
        Ok(std::sync::Arc::new(crate::exec::LocalCommand {
            dir: lease_dir(resource, lease)?,
        }))
    }

    async fn filesystem_interface(
        &self,
        _ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<std::sync::Arc<dyn drydock_engine::blueprint::FilesystemInterface>> {
        Ok(std::sync::Arc::new(crate::files::LocalFiles {
            root: lease_dir(resource, lease)?,
        }))
    }

    fn should_allocate_supplemental(
        &self,
        bp: &Blueprint,
        _resource: &Resource,
        _lease: &Lease,
    ) -> bool {
        // With a lease limit, prefer another slot over stacking on a busy one.
        self.lease_limit(bp).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroyed_leases_directory_is_moved_aside_then_deleted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lease-7");
        std::fs::create_dir_all(dir.join("build/out")).unwrap();
        std::fs::write(dir.join("build/out/artifact"), b"left behind").unwrap();
        let trash = move_aside(&dir).unwrap().expect("moved");
        assert!(!dir.exists(), "the lease's path is gone at once");
        let aside: Vec<_> = std::fs::read_dir(&trash).unwrap().flatten().collect();
        assert_eq!(aside.len(), 1, "its content waits in {}", trash.display());
        assert!(aside[0].path().join("build/out/artifact").is_file());
        // A second teardown of the same lease (a retried pass) finds it gone.
        assert_eq!(move_aside(&dir).unwrap(), None);
        empty_trash(&trash);
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
    }
}
