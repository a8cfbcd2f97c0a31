//! The stop signal of a run: one cloneable handle that a signal handler (or a test) sets
//! and that live sources look at between reads. A replay ends with its fixture, so its
//! handle is simply never set. Setting it twice is harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Asks a running pipeline to stop taking input; what is queued is still finished.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
}

impl Shutdown {
    /// A handle nobody has set yet.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Asks every holder of a clone of this handle to stop.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_every_clone() {
        let shutdown = Shutdown::new();
        let source_side = shutdown.clone();
        assert!(!source_side.is_requested());
        shutdown.request();
        assert!(source_side.is_requested());
    }
}
