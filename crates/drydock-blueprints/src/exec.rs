//! Command interfaces: local processes (`host.local`) and OpenSSH (`host.ssh`).
//!
//! Commands are argv, never strings pasted into a shell. Locally the argv
//! goes straight to `execve`; over SSH, where the remote login shell parses
//! what it receives, every word is quoted (`shlex`). The SSH client is the
//! system's OpenSSH (`ssh -F /dev/null`, `BatchMode`, strict host-key
//! checking against keys pinned on the blueprint or learned on first use);
//! the private key is written to a 0600 file in a private temporary
//! directory only while a command runs.

use drydock_engine::blueprint::{CommandInterface, CommandSpec, InterfaceError, Output};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Copy a child's stdout and stderr to the writers and wait for it, killing
/// it after `timeout`. Returns the exit code (128 + signal if killed by one).
async fn drive(
    mut child: Child,
    timeout: Option<Duration>,
    stdout: Output<'_>,
    stderr: Output<'_>,
) -> Result<i32, InterfaceError> {
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| InterfaceError::Failed("no stdout pipe".into()))?;
    let mut err = child
        .stderr
        .take()
        .ok_or_else(|| InterfaceError::Failed("no stderr pipe".into()))?;
    let pump = async {
        let (a, b) = tokio::join!(
            tokio::io::copy(&mut out, stdout),
            tokio::io::copy(&mut err, stderr)
        );
        a.and(b)
            .map_err(|e| InterfaceError::Failed(format!("reading command output: {e}")))?;
        child
            .wait()
            .await
            .map_err(|e| InterfaceError::Failed(format!("waiting for the command: {e}")))
    };
    let status = match timeout {
        Some(t) => match tokio::time::timeout(t, pump).await {
            Ok(r) => r?,
            // Dropping the pump drops the child, which kill_on_drop kills.
            Err(_) => return Err(InterfaceError::TimedOut(t)),
        },
        None => pump.await?,
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Commands run as local processes in a lease's directory.
pub struct LocalCommand {
    pub dir: PathBuf,
}

#[async_trait::async_trait]
impl CommandInterface for LocalCommand {
    async fn run(
        &self,
        spec: &CommandSpec,
        stdout: Output<'_>,
        stderr: Output<'_>,
    ) -> Result<i32, InterfaceError> {
        let cwd = spec.validate()?;
        let dir = match cwd.as_deref() {
            Some(c) if !c.is_empty() => self.dir.join(c),
            _ => self.dir.clone(),
        };
        let child = Command::new(&spec.argv[0])
            .args(&spec.argv[1..])
            .current_dir(&dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound if !dir.is_dir() => {
                    InterfaceError::Invalid(format!("directory {} does not exist", dir.display()))
                }
                std::io::ErrorKind::NotFound => {
                    InterfaceError::Invalid(format!("program {:?} not found", spec.argv[0]))
                }
                _ => InterfaceError::Failed(format!("starting {:?}: {e}", spec.argv[0])),
            })?;
        drive(child, spec.timeout, stdout, stderr).await
    }
}

/// Where and as whom to reach a host over SSH.
#[derive(Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: SecretString,
    /// known_hosts lines that must match the host's key; empty = learn it
    /// (only [`learn_host_key`] accepts an unknown key).
    pub known_hosts: String,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A private directory holding the key and known_hosts files for one
/// connection; removed (with the key) when dropped.
pub(crate) struct SshFiles {
    dir: tempfile::TempDir,
}

impl SshFiles {
    pub(crate) fn new(target: &SshTarget) -> Result<SshFiles, InterfaceError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| InterfaceError::Failed(format!("preparing SSH files: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("drydock-ssh-")
            .tempdir()
            .map_err(io)?;
        let mut key = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("key"))
            .map_err(io)?;
        key.write_all(target.key.expose_secret().as_bytes())
            .map_err(io)?;
        std::fs::write(dir.path().join("known_hosts"), &target.known_hosts).map_err(io)?;
        Ok(SshFiles { dir })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Options shared by `ssh` and `sftp` (which spells the port flag `-P`).
pub(crate) fn ssh_options(
    target: &SshTarget,
    files: &SshFiles,
    strict: &str,
    port_flag: &str,
) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |s: &str| v.push(s.into());
    push("-F");
    push("/dev/null");
    push("-i");
    push(&files.path("key").to_string_lossy());
    push(port_flag);
    push(&target.port.to_string());
    for o in [
        "BatchMode=yes".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "LogLevel=ERROR".to_owned(),
        format!("StrictHostKeyChecking={strict}"),
        format!("UserKnownHostsFile={}", files.path("known_hosts").display()),
        format!("ConnectTimeout={}", target.connect_timeout.as_secs().max(1)),
        "ServerAliveInterval=5".to_owned(),
        "ServerAliveCountMax=3".to_owned(),
    ] {
        push("-o");
        push(&o);
    }
    v
}

fn ssh_command(target: &SshTarget, files: &SshFiles, strict: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_options(target, files, strict, "-p"))
        .arg("-l")
        .arg(&target.user)
        .arg(&target.host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Connect once accepting the host's key, and return the known_hosts lines
/// learned (trust on first use; enforced strictly afterwards).
pub async fn learn_host_key(target: &SshTarget) -> Result<String, InterfaceError> {
    let files = SshFiles::new(&SshTarget {
        known_hosts: String::new(),
        ..target.clone()
    })?;
    let mut cmd = ssh_command(target, &files, "accept-new");
    cmd.arg("--").arg("true");
    let out = cmd
        .output()
        .await
        .map_err(|e| InterfaceError::Failed(format!("running ssh: {e}")))?;
    if !out.status.success() {
        return Err(InterfaceError::Unreachable(format!(
            "{}@{}:{}: {}",
            target.user,
            target.host,
            target.port,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::read_to_string(files.path("known_hosts"))
        .map_err(|e| InterfaceError::Failed(format!("reading the learned host key: {e}")))
}

/// Quote words for the remote shell.
pub fn quote(words: &[&str]) -> Result<String, InterfaceError> {
    shlex::try_join(words.iter().copied())
        .map_err(|e| InterfaceError::Invalid(format!("cannot quote the command: {e}")))
}

/// Commands run over SSH in a directory on the host.
pub struct SshCommand {
    pub target: SshTarget,
    /// Absolute directory on the host (the lease's directory).
    pub dir: String,
    /// Connection attempts before giving up (connection failures only).
    pub attempts: u32,
}

#[async_trait::async_trait]
impl CommandInterface for SshCommand {
    async fn run(
        &self,
        spec: &CommandSpec,
        stdout: Output<'_>,
        stderr: Output<'_>,
    ) -> Result<i32, InterfaceError> {
        let cwd = spec.validate()?;
        let dir = match cwd.as_deref() {
            Some(c) if !c.is_empty() => format!("{}/{c}", self.dir.trim_end_matches('/')),
            _ => self.dir.clone(),
        };
        let mut words: Vec<String> = vec!["cd".into(), "--".into(), dir];
        let cd = quote(&words.iter().map(String::as_str).collect::<Vec<_>>())?;
        words.clear();
        // `env -- NAME=VALUE… PROGRAM ARGS…`: `--` ends env's options, so
        // neither a value nor the program can be read as one.
        if spec.argv[0].contains('=') {
            return Err(InterfaceError::Invalid(format!(
                "program name {:?} must not contain `=`",
                spec.argv[0]
            )));
        }
        words.push("env".into());
        words.push("--".into());
        words.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        words.extend(spec.argv.iter().cloned());
        let remote = format!(
            "{cd} && exec {}",
            quote(&words.iter().map(String::as_str).collect::<Vec<_>>())?
        );
        let files = SshFiles::new(&self.target)?;
        let mut last = String::new();
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            let mut cmd = ssh_command(&self.target, &files, "yes");
            cmd.arg("--").arg(&remote);
            let mut child = cmd
                .spawn()
                .map_err(|e| InterfaceError::Failed(format!("running ssh: {e}")))?;
            // stderr streams live, except while it could still be ssh's own
            // connection error ("ssh: connect to host …"): that is held
            // back so a failed connection can be retried without noise.
            let written = std::sync::atomic::AtomicU64::new(0);
            let mut err_buf = Vec::new(); // the first 8 KiB, for diagnosis
            let mut held = Vec::new();
            let mut live = false;
            let mut child_err = child.stderr.take();
            let code = {
                let mut out_count = CountingWriter {
                    inner: &mut *stdout,
                    written: &written,
                };
                let piped_err = async {
                    use tokio::io::AsyncWriteExt;
                    let Some(e) = child_err.as_mut() else {
                        return Ok(());
                    };
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = e.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        if err_buf.len() < 8192 {
                            err_buf.extend_from_slice(&chunk[..n.min(8192 - err_buf.len())]);
                        }
                        if live {
                            stderr.write_all(&chunk[..n]).await?;
                            continue;
                        }
                        held.extend_from_slice(&chunk[..n]);
                        let could_be_ssh =
                            SSH_PREFIX.starts_with(&held[..held.len().min(SSH_PREFIX.len())]);
                        if !could_be_ssh || written.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                            stderr.write_all(&held).await?;
                            held.clear();
                            live = true;
                        }
                    }
                };
                let run = drive_stdout(&mut child, spec.timeout, &mut out_count);
                let (status, piped) = tokio::join!(run, piped_err);
                piped.map_err(|e| InterfaceError::Failed(format!("writing stderr: {e}")))?;
                status?
            };
            let connect_failure = code == 255
                && !live
                && written.load(std::sync::atomic::Ordering::Relaxed) == 0
                && held.starts_with(SSH_PREFIX);
            if connect_failure {
                last = String::from_utf8_lossy(&held).trim().to_owned();
                tracing::warn!(host = %self.target.host, attempt, "ssh connection failed: {last}");
                continue;
            }
            use tokio::io::AsyncWriteExt;
            stderr
                .write_all(&held)
                .await
                .map_err(|e| InterfaceError::Failed(format!("writing stderr: {e}")))?;
            if code == 255
                && String::from_utf8_lossy(&err_buf).contains("Host key verification failed")
            {
                return Err(InterfaceError::HostKey(format!(
                    "{}:{} does not present the pinned key",
                    self.target.host, self.target.port
                )));
            }
            return Ok(code);
        }
        Err(InterfaceError::Unreachable(format!(
            "{} attempts: {last}",
            self.attempts.max(1)
        )))
    }
}

/// How ssh's own error messages begin.
const SSH_PREFIX: &[u8] = b"ssh: ";

struct CountingWriter<'a> {
    inner: &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    written: &'a std::sync::atomic::AtomicU64,
}

impl tokio::io::AsyncWrite for CountingWriter<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.written
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

async fn drive_stdout(
    child: &mut Child,
    timeout: Option<Duration>,
    stdout: &mut CountingWriter<'_>,
) -> Result<i32, InterfaceError> {
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| InterfaceError::Failed("no stdout pipe".into()))?;
    let pump = async {
        tokio::io::copy(&mut out, stdout)
            .await
            .map_err(|e| InterfaceError::Failed(format!("reading command output: {e}")))?;
        child
            .wait()
            .await
            .map_err(|e| InterfaceError::Failed(format!("waiting for ssh: {e}")))
    };
    let status = match timeout {
        Some(t) => tokio::time::timeout(t, pump)
            .await
            .map_err(|_| InterfaceError::TimedOut(t))??,
        None => pump.await?,
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
