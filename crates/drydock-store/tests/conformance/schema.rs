//! The two dialects' migrations define the same schema, and migrating is
//! idempotent.

use anyhow::ensure;
use drydock_testkit::{Backend, TestDb, run};
use std::sync::{Arc, Mutex};

backend_tests!(migrating_again_applies_nothing);

async fn migrating_again_applies_nothing(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    ensure!(s.applied_migrations().await? == s.known_migrations());
    ensure!(s.migrate().await? == 0);
    Ok(())
}

#[tokio::test]
async fn sqlite_and_postgres_schemas_have_the_same_tables_and_columns() {
    type Columns = Vec<(String, String)>;
    let seen: Arc<Mutex<Vec<Columns>>> = Arc::default();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let seen = seen.clone();
        run(backend, async move |db: &TestDb| {
            let columns = db.store.schema_columns().await?;
            seen.lock().unwrap().push(columns);
            Ok(())
        })
        .await;
    }
    let seen = seen.lock().unwrap();
    if seen.len() == 2 {
        assert!(seen[0].len() > 50, "schema looks empty: {:?}", seen[0]);
        let only_sqlite: Vec<_> = seen[0].iter().filter(|c| !seen[1].contains(c)).collect();
        let only_pg: Vec<_> = seen[1].iter().filter(|c| !seen[0].contains(c)).collect();
        assert!(
            only_sqlite.is_empty() && only_pg.is_empty(),
            "only in SQLite: {only_sqlite:?}; only in PostgreSQL: {only_pg:?}"
        );
    }
}

#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = drydock_store::Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the database holds SSH keys: mode {mode:o}");
    store.close().await;
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_named_with_the_reason() {
    // Nothing listens on port 1; the password never appears.
    let err = drydock_store::Store::open("postgres://drydock:hunter2@127.0.0.1:1/nowhere")
        .await
        .unwrap_err();
    let said = err.to_string();
    assert!(err.is_temporary(), "{said}");
    assert!(
        said.starts_with(
            "database unavailable: cannot connect to postgres://drydock:***@127.0.0.1:1/nowhere: "
        ),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");

    // A server that answers (where the suite's PostgreSQL runs) but has no
    // such database says so.
    run(Backend::Postgres, async |_: &TestDb| {
        let mut url = drydock_testkit::postgres_url();
        let cut = url.rfind('/').expect("a database in the URL");
        url.truncate(cut);
        let err = drydock_store::Store::open(&format!("{url}/no_such_database_here"))
            .await
            .unwrap_err()
            .to_string();
        ensure!(err.contains("no_such_database_here"), "{err}");
        Ok(())
    })
    .await;

    // A SQLite file in a directory that does not exist.
    let err = drydock_store::Store::open("sqlite:///nonexistent-dir/x/drydock.db")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent-dir/x/drydock.db"), "{err}");
}
