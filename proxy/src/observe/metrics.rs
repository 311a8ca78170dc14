//! Prometheus metrics (DESIGN 1.7), prefix `a2a_`, bounded labels only.

use std::time::UNIX_EPOCH;

use certs::IdentityWatch;
use policy::{Layer, Reason};

use crate::observe::labels::{Decision, Direction};
use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// The process's metrics. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub svid_expiry_timestamp_seconds: Gauge,
    pub svid_rotations_total: IntCounter,
    svid_issued_timestamp_seconds: Gauge,
    /// Federated bundles the last identity update had to leave out.
    pub federated_bundles_rejected: prometheus::IntGauge,
    requests_total: IntCounterVec,
    tls_handshakes_total: IntCounterVec,
    policy_reloads_total: IntCounterVec,
    config_reloads_total: IntCounterVec,
    spans_total: IntCounterVec,
    jwks_refresh_total: IntCounterVec,
    graph_requests_total: IntCounterVec,
    pub policy_eval_duration_seconds: prometheus::Histogram,
    pub audit_dropped: IntCounter,
    pub audit_subscribers: prometheus::IntGauge,
    mgmt_auth_failures: IntCounter,
    upstream_errors_total: IntCounterVec,
    request_duration_seconds: prometheus::HistogramVec,
    open_connections: prometheus::IntGaugeVec,
    policy_mode: prometheus::IntGaugeVec,
    /// `a2a_pdp_*` (the PEP) and `a2a_authzen_*` (the PDP listener).
    pub authzen: AuthzenMetrics,
    /// `[inbound, outbound]`.
    hot: [HotSeries; 2],
}

/// `a2a_pdp_requests_total`'s `result` values.
const PDP_RESULTS: [&str; 4] = ["allow", "deny", "error", "cached"];

/// AuthZEN: the external PDP's answers and the evaluations this sidecar answers.
#[derive(Debug, Clone)]
pub struct AuthzenMetrics {
    /// `a2a_pdp_requests_total{result}`: allow, deny, error, cached
    /// (resolved once: the cached one is counted on the hot path).
    pdp_requests: [prometheus::IntCounter; 4],
    /// `a2a_pdp_request_duration_seconds`: calls to the PDP (not cache hits).
    pub pdp_request_duration_seconds: prometheus::Histogram,
    /// `a2a_authzen_evaluations_total{decision}`: true, false.
    evaluations_total: IntCounterVec,
}

impl AuthzenMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pdp_requests_total = IntCounterVec::new(
            Opts::new("pdp_requests_total", "Decisions asked of authzen.pdp by result: allow, deny, error, cached"),
            &["result"],
        )?;
        registry.register(Box::new(pdp_requests_total.clone()))?;
        let pdp_requests = PDP_RESULTS.map(|result| pdp_requests_total.with_label_values(&[result]));
        let pdp_request_duration_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("pdp_request_duration_seconds", "Time of calls to authzen.pdp")
                .buckets(vec![0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        registry.register(Box::new(pdp_request_duration_seconds.clone()))?;
        let evaluations_total = IntCounterVec::new(
            Opts::new("authzen_evaluations_total", "AuthZEN evaluations answered on authzen.listen by decision"),
            &["decision"],
        )?;
        registry.register(Box::new(evaluations_total.clone()))?;
        for decision in ["true", "false"] {
            evaluations_total.with_label_values(&[decision]);
        }
        Ok(Self { pdp_requests, pdp_request_duration_seconds, evaluations_total })
    }

    /// One answer of the external PDP (or the cache): `allow`, `deny`, `error`, `cached`.
    pub fn pdp_request(&self, result: &'static str) {
        let index = PDP_RESULTS.iter().position(|r| *r == result);
        if let Some(counter) = index.and_then(|i| self.pdp_requests.get(i)) {
            counter.inc();
        }
    }

    /// One evaluation answered on `authzen.listen`.
    pub fn evaluation(&self, decision: bool) {
        self.evaluations_total.with_label_values(&[if decision { "true" } else { "false" }]).inc();
    }
}

/// The series every allowed request touches, resolved once: a label look-up
/// hashes the values (SipHash) and takes a lock on every call.
#[derive(Debug, Clone)]
struct HotSeries {
    allowed: IntCounter,
    duration: prometheus::Histogram,
    in_flight: prometheus::IntGauge,
}

impl HotSeries {
    fn new(
        requests: &IntCounterVec,
        durations: &prometheus::HistogramVec,
        in_flight: &prometheus::IntGaugeVec,
        direction: &str,
    ) -> Self {
        Self {
            allowed: requests.with_label_values(&[direction, "allow", Layer::None.as_str(), Reason::Allowed.as_str()]),
            duration: durations.with_label_values(&[direction]),
            in_flight: in_flight.with_label_values(&[direction]),
        }
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("a2a".into()), None)?;
        let svid_expiry_timestamp_seconds =
            Gauge::new("svid_expiry_timestamp_seconds", "Expiry of the current X509-SVID (unix seconds)")?;
        let svid_rotations_total = IntCounter::new("svid_rotations_total", "X509-SVIDs received after the first")?;
        let svid_issued_timestamp_seconds = Gauge::new(
            "svid_issued_timestamp_seconds",
            "Start of the current X509-SVID's validity (unix seconds): with the expiry, its lifetime",
        )?;
        registry.register(Box::new(svid_issued_timestamp_seconds.clone()))?;
        let federated_bundles_rejected = prometheus::IntGauge::new(
            "federated_bundles_rejected",
            "Federated bundles of the last identity update that were empty or unparsable (left out)",
        )?;
        registry.register(Box::new(federated_bundles_rejected.clone()))?;
        let requests_total = IntCounterVec::new(
            Opts::new("requests_total", "Requests by direction and outcome"),
            &["direction", "decision", "layer", "reason"],
        )?;
        let tls_handshakes_total = IntCounterVec::new(
            Opts::new("tls_handshakes_total", "TLS handshakes by direction and result (ok or a Layer 1 reason)"),
            &["direction", "result"],
        )?;
        let policy_reloads_total = IntCounterVec::new(
            Opts::new("policy_reloads_total", "Policy reloads by result (ok or error)"),
            &["result"],
        )?;
        let policy_eval_duration_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("policy_eval_duration_seconds", "Layer 2 evaluation time")
                .buckets(vec![0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_5, 0.001]),
        )?;
        let jwks_refresh_total =
            IntCounterVec::new(Opts::new("jwks_refresh_total", "JWKS fetches by result (ok or error)"), &["result"])?;
        registry.register(Box::new(jwks_refresh_total.clone()))?;
        let graph_requests_total = IntCounterVec::new(
            Opts::new("graph_requests_total", "Graph look-ups by api and result"),
            &["api", "result"],
        )?;
        registry.register(Box::new(graph_requests_total.clone()))?;
        registry.register(Box::new(policy_reloads_total.clone()))?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Config file reloads (SIGHUP, POST /mgmt/reload, the file watcher) by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        let audit_dropped = IntCounter::new("audit_dropped_total", "Audit events a slow sink or subscriber lost")?;
        registry.register(Box::new(audit_dropped.clone()))?;
        let audit_subscribers = prometheus::IntGauge::new("audit_subscribers", "Live audit stream subscribers")?;
        registry.register(Box::new(audit_subscribers.clone()))?;
        let mgmt_auth_failures =
            IntCounter::new("mgmt_auth_failures_total", "Admin API requests with a missing or wrong key")?;
        registry.register(Box::new(mgmt_auth_failures.clone()))?;
        let upstream_errors_total = IntCounterVec::new(
            Opts::new("upstream_errors_total", "Upstream failures by kind (the reason)"),
            &["kind"],
        )?;
        registry.register(Box::new(upstream_errors_total.clone()))?;
        let request_duration_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("request_duration_seconds", "Time from request head to response head")
                // Up to the longest default timeout (30 s upstream) and beyond, so slow answers are not all "+Inf".
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
            &["direction"],
        )?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        let open_connections = prometheus::IntGaugeVec::new(
            Opts::new("open_connections", "Connections each listener holds now (capped by limits.max_connections)"),
            &["listener"],
        )?;
        registry.register(Box::new(open_connections.clone()))?;
        for listener in ["inbound", "outbound", "mgmt", "authzen", "telemetry"] {
            open_connections.with_label_values(&[listener]);
        }
        let policy_mode = prometheus::IntGaugeVec::new(
            Opts::new("policy_mode", "1 for the policy.mode in force (enforce or shadow), 0 for the other"),
            &["mode"],
        )?;
        registry.register(Box::new(policy_mode.clone()))?;
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("build_info", "1, labelled with the version and the commit this binary was built from"),
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::COMMIT]).set(1);
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(policy_eval_duration_seconds.clone()))?;
        registry.register(Box::new(svid_expiry_timestamp_seconds.clone()))?;
        registry.register(Box::new(svid_rotations_total.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(tls_handshakes_total.clone()))?;
        #[cfg(target_os = "linux")]
        prometheus::default_registry()
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .or_else(|e| match e {
                prometheus::Error::AlreadyReg => Ok(()),
                e => Err(e),
            })?;
        // Bounded label sets start at 0, so every documented series is scrapeable
        // (and `rate()`/`increase()` alerts work) before its first event.
        for kind in [
            Reason::UpstreamUnavailable,
            Reason::UpstreamIdentityMismatch,
            Reason::UpstreamRejectedIdentity,
            Reason::UpstreamError,
            Reason::UpstreamTimeout,
        ] {
            upstream_errors_total.with_label_values(&[kind.as_str()]);
        }
        for result in ["ok", "error"] {
            policy_reloads_total.with_label_values(&[result]);
            config_reloads_total.with_label_values(&[result]);
            jwks_refresh_total.with_label_values(&[result]);
            for api in ["risk", "tags"] {
                graph_requests_total.with_label_values(&[api, result]);
            }
        }
        let spans_total = IntCounterVec::new(
            Opts::new(
                "spans_total",
                "Trace spans for telemetry.otlp_endpoint: exported, dropped (queue full), failed (export error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(spans_total.clone()))?;
        for result in ["exported", "dropped", "failed"] {
            spans_total.with_label_values(&[result]);
        }
        let in_flight_requests = prometheus::IntGaugeVec::new(
            Opts::new("in_flight_requests", "Requests whose response has not ended yet, by direction"),
            &["direction"],
        )?;
        registry.register(Box::new(in_flight_requests.clone()))?;
        let hot = [
            HotSeries::new(&requests_total, &request_duration_seconds, &in_flight_requests, "inbound"),
            HotSeries::new(&requests_total, &request_duration_seconds, &in_flight_requests, "outbound"),
        ];
        let authzen = AuthzenMetrics::new(&registry)?;
        Ok(Self {
            authzen,
            hot,
            registry,
            svid_expiry_timestamp_seconds,
            svid_rotations_total,
            svid_issued_timestamp_seconds,
            federated_bundles_rejected,
            requests_total,
            tls_handshakes_total,
            policy_reloads_total,
            config_reloads_total,
            spans_total,
            jwks_refresh_total,
            graph_requests_total,
            policy_eval_duration_seconds,
            audit_dropped,
            audit_subscribers,
            mgmt_auth_failures,
            upstream_errors_total,
            request_duration_seconds,
            open_connections,
            policy_mode,
        })
    }

    /// The in-flight gauge of a proxy direction (`None` for mgmt).
    pub fn in_flight(&self, direction: Direction) -> Option<prometheus::IntGauge> {
        self.hot(direction).map(|hot| hot.in_flight.clone())
    }

    fn hot(&self, direction: Direction) -> Option<&HotSeries> {
        match direction {
            Direction::Inbound => Some(&self.hot[0]),
            Direction::Outbound => Some(&self.hot[1]),
            Direction::Mgmt => None,
        }
    }

    /// Shows `mode` as the one in force.
    pub fn policy_mode(&self, mode: crate::config::PolicyMode) {
        let shadow = mode == crate::config::PolicyMode::Shadow;
        self.policy_mode.with_label_values(&["enforce"]).set(i64::from(!shadow));
        self.policy_mode.with_label_values(&["shadow"]).set(i64::from(shadow));
    }

    /// The gauge of connections `listener` holds.
    pub fn open_connections(&self, listener: &'static str) -> prometheus::IntGauge {
        self.open_connections.with_label_values(&[listener])
    }

    pub fn graph_request(&self, api: &'static str, result: &'static str) {
        self.graph_requests_total.with_label_values(&[api, result]).inc();
    }

    pub fn mgmt_auth_failure(&self) {
        self.mgmt_auth_failures.inc();
    }

    pub fn jwks_refresh(&self, result: &'static str) {
        self.jwks_refresh_total.with_label_values(&[result]).inc();
    }

    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads_total.with_label_values(&[result]).inc();
    }

    /// `n` spans ended as `result` (`exported`, `dropped`, `failed`).
    pub fn spans(&self, result: &'static str, n: u64) {
        self.spans_total.with_label_values(&[result]).inc_by(n);
    }

    pub fn policy_reload(&self, result: &'static str) {
        self.policy_reloads_total.with_label_values(&[result]).inc();
    }

    /// A deny that `policy.mode: shadow` let through.
    pub fn shadow_deny(&self, direction: Direction, reason: Reason) {
        let labels = [direction.as_str(), Decision::ShadowDeny.as_str(), reason.layer().as_str(), reason.as_str()];
        self.requests_total.with_label_values(&labels).inc();
    }

    /// Counts one request outcome. Labels are bounded: fixed names only.
    pub fn request(&self, direction: Direction, reason: Reason) {
        let layer = reason.layer();
        if reason == Reason::Allowed
            && let Some(hot) = self.hot(direction)
        {
            hot.allowed.inc();
            return;
        }
        if layer == Layer::Upstream {
            self.upstream_errors_total.with_label_values(&[reason.as_str()]).inc();
        }
        let decision = if reason == Reason::Allowed { Decision::Allow } else { Decision::Deny };
        let labels = [direction.as_str(), decision.as_str(), layer.as_str(), reason.as_str()];
        self.requests_total.with_label_values(&labels).inc();
    }

    /// Time from request head to response head.
    pub fn request_duration(&self, direction: Direction, seconds: f64) {
        match self.hot(direction) {
            Some(hot) => hot.duration.observe(seconds),
            None => self.request_duration_seconds.with_label_values(&[direction.as_str()]).observe(seconds),
        }
    }

    /// `result`: `ok`, `timeout`, or the Layer 1 reason it was refused for.
    pub fn tls_handshake(&self, direction: Direction, result: &'static str) {
        self.tls_handshakes_total.with_label_values(&[direction.as_str(), result]).inc();
    }

    /// The text exposition: our metrics plus the process collector.
    pub fn encode(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric families, which we never build.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Keeps the SVID metrics in step with the identity until it is dropped.
    pub async fn follow_identity(self, mut identity: IdentityWatch) {
        let mut last_serial: Option<String> = None;
        loop {
            if let Some(current) = identity.current() {
                let svid = current.svid();
                let expiry = svid.not_after().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                self.svid_expiry_timestamp_seconds.set(expiry);
                let issued = svid.leaf().not_before.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                self.svid_issued_timestamp_seconds.set(issued);
                if last_serial.as_deref().is_some_and(|s| s != svid.serial()) {
                    self.svid_rotations_total.inc();
                }
                last_serial = Some(svid.serial().to_owned());
                let rejected = identity.status().rejected_bundles.len();
                self.federated_bundles_rejected.set(i64::try_from(rejected).unwrap_or(i64::MAX));
            }
            if !identity.changed().await {
                return;
            }
        }
    }
}
