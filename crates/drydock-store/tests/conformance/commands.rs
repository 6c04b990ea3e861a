//! The command queue.

use anyhow::ensure;
use drydock_model::{CommandKind, LeaseId, ObjectRef, ResourceId};
use drydock_store::StoreError;
use drydock_store::queue::TaskState;
use drydock_testkit::TestDb;
use serde_json::json;
use std::time::Duration;

backend_tests!(
    enqueue_inserts_the_command_and_wakes_the_target_in_one_transaction,
    commands_are_consumed_in_order_exactly_once,
    commands_that_do_not_fit_the_target_are_refused,
    a_command_sent_only_in_some_statuses_is_checked_with_its_write,
);

async fn enqueue_inserts_the_command_and_wakes_the_target_in_one_transaction(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let lease = ObjectRef::lease(LeaseId(4));
    let mut tx = s.begin().await?;
    tx.enqueue_command("user:alice", lease, CommandKind::Release, json!({}))
        .await?;
    tx.rollback().await?;
    ensure!(s.commands_for(lease).await?.is_empty() && s.tasks_for(&lease.key()).await?.is_empty());

    s.enqueue_command("user:alice", lease, CommandKind::Release, json!({}))
        .await?;
    s.enqueue_command("web:bob", lease, CommandKind::Release, json!({}))
        .await?;
    let cmds = s.pending_commands(lease).await?;
    ensure!(
        cmds.len() == 2
            && cmds[0].author == "user:alice"
            && cmds[0].command == CommandKind::Release
    );
    let tasks = s.tasks_for(&lease.key()).await?;
    ensure!(
        tasks.len() == 1,
        "the two commands share one queued update task"
    );
    ensure!(tasks[0].state == TaskState::Queued && tasks[0].kind == "lease.update");
    let t = s
        .claim("w", Duration::from_secs(30))
        .await?
        .expect("update task runnable now");
    ensure!(t.object_key.as_deref() == Some("lease:4"));
    ensure!(s.has_pending_command(lease, CommandKind::Release).await?);
    Ok(())
}

async fn commands_are_consumed_in_order_exactly_once(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let r = ObjectRef::resource(ResourceId(2));
    let a = s
        .enqueue_command(
            "gc",
            r,
            CommandKind::Reclaim,
            json!({"reclaimer": "lease:9"}),
        )
        .await?;
    let b = s
        .enqueue_command("cli", r, CommandKind::Release, json!({}))
        .await?;
    let mut tx = s.begin().await?;
    let pending = tx.pending_commands(r).await?;
    ensure!(
        pending.iter().map(|c| c.id).collect::<Vec<_>>() == vec![a, b],
        "id order"
    );
    ensure!(pending[0].payload["reclaimer"] == "lease:9");
    ensure!(tx.consume_command(a).await?);
    ensure!(!tx.consume_command(a).await?, "consuming twice is a no-op");
    tx.commit().await?;
    let left = s.pending_commands(r).await?;
    ensure!(left.len() == 1 && left[0].id == b);
    ensure!(!s.has_pending_command(r, CommandKind::Reclaim).await?);
    ensure!(
        s.commands_for(r)
            .await?
            .iter()
            .filter(|c| c.consumed)
            .count()
            == 1
    );
    Ok(())
}

async fn commands_that_do_not_fit_the_target_are_refused(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let err = s
        .enqueue_command(
            "cli",
            ObjectRef::lease(LeaseId(1)),
            CommandKind::Reclaim,
            json!({}),
        )
        .await
        .unwrap_err();
    ensure!(
        matches!(err, StoreError::Invalid { .. })
            && err
                .to_string()
                .contains("reclaim cannot be sent to a lease"),
        "{err}"
    );
    ensure!(
        s.commands_for(ObjectRef::lease(LeaseId(1)))
            .await?
            .is_empty()
    );
    ensure!(
        s.tasks_for("lease:1").await?.is_empty(),
        "nothing scheduled for a refused command"
    );
    Ok(())
}

async fn a_command_sent_only_in_some_statuses_is_checked_with_its_write(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let obj = lease.object();
    // PostgreSQL: other processes' workers hear of it.
    let mut listener = match db.backend {
        drydock_testkit::Backend::Postgres => {
            let mut l = sqlx::postgres::PgListener::connect(&db.url).await?;
            l.listen(drydock_store::queue::NOTIFY_CHANNEL).await?;
            Some(l)
        }
        drydock_testkit::Backend::Sqlite => None,
    };
    // Allowed: the command and its target's task, as an enqueue.
    let sent = s
        .enqueue_command_if(
            "user:a",
            obj,
            CommandKind::Release,
            json!({}),
            &["pending", "active"],
        )
        .await?;
    let Ok(id) = sent else {
        anyhow::bail!("refused: {sent:?}");
    };
    let pending = s.pending_commands(obj).await?;
    ensure!(pending.len() == 1 && pending[0].id == id && pending[0].author == "user:a");
    let tasks = s.tasks_for(&obj.key()).await?;
    ensure!(tasks.len() == 1 && tasks[0].state == TaskState::Queued);
    ensure!(tasks[0].priority == drydock_store::command::COMMAND_PRIORITY);
    if let Some(l) = listener.as_mut() {
        tokio::time::timeout(Duration::from_secs(5), l.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no notification of the command"))??;
    }

    // Refused: the status is told, nothing more is stored.
    let refused = s
        .enqueue_command_if("user:b", obj, CommandKind::Release, json!({}), &["active"])
        .await?;
    ensure!(refused == Err("pending".to_owned()), "{refused:?}");
    ensure!(s.pending_commands(obj).await?.len() == 1);
    ensure!(s.tasks_for(&obj.key()).await?.len() == 1);

    // A target that does not exist; a blueprint, which has no status.
    ensure!(matches!(
        s.enqueue_command_if(
            "user:c",
            ObjectRef::lease(LeaseId(lease.id.0 + 100)),
            CommandKind::Release,
            json!({}),
            &["pending"],
        )
        .await,
        Err(StoreError::NotFound { what: "lease", .. })
    ));
    ensure!(matches!(
        s.enqueue_command_if(
            "user:c",
            ObjectRef::resource(ResourceId(77)),
            CommandKind::Release,
            json!({}),
            &["active"],
        )
        .await,
        Err(StoreError::NotFound {
            what: "resource",
            ..
        })
    ));
    Ok(())
}
