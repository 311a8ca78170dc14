//! Request IDs: a random per-process prefix and a counter, 32 hex digits.
//! Unique across restarts and replicas without a random draw per request.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut bytes = [0u8; 8];
        // Without randomness IDs stay unique within the process, which is all correlation needs.
        let _ = certs::crypto::provider().secure_random.fill(&mut bytes);
        Self { prefix: u64::from_be_bytes(bytes), counter: AtomicU64::new(0) }
    }

    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.prefix)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}
