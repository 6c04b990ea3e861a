//! The lifecycle engine against real databases: every transition of both
//! state machines, wake-up edges, idempotent commands, limits and storms, on
//! SQLite and PostgreSQL (`…::sqlite::…` / `…::postgres::…`).

#[macro_use]
extern crate drydock_testkit;

mod harness;
mod lifecycle;
mod storms;
mod waiting;
