//! SQLite: the file `DB-writer` beside the database, through which the
//! Drydock processes sharing the database take turns writing and hear
//! each other's commits as they happen.
//!
//! **Taking turns.** SQLite's write lock cannot be waited for: a `BEGIN
//! IMMEDIATE` that finds it taken fails, and [`crate::db::begin_immediate`]
//! tries again after a pause (1 ms, doubling). With a daemon and a CLI or
//! API process writing at once, those pauses were most of a write's wait:
//! the lock is held for a fraction of a millisecond and found free only at
//! the next try. So a process takes an exclusive `flock` on this file
//! before its `BEGIN IMMEDIATE` and lets it go after its `COMMIT` or
//! `ROLLBACK`; one that finds it taken waits in the kernel (on a blocking
//! thread), which wakes it as the holder lets go. The kernel lets the lock
//! go when a process dies.
//!
//! **Hearing commits.** After each `COMMIT`, still holding the lock, a
//! process writes its instance name into the file. On Linux the SQLite
//! watch of every other process hears the write (inotify) and looks at the
//! database at once, instead of at its next timed look; a process's own
//! commits are told apart by the name and not looked into (they woke whom
//! they concern already).
//!
//! SQLite's lock stays what protects the data, and the watch's timed looks
//! what finds every change: they are all there is for writes by other
//! programs, where the file cannot be opened (a read-only directory), on
//! systems without inotify, or for a commit whose name another's overwrote
//! before it was read.

use std::fs::{File, TryLockError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Room for an instance name in the file (names are shorter; the rest is
/// spaces).
const NAME_LEN: usize = 64;

/// The writer file of one database, opened on first use.
pub(crate) struct WriterFile {
    /// `DB-writer`.
    path: String,
    /// `None` when it cannot be opened: writes then only use SQLite's lock.
    file: OnceLock<Option<Arc<File>>>,
}

/// The lock, held until dropped.
pub(crate) struct Held(Arc<File>);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Held {
    /// Tell the other processes that `instance` committed (call after the
    /// `COMMIT`, before letting the lock go).
    pub(crate) fn committed(&self, instance: &str) {
        let mut name = [b' '; NAME_LEN];
        let n = instance.len().min(NAME_LEN);
        name[..n].copy_from_slice(&instance.as_bytes()[..n]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            let _ = self.0.write_at(&name, 0);
        }
    }
}

impl WriterFile {
    /// The writer file of the SQLite database at `db_path`.
    pub(crate) fn of(db_path: &str) -> Self {
        Self {
            path: format!("{db_path}-writer"),
            file: OnceLock::new(),
        }
    }

    fn file(&self) -> Option<Arc<File>> {
        self.file.get_or_init(|| open(&self.path)).clone()
    }

    /// Take the lock, waiting at most `patience`; `None` if it cannot be
    /// had (see the module's notes).
    pub(crate) async fn take(&self, patience: Duration) -> Option<Held> {
        let file = self.file()?;
        match file.try_lock() {
            Ok(()) => return Some(Held(file)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => {
                tracing::debug!("the writer file cannot be locked: {e}");
                return None;
            }
        }
        // A wait given up (patience, or this future dropped) leaves the
        // thread waiting: the lock it then takes is dropped with its
        // output (tokio drops the output of a task nobody awaits), and a
        // dropped `Held` lets it go. The lock belongs to the open file,
        // which this process's waits share: such a late take and drop can
        // let go early of a later transaction's lock. That costs only the
        // queueing (another process then retries SQLite's lock, which
        // still protects the data).
        let waiting = tokio::task::spawn_blocking(move || file.lock().map(|()| Held(file)));
        match tokio::time::timeout(patience, waiting).await {
            Ok(Ok(Ok(held))) => Some(held),
            Ok(Ok(Err(e))) => {
                tracing::debug!("the writer file cannot be locked: {e}");
                None
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Start hearing the commits written into the file; `None` where that
    /// cannot be done.
    pub(crate) fn hear(&self) -> Option<Commits> {
        Commits::new(&self.path, self.file()?)
    }
}

fn open(path: &str) -> Option<Arc<File>> {
    match File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::info!(
                "cannot open {path} ({e}): other processes' writes are waited for by retrying, and their commits seen at the next timed look"
            );
            None
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Commits;

#[cfg(target_os = "linux")]
mod linux {
    use super::NAME_LEN;
    use inotify::{Inotify, WatchMask};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use tokio::io::unix::AsyncFd;

    /// Commits written into a database's writer file.
    pub(crate) struct Commits {
        fd: AsyncFd<Inotify>,
        file: Arc<File>,
        buf: Vec<u8>,
    }

    impl Commits {
        pub(super) fn new(path: &str, file: Arc<File>) -> Option<Self> {
            let watched = Inotify::init().and_then(|inotify| {
                inotify.watches().add(path, WatchMask::MODIFY)?;
                // `new` is deprecated for types that may close their
                // descriptor while registered (tokio#8587): `Inotify` owns
                // its descriptor and the `AsyncFd` owns the `Inotify`. Its
                // replacement is `unsafe`, which this workspace forbids.
                #[allow(deprecated)]
                AsyncFd::new(inotify)
            });
            match watched {
                Ok(fd) => Some(Self {
                    fd,
                    file,
                    buf: vec![0; 1024],
                }),
                Err(e) => {
                    tracing::info!(
                        "cannot hear other processes' commits as they happen ({e}): they are seen at the next timed look"
                    );
                    None
                }
            }
        }

        /// Wait for the next commit heard that was not `own`'s (as far as
        /// the file tells: the last name written).
        pub(crate) async fn another(&mut self, own: &str) {
            loop {
                let Ok(mut ready) = self.fd.readable_mut().await else {
                    return std::future::pending().await;
                };
                let buf = &mut self.buf;
                match ready.try_io(|fd| fd.get_mut().read_events(buf).map(|e| e.count())) {
                    Ok(Ok(0)) | Err(_) => continue,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::info!("stopped hearing other processes' commits: {e}");
                        return std::future::pending().await;
                    }
                }
                let mut name = [0; NAME_LEN];
                let read = self.file.read_at(&mut name, 0).unwrap_or(0);
                if name[..read].trim_ascii_end() != own.as_bytes() {
                    return;
                }
            }
        }
    }
}

/// Elsewhere the timed looks are all there is.
#[cfg(not(target_os = "linux"))]
pub(crate) struct Commits;

#[cfg(not(target_os = "linux"))]
impl Commits {
    fn new(_path: &str, _file: Arc<File>) -> Option<Self> {
        None
    }

    pub(crate) async fn another(&mut self, _own: &str) {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::lease::NewLease;

    const PATIENCE: Duration = Duration::from_secs(5);

    /// Whether `fut` is still waiting after a while (it did not finish
    /// at once: it waits for something).
    async fn still_waiting<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), fut)
            .await
            .is_err()
    }

    /// Each `WriterFile` opens the file anew, as another process does.
    fn db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db").display().to_string();
        (dir, path)
    }

    #[tokio::test]
    async fn a_writer_waits_for_another_process_and_starts_when_it_lets_go() {
        let (_dir, path) = db();
        let (mine, theirs) = (WriterFile::of(&path), WriterFile::of(&path));
        let held = theirs.take(PATIENCE).await.expect("free at first");
        let mut taking = std::pin::pin!(mine.take(PATIENCE));
        assert!(still_waiting(taking.as_mut()).await, "taken while held");
        drop(held);
        let mine = tokio::time::timeout(PATIENCE, taking).await;
        assert!(
            mine.expect("taken once let go").is_some(),
            "a wait within its patience takes the lock"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn another_process_commits_are_heard_and_own_ones_are_not() {
        let (_dir, path) = db();
        let (mine, theirs) = (WriterFile::of(&path), WriterFile::of(&path));
        let mut heard = mine.hear().expect("inotify works here");

        let held = theirs.take(PATIENCE).await.unwrap();
        held.committed("them");
        drop(held);
        tokio::time::timeout(PATIENCE, heard.another("me"))
            .await
            .expect("their commit heard");

        let held = mine.take(PATIENCE).await.unwrap();
        held.committed("me");
        drop(held);
        let mut next = std::pin::pin!(heard.another("me"));
        assert!(still_waiting(next.as_mut()).await, "own commit ignored");

        let held = theirs.take(PATIENCE).await.unwrap();
        held.committed("them");
        drop(held);
        tokio::time::timeout(PATIENCE, next)
            .await
            .expect("their next commit heard");
    }

    /// A store's write transaction holds the file from its `BEGIN` to its
    /// end (commit or rollback), and its commit names it in the file.
    #[tokio::test]
    async fn a_transaction_holds_the_file_until_it_ends_and_its_commit_names_its_store() {
        let (_dir, path) = db();
        let store = Store::open(&format!("sqlite://{path}")).await.unwrap();
        let other = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(format!("{path}-writer"))
            .unwrap();
        let locked = || matches!(other.try_lock(), Err(TryLockError::WouldBlock));
        let free = || {
            let ok = other.try_lock().is_ok();
            other.unlock().unwrap();
            ok
        };
        let lease = NewLease {
            resource_type: "host".into(),
            authorizing: "test".into(),
            ..Default::default()
        };

        let mut tx = store.begin().await.unwrap();
        tx.insert_lease(&lease).await.unwrap();
        assert!(locked(), "held while the transaction is open");
        tx.commit().await.unwrap();
        assert!(free(), "let go after the commit");
        let written = std::fs::read(format!("{path}-writer")).unwrap();
        assert_eq!(
            written.trim_ascii_end(),
            store.inner.instance.as_bytes(),
            "the commit is named"
        );

        let mut tx = store.begin().await.unwrap();
        tx.insert_lease(&lease).await.unwrap();
        assert!(locked());
        tx.rollback().await.unwrap();
        assert!(free(), "let go after a rollback");

        let mut tx = store.begin().await.unwrap();
        tx.insert_lease(&lease).await.unwrap();
        drop(tx);
        assert!(free(), "let go when a transaction is dropped");
    }
}
