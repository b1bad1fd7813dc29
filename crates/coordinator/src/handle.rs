//! [`RequestHandle`]: an accepted request, to await or cancel.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use std::any::type_name;
use task_core::{RequestId, TaskError, Value};

use crate::error::{SubmitError, SubmitKind};
use crate::request::RequestCell;

/// Turns a request's shared value into the caller's type.
pub(crate) fn take_output<O>(value: Value) -> Result<O, SubmitError>
where
    O: fmt::Debug + Send + Sync + 'static,
{
    value.into_inner::<O>().map_err(|value| {
        if value.is::<O>() {
            // Not expected: a request whose output arrives shared fails before it is answered
            // (`RequestCell::owned_outcome`). Said, should it happen, rather than cloned.
            SubmitError::failed(TaskError::strategy(format!(
                "the {} output is still held elsewhere, and the caller takes it moved",
                type_name::<O>()
            )))
        } else {
            wrong_type::<O>(value)
        }
    })
}

/// The request's shared value as the caller's type, still shared.
pub(crate) fn shared_output<O>(value: Value) -> Result<Arc<O>, SubmitError>
where
    O: fmt::Debug + Send + Sync + 'static,
{
    value.downcast::<O>().map_err(wrong_type::<O>)
}

fn wrong_type<O>(value: Value) -> SubmitError {
    SubmitError::failed(TaskError::strategy(format!(
        "expected a {} result, got {value:?}",
        type_name::<O>()
    )))
}

/// An accepted request: await it for the node's output, or [`cancel`](Self::cancel) it.
///
/// Returned by [`Coordinator::spawn`](crate::Coordinator::spawn) and
/// [`Coordinator::try_spawn`](crate::Coordinator::try_spawn). The request runs whether or not the
/// handle is awaited: dropping the handle does not cancel it (as with a tokio `JoinHandle`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coordinator::{Coordinator, ExecutionMode, RequestCompletionPublisher, SubmitOptions, Task};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = RequestCompletionPublisher::new();
/// publisher.start()?;
/// let coordinator = Coordinator::builder().with_async().build();
/// coordinator.start(&publisher)?;
///
/// let slow = Task::from_fn("slow", "wait", || async {
///     tokio::time::sleep(Duration::from_secs(60)).await;
///     Ok::<_, coordinator::BoxError>(())
/// });
/// let handle = coordinator.spawn(slow, ExecutionMode::ASYNC, SubmitOptions::new()).await?;
/// handle.cancel();
/// assert!(handle.await.unwrap_err().is_cancelled());
/// assert_eq!(coordinator.counts().cancelled, 1);
/// # coordinator.shutdown().await;
/// # publisher.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a handle does nothing unless awaited or cancelled; the request runs either way"]
pub struct RequestHandle<O> {
    request_id: RequestId,
    cell: Arc<RequestCell>,
    /// Turns the answer into the caller's type; taken by the poll that returns it.
    convert: Option<fn(Value) -> Result<O, SubmitError>>,
    _output: PhantomData<fn() -> O>,
}

impl<O> RequestHandle<O> {
    pub(crate) fn new(
        request_id: RequestId,
        cell: Arc<RequestCell>,
        convert: fn(Value) -> Result<O, SubmitError>,
    ) -> Self {
        Self {
            request_id,
            cell,
            convert: Some(convert),
            _output: PhantomData,
        }
    }

    /// The request this handle follows.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// Cancels the request and every child it submitted. If it has not ended yet it ends as
    /// [`JobResult::Cancelled`](crate::JobResult::Cancelled) with a cancelled failure message;
    /// if it already ended, nothing changes. Returns at once; await the handle for the outcome.
    pub fn cancel(&self) {
        self.cell.cancel();
    }

    /// The request's cell, for a batch to cancel all of its requests at once.
    pub(crate) fn cell(&self) -> &Arc<RequestCell> {
        &self.cell
    }

    /// The next event the request's node [broadcast](crate::broadcast), in the order sent;
    /// `None` once the request has ended and every event was read. Only a request submitted
    /// with [`SubmitOptions::with_events`](crate::SubmitOptions::with_events) keeps its events
    /// for its handle: for any other, `None` at once.
    ///
    /// Read the events, then await the handle for the output.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is never lost when the future is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher,
    ///     SubmitOptions, Task, broadcast};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let publisher = RequestCompletionPublisher::new();
    /// publisher.start()?;
    /// let coordinator = Coordinator::builder().with_async().build();
    /// coordinator.start(&publisher)?;
    ///
    /// let writer = Task::from_fn("answer-1", "writer", || async {
    ///     for token in ["Hello", ", ", "world"] {
    ///         broadcast(token)?;
    ///     }
    ///     Ok::<_, BoxError>(3)
    /// });
    /// let options = SubmitOptions::new().with_events();
    /// let mut handle = coordinator.spawn(writer, ExecutionMode::ASYNC, options).await?;
    /// let mut text = String::new();
    /// while let Some(token) = handle.next_event().await {
    ///     text.push_str(&token);
    /// }
    /// assert_eq!(text, "Hello, world");
    /// assert_eq!(handle.await?, 3);
    /// # coordinator.shutdown().await;
    /// # publisher.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_event(&mut self) -> Option<Arc<str>> {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Polls for the next event, as [`next_event`](Self::next_event) waits for it. One reader at
    /// a time (hence `&mut`): the request keeps one waker for its events.
    ///
    /// # One reader
    ///
    /// A handle shared between tasks cannot be read from both, which would lose wake-ups:
    ///
    /// ```compile_fail
    /// fn read(shared: &coordinator::RequestHandle<u32>, cx: &mut std::task::Context<'_>) {
    ///     let _ = shared.poll_next_event(cx);
    /// }
    /// ```
    pub fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<str>>> {
        self.cell.poll_event(cx)
    }

    /// The next thing that happened in the request's tree (the request and every request
    /// submitted below it, at any depth), in order; `None` once every request of the tree ended
    /// and everything was read. Only a request submitted with
    /// [`SubmitOptions::with_tree_events`](crate::SubmitOptions::with_tree_events) keeps its
    /// tree's events: for any other, `None` at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is lost when the future is dropped.
    ///
    /// # Examples
    ///
    /// An agent that calls two tools, each streaming its progress; its caller follows them all:
    ///
    /// ```
    /// use coordinator::{BoxError, Coordinator, ExecutionMode, JobResult,
    ///     RequestCompletionPublisher, SubmitOptions, Task, TreeEvent, broadcast};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let publisher = RequestCompletionPublisher::new();
    /// # publisher.start()?;
    /// let coordinator = Coordinator::builder().with_async().build();
    /// coordinator.start(&publisher)?;
    ///
    /// let tools = coordinator.clone();
    /// let agent = Task::from_fn("agent-1", "agent", move || async move {
    ///     let call = |name: &'static str| {
    ///         let tool = Task::from_fn(format!("agent-1/{name}"), name, move || async move {
    ///             broadcast(format!("{name}: working"))?;
    ///             Ok::<_, BoxError>(name.len())
    ///         });
    ///         tools.submit(tool, ExecutionMode::ASYNC)
    ///     };
    ///     let (search, fetch) = tokio::join!(call("search"), call("fetch"));
    ///     Ok::<_, BoxError>(search? + fetch?)
    /// });
    /// let options = SubmitOptions::new().with_tree_events();
    /// let mut handle = coordinator.spawn(agent, ExecutionMode::ASYNC, options).await?;
    /// let mut seen = Vec::new();
    /// while let Some(event) = handle.next_tree_event().await {
    ///     match event {
    ///         TreeEvent::Joined { info, .. } => seen.push(format!("{} joined", info.request_id())),
    ///         TreeEvent::Event { event, .. } => seen.push(event.to_string()),
    ///         TreeEvent::Ended { request_id, result, .. } => {
    ///             assert_eq!(result, JobResult::Success);
    ///             seen.push(format!("{request_id} ended"));
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// assert_eq!(seen.len(), 2 + 3 * 2, "the agent joined and ended, each tool did all three");
    /// assert_eq!(seen.last().map(String::as_str), Some("agent-1 ended"));
    /// assert_eq!(handle.await?, 11);
    /// # coordinator.shutdown().await;
    /// # publisher.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_tree_event(&mut self) -> Option<crate::TreeEvent> {
        std::future::poll_fn(|cx| self.poll_next_tree_event(cx)).await
    }

    /// The events of the request's tree as a [`Stream`](futures::Stream) (for `StreamExt`'s
    /// adapters), read as [`next_tree_event`](Self::next_tree_event) reads them; it ends where
    /// that returns `None`.
    pub fn tree_events(&mut self) -> impl futures::Stream<Item = crate::TreeEvent> + Unpin + '_ {
        futures::stream::poll_fn(move |cx| self.poll_next_tree_event(cx))
    }

    /// Polls for the next event of the request's tree, as
    /// [`next_tree_event`](Self::next_tree_event) waits for it. One reader at a time, as for
    /// [`poll_next_event`](Self::poll_next_event).
    pub fn poll_next_tree_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<crate::TreeEvent>> {
        self.cell.poll_tree_event(cx)
    }

    /// Whether the request was stopped before its run ended it: cancelled (by this handle, its
    /// parent, or the shutdown deadline), past its deadline, or ended from outside its run (an
    /// outcome given to [`handle_item`](crate::Coordinator::handle_item), its coordinator
    /// dropped). `cancel` on a request that already ended changes nothing, so this stays `false`
    /// for it.
    pub fn is_cancelled(&self) -> bool {
        self.cell.is_cancelled()
    }
}

impl<O> Future for RequestHandle<O> {
    type Output = Result<O, SubmitError>;

    /// Polled again once it returned its answer, it returns an error for which
    /// [`SubmitError::is_polled_after_completion`] holds, not a panic.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(convert) = self.convert else {
            let misuse = SubmitKind::PolledAfterCompletion(self.request_id.clone());
            return Poll::Ready(Err(SubmitError::new(misuse)));
        };
        let received = std::task::ready!(self.cell.poll_answer(cx));
        self.convert = None;
        // An answered request always holds its outcome until this handle, its one reader,
        // takes it.
        let outcome = received.unwrap_or_else(|| {
            Err(TaskError::strategy(
                "the request ended without an outcome reaching its caller",
            ))
        });
        Poll::Ready(match outcome {
            Ok(value) => convert(value).map_err(|error| error.about(&self.request_id)),
            Err(e) => Err(SubmitError::failed(e).about(&self.request_id)),
        })
    }
}

/// Terminated once it returned its answer: `select!` loops skip it then.
impl<O> futures::future::FusedFuture for RequestHandle<O> {
    fn is_terminated(&self) -> bool {
        self.convert.is_none()
    }
}

impl<O> Drop for RequestHandle<O> {
    fn drop(&mut self) {
        // Nobody can read the request's events any more: they are no longer kept.
        self.cell.forget_events();
    }
}

impl<O> fmt::Debug for RequestHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHandle")
            .field("request_id", &self.request_id)
            .field("cancelled", &self.cell.is_cancelled())
            .finish()
    }
}
