//! The store conformance suite: every store, queue, lock, slot-lock and
//! command test runs against SQLite and against PostgreSQL (test names say
//! which: `…::sqlite::…` / `…::postgres::…`).
//!
//! One test binary on purpose: every extra integration-test file is another
//! full link on a 2-core machine.

#[macro_use]
extern crate drydock_testkit;

mod commands;
mod locks;
mod queue;
mod records;
mod schema;
mod slots;
mod stress;
