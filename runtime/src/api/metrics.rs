//! `GET /metrics`: runs, decisions, latencies and live instances, in the
//! Prometheus (OpenMetrics) text format.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::run::RunReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    action: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route's pattern (`/v1/skills/{digest}`), never the raw path.
    route: String,
    status: u16,
}

/// 100 µs to about 26 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_seconds: Histogram,
    decisions: Family<DecisionLabels, Counter>,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    instances: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Runs ended, by status", runs.clone());
        let run_seconds = seconds();
        registry.register(
            "run_duration_seconds",
            "Time from a run's request to its end, including queueing for an instance",
            run_seconds.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Capability decisions made by the broker, by action and verdict",
            decisions.clone(),
        );
        let requests: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds);
        registry.register(
            "http_request_duration_seconds",
            "API requests, by method, route and status",
            requests.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "instances_live",
            "Skill instances running now",
            instances.clone(),
        );
        Metrics {
            registry,
            runs,
            run_seconds,
            decisions,
            requests,
            instances,
        }
    }

    /// A run begins; the guard records its end, or `cancelled` if dropped.
    pub(crate) fn run(&self) -> RunGuard<'_> {
        self.instances.inc();
        RunGuard {
            metrics: self,
            started: Instant::now(),
            ended: false,
        }
    }

    pub(crate) fn request(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A run in progress, for the metrics.
pub(crate) struct RunGuard<'a> {
    metrics: &'a Metrics,
    started: Instant,
    ended: bool,
}

impl RunGuard<'_> {
    pub(crate) fn ended(mut self, report: &RunReport) {
        self.ended = true;
        let status = serde_json::to_value(report.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.count(status);
        for call in &report.decisions {
            let verdict = match call.decision.verdict {
                airlock_host_apis::Verdict::Allow => "allow",
                airlock_host_apis::Verdict::Deny => "deny",
            };
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    action: call.action.as_str().to_string(),
                    verdict: verdict.to_string(),
                })
                .inc();
        }
    }

    /// The run did not start (the skill is not runnable).
    pub(crate) fn refused(mut self) {
        self.ended = true;
        self.count("refused".to_string());
    }

    fn count(&self, status: String) {
        self.metrics.runs.get_or_create(&RunLabels { status }).inc();
        self.metrics
            .run_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.metrics.instances.dec();
        if !self.ended {
            self.count("cancelled".to_string());
        }
    }
}
