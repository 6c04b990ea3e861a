//! Filesystem interfaces: local files (`host.local`) and SFTP (`host.ssh`).
//!
//! Every path is relative to the lease's directory and checked twice: as
//! text (no `..`, not absolute) and, after symbolic links are resolved, by
//! where it really is (local `canonicalize`, remote `realpath`), so a link
//! planted in the lease's directory cannot lead outside it.

use crate::exec::{SshCommand, SshFiles, SshTarget, ssh_options};
use async_trait::async_trait;
use drydock_engine::blueprint::{
    CommandSpec, DirEntry, FilesystemInterface, InterfaceError, capture,
};
use drydock_model::input::relative_path;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn invalid(e: String) -> InterfaceError {
    InterfaceError::Invalid(e)
}

fn io(what: &str, path: &str, e: std::io::Error) -> InterfaceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => InterfaceError::Invalid(format!("{path:?} does not exist")),
        _ => InterfaceError::Failed(format!("{what} {path:?}: {e}")),
    }
}

/// Files in a local directory.
pub struct LocalFiles {
    pub root: PathBuf,
}

impl LocalFiles {
    /// The real location of `path` (which must exist), inside the root.
    fn inside(&self, path: &str, real: &Path) -> Result<(), InterfaceError> {
        let root = self
            .root
            .canonicalize()
            .map_err(|e| io("resolving", "", e))?;
        if real.starts_with(&root) {
            Ok(())
        } else {
            Err(invalid(format!(
                "{path:?} leads outside the lease's directory"
            )))
        }
    }

    fn existing(&self, path: &str) -> Result<PathBuf, InterfaceError> {
        let rel = relative_path(path).map_err(invalid)?;
        let real = self
            .root
            .join(&rel)
            .canonicalize()
            .map_err(|e| io("resolving", path, e))?;
        self.inside(path, &real)?;
        Ok(real)
    }
}

#[async_trait]
impl FilesystemInterface for LocalFiles {
    async fn read(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, InterfaceError> {
        let real = self.existing(path)?;
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|e| io("reading", path, e))?;
        if meta.is_dir() {
            return Err(invalid(format!("{path:?} is a directory")));
        }
        if meta.len() > max_bytes {
            return Err(invalid(format!(
                "{path:?} is {} bytes (at most {max_bytes})",
                meta.len()
            )));
        }
        tokio::fs::read(&real)
            .await
            .map_err(|e| io("reading", path, e))
    }

    async fn write(&self, path: &str, data: &[u8]) -> Result<(), InterfaceError> {
        let rel = relative_path(path).map_err(invalid)?;
        if rel.is_empty() {
            return Err(invalid("no file name given".into()));
        }
        let target = self.root.join(&rel);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| io("creating", path, e))?;
        let real_parent = parent
            .canonicalize()
            .map_err(|e| io("resolving", path, e))?;
        self.inside(path, &real_parent)?;
        let name = target
            .file_name()
            .ok_or_else(|| invalid(format!("{path:?} names no file")))?;
        let real = real_parent.join(name);
        if tokio::fs::symlink_metadata(&real)
            .await
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(invalid(format!(
                "{path:?} is a symbolic link; refusing to write through it"
            )));
        }
        tokio::fs::write(&real, data)
            .await
            .map_err(|e| io("writing", path, e))
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, InterfaceError> {
        let real = self.existing(path)?;
        let mut dir = tokio::fs::read_dir(&real)
            .await
            .map_err(|e| io("listing", path, e))?;
        let mut out = Vec::new();
        while let Some(e) = dir.next_entry().await.map_err(|e| io("listing", path, e))? {
            let meta = e.metadata().await.map_err(|e| io("listing", path, e))?;
            out.push(DirEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                dir: meta.is_dir(),
                size: meta.len(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Files in a directory on a host, over SFTP (the system's `sftp` client,
/// with the same pinned host key and key file as commands).
pub struct SftpFiles {
    pub target: SshTarget,
    /// Absolute directory on the host.
    pub dir: String,
}

impl SftpFiles {
    fn commands(&self) -> SshCommand {
        SshCommand {
            target: self.target.clone(),
            dir: "/".into(),
            attempts: 3,
        }
    }

    /// Absolute remote path of `path`, refusing anything sftp's batch
    /// syntax could misread and anything that resolves outside the lease's
    /// directory.
    async fn remote(&self, path: &str) -> Result<String, InterfaceError> {
        let rel = relative_path(path).map_err(invalid)?;
        if rel.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            return Err(invalid(format!(
                "{path:?} contains characters not allowed in remote paths"
            )));
        }
        let full = if rel.is_empty() {
            self.dir.clone()
        } else {
            format!("{}/{rel}", self.dir)
        };
        let spec = CommandSpec {
            argv: vec![
                "realpath".into(),
                "-m".into(),
                "--".into(),
                self.dir.clone(),
                full.clone(),
            ],
            ..Default::default()
        };
        let (code, out, err) = capture(&self.commands(), &spec).await?;
        if code != 0 {
            return Err(InterfaceError::Failed(format!(
                "resolving {path:?}: {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out);
        let mut lines = text.lines();
        let (root, real) = (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        );
        if real != root && !real.starts_with(&format!("{root}/")) {
            return Err(invalid(format!(
                "{path:?} leads outside the lease's directory"
            )));
        }
        Ok(full)
    }

    /// Run an sftp batch; its stdout on success.
    async fn batch(&self, script: &str) -> Result<String, InterfaceError> {
        let files = SshFiles::new(&self.target)?;
        let batch = files.path("batch");
        std::fs::write(&batch, script)
            .map_err(|e| InterfaceError::Failed(format!("writing the sftp batch: {e}")))?;
        let out = tokio::process::Command::new("sftp")
            .args(ssh_options(&self.target, &files, "yes", "-P"))
            .arg("-b")
            .arg(&batch)
            .arg(format!("{}@{}", self.target.user, self.target.host))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| InterfaceError::Failed(format!("running sftp: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if err.contains("Host key verification failed") {
                return Err(InterfaceError::HostKey(format!(
                    "{}:{}",
                    self.target.host, self.target.port
                )));
            }
            if err.contains("not found") || err.contains("No such file") {
                return Err(invalid(format!("no such file: {err}")));
            }
            return Err(InterfaceError::Failed(format!("sftp: {err}")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[async_trait]
impl FilesystemInterface for SftpFiles {
    async fn read(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, InterfaceError> {
        let remote = self.remote(path).await?;
        let local = tempfile::NamedTempFile::new()
            .map_err(|e| InterfaceError::Failed(format!("temporary file: {e}")))?;
        self.batch(&format!(
            "get \"{remote}\" \"{}\"\n",
            local.path().display()
        ))
        .await?;
        let data = std::fs::read(local.path())
            .map_err(|e| InterfaceError::Failed(format!("reading the fetched file: {e}")))?;
        if data.len() as u64 > max_bytes {
            return Err(invalid(format!(
                "{path:?} is {} bytes (at most {max_bytes})",
                data.len()
            )));
        }
        Ok(data)
    }

    async fn write(&self, path: &str, data: &[u8]) -> Result<(), InterfaceError> {
        let remote = self.remote(path).await?;
        if remote == self.dir {
            return Err(invalid("no file name given".into()));
        }
        let parent = remote
            .rsplit_once('/')
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        let spec = CommandSpec {
            argv: vec!["mkdir".into(), "-p".into(), "--".into(), parent],
            ..Default::default()
        };
        let (code, _, err) = capture(&self.commands(), &spec).await?;
        if code != 0 {
            return Err(InterfaceError::Failed(format!(
                "creating the directory: {}",
                String::from_utf8_lossy(&err).trim()
            )));
        }
        let local = tempfile::NamedTempFile::new()
            .map_err(|e| InterfaceError::Failed(format!("temporary file: {e}")))?;
        std::fs::write(local.path(), data)
            .map_err(|e| InterfaceError::Failed(format!("writing a temporary file: {e}")))?;
        self.batch(&format!(
            "put \"{}\" \"{remote}\"\n",
            local.path().display()
        ))
        .await?;
        Ok(())
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, InterfaceError> {
        let remote = self.remote(path).await?;
        let out = self.batch(&format!("ls -la \"{remote}\"\n")).await?;
        let mut entries = Vec::new();
        for line in out.lines().filter(|l| !l.starts_with("sftp>")) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 {
                continue;
            }
            let name = fields[8..].join(" ");
            let name = name.rsplit('/').next().unwrap_or(&name).to_owned();
            if name == "." || name == ".." {
                continue;
            }
            entries.push(DirEntry {
                dir: fields[0].starts_with('d'),
                size: fields[4].parse().unwrap_or(0),
                name,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_stay_inside_the_lease_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lease");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(tmp.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("escape")).unwrap();
        let fs = LocalFiles { root: root.clone() };
        fs.write("dir/a.txt", b"hello").await.unwrap();
        assert_eq!(fs.read("dir/a.txt", 100).await.unwrap(), b"hello");
        let list = fs.list("").await.unwrap();
        assert_eq!(
            list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            vec!["dir", "escape"]
        );
        assert!(list[0].dir);
        assert_eq!(fs.list("dir").await.unwrap()[0].size, 5);
        assert!(
            fs.read("dir/a.txt", 3)
                .await
                .unwrap_err()
                .to_string()
                .contains("at most 3")
        );
        for bad in [
            "../secret",
            "/etc/passwd",
            "escape/secret",
            "dir/../../secret",
        ] {
            assert!(fs.read(bad, 100).await.is_err(), "{bad:?} must be refused");
        }
        assert!(
            fs.write("escape/planted", b"x").await.is_err(),
            "writing through a link outside"
        );
        assert!(!tmp.path().join("planted").exists());
        assert!(fs.list("escape").await.is_err());
        assert!(
            fs.read("missing", 10)
                .await
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }
}
