//! The `drydock` binary end to end, against real databases and real
//! processes: the CLI workflows, and daemons killed with SIGKILL while
//! leases come and go.

#[macro_use]
extern crate drydock_testkit;

mod audit;
mod crash;
mod faults;
mod ssh;
mod up;
mod workflows;
mod working_copy;

use std::process::{Command, Output};

/// Run `drydock --database URL ARGS…` to completion.
pub fn drydock(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drydock"))
        .arg("--database")
        .arg(url)
        .args(args)
        .env("DRYDOCK_LOG", "error")
        .output()
        .expect("run drydock")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}
