//! What operators see: the audit trail and its live stream, Prometheus
//! metrics, the telemetry listener (`/metrics`, `/healthz`, `/readyz`) and
//! logging.

pub mod audit;
pub mod labels;
pub mod logging;
pub mod metrics;
pub mod telemetry;
