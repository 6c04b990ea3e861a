//! Slot locks.

use anyhow::ensure;
use drydock_store::StoreError;
use drydock_testkit::TestDb;

backend_tests!(
    slot_locks_are_all_or_nothing_and_name_their_holders,
    slot_locks_are_taken_in_the_callers_transaction
);

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

async fn slot_locks_are_all_or_nothing_and_name_their_holders(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    s.acquire_slot_locks("resource:1", &keys(&["host(a)", "limit(bp1).0"]))
        .await?;
    // Taking what one already holds is fine.
    s.acquire_slot_locks("resource:1", &keys(&["host(a)"]))
        .await?;
    let err = s
        .acquire_slot_locks("resource:2", &keys(&["host(b)", "host(a)", "limit(bp1).1"]))
        .await
        .unwrap_err();
    let StoreError::SlotLocked(conflict) = &err else {
        anyhow::bail!("expected a slot conflict, got {err}")
    };
    ensure!(
        conflict.held.len() == 1 && conflict.held["host(a)"] == "resource:1",
        "{conflict:?}"
    );
    ensure!(
        err.to_string().contains("host(a) (held by resource:1)"),
        "{err}"
    );
    ensure!(
        err.is_temporary(),
        "a slot conflict is contention, not a failure"
    );
    ensure!(
        s.slot_locks_of("resource:2").await?.is_empty(),
        "nothing taken on conflict"
    );
    ensure!(
        s.slot_lock_holders(&keys(&["host(b)", "host(a)"]))
            .await?
            .len()
            == 1
    );
    ensure!(s.release_slot_locks("resource:1").await? == 2);
    s.acquire_slot_locks("resource:2", &keys(&["host(b)", "host(a)"]))
        .await?;
    ensure!(s.slot_locks_of("resource:2").await? == keys(&["host(a)", "host(b)"]));
    let long = "k".repeat(600);
    ensure!(matches!(
        s.acquire_slot_locks("x", &[long]).await,
        Err(StoreError::Invalid { .. })
    ));
    Ok(())
}

async fn slot_locks_are_taken_in_the_callers_transaction(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let mut tx = s.begin().await?;
    tx.acquire_slot_locks("lease:1", &keys(&["wc(1)"])).await?;
    tx.rollback().await?;
    ensure!(
        s.all_slot_locks().await?.is_empty(),
        "rolled back with the transaction"
    );
    let mut tx = s.begin().await?;
    tx.acquire_slot_locks("lease:1", &keys(&["wc(1)"])).await?;
    // A failed acquisition inside a transaction leaves it usable (no
    // aborted PostgreSQL transaction) and keeps earlier work.
    ensure!(
        tx.acquire_slot_locks("lease:2", &keys(&["wc(1)"]))
            .await
            .is_err()
    );
    tx.acquire_slot_locks("lease:1", &keys(&["wc(1).extra"]))
        .await?;
    tx.commit().await?;
    ensure!(s.slot_locks_of("lease:1").await?.len() == 2);
    Ok(())
}
