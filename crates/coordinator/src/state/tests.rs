//! The job table's unit tests.

use super::*;
use task_core::{NodeId, TaskInfo};

fn info(id: &str) -> TaskInfo {
    TaskInfo::new(id.into(), NodeId::generate(), Some("parent".into()), "n")
}

#[test]
fn add_then_end_closes_with_result_and_times() {
    let mut state = CoordinatorState::empty();
    let task = info("a");
    let job = state.add_job(&task).unwrap();
    assert_eq!(job.status(), JobStatus::Opened);
    assert_eq!(job.parent_node_id().map(|p| p.as_str()), Some("parent"));
    assert_eq!(job.child_node_id(), task.node_id());
    assert!(job.end_time().is_none());
    let job = state.end_job("a", JobResult::Failure).unwrap();
    assert_eq!(job.result(), Some(JobResult::Failure));
    assert!(job.end_time().unwrap() >= job.start_time());
    assert_eq!(
        state.counts(),
        JobCounts {
            open: 0,
            closed: 1,
            succeeded: 0,
            failed: 1,
            ..JobCounts::default()
        }
    );
}

#[test]
fn duplicate_open_is_refused_and_changes_nothing() {
    let mut state = CoordinatorState::empty();
    let first = info("a");
    state.add_job(&first).unwrap();
    let err = state.add_job(&info("a")).unwrap_err();
    assert!(err.is_duplicate());
    assert_eq!(err.request_id().as_str(), "a");
    assert_eq!(state.len(), 1);
    assert_eq!(state.get("a").unwrap().child_node_id(), first.node_id());
    assert_eq!(state.counts().open, 1);
}

#[test]
fn unknown_and_closed_ids_are_refused() {
    let mut state = CoordinatorState::empty();
    assert!(
        state
            .end_job("nope", JobResult::Success)
            .unwrap_err()
            .is_unknown()
    );
    state.add_job(&info("a")).unwrap();
    state.end_job("a", JobResult::Success).unwrap();
    let err = state.end_job("a", JobResult::Failure).unwrap_err();
    assert!(err.is_already_closed());
    assert_eq!(state.get("a").unwrap().result(), Some(JobResult::Success));
    assert_eq!(state.counts().failed, 0);
}

#[test]
fn closed_ids_can_be_reused() {
    let mut state = CoordinatorState::empty();
    state.add_job(&info("a")).unwrap();
    state.end_job("a", JobResult::Success).unwrap();
    state.add_job(&info("a")).unwrap();
    assert!(state.is_open("a"));
    assert_eq!(state.len(), 1);
    assert_eq!(
        state.counts(),
        JobCounts {
            open: 1,
            closed: 1,
            succeeded: 1,
            failed: 0,
            replaced: 1,
            ..JobCounts::default()
        }
    );
}

#[test]
fn keep_last_evicts_the_oldest_closed_jobs_only() {
    let mut state = CoordinatorState::with_retention(Retention::KeepLast(2));
    state.add_job(&info("open")).unwrap();
    for id in ["a", "b", "c", "d"] {
        state.add_job(&info(id)).unwrap();
        state.end_job(id, JobResult::Success).unwrap();
    }
    // The open job stays whatever its age; of the closed ones the last two stay.
    assert!(state.is_open("open"));
    assert!(state.get("a").is_none() && state.get("b").is_none());
    assert!(state.get("c").is_some() && state.get("d").is_some());
    assert_eq!(state.len(), 3);
    let counts = state.counts();
    assert_eq!((counts.closed, counts.succeeded, counts.evicted), (4, 4, 2));
    state.end_job("open", JobResult::Cancelled).unwrap();
    assert_eq!(state.counts().cancelled, 1);
    assert!(state.get("open").is_some() && state.get("c").is_none());
}

#[test]
fn a_reopened_id_is_not_evicted_by_its_old_record() {
    let mut state = CoordinatorState::with_retention(Retention::KeepLast(1));
    state.add_job(&info("a")).unwrap();
    state.end_job("a", JobResult::Failure).unwrap();
    // "a" is reopened; its old closing entry must not drop the new record.
    state.add_job(&info("a")).unwrap();
    state.add_job(&info("b")).unwrap();
    state.end_job("b", JobResult::Success).unwrap();
    assert!(state.is_open("a"));
    state.end_job("a", JobResult::TimedOut).unwrap();
    assert_eq!(state.get("a").unwrap().result(), Some(JobResult::TimedOut));
    assert!(state.get("b").is_none());
    let counts = state.counts();
    assert_eq!((counts.evicted, counts.replaced), (1, 1));
    assert_eq!(
        counts.open + counts.closed - counts.evicted - counts.replaced,
        1
    );
    assert_eq!(state.len(), 1);
}

/// Reusing ids keeps the last `n` closed jobs, however often: a replaced record's closing
/// takes no place among them, and the queue of closings does not grow with the reuses.
#[test]
fn keep_last_keeps_n_jobs_when_ids_are_reused() {
    let mut state = CoordinatorState::with_retention(Retention::KeepLast(3));
    for id in ["a", "b", "c", "c", "c"] {
        state.add_job(&info(id)).unwrap();
        state.end_job(id, JobResult::Success).unwrap();
    }
    let kept = ["a", "b", "c"].map(|id| state.get(id).is_some());
    assert_eq!(kept, [true; 3]);
    let counts = state.counts();
    assert_eq!((counts.evicted, counts.replaced, state.len()), (0, 2, 3));
    for _ in 0..10_000 {
        state.add_job(&info("d")).unwrap();
        state.end_job("d", JobResult::Success).unwrap();
    }
    let kept = ["a", "b", "c", "d"].map(|id| state.get(id).is_some());
    assert_eq!(kept, [false, true, true, true]);
    assert!(
        state.closed.len() <= 8,
        "{} closings queued",
        state.closed.len()
    );
}

#[test]
fn attempts_are_counted_on_open_jobs() {
    let mut state = CoordinatorState::empty();
    state.add_job(&info("a")).unwrap();
    assert_eq!(state.get("a").unwrap().attempts(), 1);
    state.record_attempt("a").unwrap();
    state.end_job("a", JobResult::Success).unwrap();
    assert_eq!(state.get("a").unwrap().attempts(), 2);
    assert!(state.record_attempt("a").unwrap_err().is_already_closed());
    assert!(state.record_attempt("zz").unwrap_err().is_unknown());
    let json = serde_json::to_value(state.get("a").unwrap()).unwrap();
    assert_eq!(json["attempts"], 2);
}

#[test]
fn outcomes_map_to_results() {
    use task_core::{TaskError, Value};
    assert_eq!(JobResult::of(&Ok(Value::new(1))), JobResult::Success);
    assert_eq!(
        JobResult::of(&Err(TaskError::timed_out("t"))),
        JobResult::TimedOut
    );
    assert_eq!(
        JobResult::of(&Err(TaskError::cancelled("c"))),
        JobResult::Cancelled
    );
    assert_eq!(
        JobResult::of(&Err(TaskError::strategy("s"))),
        JobResult::Failure
    );
    for r in [JobResult::TimedOut, JobResult::Cancelled] {
        assert_eq!(r.as_str().parse::<JobResult>().unwrap(), r);
    }
}

#[test]
fn result_parses_from_the_seed_strings() {
    assert_eq!("success".parse::<JobResult>().unwrap(), JobResult::Success);
    assert_eq!("failure".parse::<JobResult>().unwrap(), JobResult::Failure);
    assert!("done".parse::<JobResult>().is_err());
}

#[test]
fn state_serializes_jobs_and_counts() {
    let mut state = CoordinatorState::empty();
    state.add_job(&info("a")).unwrap();
    state.add_job(&info("b")).unwrap();
    state.end_job("a", JobResult::Success).unwrap();
    let json = serde_json::to_value(&state).unwrap();
    assert_eq!(json["counts"]["open"], 1);
    assert_eq!(json["counts"]["succeeded"], 1);
    assert_eq!(json["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(json["jobs"][0]["request_id"], "a");
    assert_eq!(json["jobs"][0]["status"], "closed");
    assert_eq!(json["jobs"][0]["result"], "success");
    assert!(json["jobs"][0]["start_time"].as_f64().unwrap() > 1.6e9);
    assert!(json["jobs"][1]["end_time"].is_null());
    let job: Job = serde_json::from_value(json["jobs"][0].clone()).unwrap();
    let original = state.get("a").unwrap();
    assert_eq!(job.request_id(), original.request_id());
    let drift = job
        .start_time()
        .duration_since(original.start_time())
        .unwrap_or_else(|e| e.duration());
    assert!(drift < std::time::Duration::from_millis(1));
}

/// A job is equal to itself read back from JSON wherever it sits in its table: the record's
/// sequence number, which JSON does not carry, is not part of what a job says.
#[test]
fn jobs_read_back_from_json_equal_the_jobs_written() {
    let mut state = CoordinatorState::empty();
    for id in ["first", "second", "third"] {
        state.add_job(&info(id)).unwrap();
    }
    state.end_job("first", JobResult::Success).unwrap();
    state
        .fail_job("second", TaskError::node("disk full".into()))
        .unwrap();
    for id in ["first", "second", "third"] {
        let job = state.get(id).unwrap();
        let back: Job = serde_json::from_value(serde_json::to_value(job).unwrap()).unwrap();
        assert_eq!(&back, job, "{id}");
    }
}

#[test]
fn a_failed_job_keeps_its_error_and_serializes_it() {
    let mut state = CoordinatorState::empty();
    for id in ["ok", "bad", "late"] {
        state
            .add_job(&TaskInfo::new(id.into(), id.into(), None, "node"))
            .unwrap();
    }
    state.end_job("ok", JobResult::Success).unwrap();
    let (job, _) = state
        .fail_job("bad", TaskError::node("disk full".into()))
        .unwrap();
    assert_eq!(job.result(), Some(JobResult::Failure));
    assert_eq!(job.error().map(TaskError::message), Some("disk full"));
    let (job, _) = state
        .fail_job("late", TaskError::timed_out("too slow"))
        .unwrap();
    assert_eq!(job.result(), Some(JobResult::TimedOut));
    assert!(state.get("ok").unwrap().error().is_none());
    assert_eq!(state.counts().failed, 1);
    assert_eq!(state.counts().timed_out, 1);
    // Already closed: refused, the first error kept.
    let again = state.fail_job("bad", TaskError::node("other".into()));
    assert!(again.unwrap_err().is_already_closed());
    assert_eq!(
        state.get("bad").unwrap().error().map(TaskError::message),
        Some("disk full")
    );
    let json = serde_json::to_value(state.get("bad").unwrap()).unwrap();
    assert_eq!(json["error"]["message"], "disk full");
    let back: Job = serde_json::from_value(json).unwrap();
    assert_eq!(back.error(), state.get("bad").unwrap().error());
    assert!(back.error().unwrap().is_node_error());
    let ok = serde_json::to_value(state.get("ok").unwrap()).unwrap();
    assert!(ok.get("error").is_none(), "{ok}");
}

/// Open jobs that share a node id (`Task::with_node_id`) cost O(1) each to open, find by node
/// and close, however many of them are open: the node index compares a bounded number of its
/// entries per operation (counted, not timed).
#[test]
fn open_jobs_sharing_a_node_id_cost_o1_each() {
    let n = 2_000_u32;
    let mut state = CoordinatorState::<u32>::with_attachments(Retention::KeepLast(10));
    let node = NodeId::new("shared");
    let info = |i: u32| TaskInfo::new(i.to_string().into(), node.clone(), None, "n");
    table::reset_node_probes();
    for i in 0..n {
        state.add_job_with(&info(i), i).unwrap();
        assert!(state.attachment_of_node("shared").is_some());
    }
    let opening = table::node_probes();
    // Closed in an order unlike the opening's, evictions moving open jobs as they go.
    for i in (0..n).rev().step_by(2).chain((0..n).step_by(2)) {
        let (_, attached) = state
            .end_job_detach(&i.to_string(), JobResult::Success)
            .unwrap();
        assert_eq!(attached, Some(i));
    }
    let closing = table::node_probes() - opening;
    assert!(state.attachment_of_node("shared").is_none());
    assert_eq!(state.open_jobs().count(), 0);
    assert!(
        opening <= 8 * u64::from(n) && closing <= 8 * u64::from(n),
        "{opening} node-index comparisons to open {n} jobs of one node, {closing} to close them"
    );
}

#[test]
fn a_default_state_with_attachments_keeps_every_job() {
    let mut state: CoordinatorState<&str> = CoordinatorState::default();
    assert_eq!(state.retention(), Retention::KeepAll);
    state.add_job_with(&info("a"), "slot").unwrap();
    assert_eq!(state.attachment("a"), Some(&"slot"));
}
