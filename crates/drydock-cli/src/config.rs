//! Settings, layered: built-in defaults, then the TOML file given by
//! `--config` (or `DRYDOCK_CONFIG`), then environment variables and flags
//! (clap reads both; a flag wins over its variable). Unknown keys in the
//! file are errors that name the key, so a typo never silently falls back
//! to a default.
//!
//! ```toml
//! database = "sqlite://drydock.db"
//!
//! [server]
//! listen = "127.0.0.1:6060"
//!
//! [daemon]
//! workers = 4
//! # PostgreSQL connections (default: 2 per worker + 8)
//! # database_connections = 16
//! claim_ttl = "30s"
//! reclaim_grace = "3m"
//! retention = "30days"
//! ```

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub database: Option<String>,
    pub server: ServerSection,
    pub daemon: DaemonSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    pub workers: Option<usize>,
    pub database_connections: Option<usize>,
    pub claim_ttl: Option<String>,
    pub reclaim_grace: Option<String>,
    pub retention: Option<String>,
}

/// Values given on the command line or in the environment (they win).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database: Option<String>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub claim_ttl: Option<Duration>,
    pub reclaim_grace: Option<Duration>,
    pub retention: Option<Duration>,
}

/// The settings in force.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub database: String,
    pub listen: SocketAddr,
    pub workers: usize,
    /// PostgreSQL connections a daemon keeps (`None`: 2 per worker + 8).
    pub database_connections: Option<usize>,
    #[serde(with = "humantime_serde_compat")]
    pub claim_ttl: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub reclaim_grace: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub retention: Duration,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6060";

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "configuration file {}: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }
}

fn duration(key: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{key} = {text:?}: {e} (e.g. \"30s\", \"3m\", \"30days\")"))
}

/// Apply file, then overrides, on the defaults; check every value.
pub fn resolve(file: Option<&FileConfig>, o: &Overrides) -> anyhow::Result<Settings> {
    let empty = FileConfig::default();
    let f = file.unwrap_or(&empty);
    let database = o
        .database
        .clone()
        .or_else(|| f.database.clone())
        .unwrap_or_else(|| drydock_store::DEFAULT_DATABASE_URL.into());
    if !(database.starts_with("sqlite:")
        || database.starts_with("postgres://")
        || database.starts_with("postgresql://"))
    {
        bail!(
            "database {:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DB",
            drydock_store::redact_url(&database)
        );
    }
    let listen_text = o
        .listen
        .clone()
        .or_else(|| f.server.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow::anyhow!("server.listen = {listen_text:?}: expected IP:PORT, e.g. 127.0.0.1:6060")
    })?;
    let workers = o.workers.or(f.daemon.workers).unwrap_or(4);
    if !(1..=256).contains(&workers) {
        bail!("daemon.workers = {workers}: expected 1 to 256");
    }
    let database_connections = f.daemon.database_connections;
    if let Some(n) = database_connections
        && !(workers + 1..=10_000).contains(&n)
    {
        bail!(
            "daemon.database_connections = {n}: expected more than the workers ({workers}), at most 10000"
        );
    }
    let pick = |over: Option<Duration>, key: &str, text: &Option<String>, default: Duration| match (
        over, text,
    ) {
        (Some(d), _) => Ok(d),
        (None, Some(t)) => duration(key, t),
        (None, None) => Ok(default),
    };
    let claim_ttl = pick(
        o.claim_ttl,
        "daemon.claim_ttl",
        &f.daemon.claim_ttl,
        Duration::from_secs(30),
    )?;
    if claim_ttl < Duration::from_millis(300) {
        bail!("daemon.claim_ttl must be at least 300ms (it is renewed every third of it)");
    }
    Ok(Settings {
        database,
        listen,
        workers,
        database_connections,
        claim_ttl,
        reclaim_grace: pick(
            o.reclaim_grace,
            "daemon.reclaim_grace",
            &f.daemon.reclaim_grace,
            Duration::from_secs(180),
        )?,
        retention: pick(
            o.retention,
            "daemon.retention",
            &f.daemon.retention,
            Duration::from_secs(30 * 86_400),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        let f: FileConfig = toml::from_str(text)?;
        resolve(Some(&f), &Overrides::default())
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let f: FileConfig = toml::from_str(
            "database = \"sqlite:///tmp/x.db\"\n[server]\nlisten = \"127.0.0.1:7000\"\n[daemon]\nworkers = 2\nclaim_ttl = \"5s\"\n",
        )
        .unwrap();
        let s = resolve(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(s.database, "sqlite:///tmp/x.db");
        assert_eq!(s.listen.port(), 7000);
        assert_eq!((s.workers, s.claim_ttl), (2, Duration::from_secs(5)));
        let o = Overrides {
            listen: Some("127.0.0.1:7001".into()),
            workers: Some(8),
            ..Default::default()
        };
        let s = resolve(Some(&f), &o).unwrap();
        assert_eq!((s.listen.port(), s.workers), (7001, 8));
        assert_eq!(s.database, "sqlite:///tmp/x.db");
    }

    #[test]
    fn the_database_pool_is_sized_for_the_workers_unless_set() {
        let s = parse("[daemon]\nworkers = 4\n").unwrap();
        assert_eq!(s.database_connections, None);
        assert_eq!(drydock_store::pool_size_for(s.workers), 16);
        let s = parse("[daemon]\nworkers = 4\ndatabase_connections = 30\n").unwrap();
        assert_eq!(s.database_connections, Some(30));
        let e = parse("[daemon]\nworkers = 4\ndatabase_connections = 4\n").unwrap_err();
        assert!(e.to_string().contains("daemon.database_connections"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = toml::from_str::<FileConfig>("[daemon]\nworkerz = 2\n").unwrap_err();
        assert!(e.to_string().contains("workerz"), "{e}");
        let e = toml::from_str::<FileConfig>("databse = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("databse"), "{e}");
        let e = parse("[daemon]\nclaim_ttl = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("daemon.claim_ttl"), "{e}");
        let e = parse("[server]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        let e = parse("database = \"mysql://x\"\n").unwrap_err();
        assert!(e.to_string().contains("expected sqlite"), "{e}");
        let e = parse("[daemon]\nworkers = 0\n").unwrap_err();
        assert!(e.to_string().contains("daemon.workers"), "{e}");
    }

    #[test]
    fn defaults_without_a_file() {
        let s = resolve(None, &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.database, drydock_store::DEFAULT_DATABASE_URL);
        assert_eq!(s.workers, 4);
    }
}
