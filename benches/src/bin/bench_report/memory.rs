//! Resident memory per retained closed job, and with bounded retention across many tasks, each
//! measured in a fresh copy of this process, where no memory freed by earlier scenarios can be
//! reused and hide the table's growth.

use std::sync::Arc;

use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, Retention, TaskInfo};
use serde::{Deserialize, Serialize};

/// The flag of the measuring child: `--memory-child retained JOBS` or
/// `--memory-child bounded CHECKPOINT TOTAL`; it prints what it measured as JSON.
pub(crate) const CHILD_FLAG: &str = "--memory-child";

/// Closed jobs kept by the bounded retention policy measured.
const KEEP_LAST: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Memory {
    pub(crate) jobs: u64,
    /// Growth of resident memory per job, read once all were added, and of the peak (which also
    /// counts the moments the table grew, its old and new storage both resident).
    pub(crate) bytes_per_retained_job: f64,
    pub(crate) peak_bytes_per_retained_job: f64,
    pub(crate) bounded_retention: Option<Bounded>,
}

/// Resident memory of a table keeping the last [`KEEP_LAST`] closed jobs, after a checkpoint and
/// after many more tasks: the two should match.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bounded {
    pub(crate) keep_last: usize,
    pub(crate) tasks_at_checkpoint: u64,
    pub(crate) tasks_total: u64,
    pub(crate) rss_growth_bytes_at_checkpoint: u64,
    pub(crate) rss_growth_bytes_at_end: u64,
    pub(crate) growth_ratio: f64,
}

/// This process's resident memory and the most it has been (`VmRSS`, `VmHWM`), in bytes, from
/// `/proc/self/status` (Linux).
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status");
    let status = status.expect("resident memory is read from /proc/self/status");
    let field = |name: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(name));
        let kib = line.and_then(|line| line.split_whitespace().next()?.parse::<u64>().ok());
        kib.expect("a VmRSS and a VmHWM line") * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What a coordinator attaches to each job, by size: a reference to the request's record and a
/// mode index. The table keeps a slot of this size beside every job, closed ones included.
type Slot = (Arc<()>, usize);

/// Runs `tasks` jobs through a table with `retention` the way a coordinator does (a generated
/// node id, a parent, a static name, a [`Slot`]), calling `at(i)` before the `i`-th; gives the
/// table back.
fn run(retention: Retention, tasks: u64, mut at: impl FnMut(u64)) -> CoordinatorState<Slot> {
    let mut state = CoordinatorState::with_attachments(retention);
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    for i in 0..tasks {
        at(i);
        let request = RequestId::from(format!("request-{i}"));
        let (node, parent) = (NodeId::generate(), Some(parent.clone()));
        let info = TaskInfo::new(request.clone(), node, parent, "node");
        let slot = (Arc::clone(&record), 0);
        state.add_job_with(&info, slot).expect("fresh id");
        state.end_job(&request, JobResult::Success).expect("open");
    }
    state
}

/// Fills a table that keeps every closed job with `jobs` of them: the child's side.
pub(crate) fn retained(jobs: u64) -> Memory {
    let (before, _) = resident();
    let state = run(Retention::KeepAll, jobs, |_| {});
    let (now, peak) = resident();
    std::hint::black_box(state.len());
    let per_job = |bytes: u64| bytes.saturating_sub(before) as f64 / jobs as f64;
    Memory {
        jobs,
        bytes_per_retained_job: per_job(now),
        peak_bytes_per_retained_job: per_job(peak),
        bounded_retention: None,
    }
}

/// Runs `total` tasks through a table that keeps the last [`KEEP_LAST`] closed jobs, reading
/// resident memory after `checkpoint` tasks and after all of them: the child's side.
pub(crate) fn bounded(checkpoint: u64, total: u64) -> Bounded {
    let (before, _) = resident();
    let mut at_checkpoint = before;
    let state = run(Retention::KeepLast(KEEP_LAST), total, |i| {
        if i == checkpoint {
            at_checkpoint = resident().0;
        }
    });
    let grown = at_checkpoint.saturating_sub(before);
    let end = resident().0.saturating_sub(before);
    std::hint::black_box(state.len());
    Bounded {
        keep_last: KEEP_LAST,
        tasks_at_checkpoint: checkpoint,
        tasks_total: total,
        rss_growth_bytes_at_checkpoint: grown,
        rss_growth_bytes_at_end: end,
        growth_ratio: end as f64 / grown.max(1) as f64,
    }
}

/// Both measurements, each in a fresh child; `None`, saying why on stderr, where they failed.
pub(crate) fn measure(jobs: u64, checkpoint: u64, total: u64) -> Option<Memory> {
    eprintln!("memory: {jobs} retained jobs, then {total} tasks keeping the last {KEEP_LAST} ...");
    let retained = [CHILD_FLAG, "retained", &jobs.to_string()];
    let mut memory: Memory = crate::measure_in_child("memory", &retained)?;
    let bounded = [
        CHILD_FLAG,
        "bounded",
        &checkpoint.to_string(),
        &total.to_string(),
    ];
    memory.bounded_retention = crate::measure_in_child("bounded retention", &bounded);
    Some(memory)
}
