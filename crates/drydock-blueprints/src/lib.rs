//! Drydock's blueprint implementations. Each implements
//! [`drydock_engine::blueprint::BlueprintImpl`]; none writes lease or
//! resource rows (the engine does, from what they return).

mod host_local;

pub use host_local::HostLocal;

use drydock_engine::blueprint::Registry;
use std::sync::Arc;

/// Every built-in implementation.
pub fn registry() -> Registry {
    Registry::new().with(Arc::new(HostLocal))
}
