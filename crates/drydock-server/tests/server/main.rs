//! The HTTP server against real databases, with a real daemon in the same
//! process: the JSON API (every route, good and bad input), the Conduit
//! search methods, the web UI (and a real headless Chromium clicking
//! through it), metrics and the OpenAPI snapshot.

#[macro_use]
extern crate drydock_testkit;

mod api;
mod authz;
mod bad_input;
mod browser;
mod conduit;
mod fuzz;
mod harness;
mod metrics;
mod openapi;
mod web;
