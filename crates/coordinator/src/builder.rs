//! [`CoordinatorBuilder`] and the registered modes: what a coordinator is made of.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use task_core::{ExecutionMode, TaskExecutionStrategy};

use crate::state::Retention;
use tokio::sync::Semaphore;

use crate::coordinator::{Coordinator, DEFAULT_SHUTDOWN_GRACE};
use crate::inner::{Inner, Mode, ModeCounters};
use crate::request::StrategyRef;

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

    /// Keeps at most `limit` request trees of `mode` open at once (0 is read as 1). `mode`
    /// must be registered with a strategy: [`Coordinator::start`] refuses a limit of any other
    /// ([`StartError::is_unknown_mode`](crate::StartError::is_unknown_mode)). Beyond it
    /// [`Coordinator::submit`] and [`Coordinator::spawn`] wait for a place,
    /// [`Coordinator::try_spawn`] returns a busy error
    /// ([`SubmitError::is_busy`](crate::SubmitError::is_busy)), and the tasks of a
    /// [`Coordinator::submit_many`] batch wait, accepted, for theirs.
    ///
    /// A place is freed when its request has ended and its strategy has let go of the run
    /// (delivered or dropped its [`Completion`](crate::Completion)). The built-in strategies let
    /// go once the node has stopped, so for their modes the limit bounds the nodes running too: a
    /// node whose request timed out or was cancelled keeps its place while it runs on (a blocking
    /// one on its thread; an async one stops at its next wake-up), a process-mode one until its
    /// worker has answered the cancelled run, died, or was killed after the pool's
    /// `cancel_grace`. Not so when the process pool's own `task_timeout` fails a run: that
    /// outcome ends the request and lets go of its place, while the node may run on for the
    /// grace. A strategy that cannot see its node stop lets go as the request ends: with
    /// exec-nats a remote worker's node may run on after its request was cancelled or timed out,
    /// so for such a mode the limit bounds the requests open, not the nodes running.
    ///
    /// A task whose nearest ancestor in `mode` is open (its parent, or an ancestor reached
    /// through open requests of other modes: an agent, its tool in another mode, the tool's
    /// call back in the agent's mode) shares that ancestor's place: it never waits for one (its
    /// own ancestor holds it: that would deadlock the tree), and the place is freed once every
    /// request sharing it has ended, so children that outlive their parent keep it. Any other
    /// task takes a place of its own, a child fanned out from another mode included. Two
    /// limited modes whose trees each wait for a place in the other's mode can then wait on
    /// each other, as any two bounded pools can.
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
        // A limit of a mode no strategy serves would limit nothing: `start` refuses it.
        let stray_limit = limits.keys().find(|mode| !self.modes.contains_key(*mode));
        let stray_limit = stray_limit.map(|mode| {
            let mut known: Vec<ExecutionMode> = self.modes.keys().cloned().collect();
            known.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            (mode.clone(), known)
        });
        let modes: Vec<Mode> = self
            .modes
            .into_iter()
            .enumerate()
            .map(|(index, (name, strategy))| Mode {
                index,
                limit: limits.get(&name).map(|&n| Arc::new(Semaphore::new(n))),
                metrics: crate::metrics::ModeMetrics::new(name.as_str()),
                name,
                strategy,
                counters: ModeCounters::default(),
            })
            .collect();
        let mut inner = Inner::new(
            modes,
            self.grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            self.retention,
        );
        inner.stray_limit = stray_limit;
        Coordinator {
            inner: Arc::new(inner),
        }
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

impl Coordinator {
    /// A builder with no modes registered.
    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder::default()
    }

    /// A coordinator over `execution_modes`, the seed's constructor.
    pub fn new(execution_modes: impl IntoIterator<Item = (ExecutionMode, StrategyRef)>) -> Self {
        execution_modes
            .into_iter()
            .fold(Self::builder(), |b, (mode, s)| b.shared_strategy(mode, s))
            .build()
    }
}
