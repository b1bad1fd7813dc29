//! Per-request options: a deadline and a retry policy.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use task_core::{TaskError, Value};

/// How one request is run: its timeout and its retry policy.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coordinator::{RetryPolicy, SubmitOptions};
///
/// let options = SubmitOptions::new()
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::new(3).backoff(Duration::from_millis(10), Duration::from_secs(1)));
/// assert_eq!(options.get_timeout(), Some(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    timeout: Option<Duration>,
    /// Boxed: most requests have none, and these options are moved with every submission.
    retry: Option<Box<RetryPolicy>>,
    events: bool,
    tree_events: bool,
    ends_children: bool,
    /// The output the caller takes (set by the typed submissions, not by the user).
    output: Option<Output>,
}

/// The output a typed submission's caller takes: its type, moved or shared.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    /// Moved to the caller: nobody else may hold it.
    pub(crate) owned: bool,
    /// Whether a value is of the caller's type.
    pub(crate) is: fn(&Value) -> bool,
    /// The caller's type, for the error an output of another type ends its request with.
    pub(crate) name: &'static str,
}

impl SubmitOptions {
    /// No timeout, no retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request's deadline, counted from acceptance (for a
    /// [`submit_many`](crate::Coordinator::submit_many) task that waits in its batch for a place
    /// under its mode's limit, from its start) and covering every attempt and the backoff between
    /// them. At the deadline the caller gets a timed-out error
    /// ([`SubmitError::is_timeout`](crate::SubmitError::is_timeout)), the job closes as
    /// [`JobResult::TimedOut`](crate::JobResult::TimedOut), the strategy's future is
    /// dropped (what that stops depends on the strategy; see `docs/reliability.md`) and the
    /// requests it submitted are cancelled, as a cancellation cancels them. An
    /// outcome that arrives before the timer fires wins: with a zero timeout, a node that
    /// ends at once (an async node that does not wait, a quick one on a thread) may still
    /// succeed.
    ///
    /// The deadline is a tokio timer on the runtime the request is submitted on: submitting
    /// with a timeout panics, as [`tokio::time::timeout`] does, on a runtime built without
    /// its time driver (`enable_time` or `enable_all`).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries failed attempts under `policy`. Only replayable tasks
    /// ([`ErasedTask::is_replayable`](task_core::ErasedTask::is_replayable)) can be retried:
    /// submitting one that is not with a policy of more than one attempt is rejected
    /// ([`SubmitError::is_not_replayable`](crate::SubmitError::is_not_replayable)), nothing
    /// recorded.
    ///
    /// Backoffs are tokio timers on the runtime the request is submitted on: submitting with a
    /// retry policy panics, as [`tokio::time::sleep`] does, on a runtime built without its time
    /// driver.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(Box::new(policy));
        self
    }

    /// Keeps the events the request's node [broadcasts](crate::broadcast) for its handle to
    /// read ([`RequestHandle::next_event`](crate::RequestHandle::next_event)), in order, before
    /// its output. They are kept until read: memory grows with the events the caller has not
    /// read yet (the node never waits for it). The bus's subscribers get them either way. Only a
    /// submission that gives a handle keeps them (`spawn`, `try_spawn`, a batch's handles):
    /// `submit_with` gives none, and keeps none.
    #[must_use]
    pub fn with_events(mut self) -> Self {
        self.events = true;
        self
    }

    /// Keeps for its handle to read, in order, what happens in the request and in every request
    /// submitted below it, at any depth (an agent, the tools and sub-agents it calls, theirs):
    /// each one's joining, the events its node [broadcasts](crate::broadcast) and its end
    /// ([`RequestHandle::next_tree_event`](crate::RequestHandle::next_tree_event)). They are
    /// kept until read, as [`with_events`](Self::with_events) keeps the request's own; the
    /// bus's subscribers get the events and ends either way. The tree's events end once every
    /// request of it ended: children that outlive the request (the default) are followed to
    /// their end. A request submitted below it once they all ended, or once its handle is
    /// gone, is not followed. Below it means submitted from inside a node of the tree, or naming
    /// one as its parent ([`Task::with_parent`](task_core::Task::with_parent)) while the tree is
    /// open. As for [`with_events`](Self::with_events), only a submission that gives a handle
    /// keeps them.
    #[must_use]
    pub fn with_tree_events(mut self) -> Self {
        self.tree_events = true;
        self
    }

    /// Whether the events of the request's tree are kept for its handle
    /// ([`with_tree_events`](Self::with_tree_events)).
    pub fn keeps_tree_events(&self) -> bool {
        self.tree_events
    }

    /// Cancels the requests submitted from inside this one's node (and theirs in turn) that are
    /// still open when it ends, however it ends: nothing it started outlives it. By default a
    /// request that ends on its own (its node returns a value or an error, or panics) leaves
    /// its children running, as a task spawned with `tokio::spawn` outlives its spawner; a
    /// workflow that returns at the first failed step then leaves the others running. They end
    /// cancelled (job and message) before the request's own end is published and its caller
    /// answered, and a child its node still submits after that (a blocking node running on
    /// after its request was closed) is born cancelled. A task that names it as parent with
    /// [`Task::with_parent`](task_core::Task::with_parent) from outside its node (work it
    /// handed to `tokio::spawn`) once it has ended names no open request: that task is
    /// nobody's child and runs, so await or cancel such work before the node returns.
    ///
    /// Under a retry policy it holds for each attempt too: the children a failed attempt leaves
    /// open end cancelled before the next attempt starts, which may submit them again under the
    /// same request ids, and what that attempt's work still submits beneath it meanwhile (work
    /// handed to `tokio::spawn`, naming the node with `with_parent`) is born cancelled.
    #[must_use]
    pub fn cancel_children_on_end(mut self) -> Self {
        self.ends_children = true;
        self
    }

    /// Whether the request's children still open when it ends are cancelled
    /// ([`cancel_children_on_end`](Self::cancel_children_on_end)).
    pub fn cancels_children_on_end(&self) -> bool {
        self.ends_children
    }

    /// Whether the request's events are kept for its handle ([`with_events`](Self::with_events)).
    pub fn keeps_events(&self) -> bool {
        self.events
    }

    /// The timeout set, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry policy set, if any.
    pub fn get_retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_deref()
    }

    /// These options for a submission that keeps no handle: nobody could read the events kept
    /// for one, so none are.
    pub(crate) fn unread(mut self) -> Self {
        (self.events, self.tree_events) = (false, false);
        self
    }

    /// The same options for a submission whose caller takes an output of type `O`, moved when
    /// `owned`, shared otherwise.
    pub(crate) fn output<O: std::any::Any>(mut self, owned: bool) -> Self {
        self.output = Some(Output {
            owned,
            is: Value::is::<O>,
            name: std::any::type_name::<O>(),
        });
        self
    }

    /// The timeout, the retry policy, and what the request's cell keeps: whether events are
    /// kept, whether children are cancelled at its end, and the output the caller takes.
    pub(crate) fn into_parts(self) -> (Option<Duration>, Option<RetryPolicy>, CellOptions) {
        let cell = CellOptions {
            events: self.events,
            tree_events: self.tree_events,
            ends_children: self.ends_children,
            output: self.output,
        };
        (self.timeout, self.retry.map(|policy| *policy), cell)
    }
}

/// The options a request's cell keeps for its life.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CellOptions {
    pub(crate) events: bool,
    pub(crate) tree_events: bool,
    pub(crate) ends_children: bool,
    pub(crate) output: Option<Output>,
}

type Predicate = Arc<dyn Fn(&TaskError) -> bool + Send + Sync>;

/// When and how often to run a failed task again.
///
/// Attempt `n` (counting from 1) that fails with a retryable error is followed, after a backoff,
/// by attempt `n + 1`, up to `max_attempts` in all. The backoff before attempt `n + 1` is
/// `initial * multiplier^(n-1)`, capped at `max`, then (with jitter, the default) drawn uniformly
/// from zero to that value ("full jitter", so retries of many requests spread out). Every attempt
/// is counted on the job ([`Job::attempts`](crate::Job::attempts)); the request still ends with
/// exactly one terminal message.
///
/// By default node errors, panics, lost workers and attempts that ran past a limit of their own
/// (the [attempt timeout](Self::attempt_timeout), a worker pool's task timeout) are retried;
/// the request's deadline (it covers all attempts and ends the request at once), cancellations,
/// shutdowns and errors that would recur (unsupported or unregistered node, encoding, protocol)
/// are not. [`retry_if`](Self::retry_if) replaces that rule. A poison
/// task ([`TaskError::is_poison`]: it killed its workers too many times in a row) is never
/// retried, whatever the rule.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: bool,
    retry_if: Option<Predicate>,
    attempt_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts in all (0 is read as 1), with a backoff of 100 ms doubling up
    /// to 10 s, with jitter.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: true,
            retry_if: None,
            attempt_timeout: None,
        }
    }

    /// Gives each attempt at most `timeout`, counted from when it is handed to its strategy. An
    /// attempt past it is told to stop, as a cancellation tells it (an async node is dropped at
    /// its next wake-up, a blocking node reads [`current_node_cancelled`](crate::current_node_cancelled),
    /// a worker process is told and, after its grace, killed), and the requests it submitted are
    /// cancelled (one it submits after is born cancelled). Once its run has stopped the attempt
    /// fails as timed out ([`TaskError::is_timeout`]), and another follows as for any retryable
    /// error, so a call that hangs once is retried. The request's
    /// [`timeout`](SubmitOptions::timeout), if any, still covers every attempt. A run that never
    /// stops (a blocking node that never checks, an async node that blocks instead of awaiting)
    /// holds its attempt, and so its request, until it ends; if it then returns a value, that
    /// value is the request's output (it is not thrown away to run the call again).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The attempt timeout set, if any.
    pub fn get_attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The first backoff and the cap on any backoff: a first backoff above the cap is cut to it.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial.min(max);
        self.max = max;
        self
    }

    /// The growth factor between backoffs (default 2; values below 1, and NaN, are read as 1;
    /// an infinite one goes from the first backoff straight to the longest).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        // `f64::max` takes the number where the other is NaN.
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Waits the full backoff instead of a random part of it.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Decides which errors are retried (never a poison one). A predicate that panics means
    /// no: the request ends with the attempt's error, and the panic is logged at warn.
    #[must_use]
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&TaskError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// The most attempts a request gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `error`, ending attempt `attempt` (from 1), earns another attempt. A poison error
    /// ([`TaskError::is_poison`]) never does, whatever `retry_if` says.
    pub fn should_retry(&self, attempt: u32, error: &TaskError) -> bool {
        // A poison task killed its workers again and again: another attempt would kill another.
        !error.is_poison()
            && attempt < self.max_attempts
            && match &self.retry_if {
                Some(predicate) => predicate(error),
                None => default_retryable(error),
            }
    }

    /// The longest backoff after attempt `attempt` (from 1), before jitter.
    pub fn max_backoff_after(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.powi(exponent);
        let secs = self.initial.as_secs_f64() * factor;
        if self.initial.is_zero() {
            Duration::ZERO
        } else if secs.is_finite() && secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// The backoff to wait after attempt `attempt` (from 1).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let cap = self.max_backoff_after(attempt);
        if self.jitter {
            // Never past the cap, even where the product rounds up (a cap near Duration::MAX).
            Duration::try_from_secs_f64(cap.as_secs_f64() * fastrand::f64())
                .map_or(cap, |wait| wait.min(cap))
        } else {
            cap
        }
    }
}

/// The request's own deadline never comes here: it ends the request without asking the policy.
fn default_retryable(error: &TaskError) -> bool {
    error.is_node_error() || error.is_panic() || error.is_worker_lost() || error.is_timeout()
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial", &self.initial)
            .field("max", &self.max)
            .field("multiplier", &self.multiplier)
            .field("jitter", &self.jitter)
            .field("custom_retry_if", &self.retry_if.is_some())
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::new(10)
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .without_jitter();
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff_after(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        // The cap holds over a first backoff above it.
        let below = p
            .clone()
            .backoff(Duration::from_millis(10), Duration::from_millis(1));
        assert_eq!(below.backoff_after(1), Duration::from_millis(1));
        let jittered =
            RetryPolicy::new(3).backoff(Duration::from_millis(10), Duration::from_secs(1));
        for attempt in 1..5 {
            assert!(jittered.backoff_after(attempt) <= jittered.max_backoff_after(attempt));
        }
    }

    #[test]
    fn default_rule_retries_transient_errors_and_attempts_past_their_limit() {
        let p = RetryPolicy::new(3);
        assert!(p.should_retry(1, &TaskError::node("x".into())));
        assert!(p.should_retry(2, &TaskError::worker_lost("killed")));
        assert!(
            !p.should_retry(3, &TaskError::node("x".into())),
            "attempts exhausted"
        );
        // Only an attempt past a limit of its own fails timed out: the request's deadline ends
        // the request without asking.
        assert!(p.should_retry(1, &TaskError::timed_out("late")));
        assert!(!p.should_retry(1, &TaskError::cancelled("stop")));
        assert!(!p.should_retry(1, &TaskError::not_registered("n")));
        let custom = RetryPolicy::new(2).retry_if(TaskError::is_timeout);
        assert!(custom.should_retry(1, &TaskError::timed_out("late")));
        assert!(!custom.should_retry(1, &TaskError::node("x".into())));
        assert_eq!(RetryPolicy::new(0).max_attempts(), 1);
    }

    #[test]
    fn odd_multipliers_are_tamed() {
        let p = RetryPolicy::new(5)
            .multiplier(f64::NAN)
            .backoff(Duration::from_millis(5), Duration::from_millis(5))
            .without_jitter();
        assert_eq!(p.backoff_after(4), Duration::from_millis(5));
        let huge = RetryPolicy::new(500).multiplier(1e300).without_jitter();
        assert_eq!(huge.backoff_after(400), Duration::from_secs(10));
        let infinite = RetryPolicy::new(4)
            .multiplier(f64::INFINITY)
            .backoff(Duration::from_millis(10), Duration::from_secs(10))
            .without_jitter();
        let backoffs = [1, 2, 3].map(|attempt| infinite.backoff_after(attempt));
        let expected = [10, 10_000, 10_000].map(Duration::from_millis);
        assert_eq!(backoffs, expected);
        let from_zero = infinite.backoff(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(from_zero.backoff_after(3), Duration::ZERO);
    }

    #[test]
    fn a_backoff_capped_at_duration_max_never_panics() {
        let p = RetryPolicy::new(5).backoff(Duration::MAX, Duration::MAX);
        for attempt in 1..5 {
            assert!(p.backoff_after(attempt) <= Duration::MAX);
        }
        let exact = p.clone().without_jitter();
        assert_eq!(exact.backoff_after(3), Duration::MAX);
    }
}
