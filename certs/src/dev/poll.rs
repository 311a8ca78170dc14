//! Waiting for an eventual state in tests: poll with a deadline, never a
//! fixed sleep followed by an assertion.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`; panics naming `what`
/// after `within` (a test helper: the panic is the test's failure).
#[allow(clippy::panic, reason = "a test helper: failing loudly is its job")]
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
