//! Drydock's blueprint implementations. Each implements
//! [`drydock_engine::blueprint::BlueprintImpl`]; none writes lease or
//! resource rows (the engine does, from what they return).

pub mod exec;
pub mod files;
mod host_local;
mod host_ssh;
mod working_copy;

pub use host_local::HostLocal;
pub use host_ssh::HostSsh;
pub use working_copy::WorkingCopy;

use drydock_engine::blueprint::Registry;
use std::sync::Arc;

/// Every built-in implementation.
pub fn registry() -> Registry {
    Registry::new()
        .with(Arc::new(HostLocal))
        .with(Arc::new(HostSsh))
        .with(Arc::new(WorkingCopy))
}
