//! Resident memory per retained closed job.

use std::sync::Arc;

use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, Retention, TaskInfo};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub(crate) struct Memory {
    /// Closed jobs retained in the table.
    pub(crate) jobs: u64,
    /// Growth of resident memory while they were added, per job.
    pub(crate) bytes_per_retained_job: f64,
    /// Resident memory with a bounded retention policy across many more tasks.
    pub(crate) bounded_retention: Option<serde_json::Value>,
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// What a coordinator attaches to each open job, by size: its `OpenRequest` is a reference to
/// the request's shared record and a mode index (a coordinator unit test checks the sizes
/// match). The table keeps a slot of this size beside every job, closed ones included.
type Attachment = (Arc<()>, usize);

/// Opens and closes job `i` the way a coordinator does (a generated node id, a parent, a
/// static name, an attachment while it is open).
fn run_one(state: &mut CoordinatorState<Attachment>, i: u64, parent: &NodeId, record: &Arc<()>) {
    let info = TaskInfo::new(
        RequestId::from(format!("request-{i}")),
        NodeId::generate(),
        Some(parent.clone()),
        "node",
    );
    let id = info.request_id().clone();
    state
        .add_job_with(&info, (Arc::clone(record), 0))
        .expect("fresh id");
    state.end_job(&id, JobResult::Success).expect("open job");
}

/// Fills a job table the way a coordinator does (generated node ids, a parent, a static name),
/// closing every job, and measures how much resident memory it took.
pub(crate) fn retained(jobs: u64) -> Memory {
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    let before = rss();
    let mut state = CoordinatorState::with_attachments(Retention::KeepAll);
    for i in 0..jobs {
        run_one(&mut state, i, &parent, &record);
    }
    let after = rss();
    let memory = Memory {
        jobs,
        bytes_per_retained_job: after.saturating_sub(before) as f64 / jobs as f64,
        bounded_retention: None,
    };
    std::hint::black_box(state.len());
    memory
}

/// Closed jobs kept by the bounded retention policy measured.
pub(crate) const KEEP_LAST: usize = 10_000;

/// Runs `total` tasks through a job table that keeps the last [`KEEP_LAST`] closed jobs, and
/// records resident memory after `checkpoint` tasks and after all of them: with bounded
/// retention the two should match.
pub(crate) fn bounded(checkpoint: u64, total: u64) -> serde_json::Value {
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    let before = rss();
    let mut state = CoordinatorState::with_attachments(Retention::KeepLast(KEEP_LAST));
    let mut at_checkpoint = 0;
    for i in 0..total {
        if i == checkpoint {
            at_checkpoint = rss();
        }
        run_one(&mut state, i, &parent, &record);
    }
    let at_end = rss();
    std::hint::black_box(state.len());
    let grown = |rss: u64| rss.saturating_sub(before);
    serde_json::json!({
        "keep_last": KEEP_LAST,
        "retained": state.len(),
        "tasks_at_checkpoint": checkpoint,
        "rss_growth_bytes_at_checkpoint": grown(at_checkpoint),
        "tasks_total": total,
        "rss_growth_bytes_at_end": grown(at_end),
        "growth_ratio": grown(at_end) as f64 / grown(at_checkpoint).max(1) as f64,
        "evicted": state.counts().evicted,
    })
}

/// The flag that makes this binary measure memory and print it as JSON.
pub(crate) const CHILD_FLAG: &str = "--measure-retained-jobs";

/// The flag that makes this binary measure bounded retention and print it as JSON.
pub(crate) const BOUNDED_FLAG: &str = "--measure-bounded-retention";

/// [`bounded`] in a fresh copy of this process.
pub(crate) fn bounded_in_child(checkpoint: u64, total: u64) -> Option<serde_json::Value> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .args([BOUNDED_FLAG, &checkpoint.to_string(), &total.to_string()])
        .output()
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

/// Measures in a fresh copy of this process, so memory freed by earlier scenarios cannot be
/// reused and hide the table's growth.
pub(crate) fn retained_in_child(jobs: u64) -> Memory {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([CHILD_FLAG, &jobs.to_string()])
        .output()
        .expect("memory child");
    serde_json::from_slice(&output.stdout).expect("the child prints the measurement as JSON")
}
