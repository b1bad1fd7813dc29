//! Resident memory per retained closed job, and with bounded retention across many tasks, each
//! measured in a fresh copy of this process, where no memory freed by earlier scenarios can be
//! reused and hide the table's growth.

use std::sync::Arc;

use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, Retention, TaskInfo};
use serde::Serialize;

/// The flag of the measuring child: `--memory-child KEEP_LAST CHECKPOINT TASKS`; it prints what
/// it measured as JSON.
pub(crate) const CHILD_FLAG: &str = "--memory-child";

/// Closed jobs kept by the bounded retention policy measured.
const KEEP_LAST: usize = 10_000;

#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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

/// The child's side: runs `tasks` jobs through a table keeping the last `keep_last` closed jobs
/// (every one when 0) the way a coordinator does (a generated node id, a parent, a static name,
/// and beside each job a slot the size of a coordinator's: a reference to the request's record
/// and a mode index). Says how much resident memory grew by the `checkpoint`-th job, by the end,
/// and at its peak.
pub(crate) fn child(keep_last: usize, checkpoint: u64, tasks: u64) -> [u64; 3] {
    let retention = match keep_last {
        0 => Retention::KeepAll,
        keep => Retention::KeepLast(keep),
    };
    let (before, _) = resident();
    let mut at_checkpoint = before;
    let mut state = CoordinatorState::<(Arc<()>, usize)>::with_attachments(retention);
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    for i in 0..tasks {
        if i == checkpoint {
            at_checkpoint = resident().0;
        }
        let request = RequestId::from(format!("request-{i}"));
        let (node, parent) = (NodeId::generate(), Some(parent.clone()));
        let info = TaskInfo::new(request.clone(), node, parent, "node");
        state
            .add_job_with(&info, (Arc::clone(&record), 0))
            .expect("fresh id");
        state.end_job(&request, JobResult::Success).expect("open");
    }
    let (end, peak) = resident();
    std::hint::black_box(state.len());
    [at_checkpoint, end, peak].map(|bytes| bytes.saturating_sub(before))
}

/// Both measurements, each in a fresh child; `None`, saying why on stderr, where they failed.
pub(crate) fn measure(jobs: u64, checkpoint: u64, total: u64) -> Option<Memory> {
    eprintln!("memory: {jobs} retained jobs, then {total} tasks keeping the last {KEEP_LAST} ...");
    let child = |what, keep_last: usize, checkpoint, tasks| {
        let counts = [keep_last as u64, checkpoint, tasks];
        crate::measure_in_child::<[u64; 3]>(what, CHILD_FLAG, &counts)
    };
    let [_, now, peak] = child("memory", 0, jobs, jobs)?;
    let bounded = child("bounded retention", KEEP_LAST, checkpoint, total);
    let bounded = bounded.map(|[grown, end, _]| Bounded {
        keep_last: KEEP_LAST,
        tasks_at_checkpoint: checkpoint,
        tasks_total: total,
        rss_growth_bytes_at_checkpoint: grown,
        rss_growth_bytes_at_end: end,
        growth_ratio: end as f64 / grown.max(1) as f64,
    });
    Some(Memory {
        jobs,
        bytes_per_retained_job: now as f64 / jobs as f64,
        peak_bytes_per_retained_job: peak as f64 / jobs as f64,
        bounded_retention: bounded,
    })
}
