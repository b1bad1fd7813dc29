//! The batch path: many requests accepted under one lock of the job table, or none, and
//! [`Batch`], their outputs together or as they end.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::FuturesUnordered;
use task_core::{ErasedTask, ExecutionMode, RequestId, TaskError};

use crate::admission::scoped_parent;
use crate::coordinator::Coordinator;
use crate::error::{SubmitError, SubmitKind};
use crate::handle::RequestHandle;
use crate::options::SubmitOptions;
use crate::queue::Queue;
use crate::request::{Place, RequestCell, current_node};

impl Coordinator {
    /// Submits every task of `tasks` to `mode` at once: the batch path for fan-out (map a node
    /// over many inputs, gather the results). Every request is accepted under one lock of the job
    /// table, or none is: a batch with a request id that is open (or repeated in the batch) is
    /// rejected whole, with nothing recorded. Other submissions wait for that lock meanwhile
    /// (about a tenth of a second for 100,000 tasks in a release build): submit huge batches in
    /// parts where other submitters must not wait that long. Each request then runs, ends and
    /// is announced as a [`spawn`](Self::spawn)ed one does, with `options` each.
    ///
    /// The returned [`Batch`] gives the outputs all together, in the order of `tasks`
    /// ([`Batch::all`]), or as each request ends ([`Batch::as_completed`]).
    ///
    /// Under a mode's concurrency limit ([`CoordinatorBuilder::limit`](crate::CoordinatorBuilder::limit))
    /// the whole batch is accepted at once all the same, whatever its size: the tasks that find
    /// no place free wait for one, recorded and open, and start in the batch's order as places
    /// free (a child sharing its parent's place never waits). A task's timeout counts from its
    /// start; one cancelled while it waits ends at once and never starts. Shutdown lets them run
    /// within its grace; one still waiting at its deadline (or when the runtime it was submitted
    /// on shuts down) ends cancelled, never started.
    ///
    /// # Errors
    ///
    /// The rejections of [`submit`](Self::submit), for the whole batch.
    ///
    /// # Examples
    ///
    /// ```
    /// use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, SubmitOptions, Task};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let publisher = RequestCompletionPublisher::new();
    /// publisher.start()?;
    /// let coordinator = Coordinator::builder().with_async().build();
    /// coordinator.start(&publisher)?;
    ///
    /// let squares = (0..100_u64).map(|i| {
    ///     Task::from_fn(format!("square-{i}"), "square", move || async move { Ok::<_, BoxError>(i * i) })
    /// });
    /// let batch = coordinator.submit_many(squares, ExecutionMode::ASYNC, SubmitOptions::new())?;
    /// let outputs: Vec<u64> = batch.all().await.into_iter().collect::<Result<_, _>>()?;
    /// assert_eq!(outputs[9], 81);
    /// # coordinator.shutdown().await;
    /// # publisher.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_many<O, I>(
        &self,
        tasks: I,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<Batch<O>, SubmitError>
    where
        I: IntoIterator<Item = task_core::Task<O>>,
        O: std::fmt::Debug + Send + Sync + 'static,
    {
        let each = tasks.into_iter().map(|task| (task, options.clone()));
        self.submit_many_with(each, mode)
    }

    /// [`submit_many`](Self::submit_many), each task with options of its own (its timeout, its
    /// retry policy): the batch is accepted or rejected whole all the same.
    ///
    /// # Errors
    ///
    /// As for [`submit_many`](Self::submit_many).
    pub fn submit_many_with<O, I>(
        &self,
        tasks: I,
        mode: impl Into<ExecutionMode>,
    ) -> Result<Batch<O>, SubmitError>
    where
        I: IntoIterator<Item = (task_core::Task<O>, SubmitOptions)>,
        O: std::fmt::Debug + Send + Sync + 'static,
    {
        let mode = mode.into();
        let (runtime, outside) = self.check_open()?;
        let _entered = outside.then(|| runtime.enter());
        let entry = self.mode_entry(&mode)?;
        let tasks = tasks.into_iter();
        let mut prepared = Vec::with_capacity(tasks.size_hint().0);
        for (task, options) in tasks {
            let options = options.output::<O>(true);
            let task = self.prepare(task.into_erased(), &options)?;
            prepared.push((task, options));
        }
        if prepared.is_empty() {
            // Nothing to run, but a shutdown is still said.
            if !self.inner.admits(current_node().as_ref(), None) {
                return Err(SubmitError::new(SubmitKind::ShutDown));
            }
            return Ok(Batch::new(Vec::new()));
        }
        // Under the mode's limit, a task with an open ancestor in the mode shares its place; one
        // submitted from a node whose request was cancelled is born cancelled and needs none;
        // every other task takes a place of its own, all together or none.
        let limited = entry.limit.is_some();
        let doomed = |task: &ErasedTask| {
            scoped_parent(task.info()).is_some_and(|parent| parent.cancels_children())
        };
        let shared: Vec<Option<Place>> = prepared
            .iter()
            .map(|(task, _)| limited.then(|| self.ancestor_place(task, entry)).flatten())
            .collect();
        let took_place: Vec<bool> = prepared
            .iter()
            .zip(&shared)
            .map(|((task, _), shared)| limited && shared.is_none() && !doomed(task))
            .collect();
        let own_places = took_place.iter().filter(|took| **took).count();
        // The places free now, up to one per task that takes its own; the others wait.
        let mut places = match &entry.limit {
            Some(limit) if own_places > 0 => {
                if self.inner.is_closing() || limit.is_closed() {
                    return Err(SubmitError::new(SubmitKind::ShutDown));
                }
                let free = limit.available_permits().min(own_places);
                let free = u32::try_from(free).unwrap_or(u32::MAX);
                Arc::clone(limit).try_acquire_many_owned(free).ok()
            }
            _ => None,
        };
        let mut ready = Vec::with_capacity(prepared.len());
        let mut waits = Vec::with_capacity(prepared.len());
        for (((task, options), shared), &takes_place) in
            prepared.into_iter().zip(shared).zip(&took_place)
        {
            let permit = match &mut places {
                Some(places) if takes_place => places.split(1).map(Arc::new),
                _ => shared,
            };
            waits.push(takes_place && permit.is_none());
            ready.push(self.ready(task, &mode, entry, options, permit, &runtime)?);
        }
        // As for one request: announced openings come first, and nothing is recorded once
        // shutdown has begun.
        let openings = self.inner.openings();
        let cells: Vec<Arc<RequestCell>> = match openings {
            Some(_) => ready.iter().map(|r| Arc::clone(&r.cell)).collect(),
            None => Vec::new(),
        };
        let held: Vec<_> = cells.iter().map(|cell| cell.hold()).collect();
        let born_cancelled = {
            let mut table = self.inner.table();
            // Hashed with foldhash, as the table's index is: SipHash costs several times more.
            let hasher = foldhash::fast::RandomState::default();
            let mut ids: HashSet<&RequestId, _> =
                HashSet::with_capacity_and_hasher(ready.len(), hasher);
            // Checked again under the lock: tasks that took (or wait for) places of their own
            // are refused once shutdown has begun, even when it began after the look above.
            let closed = own_places > 0 && self.inner.is_closing();
            let clash = ready.iter().find_map(|r| {
                if closed {
                    return Some(SubmitKind::ShutDown);
                }
                let id = r.task.info().request_id();
                if !self.inner.admits(r.task.info().parent_id(), Some(&table)) {
                    Some(SubmitKind::ShutDown)
                } else if table.is_open(id) {
                    Some(SubmitKind::Duplicate(id.clone()))
                } else if !ids.insert(id) {
                    Some(SubmitKind::DuplicateInBatch(id.clone()))
                } else {
                    None
                }
            });
            if let Some(clash) = clash {
                drop((table, held));
                for r in &ready {
                    r.cell.close_unaccepted();
                }
                return Err(SubmitError::new(clash));
            }
            let mut born_cancelled = Vec::with_capacity(ready.len());
            for r in &ready {
                match Self::record(&mut table, r, entry) {
                    Ok(cancelled) => born_cancelled.push(cancelled),
                    // Only a table that cannot grow: what was recorded ends failed below.
                    Err(_) => break,
                }
            }
            born_cancelled
        };
        if let Some(bus) = openings {
            for r in &ready[..born_cancelled.len()] {
                Self::announce_opening(bus, r, entry);
            }
        }
        drop(held);
        if born_cancelled.len() < ready.len() {
            let full = TaskError::strategy("the job table is full");
            for (i, r) in ready.into_iter().enumerate() {
                if i < born_cancelled.len() {
                    r.cell.stop(Err(full.clone()), true);
                } else {
                    r.cell.close_unaccepted();
                }
            }
            return Err(SubmitError::failed(full));
        }
        // A task that took a place now waited for none; one still to wait starts from the queue.
        let mut queue = entry
            .limit
            .as_ref()
            .map(|limit| Queue::new(&self.inner, entry.index, limit));
        let mut handles = Vec::with_capacity(ready.len());
        for (((r, cancelled), took_place), waits) in ready
            .into_iter()
            .zip(born_cancelled)
            .zip(took_place)
            .zip(waits)
        {
            let accepted = match &mut queue {
                Some(queue) if waits && !cancelled => {
                    entry.metrics.accepted(None);
                    let accepted = r.accepted();
                    // It starts later, from the queue: its tree hears it joined now (one that
                    // starts now is heard as it starts).
                    r.cell.wake_trees();
                    queue.push(r);
                    accepted
                }
                _ => {
                    entry.metrics.accepted(took_place.then_some(Duration::ZERO));
                    Self::start_recorded(r, cancelled, entry)
                }
            };
            handles.push(accepted.into_handle(crate::handle::take_output::<O>));
        }
        if let Some(queue) = queue.filter(|queue| !queue.is_empty()) {
            drop(runtime.spawn(queue.run()));
        }
        Ok(Batch::new(handles))
    }
}

/// The requests of one [`Coordinator::submit_many`] call.
///
/// Every request runs whether or not the batch is awaited; dropping it cancels nothing (as with
/// a [`RequestHandle`]).
#[must_use = "a batch does nothing unless awaited; its requests run either way"]
#[derive(Debug)]
pub struct Batch<O> {
    handles: Vec<RequestHandle<O>>,
}

impl<O> Batch<O> {
    fn new(handles: Vec<RequestHandle<O>>) -> Self {
        Self { handles }
    }

    /// How many requests the batch holds.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Cancels every request of the batch (and their children) that has not ended. All are
    /// marked before any ends, so the place a running one frees never starts one still waiting.
    pub fn cancel(&self) {
        RequestCell::cancel_all(self.handles.iter().map(|h| Arc::clone(h.cell())).collect());
    }

    /// Every output, in the order the tasks were given, once every request has ended.
    pub async fn all(self) -> Vec<Result<O, SubmitError>> {
        let mut outputs = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            outputs.push(handle.await);
        }
        outputs
    }

    /// Each output as its request ends, with its position in the batch. The stream is `Unpin`:
    /// call `next` on it as it is. [`AsCompleted::cancel`] cancels the requests not yet read
    /// (a reader that gives up on the first failure, say); dropping the stream cancels nothing.
    pub fn as_completed(self) -> AsCompleted<O> {
        let cells = self.handles.iter().map(|h| Arc::clone(h.cell())).collect();
        let outputs = self
            .handles
            .into_iter()
            .enumerate()
            .map(|(i, handle)| Indexed(i, handle))
            .collect();
        AsCompleted { outputs, cells }
    }

    /// The handles, to await or cancel one by one.
    pub fn into_handles(self) -> Vec<RequestHandle<O>> {
        self.handles
    }
}

/// A request of a batch, with its position.
struct Indexed<O>(usize, RequestHandle<O>);

impl<O> Future for Indexed<O> {
    type Output = (usize, Result<O, SubmitError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let i = self.0;
        Pin::new(&mut self.1).poll(cx).map(|output| (i, output))
    }
}

/// The outputs of a [`Batch`] as its requests end ([`Batch::as_completed`]): a [`Stream`] of
/// each output with its position in the batch.
#[must_use = "a stream does nothing unless polled; its requests run either way"]
pub struct AsCompleted<O> {
    outputs: FuturesUnordered<Indexed<O>>,
    cells: Vec<Arc<RequestCell>>,
}

impl<O> AsCompleted<O> {
    /// Cancels every request of the batch that has not ended (and their children), as
    /// [`Batch::cancel`] does; the stream then gives their cancelled outputs.
    pub fn cancel(&self) {
        RequestCell::cancel_all(self.cells.clone());
    }
}

impl<O> Stream for AsCompleted<O> {
    type Item = (usize, Result<O, SubmitError>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.outputs).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.outputs.size_hint()
    }
}

impl<O> std::fmt::Debug for AsCompleted<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.outputs.len())
            .finish()
    }
}
