//! Resident memory per retained closed job.

use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, TaskInfo};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub(crate) struct Memory {
    /// Closed jobs retained in the table.
    pub(crate) jobs: u64,
    /// Growth of resident memory while they were added, per job.
    pub(crate) bytes_per_retained_job: f64,
    /// The same with a bounded retention policy across many more tasks; `None` until the state
    /// has a retention policy.
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

/// Fills a job table the way a coordinator does (generated node ids, a parent, a static name),
/// closing every job, and measures how much resident memory it took.
pub(crate) fn retained(jobs: u64) -> Memory {
    let parent = NodeId::generate();
    let before = rss();
    let mut state = CoordinatorState::empty();
    for i in 0..jobs {
        let info = TaskInfo::new(
            RequestId::from(format!("request-{i}")),
            NodeId::generate(),
            Some(parent.clone()),
            "node",
        );
        let id = info.request_id().clone();
        state.add_job(&info).expect("fresh id");
        state.end_job(&id, JobResult::Success).expect("open job");
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

/// The flag that makes this binary measure memory and print it as JSON.
pub(crate) const CHILD_FLAG: &str = "--measure-retained-jobs";

/// Measures in a fresh copy of this process, so memory freed by earlier scenarios cannot be
/// reused and hide the table's growth.
pub(crate) fn retained_in_child(jobs: u64) -> Memory {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([CHILD_FLAG, &jobs.to_string()])
        .output()
        .expect("memory child");
    serde_json::from_slice(&output.stdout).expect("the child prints the measurement as JSON")
}
