//! Nodes on the threaded mode that wait for their children, more of them at once than the
//! pool's threads can hold on their stacks: the pool's tasks go on to spare threads, and every
//! request is answered.

mod support;

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, SubmitOptions, Task, ThreadedExecutionStrategy, block_on,
};

/// Fails rather than hangs when `future` never finishes.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

fn started(threads: usize) -> Coordinator {
    let threaded = ThreadedExecutionStrategy::builder().threads(threads);
    support::started_threaded(threaded).1
}

/// A blocking node that submits the next one and waits for it on its pool thread.
fn chain(c: Coordinator, i: u32, depth: u32) -> Task<u32> {
    Task::blocking(format!("chain-{i}"), "chain", move || {
        if i == depth {
            return Ok::<_, BoxError>(i);
        }
        let next = chain(c.clone(), i + 1, depth);
        Ok(block_on(c.submit(next, ExecutionMode::THREADED))?)
    })
}

/// A blocking node waiting for an async one, which awaits a threaded one, and so on down.
fn alternating(c: Coordinator, i: u32, depth: u32) -> Task<u32> {
    let id = format!("alt-{i}");
    if i.is_multiple_of(2) {
        Task::blocking(id, "threaded step", move || {
            if i == depth {
                return Ok::<_, BoxError>(i);
            }
            let next = alternating(c.clone(), i + 1, depth);
            Ok(block_on(c.submit(next, ExecutionMode::ASYNC))?)
        })
    } else {
        Task::from_fn(id, "async step", move || async move {
            if i == depth {
                return Ok::<_, BoxError>(i);
            }
            let next = alternating(c.clone(), i + 1, depth);
            Ok(c.submit(next, ExecutionMode::THREADED).await?)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_a_thousand_nodes_each_waiting_for_the_next_completes() {
    let coordinator = started(2);
    let top = chain(coordinator.clone(), 0, 1_000);
    let last = within("the chain", coordinator.submit(top, "threaded")).await;
    assert_eq!(last.unwrap(), 1_000);
    assert_eq!(coordinator.counts().open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_alternating_threaded_and_async_waits_deeper_than_a_thread_holds_completes() {
    let threaded = ThreadedExecutionStrategy::builder().threads(1);
    let coordinator = support::started_threaded(threaded.max_in_flight(4)).1;
    let top = alternating(coordinator.clone(), 0, 200);
    let last = within("the tree", coordinator.submit(top, "threaded")).await;
    assert_eq!(last.unwrap(), 200);
    assert_eq!(coordinator.counts().open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fanning_out_to_more_waiting_tools_than_a_thread_holds_completes() {
    let coordinator = started(1);
    let c = coordinator.clone();
    let agent = Task::from_fn("agent", "agent", move || async move {
        let tools = (0..150_u32).map(|i| {
            let c = c.clone();
            Task::blocking(format!("tool-{i}"), "tool", move || {
                let leaf = Task::blocking(format!("tool-{i}/leaf"), "leaf", move || {
                    Ok::<_, BoxError>(u64::from(i))
                });
                let on = c.clone();
                let lookup =
                    Task::from_fn(format!("tool-{i}/lookup"), "lookup", move || async move {
                        Ok::<_, BoxError>(on.submit(leaf, ExecutionMode::THREADED).await?)
                    });
                Ok::<_, BoxError>(block_on(c.submit(lookup, ExecutionMode::ASYNC))?)
            })
        });
        let batch = c.submit_many(tools, ExecutionMode::THREADED, SubmitOptions::new())?;
        let outputs = batch.all().await;
        Ok::<_, BoxError>(outputs.into_iter().map(Result::unwrap).sum::<u64>())
    });
    let sum = within("the agent", coordinator.submit(agent, "async")).await;
    assert_eq!(sum.unwrap(), (0..150).sum::<u64>());
    assert_eq!(coordinator.counts().open, 0);
}
