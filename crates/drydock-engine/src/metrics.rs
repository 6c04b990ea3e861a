//! Measurements the engine records through the `metrics` facade. Whoever
//! runs the engine installs a recorder (the server exports them at
//! `/metrics`); without one they cost next to nothing.

use drydock_store::lease::Lease;

/// Histogram: how long one allocator pass over a pending lease took.
pub const ALLOCATOR_PASS_SECONDS: &str = "drydock_allocator_pass_seconds";
/// Histogram: from a lease's request to its activation.
pub const LEASE_WAIT_SECONDS: &str = "drydock_lease_wait_seconds";

/// Record a lease's wait (queue → active) once it is active.
pub(crate) fn lease_activated(lease: &Lease) {
    if let Some(at) = lease.activated_at {
        let waited_ms = (at - lease.created_at).max(0);
        metrics::histogram!(LEASE_WAIT_SECONDS).record(waited_ms as f64 / 1000.0);
    }
}
