//! What operators see: the audit trail and its live stream, Prometheus
//! metrics, W3C trace context and OTLP span export, the telemetry listener (`/metrics`, `/healthz`, `/readyz`) and
//! logging.

pub mod audit;
pub(crate) mod labels;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod telemetry;
pub mod trace;
