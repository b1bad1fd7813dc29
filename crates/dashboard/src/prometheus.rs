//! `/metrics`: the coordinator's counters in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use coordinator::pubsub::SubscriberId;
use coordinator::{ModeCounts, StrategyStats, SystemDetail};

use crate::Shared;

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-mode gauge of the requests: its name, its help, and the count it reads.
type ModeGauge = (&'static str, &'static str, fn(&ModeCounts) -> u64);

const MODE_GAUGES: [ModeGauge; 2] = [
    (
        "coordinator_requests_in_flight",
        "Requests accepted and not ended, by mode.",
        |c| c.in_flight,
    ),
    (
        "coordinator_requests_waiting",
        "Requests accepted in a batch and waiting for a place under the mode's limit, by mode.",
        |c| c.waiting,
    ),
];

/// Writes one metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `/metrics`: the text for the coordinator's overview, served as Prometheus reads it.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = render(
        &shared.coordinator.overview(),
        shared.history.missed(),
        &shared.publisher.lags(),
    );
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The text for `detail` (an overview), the dashboard's own missed count and the bus's
/// subscribers' lags.
pub(crate) fn render(detail: &SystemDetail, missed: u64, lags: &[(SubscriberId, u64)]) -> String {
    let mut out = String::new();
    let counts = &detail.counts;
    family(&mut out, "coordinator_jobs_open", "gauge", "Jobs open now.");
    let _ = writeln!(out, "coordinator_jobs_open {}", counts.open);
    family(
        &mut out,
        "coordinator_jobs_closed_total",
        "counter",
        "Jobs closed, by result.",
    );
    for (result, n) in [
        ("success", counts.succeeded),
        ("failure", counts.failed),
        ("timed_out", counts.timed_out),
        ("cancelled", counts.cancelled),
    ] {
        let _ = writeln!(
            out,
            "coordinator_jobs_closed_total{{result=\"{result}\"}} {n}"
        );
    }
    family(
        &mut out,
        "coordinator_requests_total",
        "counter",
        "Requests ended, by mode and result (one per request, whatever its attempts).",
    );
    for (mode, c) in &detail.requests {
        let mode = label(mode);
        for (result, n) in [
            ("success", c.succeeded),
            ("failure", c.failed),
            ("timed_out", c.timed_out),
            ("cancelled", c.cancelled),
        ] {
            let _ = writeln!(
                out,
                "coordinator_requests_total{{mode=\"{mode}\",result=\"{result}\"}} {n}"
            );
        }
    }
    for (name, help, count) in MODE_GAUGES {
        family(&mut out, name, "gauge", help);
        for (mode, c) in &detail.requests {
            let _ = writeln!(out, "{name}{{mode=\"{}\"}} {}", label(mode), count(c));
        }
    }
    strategies(&mut out, &detail.modes);
    family(
        &mut out,
        "dashboard_bus_missed_total",
        "counter",
        "Bus messages the dashboard fell too far behind to read.",
    );
    let _ = writeln!(out, "dashboard_bus_missed_total {missed}");
    family(
        &mut out,
        "pubsub_subscriber_lag",
        "gauge",
        "Messages published for a bus subscriber that it has not read yet, by subscriber.",
    );
    for (id, lag) in lags {
        let _ = writeln!(out, "pubsub_subscriber_lag{{subscriber=\"{id}\"}} {lag}");
    }
    out
}

/// The strategies' families: runs by mode, and the worker processes of pools.
fn strategies(out: &mut String, modes: &BTreeMap<String, StrategyStats>) {
    family(
        out,
        "strategy_runs_total",
        "counter",
        "Runs a strategy ended (every attempt), by mode and result: stopped for a run let go of, unfinished, as its request was cancelled or timed out.",
    );
    for (mode, s) in modes {
        let mode = label(mode);
        let results = [
            ("success", s.succeeded),
            ("failure", s.failed),
            ("stopped", s.stopped),
        ];
        for (result, n) in results {
            let _ = writeln!(
                out,
                "strategy_runs_total{{mode=\"{mode}\",result=\"{result}\"}} {n}"
            );
        }
    }
    family(
        out,
        "strategy_worker_restarts_total",
        "counter",
        "Worker processes replaced after they ended, by mode.",
    );
    // Modes with worker processes, and those that had some (a counter stays once it appeared).
    let pooled = |s: &StrategyStats| !s.workers.is_empty() || s.restarts > 0;
    for (mode, s) in modes.iter().filter(|(_, s)| pooled(s)) {
        let _ = writeln!(
            out,
            "strategy_worker_restarts_total{{mode=\"{}\"}} {}",
            label(mode),
            s.restarts
        );
    }
    family(
        out,
        "strategy_worker_tasks_total",
        "counter",
        "Tasks a live worker process has run, by mode and worker.",
    );
    for (mode, s) in modes {
        for w in &s.workers {
            let _ = writeln!(
                out,
                "strategy_worker_tasks_total{{mode=\"{}\",worker=\"{}\",pid=\"{}\"}} {}",
                label(mode),
                w.id,
                w.pid.unwrap_or(0),
                w.completed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pools_restarts_stay_once_its_workers_are_gone() {
        let mut stopped = StrategyStats::default();
        stopped.restarts = 72;
        let modes = BTreeMap::from([
            ("process".to_owned(), stopped),
            ("async".to_owned(), StrategyStats::default()),
        ]);
        let mut out = String::new();
        strategies(&mut out, &modes);
        assert!(
            out.contains("strategy_worker_restarts_total{mode=\"process\"} 72"),
            "{out}"
        );
        assert!(!out.contains("strategy_worker_restarts_total{mode=\"async\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
