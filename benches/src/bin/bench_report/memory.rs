//! Resident memory per retained closed job.

use std::sync::Arc;

use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, Retention, TaskInfo};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub(crate) struct Memory {
    /// Closed jobs retained in the table.
    pub(crate) jobs: u64,
    /// Growth of resident memory while they were added, per job, read once they all were.
    pub(crate) bytes_per_retained_job: f64,
    /// Growth of the process's peak resident memory, per job: with the moments the table grew
    /// (its old and new storage both resident), which the reading after does not see.
    pub(crate) peak_bytes_per_retained_job: f64,
    /// Resident memory with a bounded retention policy across many more tasks.
    pub(crate) bounded_retention: Option<serde_json::Value>,
}

/// This process's resident memory, in bytes.
#[derive(Clone, Copy, Debug)]
struct Resident {
    now: u64,
    /// The most it has been since the process started.
    peak: u64,
}

/// Reads [`Resident`] from `/proc/self/status`; `None` where there is no such file (not Linux)
/// or it lacks the fields.
fn resident() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(Resident {
        now: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
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
/// closing every job, and measures how much resident memory it took, after and at its peak.
/// `None` where resident memory cannot be read.
pub(crate) fn retained(jobs: u64) -> Option<Memory> {
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    let before = resident()?;
    let mut state = CoordinatorState::with_attachments(Retention::KeepAll);
    for i in 0..jobs {
        run_one(&mut state, i, &parent, &record);
    }
    let after = resident()?;
    std::hint::black_box(state.len());
    let per_job = |bytes: u64| bytes.saturating_sub(before.now) as f64 / jobs as f64;
    Some(Memory {
        jobs,
        bytes_per_retained_job: per_job(after.now),
        peak_bytes_per_retained_job: per_job(after.peak),
        bounded_retention: None,
    })
}

/// Closed jobs kept by the bounded retention policy measured.
pub(crate) const KEEP_LAST: usize = 10_000;

/// Runs `total` tasks through a job table that keeps the last [`KEEP_LAST`] closed jobs, and
/// records resident memory after `checkpoint` tasks and after all of them: with bounded
/// retention the two should match.
pub(crate) fn bounded(checkpoint: u64, total: u64) -> Option<serde_json::Value> {
    let rss = || resident().map(|r| r.now);
    let (parent, record) = (NodeId::generate(), Arc::new(()));
    let before = rss()?;
    let mut state = CoordinatorState::with_attachments(Retention::KeepLast(KEEP_LAST));
    let mut at_checkpoint = 0;
    for i in 0..total {
        if i == checkpoint {
            at_checkpoint = rss()?;
        }
        run_one(&mut state, i, &parent, &record);
    }
    let at_end = rss()?;
    std::hint::black_box(state.len());
    let grown = |rss: u64| rss.saturating_sub(before);
    Some(serde_json::json!({
        "keep_last": KEEP_LAST,
        "retained": state.len(),
        "tasks_at_checkpoint": checkpoint,
        "rss_growth_bytes_at_checkpoint": grown(at_checkpoint),
        "tasks_total": total,
        "rss_growth_bytes_at_end": grown(at_end),
        "growth_ratio": grown(at_end) as f64 / grown(at_checkpoint).max(1) as f64,
        "evicted": state.counts().evicted,
    }))
}

/// The flag that makes this binary measure memory and print it as JSON.
pub(crate) const CHILD_FLAG: &str = "--measure-retained-jobs";

/// The flag that makes this binary measure bounded retention and print it as JSON.
pub(crate) const BOUNDED_FLAG: &str = "--measure-bounded-retention";

/// [`bounded`] in a fresh copy of this process.
pub(crate) fn bounded_in_child(checkpoint: u64, total: u64) -> Option<serde_json::Value> {
    crate::measure_in_child::<Option<serde_json::Value>>(&[
        BOUNDED_FLAG,
        &checkpoint.to_string(),
        &total.to_string(),
    ])
    .ok()
    .flatten()
}

/// Measures in a fresh copy of this process, so memory freed by earlier scenarios cannot be
/// reused and hide the table's growth. `None`, saying why on stderr, where it could not.
pub(crate) fn retained_in_child(jobs: u64) -> Option<Memory> {
    let measured = crate::measure_in_child::<Option<Memory>>(&[CHILD_FLAG, &jobs.to_string()]);
    match measured {
        Ok(Some(memory)) => Some(memory),
        Ok(None) => {
            eprintln!(
                "memory: resident memory cannot be read here (no /proc/self/status); not measured"
            );
            None
        }
        Err(why) => {
            eprintln!("memory: the measuring child failed: {why}");
            None
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_with_its_peak() {
        let first = resident().expect("Linux has /proc/self/status");
        assert!(first.now > 0);
        assert!(first.peak >= first.now);
        // Touch 64 MiB: the current and the peak reading both see it.
        let block = vec![1_u8; 64 << 20];
        let touched = resident().expect("readable");
        std::hint::black_box(&block);
        assert!(
            touched.now >= first.now + (32 << 20),
            "{touched:?} after {first:?}"
        );
        assert!(touched.peak >= touched.now);
        drop(block);
        let after = resident().expect("readable");
        // The kernel's peak comes from counters it sums lazily: it can trail the reading taken
        // while the block was held by a few hundred KiB, never by the block.
        assert!(
            after.peak >= first.now + (32 << 20),
            "the peak remembers the block: {after:?} after {touched:?}"
        );
    }
}
