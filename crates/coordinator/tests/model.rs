//! The coordinator against a plain model: any sequence of submissions (succeeding, failing,
//! panicking, or held open), releases, cancellations and submissions to an unknown mode gives
//! the answers, jobs, counts and terminal messages the model predicts.

mod support;

use std::collections::HashMap;

use coordinator::{BoxError, JobResult, RequestHandle, SubmitError, SubmitOptions, Task};
use proptest::prelude::*;
use support::{Recorder, started};

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Value(u8),
    Fail,
    Panic,
    /// Runs until released or cancelled.
    Held(u8),
}

#[derive(Clone, Debug)]
enum Op {
    Submit(u8, Behaviour),
    Release(u8),
    Cancel(u8),
    UnknownMode(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let behaviour = prop_oneof![
        any::<u8>().prop_map(Behaviour::Value),
        Just(Behaviour::Fail),
        Just(Behaviour::Panic),
        any::<u8>().prop_map(Behaviour::Held),
    ];
    prop_oneof![
        4 => ((0..4_u8), behaviour).prop_map(|(id, b)| Op::Submit(id, b)),
        2 => (0..4_u8).prop_map(Op::Release),
        1 => (0..4_u8).prop_map(Op::Cancel),
        1 => (0..4_u8).prop_map(Op::UnknownMode),
    ]
}

/// What the caller got, reduced to what the model predicts.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Value(u8),
    Failed,
    Cancelled,
    Duplicate,
    UnknownMode,
}

fn reduce(result: Result<u8, SubmitError>) -> Answer {
    match result {
        Ok(v) => Answer::Value(v),
        Err(e) if e.is_duplicate() => Answer::Duplicate,
        Err(e) if e.is_unknown_mode() => Answer::UnknownMode,
        Err(e) if e.is_cancelled() => Answer::Cancelled,
        Err(e) if e.task_error().is_some() => Answer::Failed,
        Err(e) => panic!("unexpected {e}"),
    }
}

fn result_of(answer: &Answer) -> Option<JobResult> {
    match answer {
        Answer::Value(_) => Some(JobResult::Success),
        Answer::Failed => Some(JobResult::Failure),
        Answer::Cancelled => Some(JobResult::Cancelled),
        Answer::Duplicate | Answer::UnknownMode => None,
    }
}

struct Held {
    value: u8,
    release: tokio::sync::oneshot::Sender<()>,
    handle: RequestHandle<u8>,
}

fn task(id: &str, behaviour: Behaviour) -> (Task<u8>, Option<tokio::sync::oneshot::Sender<()>>) {
    match behaviour {
        Behaviour::Value(v) => (
            Task::from_fn(id.to_string(), "value", move || async move {
                Ok::<_, BoxError>(v)
            }),
            None,
        ),
        Behaviour::Fail => (
            Task::from_fn(id.to_string(), "fail", || async { Err::<u8, _>("no") }),
            None,
        ),
        Behaviour::Panic => (
            Task::from_fn(id.to_string(), "panic", || async {
                if true {
                    panic!("boom");
                }
                Ok::<u8, BoxError>(0)
            }),
            None,
        ),
        Behaviour::Held(v) => {
            let (release, hold) = tokio::sync::oneshot::channel::<()>();
            let task = Task::from_fn(id.to_string(), "held", move || async move {
                hold.await.ok();
                Ok::<_, BoxError>(v)
            });
            (task, Some(release))
        }
    }
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let mut held: HashMap<String, Held> = HashMap::new();
    // The model: the last closed result per id, and how many requests were accepted.
    let mut last: HashMap<String, JobResult> = HashMap::new();
    let mut accepted = 0_u64;
    let mut tally: HashMap<JobResult, u64> = HashMap::new();
    let mut close = |id: &str, answer: &Answer, last: &mut HashMap<String, JobResult>| {
        if let Some(result) = result_of(answer) {
            last.insert(id.to_owned(), result);
            *tally.entry(result).or_default() += 1;
        }
    };
    for op in ops {
        match op {
            Op::Submit(n, behaviour) => {
                let id = format!("r{n}");
                let open = held.contains_key(&id);
                let (task, release) = task(&id, behaviour);
                let spawned = coordinator.spawn(task, "async", SubmitOptions::new()).await;
                match (spawned, release) {
                    (Err(e), _) => {
                        prop_assert!(open, "{id} rejected while not open: {e}");
                        prop_assert_eq!(reduce(Err(e)), Answer::Duplicate);
                    }
                    (Ok(handle), Some(release)) => {
                        prop_assert!(!open);
                        accepted += 1;
                        let Behaviour::Held(value) = behaviour else {
                            unreachable!()
                        };
                        held.insert(
                            id,
                            Held {
                                value,
                                release,
                                handle,
                            },
                        );
                    }
                    (Ok(handle), None) => {
                        prop_assert!(!open);
                        accepted += 1;
                        let answer = reduce(handle.await);
                        let want = match behaviour {
                            Behaviour::Value(v) => Answer::Value(v),
                            _ => Answer::Failed,
                        };
                        prop_assert_eq!(&answer, &want);
                        close(&id, &answer, &mut last);
                    }
                }
            }
            Op::Release(n) => {
                let id = format!("r{n}");
                if let Some(h) = held.remove(&id) {
                    h.release.send(()).ok();
                    let answer = reduce(h.handle.await);
                    prop_assert_eq!(&answer, &Answer::Value(h.value));
                    close(&id, &answer, &mut last);
                }
            }
            Op::Cancel(n) => {
                let id = format!("r{n}");
                let open = held.contains_key(&id);
                prop_assert_eq!(coordinator.cancel(&id), open);
                if let Some(h) = held.remove(&id) {
                    let answer = reduce(h.handle.await);
                    prop_assert_eq!(&answer, &Answer::Cancelled);
                    close(&id, &answer, &mut last);
                }
            }
            Op::UnknownMode(n) => {
                let id = format!("r{n}");
                let before = coordinator.job(&id);
                let (task, _release) = task(&id, Behaviour::Value(0));
                let answer = reduce(coordinator.submit(task, "nowhere").await);
                prop_assert_eq!(answer, Answer::UnknownMode);
                prop_assert_eq!(coordinator.job(&id), before, "nothing recorded");
            }
        }
        // Between operations the open jobs are exactly the held ones.
        prop_assert_eq!(coordinator.counts().open, held.len() as u64);
    }
    for (id, h) in held.drain() {
        h.release.send(()).ok();
        let answer = reduce(h.handle.await);
        close(&id, &answer, &mut last);
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;

    for (id, result) in &last {
        let job = coordinator.job(id).expect("closed jobs are kept");
        prop_assert_eq!(job.result(), Some(*result), "job {}", id);
    }
    let counts = coordinator.counts();
    let of = |r| tally.get(&r).copied().unwrap_or(0);
    prop_assert_eq!(counts.open, 0);
    prop_assert_eq!(counts.closed, accepted);
    prop_assert_eq!(counts.succeeded, of(JobResult::Success));
    prop_assert_eq!(counts.failed, of(JobResult::Failure));
    prop_assert_eq!(counts.cancelled, of(JobResult::Cancelled));
    let terminal: usize = recorder.terminal_counts().values().sum();
    prop_assert_eq!(
        terminal as u64,
        accepted,
        "one terminal message per accepted request"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_coordinator_matches_the_model(ops in proptest::collection::vec(op(), 0..40)) {
        let runtime = support::runtime(2);
        runtime.block_on(check(ops))?;
    }
}
