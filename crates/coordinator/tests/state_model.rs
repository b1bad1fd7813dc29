//! `CoordinatorState` against a plain model: any sequence of opens, attempts and closes, under
//! either retention policy, leaves the same jobs, results, attempts and counts, and every refusal
//! changes nothing. Each open job keeps the attachment it was opened with (or none), however the
//! jobs around it are evicted, and hands it back when it ends.

use std::collections::{HashMap, VecDeque};

use coordinator::{CoordinatorState, JobResult, JobStatus, Retention, TaskInfo};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Open a job running a node (few, so several open jobs share one), with an attachment or
    /// without.
    Add(u8, u8, bool),
    End(u8, JobResult),
    Attempt(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let result = prop_oneof![
        Just(JobResult::Success),
        Just(JobResult::Failure),
        Just(JobResult::TimedOut),
        Just(JobResult::Cancelled),
    ];
    prop_oneof![
        ((0..6_u8), (0..3_u8), any::<bool>())
            .prop_map(|(id, node, attach)| Op::Add(id, node, attach)),
        ((0..6_u8), result).prop_map(|(id, r)| Op::End(id, r)),
        (0..6_u8).prop_map(Op::Attempt),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct ModelJob {
    open: bool,
    result: Option<JobResult>,
    attempts: u32,
    generation: u64,
    /// What the state should hand back for it while open.
    attached: Option<u64>,
    node: String,
}

#[derive(Default)]
struct Model {
    jobs: HashMap<String, ModelJob>,
    closed_order: VecDeque<(String, u64)>,
    keep: Option<usize>,
    generation: u64,
    opened: u64,
    by_result: HashMap<JobResult, u64>,
    evicted: u64,
    replaced: u64,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Ok,
    Duplicate,
    Unknown,
    AlreadyClosed,
}

impl Model {
    fn add(&mut self, id: &str, node: &str, attached: Option<u64>) -> Answer {
        if self.jobs.get(id).is_some_and(|j| j.open) {
            return Answer::Duplicate;
        }
        self.generation += 1;
        self.replaced += u64::from(self.jobs.contains_key(id));
        // A replaced record's closing does not count among the last `keep` closed jobs.
        if let Some(old) = self.jobs.get(id) {
            let old_generation = old.generation;
            self.closed_order
                .retain(|(i, g)| !(i == id && *g == old_generation));
        }
        self.jobs.insert(
            id.to_owned(),
            ModelJob {
                open: true,
                result: None,
                attempts: 1,
                generation: self.generation,
                attached,
                node: node.to_owned(),
            },
        );
        self.opened += 1;
        Answer::Ok
    }

    fn touch(&mut self, id: &str) -> Result<&mut ModelJob, Answer> {
        match self.jobs.get_mut(id) {
            None => Err(Answer::Unknown),
            Some(j) if !j.open => Err(Answer::AlreadyClosed),
            Some(j) => Ok(j),
        }
    }

    fn attempt(&mut self, id: &str) -> Answer {
        match self.touch(id) {
            Ok(j) => {
                j.attempts += 1;
                Answer::Ok
            }
            Err(a) => a,
        }
    }

    /// Ends the job; on success also says what it had attached.
    fn end(&mut self, id: &str, result: JobResult) -> (Answer, Option<u64>) {
        let (generation, attached) = match self.touch(id) {
            Ok(j) => {
                j.open = false;
                j.result = Some(result);
                (j.generation, j.attached.take())
            }
            Err(a) => return (a, None),
        };
        self.opened -= 1;
        *self.by_result.entry(result).or_default() += 1;
        if let Some(keep) = self.keep {
            self.closed_order.push_back((id.to_owned(), generation));
            while self.closed_order.len() > keep.max(1) {
                let (old, old_generation) = self.closed_order.pop_front().unwrap();
                if self
                    .jobs
                    .get(&old)
                    .is_some_and(|j| !j.open && j.generation == old_generation)
                {
                    self.jobs.remove(&old);
                    self.evicted += 1;
                }
            }
        }
        (Answer::Ok, attached)
    }
}

fn answer<T>(result: Result<T, coordinator::StateError>) -> Answer {
    match result {
        Ok(_) => Answer::Ok,
        Err(e) if e.is_duplicate() => Answer::Duplicate,
        Err(e) if e.is_unknown() => Answer::Unknown,
        Err(e) if e.is_already_closed() => Answer::AlreadyClosed,
        Err(e) => panic!("unexpected error {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn state_matches_the_model(
        ops in proptest::collection::vec(op(), 0..80),
        keep in proptest::option::of(0..4_usize),
    ) {
        let retention = keep.map_or(Retention::KeepAll, Retention::KeepLast);
        let mut state = CoordinatorState::<u64>::with_attachments(retention);
        let mut model = Model { keep, ..Model::default() };
        for op in &ops {
            let (got, want) = match op {
                Op::Add(id, node, attach) => {
                    let id = format!("r{id}");
                    let node = format!("n{node}");
                    let info = TaskInfo::new(id.as_str().into(), node.as_str().into(), None, "n");
                    // Distinct for every add tried, refused ones included.
                    let attachment = attach.then_some(ops.len() as u64 * 1000 + model.generation);
                    let got = match attachment {
                        Some(a) => answer(state.add_job_with(&info, a)),
                        None => answer(state.add_job(&info)),
                    };
                    (got, model.add(&id, &node, attachment))
                }
                Op::End(id, result) => {
                    let id = format!("r{id}");
                    let (want, attached) = model.end(&id, *result);
                    let got = match state.end_job_detach(&id, *result) {
                        Ok((_, got_attached)) => {
                            prop_assert_eq!(got_attached, attached, "ending {}", id);
                            Answer::Ok
                        }
                        Err(e) => answer::<()>(Err(e)),
                    };
                    (got, want)
                }
                Op::Attempt(id) => {
                    let id = format!("r{id}");
                    (answer(state.record_attempt(&id)), model.attempt(&id))
                }
            };
            prop_assert_eq!(got, want, "after {:?}", op);
        }
        // The same jobs, in the same state.
        prop_assert_eq!(state.len(), model.jobs.len());
        for (id, expected) in &model.jobs {
            let job = state.get(id).expect("the model's job is in the state");
            prop_assert_eq!(job.status() == JobStatus::Opened, expected.open);
            prop_assert_eq!(job.result(), expected.result);
            prop_assert_eq!(job.attempts(), expected.attempts);
            prop_assert_eq!(job.end_time().is_some(), !expected.open);
            prop_assert_eq!(state.attachment(id), expected.attached.as_ref());
        }
        let attached: HashMap<String, u64> = state
            .attachments()
            .map(|(job, a)| (job.request_id().to_string(), *a))
            .collect();
        let expected: HashMap<String, u64> = model
            .jobs
            .iter()
            .filter_map(|(id, j)| j.attached.map(|a| (id.clone(), a)))
            .collect();
        prop_assert_eq!(attached, expected);
        // By node: one of the open jobs with an attachment running it, or none.
        for node in (0..3).map(|n| format!("n{n}")) {
            let running: Vec<u64> = model
                .jobs
                .values()
                .filter(|j| j.node == node)
                .filter_map(|j| j.attached)
                .collect();
            match state.attachment_of_node(&node) {
                Some(a) => prop_assert!(running.contains(a), "{} -> {} not in {:?}", node, a, running),
                None => prop_assert!(running.is_empty(), "{} has {:?}", node, running),
            }
        }
        // Running totals agree and add up.
        let counts = state.counts();
        let of = |r| model.by_result.get(&r).copied().unwrap_or(0);
        prop_assert_eq!(counts.open, model.opened);
        prop_assert_eq!(counts.succeeded, of(JobResult::Success));
        prop_assert_eq!(counts.failed, of(JobResult::Failure));
        prop_assert_eq!(counts.timed_out, of(JobResult::TimedOut));
        prop_assert_eq!(counts.cancelled, of(JobResult::Cancelled));
        prop_assert_eq!(
            counts.closed,
            counts.succeeded + counts.failed + counts.timed_out + counts.cancelled
        );
        prop_assert_eq!(counts.evicted, model.evicted);
        prop_assert_eq!(counts.replaced, model.replaced);
        // Every job ever opened is in the table, or was evicted or replaced.
        let gone = counts.evicted + counts.replaced;
        prop_assert_eq!(counts.open + counts.closed - gone, state.len() as u64);
        let open_in_table = state.iter().filter(|j| j.status() == JobStatus::Opened).count();
        prop_assert_eq!(open_in_table as u64, counts.open);
        // The open jobs, found without walking the closed ones: each open job once.
        let ids = |jobs: &mut dyn Iterator<Item = &coordinator::Job>| {
            let mut ids: Vec<String> = jobs.map(|j| j.request_id().to_string()).collect();
            ids.sort();
            ids
        };
        let walked = ids(&mut state.iter().filter(|j| j.status() == JobStatus::Opened));
        prop_assert_eq!(ids(&mut state.open_jobs()), walked);
    }
}
