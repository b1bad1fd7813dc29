//! Per-mode request metrics through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature; without it, the same calls compile to nothing.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `coordinator_requests_accepted_total` | counter | `mode` | requests accepted |
//! | `coordinator_requests_total` | counter | `mode`, `result` | requests ended (one per request, whatever its attempts): `success`, `failure`, `timed_out`, `cancelled` |
//! | `coordinator_request_retries_total` | counter | `mode` | attempts after the first, counted when the request ends |
//! | `coordinator_requests_in_flight` | gauge | `mode` | accepted and not yet ended |
//! | `coordinator_requests_waiting` | gauge | `mode` | accepted in a batch and waiting for a place under the mode's limit, not handed to the strategy yet |
//! | `coordinator_admission_wait_seconds` | histogram | `mode` | time waiting for a place under the mode's concurrency limit (sampled only in modes with a limit) |
//! | `coordinator_request_duration_seconds` | histogram | `mode`, `result` | from acceptance to the job closing |
//! | `process_worker_exits_total` | counter | `how`: `crashed`, `retired` (recycled after its quota of tasks), `killed` (by the pool), `broke_protocol` | process workers that ended (not counted at shutdown) |
//! | `process_worker_restarts_total` | counter | | process workers started in place of one that ended |
//! | `process_tasks_poisoned_total` | counter | | tasks failed as poison (they kept crashing their worker) |
//! | `pubsub_missed_messages_total` | counter | `subscriber` (`subscriber-N`) | messages a bounded subscriber fell too far behind to read |
//! | `pubsub_subscriber_lag` | gauge | `subscriber` | messages meant for the subscriber and not read yet, set once per 64 published (0 once it is gone) |
//!
//! The process pool's rows come from `exec-strategies`, the bus's from `pubsub`, whose `metrics`
//! features this one turns on; `exec-nats` has a `metrics` feature of its own (connection state, reconnects,
//! redeliveries: see its `NatsStrategy`).
//!
//! The lag gauge is a sample: `Publisher::lags` gives the lags as they are now, and the
//! dashboard's `/metrics` serves those under the same name.
//!
//! The names and labels the dashboard's `/metrics` shares (`coordinator_requests_total`,
//! `coordinator_requests_in_flight`, `coordinator_requests_waiting`) are the same series, so a dashboard built on one reads the
//! other. The handles are registered when the coordinator is built: install the recorder (an
//! exporter) before building it. Nothing is recorded under the coordinator's locks.

#[cfg(feature = "metrics")]
pub(crate) use on::ModeMetrics;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::ModeMetrics;

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    use crate::JobResult;
    use metrics::{
        Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge,
        describe_histogram, gauge, histogram,
    };

    /// One mode's handles, registered once: recording is then an atomic operation on the
    /// recorder's side, with no lookup by name per request.
    pub(crate) struct ModeMetrics {
        accepted: Counter,
        /// Indexed by [`outcome`].
        ended: [(Counter, Histogram); 4],
        retries: Counter,
        in_flight: Gauge,
        waiting: Gauge,
        admission_wait: Histogram,
    }

    const RESULTS: [&str; 4] = ["success", "failure", "timed_out", "cancelled"];

    /// Runs `record` on the application's recorder: a panic in it is logged, and never unwinds
    /// into the coordinator, where it would leave a request half-ended.
    fn caught(record: impl FnOnce()) {
        if let Some(reason) = task_core::catch_panic(record) {
            tracing::error!(%reason, "the metrics recorder panicked");
        }
    }

    fn outcome(result: JobResult) -> usize {
        match result {
            JobResult::Success => 0,
            JobResult::TimedOut => 2,
            JobResult::Cancelled => 3,
            _ => 1,
        }
    }

    /// Units and help texts, for the exporters that show them.
    fn describe() {
        describe_counter!(
            "coordinator_requests_accepted_total",
            "Requests accepted, by mode."
        );
        describe_counter!(
            "coordinator_requests_total",
            "Requests ended, by mode and result (one per request, whatever its attempts)."
        );
        describe_counter!(
            "coordinator_request_retries_total",
            "Attempts after the first, by mode, counted when the request ends."
        );
        describe_gauge!(
            "coordinator_requests_in_flight",
            "Requests accepted and not ended, by mode."
        );
        describe_gauge!(
            "coordinator_requests_waiting",
            "Requests accepted in a batch and waiting for a place under the mode's limit, by mode."
        );
        describe_histogram!(
            "coordinator_admission_wait_seconds",
            Unit::Seconds,
            "Time waiting for a place under the mode's concurrency limit."
        );
        describe_histogram!(
            "coordinator_request_duration_seconds",
            Unit::Seconds,
            "From acceptance to the job closing, by mode and result."
        );
    }

    impl ModeMetrics {
        pub(crate) fn new(mode: &str) -> Self {
            describe();
            let mode = mode.to_owned();
            let ended = RESULTS.map(|result| {
                (
                    counter!("coordinator_requests_total", "mode" => mode.clone(), "result" => result),
                    histogram!("coordinator_request_duration_seconds", "mode" => mode.clone(), "result" => result),
                )
            });
            Self {
                accepted: counter!("coordinator_requests_accepted_total", "mode" => mode.clone()),
                ended,
                retries: counter!("coordinator_request_retries_total", "mode" => mode.clone()),
                in_flight: gauge!("coordinator_requests_in_flight", "mode" => mode.clone()),
                waiting: gauge!("coordinator_requests_waiting", "mode" => mode.clone()),
                admission_wait: histogram!("coordinator_admission_wait_seconds", "mode" => mode),
            }
        }

        /// A request accepted, after `waited` for a place under the mode's limit (`None`: it
        /// took none).
        pub(crate) fn accepted(&self, waited: Option<Duration>) {
            caught(|| {
                self.accepted.increment(1);
                self.in_flight.increment(1.0);
            });
            if let Some(waited) = waited {
                self.waited(waited);
            }
        }

        /// A request took a place under the mode's limit after `waited` for it.
        pub(crate) fn waited(&self, waited: Duration) {
            caught(|| self.admission_wait.record(waited.as_secs_f64()));
        }

        /// `delta` requests joined (or, negative, left) a batch's queue.
        pub(crate) fn queued(&self, delta: f64) {
            caught(|| self.waiting.increment(delta));
        }

        pub(crate) fn ended(&self, result: JobResult, ran: Option<Duration>, attempts: u32) {
            caught(|| {
                self.in_flight.decrement(1.0);
                let (count, duration) = &self.ended[outcome(result)];
                count.increment(1);
                if let Some(ran) = ran {
                    duration.record(ran.as_secs_f64());
                }
                if attempts > 1 {
                    self.retries.increment(u64::from(attempts - 1));
                }
            });
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use crate::JobResult;

    /// Nothing: the `metrics` feature is off.
    pub(crate) struct ModeMetrics;

    impl ModeMetrics {
        pub(crate) fn new(_mode: &str) -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn accepted(&self, _waited: Option<Duration>) {}

        #[inline(always)]
        pub(crate) fn waited(&self, _waited: Duration) {}

        #[inline(always)]
        pub(crate) fn queued(&self, _delta: f64) {}

        #[inline(always)]
        pub(crate) fn ended(&self, _result: JobResult, _ran: Option<Duration>, _attempts: u32) {}
    }
}
