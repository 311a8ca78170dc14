//! What operators see: the audit trail and its live stream, Prometheus
//! metrics, the telemetry listener (`/metrics`, `/healthz`, `/readyz`) and
//! logging.

pub mod audit;
pub(crate) mod labels;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod telemetry;
