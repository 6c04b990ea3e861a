//! The store conformance suite: every store, queue, lock, slot-lock and
//! command test runs against SQLite and against PostgreSQL (test names say
//! which: `…::sqlite::…` / `…::postgres::…`).
//!
//! One test binary on purpose: every extra integration-test file is another
//! full link on a 2-core machine.

#[macro_use]
extern crate drydock_testkit;

mod claims;
mod commands;
mod locks;
mod queue;
mod records;
mod schema;
mod slots;
mod stress;

/// A pending lease on a host, to write and wait for.
fn host_lease() -> drydock_store::lease::NewLease {
    drydock_store::lease::NewLease {
        resource_type: "host".into(),
        authorizing: "cli".into(),
        ..Default::default()
    }
}
