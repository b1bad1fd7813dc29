//! `/metrics`: the coordinator's counters in the Prometheus text exposition format.

use std::fmt::Write as _;

use coordinator::SystemDetail;
use coordinator::pubsub::SubscriberId;

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
    family(
        &mut out,
        "coordinator_requests_in_flight",
        "gauge",
        "Requests accepted and not ended, by mode.",
    );
    for (mode, c) in &detail.requests {
        let _ = writeln!(
            out,
            "coordinator_requests_in_flight{{mode=\"{}\"}} {}",
            label(mode),
            c.in_flight
        );
    }
    family(
        &mut out,
        "strategy_runs_total",
        "counter",
        "Runs a strategy ended (every attempt), by mode and result.",
    );
    for (mode, s) in &detail.modes {
        let mode = label(mode);
        for (result, n) in [("success", s.succeeded), ("failure", s.failed)] {
            let _ = writeln!(
                out,
                "strategy_runs_total{{mode=\"{mode}\",result=\"{result}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "strategy_worker_restarts_total",
        "counter",
        "Worker processes replaced after they ended, by mode.",
    );
    for (mode, s) in detail.modes.iter().filter(|(_, s)| !s.workers.is_empty()) {
        let _ = writeln!(
            out,
            "strategy_worker_restarts_total{{mode=\"{}\"}} {}",
            label(mode),
            s.restarts
        );
    }
    family(
        &mut out,
        "strategy_worker_tasks_total",
        "counter",
        "Tasks a live worker process has run, by mode and worker.",
    );
    for (mode, s) in &detail.modes {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
