//! Object locks with fencing tokens.

use anyhow::ensure;
use drydock_store::StoreError;
use drydock_testkit::{TestDb, wait_until};
use std::time::Duration;

backend_tests!(
    contention_is_not_an_error_and_expiry_allows_takeover_with_a_larger_token,
    a_taken_over_holder_cannot_write,
    tokens_grow_across_unlock_and_relock,
    renew_fails_after_takeover,
);

const LONG: Duration = Duration::from_secs(30);

async fn contention_is_not_an_error_and_expiry_allows_takeover_with_a_larger_token(
    db: &TestDb,
) -> anyhow::Result<()> {
    let s = &db.store;
    let a = s
        .try_lock("lease:1", "a", Duration::from_millis(500))
        .await?
        .expect("free lock");
    ensure!(
        s.try_lock("lease:1", "b", LONG).await?.is_none(),
        "held lock: try again shortly"
    );
    ensure!(
        s.try_lock("lease:1", "a", LONG).await?.is_none(),
        "not re-entrant"
    );
    let mut b = None;
    wait_until(Duration::from_secs(5), "lock expiry", async || {
        b = s.try_lock("lease:1", "b", LONG).await.unwrap();
        b.is_some()
    })
    .await?;
    let b = b.unwrap();
    ensure!(
        b.token() > a.token(),
        "takeover token {} must exceed {}",
        b.token(),
        a.token()
    );
    let state = s.lock_state("lease:1").await?.expect("row");
    ensure!(state.owner.as_deref() == Some("b") && state.token == b.token());
    ensure!(
        !s.unlock(a).await?,
        "the stale holder's unlock must not free b's lock"
    );
    ensure!(s.held_locks().await?.iter().any(|l| l.name == "lease:1"));
    ensure!(s.unlock(b).await?);
    ensure!(s.held_locks().await?.is_empty(), "no lock leaked");
    Ok(())
}

async fn a_taken_over_holder_cannot_write(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let lease = s.insert_lease(&crate::host_lease()).await?;
    let name = lease.object().key();
    let stale = s
        .try_lock(&name, "slow", Duration::from_millis(50))
        .await?
        .expect("lock");
    let mut seen_by_stale = s.lease(lease.id).await?;
    let mut fresh = None;
    wait_until(Duration::from_secs(5), "takeover", async || {
        fresh = s.try_lock(&name, "fast", LONG).await.unwrap();
        fresh.is_some()
    })
    .await?;
    let fresh = fresh.unwrap();
    // The stale holder writes before the new holder has written anything:
    // its token is no longer current, so nothing lands.
    seen_by_stale.failure = Some("stale".into());
    let mut tx = s.begin().await?;
    let err = tx.save_lease(&seen_by_stale, &stale).await.unwrap_err();
    ensure!(matches!(err, StoreError::Stale { .. }), "{err}");
    drop(tx);
    // The new holder writes normally, and its version check protects it too.
    let mut current = s.lease(lease.id).await?;
    current.failure = Some("fresh".into());
    let mut tx = s.begin().await?;
    let saved = tx.save_lease(&current, &fresh).await?;
    tx.commit().await?;
    ensure!(saved.version == lease.version + 1 && saved.failure.as_deref() == Some("fresh"));
    let mut tx = s.begin().await?;
    let err = tx.save_lease(&current, &fresh).await.unwrap_err();
    ensure!(
        matches!(err, StoreError::Stale { .. }),
        "a write based on an old version must fail: {err}"
    );
    drop(tx);
    ensure!(s.lease(lease.id).await?.failure.as_deref() == Some("fresh"));
    Ok(())
}

async fn tokens_grow_across_unlock_and_relock(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let mut last = 0;
    for i in 0..5 {
        let l = s
            .try_lock("resource:9", &format!("w{i}"), LONG)
            .await?
            .expect("free");
        ensure!(l.token() > last);
        last = l.token();
        let mut tx = s.begin().await?;
        tx.check_fence(&l).await?;
        drop(tx);
        ensure!(s.unlock(l).await?);
    }
    Ok(())
}

async fn renew_fails_after_takeover(db: &TestDb) -> anyhow::Result<()> {
    let s = &db.store;
    let mut a = s
        .try_lock("lease:2", "a", Duration::from_millis(200))
        .await?
        .expect("lock");
    s.renew_lock(&mut a, Duration::from_millis(50)).await?;
    wait_until(Duration::from_secs(5), "takeover", async || {
        s.try_lock("lease:2", "b", LONG).await.unwrap().is_some()
    })
    .await?;
    ensure!(matches!(
        s.renew_lock(&mut a, LONG).await,
        Err(StoreError::Stale { .. })
    ));
    let mut tx = s.begin().await?;
    ensure!(tx.check_fence(&a).await.is_err());
    Ok(())
}
