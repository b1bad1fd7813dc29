//! [`CoordinatorBuilder`] and the registered modes: what a coordinator is made of.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use task_core::{ExecutionMode, JobResult, Retention, TaskExecutionStrategy};
use tokio::sync::Semaphore;

use crate::coordinator::{Coordinator, DEFAULT_SHUTDOWN_GRACE, StrategyRef};

/// Builds a [`Coordinator`] from a mode -> strategy map.
///
/// # Examples
///
/// ```
/// use coordinator::{AsyncExecutionStrategy, Coordinator, ExecutionMode};
///
/// let coordinator = Coordinator::builder()
///     .strategy(ExecutionMode::ASYNC, AsyncExecutionStrategy::new())
///     .strategy("io-heavy", AsyncExecutionStrategy::new())
///     .build();
/// assert_eq!(coordinator.modes().len(), 2);
/// ```
#[derive(Default)]
pub struct CoordinatorBuilder {
    modes: HashMap<ExecutionMode, StrategyRef>,
    limits: HashMap<ExecutionMode, usize>,
    grace: Option<Duration>,
    retention: Retention,
}

impl CoordinatorBuilder {
    /// Registers `strategy` under `mode`, replacing any strategy registered there before.
    #[must_use]
    pub fn strategy(
        self,
        mode: impl Into<ExecutionMode>,
        strategy: impl TaskExecutionStrategy,
    ) -> Self {
        self.shared_strategy(mode, Arc::new(strategy))
    }

    /// Registers a shared strategy under `mode`; one strategy may serve several modes, and is
    /// still shut down once.
    #[must_use]
    pub fn shared_strategy(
        mut self,
        mode: impl Into<ExecutionMode>,
        strategy: StrategyRef,
    ) -> Self {
        self.modes.insert(mode.into(), strategy);
        self
    }

    /// Registers the async strategy under [`ExecutionMode::ASYNC`].
    #[cfg(feature = "async")]
    #[must_use]
    pub fn with_async(self) -> Self {
        self.strategy(
            ExecutionMode::ASYNC,
            exec_strategies::AsyncExecutionStrategy::new(),
        )
    }

    /// Runs at most `limit` top-level requests of `mode` (a mode registered with a strategy) at
    /// once (at least 1). Beyond it
    /// [`Coordinator::submit`] and [`Coordinator::spawn`] wait for a place and
    /// [`Coordinator::try_spawn`] returns a busy error ([`SubmitError::is_busy`](crate::SubmitError::is_busy)).
    ///
    /// Children (requests submitted from inside a running node) do not take a place: their
    /// ancestor holds one, and making them wait for it could deadlock the tree.
    #[must_use]
    pub fn limit(mut self, mode: impl Into<ExecutionMode>, limit: usize) -> Self {
        self.limits
            .insert(mode.into(), limit.clamp(1, Semaphore::MAX_PERMITS));
        self
    }

    /// Which closed jobs the job table keeps (default [`Retention::KeepAll`]). With
    /// [`Retention::KeepLast`] a long-running service's memory stays bounded; the running
    /// totals still count every job.
    #[must_use]
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How long [`Coordinator::shutdown`] waits for work in flight (default
    /// [`DEFAULT_SHUTDOWN_GRACE`]).
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The coordinator. It takes no tasks until [`Coordinator::start`] gives it a publisher.
    pub fn build(self) -> Coordinator {
        let limits = self.limits;
        let modes: Vec<Mode> = self
            .modes
            .into_iter()
            .enumerate()
            .map(|(index, (name, strategy))| Mode {
                index,
                limit: limits.get(&name).map(|&n| Arc::new(Semaphore::new(n))),
                name,
                strategy,
                counters: ModeCounters::default(),
            })
            .collect();
        let mode_index = modes
            .iter()
            .map(|mode| (mode.name.clone(), mode.index))
            .collect();
        Coordinator::from_parts(
            modes,
            mode_index,
            self.grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            self.retention,
        )
    }
}

impl fmt::Debug for CoordinatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut modes: Vec<&str> = self.modes.keys().map(ExecutionMode::as_str).collect();
        modes.sort_unstable();
        f.debug_struct("CoordinatorBuilder")
            .field("modes", &modes)
            .field("limits", &self.limits.len())
            .field("grace", &self.grace)
            .field("retention", &self.retention)
            .finish()
    }
}

/// A registered mode: its strategy, its concurrency limit and its request counters, found with
/// one lookup per submission.
pub(crate) struct Mode {
    /// Its position in `Inner::modes`.
    pub(crate) index: usize,
    pub(crate) name: ExecutionMode,
    pub(crate) strategy: StrategyRef,
    pub(crate) limit: Option<Arc<Semaphore>>,
    pub(crate) counters: ModeCounters,
}

/// Live counters of the requests of one mode.
#[derive(Default)]
pub(crate) struct ModeCounters {
    pub(crate) in_flight: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
}

impl ModeCounters {
    pub(crate) fn close(&self, result: JobResult) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = match result {
            JobResult::Success => &self.succeeded,
            JobResult::TimedOut => &self.timed_out,
            JobResult::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ModeCounts {
        ModeCounts {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// The requests of one mode, as [`SystemDetail::requests`](crate::SystemDetail::requests) reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ModeCounts {
    /// Accepted and not yet ended.
    pub in_flight: u64,
    /// Ended with a value.
    pub succeeded: u64,
    /// Ended with an error (the node's, a panic, or the strategy's).
    pub failed: u64,
    /// Ended past their deadline.
    pub timed_out: u64,
    /// Ended cancelled.
    pub cancelled: u64,
}
