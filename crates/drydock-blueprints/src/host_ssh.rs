//! `host.ssh`: a static pool of hosts reached over SSH (the original's
//! Almanac host pool, without Almanac). One resource per host (a slot lock
//! per host), any number of leases per host unless `lease-limit` is set, each
//! lease with its own directory under `root` on the host. Host keys are
//! pinned on the blueprint (`known-hosts`) or learned when the host's
//! resource is activated and enforced from then on — never
//! `StrictHostKeyChecking=no` (spec §19.16).

use crate::exec::{SshCommand, SshTarget, learn_host_key};
use async_trait::async_trait;
use drydock_engine::blueprint::{
    Acquisition, BlueprintError, BlueprintImpl, BlueprintResult, CommandInterface, CommandSpec,
    Context, FieldKind, FieldSpec, InterfaceError, ResourceTemplate, capture,
};
use drydock_store::blueprint::Blueprint;
use drydock_store::lease::Lease;
use drydock_store::resource::Resource;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

pub struct HostSsh;

const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "hosts",
        kind: FieldKind::List,
        required: true,
        default: None,
        description: "Hosts as host or host:port, comma-separated",
        secret: false,
    },
    FieldSpec {
        name: "user",
        kind: FieldKind::Text,
        required: true,
        default: None,
        description: "User to log in as",
        secret: false,
    },
    FieldSpec {
        name: "credential",
        kind: FieldKind::Credential,
        required: true,
        default: None,
        description: "SSH key credential (id or name; see drydock credential list)",
        secret: false,
    },
    FieldSpec {
        name: "known-hosts",
        kind: FieldKind::Text,
        required: false,
        default: None,
        description: "Pinned host keys in known_hosts format; unset = learn each host's key on first use, then enforce it",
        secret: false,
    },
    FieldSpec {
        name: "root",
        kind: FieldKind::Text,
        required: false,
        default: Some("/tmp/drydock"),
        description: "Directory on the hosts under which each lease gets its own directory",
        secret: false,
    },
    FieldSpec {
        name: "lease-limit",
        kind: FieldKind::Count,
        required: false,
        default: None,
        description: "Most leases on one host at once; unset = unlimited",
        secret: false,
    },
    FieldSpec {
        name: "disabled-hosts",
        kind: FieldKind::List,
        required: false,
        default: None,
        description: "Hosts that get no new leases (leases already on them go on)",
        secret: false,
    },
    FieldSpec {
        name: "connect-timeout",
        kind: FieldKind::Count,
        required: false,
        default: Some("10"),
        description: "Seconds to wait for an SSH connection",
        secret: false,
    },
];

fn list(bp: &Blueprint, field: &str) -> Vec<String> {
    bp.fields
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn text<'a>(map: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    map.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `host` or `host:port` → (host, port).
fn split_host(entry: &str) -> BlueprintResult<(String, u16)> {
    let bad = || BlueprintError::Permanent(format!("host {entry:?} must be HOST or HOST:PORT"));
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
            (h.trim_matches(['[', ']']), p.parse().map_err(|_| bad())?)
        }
        _ => (entry, 22),
    };
    if host.is_empty()
        || host.starts_with('-')
        || host.chars().any(|c| c.is_whitespace() || c == '@')
    {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

fn slot(bp: &Blueprint, entry: &str) -> String {
    format!("host.ssh(blueprint:{}).host({entry})", bp.id)
}

fn root(bp: &Blueprint) -> BlueprintResult<String> {
    let root = text(&bp.fields, "root").unwrap_or("/tmp/drydock");
    let valid = root.starts_with('/')
        && drydock_model::input::relative_path(root.trim_start_matches('/')).is_ok()
        && !root.chars().any(char::is_control);
    if valid {
        Ok(root.trim_end_matches('/').to_owned())
    } else {
        Err(BlueprintError::Permanent(format!(
            "root {root:?} must be an absolute path without `..`"
        )))
    }
}

fn lease_dir(bp: &Blueprint, lease: &Lease) -> BlueprintResult<String> {
    Ok(format!("{}/lease-{}", root(bp)?, lease.id))
}

/// How to reach the resource's host.
async fn target(ctx: &Context<'_>, resource: &Resource) -> BlueprintResult<SshTarget> {
    let attr = |k: &str| text(&resource.attributes, k).map(str::to_owned);
    let missing = || {
        BlueprintError::Permanent(format!(
            "resource {} lacks its host attributes",
            resource.id
        ))
    };
    let credential = resource
        .attributes
        .get("credential")
        .and_then(Value::as_i64)
        .ok_or_else(missing)?;
    let key = ctx
        .store
        .credential_secret(credential)
        .await
        .map_err(|e| match e {
            drydock_store::StoreError::NotFound { .. } => {
                BlueprintError::Permanent(format!("credential {credential} does not exist"))
            }
            other => BlueprintError::Temporary(other.to_string()),
        })?;
    let known_hosts = text(&ctx.blueprint.fields, "known-hosts")
        .map(str::to_owned)
        .or_else(|| attr("known-hosts"))
        .unwrap_or_default();
    Ok(SshTarget {
        host: attr("host").ok_or_else(missing)?,
        port: resource
            .attributes
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(22),
        user: attr("user").ok_or_else(missing)?,
        key,
        known_hosts,
        connect_timeout: Duration::from_secs(
            ctx.blueprint
                .fields
                .get("connect-timeout")
                .and_then(Value::as_u64)
                .unwrap_or(10),
        ),
    })
}

fn iface_error(e: InterfaceError) -> BlueprintError {
    match e {
        InterfaceError::Unreachable(m) => BlueprintError::Temporary(m),
        InterfaceError::TimedOut(d) => BlueprintError::Temporary(format!("timed out after {d:?}")),
        e @ InterfaceError::HostKey(_) => BlueprintError::Permanent(e.to_string()),
        InterfaceError::Invalid(m) | InterfaceError::Failed(m) => BlueprintError::Permanent(m),
    }
}

/// Run a setup command on the host in `/` and fail with its output.
async fn run_in_root(target: &SshTarget, argv: &[&str]) -> BlueprintResult<()> {
    let iface = SshCommand {
        target: target.clone(),
        dir: "/".into(),
        attempts: 3,
    };
    let spec = CommandSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let (code, out, err) = capture(&iface, &spec).await.map_err(iface_error)?;
    if code != 0 {
        return Err(BlueprintError::Permanent(format!(
            "`{}` on {} exited with {code}: {}{}",
            argv.join(" "),
            target.host,
            String::from_utf8_lossy(&err).trim(),
            String::from_utf8_lossy(&out).trim()
        )));
    }
    Ok(())
}

impl HostSsh {
    /// Enabled hosts of the blueprint not yet bound to a live resource.
    async fn free_hosts(&self, ctx: &Context<'_>) -> Vec<String> {
        let disabled = list(ctx.blueprint, "disabled-hosts");
        let hosts: Vec<String> = list(ctx.blueprint, "hosts")
            .into_iter()
            .filter(|h| !disabled.contains(h))
            .collect();
        let keys: Vec<String> = hosts.iter().map(|h| slot(ctx.blueprint, h)).collect();
        let held = ctx.store.slot_lock_holders(&keys).await.unwrap_or_default();
        hosts
            .into_iter()
            .filter(|h| !held.contains_key(&slot(ctx.blueprint, h)))
            .collect()
    }
}

#[async_trait]
impl BlueprintImpl for HostSsh {
    fn type_name(&self) -> &'static str {
        "host.ssh"
    }

    fn resource_type(&self) -> &'static str {
        "host"
    }

    fn description(&self) -> &'static str {
        "A static pool of hosts reached over SSH; each lease gets a directory of its own on its host"
    }

    fn fields(&self) -> &'static [FieldSpec] {
        FIELDS
    }

    fn limit(&self, _bp: &Blueprint) -> Option<u64> {
        // One resource per host, enforced by the per-host slot lock.
        None
    }

    fn can_ever_allocate(&self, bp: &Blueprint, _lease: &Lease) -> BlueprintResult<bool> {
        for h in list(bp, "hosts") {
            split_host(&h)?;
        }
        root(bp)?;
        Ok(!list(bp, "hosts").is_empty())
    }

    async fn can_allocate(&self, ctx: &Context<'_>, _lease: &Lease) -> bool {
        !self.free_hosts(ctx).await.is_empty()
    }

    async fn allocate(
        &self,
        ctx: &Context<'_>,
        _lease: &Lease,
    ) -> BlueprintResult<ResourceTemplate> {
        let Some(entry) = self.free_hosts(ctx).await.into_iter().next() else {
            return Err(BlueprintError::Yield {
                after: Duration::from_millis(50),
                reason: "every host is taken".into(),
            });
        };
        let (host, port) = split_host(&entry)?;
        let credential = text(&ctx.blueprint.fields, "credential").unwrap_or_default();
        let credential = ctx
            .store
            .credential(credential)
            .await
            .map_err(|e| BlueprintError::Permanent(e.to_string()))?;
        let mut attributes = Map::new();
        attributes.insert("host".into(), json!(host));
        attributes.insert("port".into(), json!(port));
        attributes.insert("entry".into(), json!(entry));
        attributes.insert(
            "user".into(),
            json!(text(&ctx.blueprint.fields, "user").unwrap_or_default()),
        );
        attributes.insert("credential".into(), json!(credential.id));
        Ok(ResourceTemplate {
            attributes,
            activate_now: false,
            slot_locks: vec![slot(ctx.blueprint, &entry)],
        })
    }

    async fn activate_resource(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
    ) -> BlueprintResult<Map<String, Value>> {
        let mut target = target(ctx, resource).await?;
        let mut attrs = Map::new();
        if target.known_hosts.is_empty() {
            // Trust on first use, recorded on the resource and enforced after.
            let learned = learn_host_key(&target).await.map_err(iface_error)?;
            attrs.insert("known-hosts".into(), json!(learned));
            target.known_hosts = learned;
        }
        run_in_root(&target, &["mkdir", "-p", "--", &root(ctx.blueprint)?]).await?;
        Ok(attrs)
    }

    fn can_acquire(&self, bp: &Blueprint, resource: &Resource, _lease: &Lease) -> bool {
        let entry = text(&resource.attributes, "entry").unwrap_or_default();
        list(bp, "hosts").iter().any(|h| h == entry)
            && !list(bp, "disabled-hosts").iter().any(|h| h == entry)
    }

    fn acquire(
        &self,
        _bp: &Blueprint,
        _resource: &Resource,
        _lease: &Lease,
    ) -> BlueprintResult<Acquisition> {
        Ok(Acquisition {
            slot_locks: vec![],
            activate_now: false,
        })
    }

    async fn activate_lease(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Map<String, Value>> {
        let dir = lease_dir(ctx.blueprint, lease)?;
        run_in_root(&target(ctx, resource).await?, &["mkdir", "-p", "--", &dir]).await?;
        let mut attrs = Map::new();
        attrs.insert("path".into(), json!(dir));
        attrs.insert(
            "host".into(),
            resource
                .attributes
                .get("host")
                .cloned()
                .unwrap_or(Value::Null),
        );
        Ok(attrs)
    }

    async fn destroy_lease(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<()> {
        if lease.activated_at.is_none() {
            return Ok(());
        }
        let dir = lease_dir(ctx.blueprint, lease)?;
        let target = target(ctx, resource).await?;
        ctx.ensure_claim()?;
        // Cleanup failures are retried (a host that is down comes back).
        run_in_root(&target, &["rm", "-rf", "--", &dir])
            .await
            .map_err(|e| match e {
                BlueprintError::Permanent(m) => BlueprintError::Temporary(m),
                other => other,
            })
    }

    fn should_allocate_supplemental(
        &self,
        _bp: &Blueprint,
        _resource: &Resource,
        _lease: &Lease,
    ) -> bool {
        // Use every host before doubling up (spec §10.2).
        true
    }

    async fn command_interface(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Arc<dyn CommandInterface>> {
        Ok(Arc::new(SshCommand {
            target: target(ctx, resource).await?,
            dir: lease_dir(ctx.blueprint, lease)?,
            attempts: 3,
        }))
    }

    async fn filesystem_interface(
        &self,
        ctx: &Context<'_>,
        resource: &Resource,
        lease: &Lease,
    ) -> BlueprintResult<Arc<dyn drydock_engine::blueprint::FilesystemInterface>> {
        Ok(Arc::new(crate::files::SftpFiles {
            target: target(ctx, resource).await?,
            dir: lease_dir(ctx.blueprint, lease)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entries_are_parsed_and_option_like_hosts_refused() {
        assert_eq!(split_host("build1").unwrap(), ("build1".into(), 22));
        assert_eq!(
            split_host("127.0.0.1:2222").unwrap(),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(split_host("[::1]:2200").unwrap(), ("::1".into(), 2200));
        for bad in ["-oProxyCommand=x", "a b", "root@h", ":22", "h:port"] {
            assert!(split_host(bad).is_err(), "{bad:?}");
        }
    }
}
