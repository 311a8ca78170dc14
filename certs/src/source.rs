//! Where SVIDs come from: the Workload API, watched PEM files, or the dev CA.
//!
//! Every source runs as one task that publishes on an [`IdentityPublisher`];
//! [`spawn`] also starts the watchdog that retires an expired SVID.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::rotation::{self, IdentityPublisher, IdentityWatch};

#[cfg(feature = "dev")]
pub mod dev;
pub mod files;
pub mod workload_api;

pub use files::{FilesConfig, FilesSource};
pub use workload_api::WorkloadApiSource;

/// A boxed future, as sources return from [`SvidSource::run`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Something that produces X509-SVIDs and bundles until it is stopped.
pub trait SvidSource: Send + 'static {
    /// A short description for logs (`workload_api unix:///...`).
    fn describe(&self) -> String;

    /// Runs forever, publishing every new identity and reporting failures.
    fn run(self: Box<Self>, publisher: IdentityPublisher) -> BoxFuture;
}

/// The running source; its tasks stop when this is dropped.
#[derive(Debug)]
pub struct SourceTask {
    tasks: [JoinHandle<()>; 2],
}

impl Drop for SourceTask {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Starts `source` and returns the watch that follows it.
pub fn spawn(source: Box<dyn SvidSource>) -> (IdentityWatch, SourceTask) {
    tracing::info!(source = %source.describe(), "starting svid source");
    let (publisher, watch) = rotation::channel();
    let watchdog = tokio::spawn(IdentityPublisher::expire_stale(publisher.state_sender()));
    let runner = tokio::spawn(source.run(publisher));
    (watch, SourceTask { tasks: [runner, watchdog] })
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The delay before the next attempt; doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
