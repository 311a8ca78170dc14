//! Who may call `/mgmt`: the admin key (compared in constant time over
//! SHA-256 hashes), and how failed attempts are slowed.
//!
//! A valid key always passes: whatever shares the pod's loopback (the app
//! itself) must not be able to lock the operator out by failing on purpose.
//! Only failed attempts are slowed: after [`FREE_FAILURES`] from one source
//! each further one is answered 429 for a back-off that doubles from 1 s to
//! a minute. A source is an IPv4 address, an IPv6 /64, or all of loopback
//! (a local process can bind any of 127/8); and every source shares a
//! global budget of failures, so cycling addresses does not help either.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::StatusCode;
use hyper::header::HeaderValue;

use super::{Caller, Reject};
use crate::config::AdminKey;
use crate::dataplane::server::TokenBucket;
use crate::observe::metrics::Metrics;

/// A source's failures are forgotten after this long without one (and
/// when it presents a valid key).
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failures before a source is slowed down.
const FREE_FAILURES: u32 = 10;
/// The first back-off; it doubles with each further failure up to the window.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_TRACKED_SOURCES: u64 = 4096;
/// Failed attempts per second across all sources, with this burst.
const GLOBAL_RATE: f64 = 2.0;
const GLOBAL_BURST: f64 = 30.0;

/// Failed key checks from one source.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
    /// Further failures get 429 until then.
    slowed_until: Option<Instant>,
}

pub struct Auth {
    /// `mgmt.keys`: a reload replaces them.
    keys: Arc<ArcSwap<Vec<AdminKey>>>,
    failures: moka::sync::Cache<IpAddr, Arc<Mutex<Failures>>>,
    budget: TokenBucket,
    metrics: Arc<Metrics>,
}

impl Auth {
    pub fn new(keys: Arc<ArcSwap<Vec<AdminKey>>>, metrics: Arc<Metrics>) -> Self {
        let failures =
            moka::sync::Cache::builder().max_capacity(MAX_TRACKED_SOURCES).time_to_idle(FAILURE_WINDOW).build();
        let budget = TokenBucket::new(GLOBAL_RATE, GLOBAL_BURST);
        Self { keys, failures, budget, metrics }
    }

    /// The caller the presented key names, or why not (401, or 429 with `Retry-After`).
    pub fn check(&self, presented: Option<&HeaderValue>, ip: IpAddr) -> Result<Caller, Reject> {
        let source = crate::dataplane::server::source_of(ip);
        let hash = presented.map(|v| crate::config::sha256(v.as_bytes()));
        let matched = hash.and_then(|hash| {
            // Every key is compared, so the time does not depend on which one matched.
            self.keys.load().iter().fold(None, |found, key| {
                let same = aws_lc_rs::constant_time::verify_slices_are_equal(&key.sha256, &hash).is_ok();
                if same { Some(Caller { name: key.name.clone(), role: key.role }) } else { found }
            })
        });
        if let Some(caller) = matched {
            self.failures.invalidate(&source);
            return Ok(caller);
        }
        self.metrics.mgmt_auth_failure();
        if !self.budget.take() {
            return Err(too_many(Duration::from_secs(1)));
        }
        let failures = self.failures.get_with(source, Arc::default);
        let mut failures = failures.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(until) = failures.slowed_until.filter(|until| *until > now) {
            return Err(too_many(until.duration_since(now)));
        }
        failures.count = failures.count.saturating_add(1);
        if let Some(beyond) = failures.count.checked_sub(FREE_FAILURES) {
            let backoff = FIRST_BACKOFF.saturating_mul(1 << beyond.min(6)).min(FAILURE_WINDOW);
            failures.slowed_until = Some(now + backoff);
        }
        Err(Reject::new(StatusCode::UNAUTHORIZED, "unauthorized"))
    }
}

fn too_many(wait: Duration) -> Reject {
    let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    reject.retry_after = Some((wait.as_secs_f64().ceil() as u64).max(1));
    reject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycling_sources_meets_the_global_budget_and_a_valid_key_still_passes() {
        let key =
            AdminKey { name: "ops".into(), role: crate::config::Role::Admin, sha256: crate::config::sha256(b"k") };
        let auth = Auth::new(Arc::new(ArcSwap::from_pointee(vec![key])), Arc::new(Metrics::new().unwrap()));
        let wrong = HeaderValue::from_static("guess");
        let statuses: Vec<u16> = (0..40u8)
            .map(|i| {
                let ip = IpAddr::from([10, 0, 0, i]);
                auth.check(Some(&wrong), ip).err().map_or(200, |r| r.status.as_u16())
            })
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 30, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
        let valid = HeaderValue::from_static("k");
        assert!(auth.check(Some(&valid), IpAddr::from([10, 0, 0, 99])).is_ok());
    }
}
