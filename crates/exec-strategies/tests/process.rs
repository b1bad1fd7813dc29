//! The process strategy against real worker processes. This test binary is its own worker: its
//! `main` enters worker mode first thing, as a user's program does. With `--fake-worker MODE` it
//! instead plays a worker that breaks the protocol (with `--fake-worker MODE MARKER`, only once
//! the file MARKER exists: a pool's first worker serves, its replacement misbehaves), and with
//! `--orphan-parent` a parent that is about to be killed.

use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use exec_strategies::process::wire::{self, FromWorker, PROTOCOL_VERSION, ToWorker};
use exec_strategies::{ProcessExecutionStrategy, run_worker_if_requested};
use serde::{Deserialize, Serialize};
use task_core::{BoxError, Node, NodeRegistry, PortableNode, Task, TaskExecutionStrategy};

mod support;
use support::Probe;

#[derive(Serialize, Deserialize)]
struct Echo(u64);
impl Node for Echo {
    type Output = u64;
    async fn invoke(self) -> Result<u64, BoxError> {
        Ok(self.0)
    }
}
impl PortableNode for Echo {
    const NAME: &'static str = "echo";
}

#[derive(Serialize, Deserialize)]
struct Fail(String);
impl Node for Fail {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Err(self.0.into())
    }
}
impl PortableNode for Fail {
    const NAME: &'static str = "fail";
}

#[derive(Serialize, Deserialize)]
struct Panic(String);
impl Node for Panic {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        panic!("{}", self.0)
    }
}
impl PortableNode for Panic {
    const NAME: &'static str = "panic";
}

#[derive(Serialize, Deserialize)]
struct Sleep(u64);
impl Node for Sleep {
    type Output = u32;
    async fn invoke(self) -> Result<u32, BoxError> {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        Ok(std::process::id())
    }
}
impl PortableNode for Sleep {
    const NAME: &'static str = "sleep";
}

#[derive(Serialize, Deserialize)]
struct Exit(i32);
impl Node for Exit {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::process::exit(self.0)
    }
}
impl PortableNode for Exit {
    const NAME: &'static str = "exit";
}

/// Blocks its thread for `ms` milliseconds without ever waiting: a CPU loop that nothing but
/// killing its process interrupts.
#[derive(Serialize, Deserialize)]
struct Spin(u64);
impl Node for Spin {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::thread::sleep(Duration::from_millis(self.0));
        Ok(())
    }
}
impl PortableNode for Spin {
    const NAME: &'static str = "spin";
}

/// Sleeps `ms` milliseconds, then exits the worker with status 7.
#[derive(Serialize, Deserialize)]
struct ExitLater(u64);
impl Node for ExitLater {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        std::process::exit(7)
    }
}
impl PortableNode for ExitLater {
    const NAME: &'static str = "exit-later";
}

/// Starts a process that outlives it (`sleep 30`, its output to nowhere), then exits the worker
/// with status 3.
#[derive(Serialize, Deserialize)]
struct OrphanThenExit;
impl Node for OrphanThenExit {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::process::Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        std::process::exit(3)
    }
}
impl PortableNode for OrphanThenExit {
    const NAME: &'static str = "orphan-then-exit";
}

/// A node whose decoding aborts the process (a crash in user `Deserialize` code).
struct AbortOnDecode;
impl Serialize for AbortOnDecode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}
impl<'de> Deserialize<'de> for AbortOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        std::process::abort()
    }
}
impl Node for AbortOnDecode {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}
impl PortableNode for AbortOnDecode {
    const NAME: &'static str = "abort-on-decode";
}

/// Reads its stdin to the end and returns how many bytes it got.
#[derive(Serialize, Deserialize)]
struct ReadStdin;
impl Node for ReadStdin {
    type Output = usize;
    async fn invoke(self) -> Result<usize, BoxError> {
        let mut all = Vec::new();
        std::io::stdin().read_to_end(&mut all)?;
        Ok(all.len())
    }
}
impl PortableNode for ReadStdin {
    const NAME: &'static str = "read-stdin";
}

/// How many runs of [`Overlap`] are running in this worker process.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits a moment and returns how many runs of it ran in its process at once (itself included).
#[derive(Serialize, Deserialize)]
struct Overlap;
impl Node for Overlap {
    type Output = usize;
    async fn invoke(self) -> Result<usize, BoxError> {
        use std::sync::atomic::Ordering;
        let mut most = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            most = most.max(RUNNING.load(Ordering::SeqCst));
        }
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(most)
    }
}
impl PortableNode for Overlap {
    const NAME: &'static str = "overlap";
}

/// Returns its input; given exactly `[1, 2, 3]`, first prints a line to stdout (which must not
/// reach the protocol: it goes to the parent's stderr).
#[derive(Serialize, Deserialize)]
struct Blob(Vec<u8>);
impl Node for Blob {
    type Output = Vec<u8>;
    async fn invoke(self) -> Result<Vec<u8>, BoxError> {
        if self.0 == [1, 2, 3] {
            println!("(expected) a worker's stdout line, forwarded to the test's stderr");
        }
        Ok(self.0)
    }
}
impl PortableNode for Blob {
    const NAME: &'static str = "blob";
}

/// Returns `n` bytes: an output far larger than its input.
#[derive(Serialize, Deserialize)]
struct Grow(usize);
impl Node for Grow {
    type Output = Vec<u8>;
    async fn invoke(self) -> Result<Vec<u8>, BoxError> {
        Ok(vec![1; self.0])
    }
}
impl PortableNode for Grow {
    const NAME: &'static str = "grow";
}

/// Adds a line to the file at its path: says whether, and how often, it ran.
#[derive(Serialize, Deserialize)]
struct Touch(std::path::PathBuf);
impl Node for Touch {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.0)?;
        file.write_all(b"ran\n")?;
        Ok(())
    }
}
impl PortableNode for Touch {
    const NAME: &'static str = "touch";
}

/// Runs until the file at `path` exists (at most a minute): blocking its thread (`blocking`,
/// never waiting on anything the worker could notice) or waiting without holding it. A node
/// that ends when the test says so.
#[derive(Serialize, Deserialize)]
struct Gate {
    path: std::path::PathBuf,
    blocking: bool,
}
impl Node for Gate {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        let start = Instant::now();
        while !self.path.exists() && start.elapsed() < Duration::from_secs(60) {
            if self.blocking {
                std::thread::sleep(Duration::from_millis(5));
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }
}
impl PortableNode for Gate {
    const NAME: &'static str = "gate";
}

/// A node that blocks its thread until `path` exists.
fn block_until(path: &std::path::Path) -> Gate {
    Gate {
        path: path.to_owned(),
        blocking: true,
    }
}

/// A node that waits, without holding its thread, until `path` exists.
fn wait_for(path: &std::path::Path) -> Gate {
    Gate {
        path: path.to_owned(),
        blocking: false,
    }
}

/// Creates the file at `marker` as it starts, then runs `ms` milliseconds: blocking its thread
/// (`blocking`, which only a kill interrupts) or waiting (which a cancellation stops).
#[derive(Serialize, Deserialize)]
struct Marked {
    marker: std::path::PathBuf,
    ms: u64,
    blocking: bool,
}
impl Node for Marked {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::fs::write(&self.marker, b"")?;
        if self.blocking {
            std::thread::sleep(Duration::from_millis(self.ms));
        } else {
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
        }
        Ok(())
    }
}
impl PortableNode for Marked {
    const NAME: &'static str = "marked";
}

/// Runs this program again as a tool of its own (`--tool`), as a node that shells out to a
/// subcommand of its binary does: how the tool ended, and what it printed.
#[derive(Serialize, Deserialize)]
struct RunSelf;
impl Node for RunSelf {
    type Output = (Option<i32>, String, String);
    async fn invoke(self) -> Result<Self::Output, BoxError> {
        let mut tool = std::process::Command::new(std::env::current_exe()?);
        let out = tool.arg("--tool").output()?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
    }
}
impl PortableNode for RunSelf {
    const NAME: &'static str = "run-self";
}

/// Registered in the parent's registry only in the handshake-mismatch test.
#[derive(Serialize, Deserialize)]
struct Unknown;
impl Node for Unknown {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}
impl PortableNode for Unknown {
    const NAME: &'static str = "unknown";
}

/// A node whose name alone takes more than the smallest frame (1 KiB), as the names of many
/// nodes together do: every worker's handshake carries it. (Never run: its task would not fit
/// in such a frame.)
#[derive(Serialize, Deserialize)]
struct LongName;
impl Node for LongName {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}
impl PortableNode for LongName {
    const NAME: &'static str = match std::str::from_utf8(&[b'n'; 1_100]) {
        Ok(name) => name,
        Err(_) => panic!("ASCII"),
    };
}

fn registry() -> NodeRegistry {
    let mut r = NodeRegistry::new();
    r.register::<LongName>().unwrap();
    r.register::<Echo>().unwrap();
    r.register::<Fail>().unwrap();
    r.register::<Panic>().unwrap();
    r.register::<Sleep>().unwrap();
    r.register::<Exit>().unwrap();
    r.register::<Blob>().unwrap();
    r.register::<Grow>().unwrap();
    r.register::<Spin>().unwrap();
    r.register::<ExitLater>().unwrap();
    r.register::<ReadStdin>().unwrap();
    r.register::<Overlap>().unwrap();
    r.register::<OrphanThenExit>().unwrap();
    r.register::<AbortOnDecode>().unwrap();
    r.register::<Touch>().unwrap();
    r.register::<Gate>().unwrap();
    r.register::<Marked>().unwrap();
    r.register::<RunSelf>().unwrap();
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn pool(workers: usize) -> ProcessExecutionStrategy {
    ProcessExecutionStrategy::builder(registry())
        .workers(workers)
        .start()
        .await
        .unwrap()
}

/// Runs `Echo(n)` as request `id` on `s` and checks the answer.
async fn assert_echo(s: &ProcessExecutionStrategy, id: impl Into<String>, n: u64) {
    let v = task_core::run(s, Task::portable(id.into(), Echo(n)).into_erased())
        .await
        .unwrap();
    assert_eq!(v.downcast_ref::<u64>(), Some(&n));
}

fn fake(mode: &str) -> exec_strategies::ProcessBuilder {
    let me = std::env::current_exe().unwrap();
    ProcessExecutionStrategy::builder(registry())
        .workers(1)
        .command(me, ["--fake-worker", mode])
        .handshake_timeout(Duration::from_millis(500))
}

/// Whether `pid` has exited (gone, or a zombie awaiting its new parent's reaping).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn round_trips_values_errors_and_panics() {
    runtime().block_on(async {
        let s = pool(2).await;
        let pids = s.worker_pids();
        assert_eq!(pids.len(), 2);
        assert_echo(&s, "1", 41).await;
        let e = task_core::run(
            &s,
            Task::portable("2", Fail("no quota".into())).into_erased(),
        )
        .await
        .unwrap_err();
        assert!(e.is_node_error());
        assert_eq!(e.message(), "no quota");
        let e = task_core::run(
            &s,
            Task::portable("3", Panic("bad row".into())).into_erased(),
        )
        .await
        .unwrap_err();
        assert!(e.is_panic(), "{e:?}");
        assert_eq!(e.message(), "node panicked: bad row");
        // stdout noise from a node goes to stderr, not into the protocol.
        let v = task_core::run(&s, Task::portable("4", Blob(vec![1, 2, 3])).into_erased())
            .await
            .unwrap();
        assert_eq!(v.downcast_ref::<Vec<u8>>(), Some(&vec![1, 2, 3]));
        // Nothing above cost a worker.
        assert_eq!(s.worker_pids(), pids);
        assert_eq!(s.restarts(), 0);
        let stats = s.stats();
        assert_eq!((stats.succeeded, stats.failed), (2, 2));
        assert_eq!(stats.workers.len(), 2);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn refuses_what_cannot_cross_the_boundary() {
    runtime().block_on(async {
        let s = pool(1).await;
        let closure = Task::from_fn("1", "closure", || async { Ok::<_, BoxError>(1) });
        assert!(
            task_core::run(&s, closure.into_erased())
                .await
                .unwrap_err()
                .is_unsupported()
        );
        let unknown = Task::portable("2", Unknown);
        assert!(
            task_core::run(&s, unknown.into_erased())
                .await
                .unwrap_err()
                .is_not_registered()
        );
        assert_echo(&s, "3", 1).await;
        assert_eq!(s.restarts(), 0);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn oversize_tasks_and_outputs_are_typed_errors() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .max_frame(4096)
            .start()
            .await
            .unwrap();
        let big = Task::portable("1", Blob(vec![7; 10_000]));
        let e = task_core::run(&s, big.into_erased()).await.unwrap_err();
        assert!(e.is_protocol_error(), "{e:?}");
        assert!(e.message().contains("exceeds the maximum"), "{e}");
        // A task that fits but whose output would not: the worker refuses to send it.
        let e = task_core::run(&s, Task::portable("2", Blob(vec![7; 3_000])).into_erased()).await;
        assert!(e.is_ok(), "3000 bytes fit: {e:?}");
        let pid = s.worker_pids();
        assert_echo(&s, "3", 3).await;
        assert_eq!(s.worker_pids(), pid, "nothing else disturbed");
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// A handshake larger than the largest frame (the names of the nodes registered outgrow it),
/// and more runtime threads than a worker may run: the pool starts all the same and runs its
/// tasks, rather than failing to start as if the worker were not one.
fn a_handshake_past_the_frame_limit_and_absurd_threads_still_start() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .max_frame(0)
            .worker_threads(usize::MAX)
            .start()
            .await
            .expect("the pool starts");
        assert_echo(&s, "1", 1).await;
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// The smallest frame asked for still holds the error saying an output did not fit: the run
/// fails with it, and the worker, which kept to the protocol, is not replaced.
fn the_smallest_frame_still_carries_the_error_of_an_output_too_large() {
    runtime().block_on(async {
        let mut one = NodeRegistry::new();
        one.register::<Grow>().unwrap();
        let s = ProcessExecutionStrategy::builder(one)
            .workers(1)
            .max_frame(0)
            .start()
            .await
            .unwrap();
        let pids = s.worker_pids();
        let e = task_core::run(&s, Task::portable("1", Grow(5_000)).into_erased()).await;
        let e = e.unwrap_err();
        assert!(e.is_protocol_error(), "{e:?}");
        assert!(e.message().contains("the output was not sent"), "{e}");
        assert_eq!(
            (s.restarts(), s.worker_pids()),
            (0, pids),
            "the worker kept its place"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_sigkilled_worker_fails_only_its_own_task_and_is_replaced() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .tasks_per_worker(1)
            .start()
            .await
            .unwrap();
        let before = s.worker_pids();
        let s1 = s.clone();
        let victim = tokio::spawn(async move {
            task_core::run(&s1, Task::portable("long", Sleep(10_000)).into_erased()).await
        });
        // Find the worker running it.
        let mut busy = None;
        while busy.is_none() {
            busy = s
                .stats()
                .workers
                .iter()
                .find(|w| w.in_flight == 1)
                .and_then(|w| w.pid);
            tokio::task::yield_now().await;
        }
        let busy = busy.unwrap();
        let survivor = task_core::run(&s, Task::portable("short", Sleep(10)).into_erased());
        let survivor_pid = survivor.await.unwrap();
        assert_ne!(survivor_pid.downcast_ref::<u32>(), Some(&busy));
        // SAFETY: sending a signal to a child process of this test.
        assert_eq!(unsafe { libc::kill(busy as i32, libc::SIGKILL) }, 0);
        let e = victim.await.unwrap().unwrap_err();
        assert!(e.is_worker_lost(), "{e:?}");
        assert!(e.message().contains("signal 9 (SIGKILL)"), "{e}");
        wait_until("a replacement", || s.worker_pids().len() == 2);
        assert_eq!(s.restarts(), 1);
        let after = s.worker_pids();
        assert!(!after.contains(&busy));
        assert!(
            before.iter().any(|p| after.contains(p)),
            "the other worker was untouched"
        );
        assert_echo(&s, "again", 5).await;
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_worker_that_exits_reports_its_status() {
    runtime().block_on(async {
        let s = pool(1).await;
        let e = task_core::run(&s, Task::portable("1", Exit(3)).into_erased())
            .await
            .unwrap_err();
        assert!(e.is_worker_lost());
        // The status says it all, as docs/process.md shows it.
        assert!(e.message().ends_with("exited with status 3"), "{e}");
        assert_echo(&s, "2", 2).await;
        assert_eq!(s.restarts(), 1);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_task_past_its_timeout_is_cancelled_in_its_worker() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .task_timeout(Duration::from_millis(300))
            .cancel_grace(Duration::from_secs(1))
            .start()
            .await
            .unwrap();
        let pid = s.worker_pids()[0];
        // A node that waits stops where it waits: the worker lives on.
        let e = task_core::run(&s, Task::portable("1", Sleep(30_000)).into_erased())
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        wait_until("the cancelled run to be answered", || {
            s.stats().workers.iter().all(|w| w.in_flight == 0)
        });
        assert_echo(&s, "2", 9).await;
        assert_eq!((s.restarts(), s.worker_pids()), (0, vec![pid]));
        // A node that never waits cannot be stopped: its worker is killed after the grace.
        let e = task_core::run(&s, Task::portable("3", Spin(30_000)).into_erased())
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        wait_until("the spinning worker to be reaped", || is_dead(pid));
        wait_until("a replacement", || {
            s.restarts() == 1 && s.worker_pids().len() == 1
        });
        assert_echo(&s, "4", 4).await;
        // A task answered in time leaves its worker alone when its timeout comes round.
        let replacement = s.worker_pids();
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        assert_eq!(s.restarts(), 1);
        assert_eq!(s.worker_pids(), replacement);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// Polls `running`, a run that cannot end first, until its node has created `marker`.
async fn until_started<F>(marker: &std::path::Path, running: &mut F)
where
    F: Future<Output: std::fmt::Debug> + Unpin,
{
    let start = Instant::now();
    while !marker.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "never started");
        let polled = tokio::time::timeout(Duration::from_millis(10), &mut *running).await;
        assert!(polled.is_err(), "the run cannot have ended: {polled:?}");
    }
}

/// Polls `running`, a run that cannot end first, until a worker holds it.
async fn until_held<F>(s: &ProcessExecutionStrategy, running: &mut F)
where
    F: Future<Output: std::fmt::Debug> + Unpin,
{
    while s.stats().workers.iter().all(|w| w.in_flight == 0) {
        let polled = tokio::time::timeout(Duration::from_millis(10), &mut *running).await;
        assert!(polled.is_err(), "the run cannot have ended: {polled:?}");
    }
}

fn a_run_dropped_by_its_caller_is_cancelled_in_its_worker() {
    // A cancelled request drops the run's future: the worker is told to drop the run, and is
    // killed only if the run does not stop within the grace.
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .cancel_grace(Duration::from_secs(1))
            .start()
            .await
            .unwrap();
        let pid = s.worker_pids()[0];
        let marker = std::env::temp_dir().join(format!("exec-marked-{}", std::process::id()));
        for (id, killed) in [("1", false), ("2", true)] {
            let _ = std::fs::remove_file(&marker);
            // Waits, which its cancellation stops; or blocks, which only a kill stops.
            let node = Marked {
                marker: marker.clone(),
                ms: 30_000,
                blocking: killed,
            };
            let mut running = task_core::run(&s, Task::portable(id, node).into_erased());
            // Started, not merely handed over.
            until_started(&marker, &mut running).await;
            assert_eq!(s.stats().in_flight, 1);
            drop(running);
            wait_until(
                "the dropped run to be answered or its worker replaced",
                || {
                    s.stats().workers.iter().all(|w| w.in_flight == 0)
                        && s.worker_pids().len() == 1
                        && s.restarts() == u64::from(killed)
                },
            );
            assert_eq!(s.stats().in_flight, 0, "the dropped run is counted out");
            assert_eq!(is_dead(pid), killed);
        }
        let _ = std::fs::remove_file(&marker);
        let stats = s.stats();
        assert_eq!((stats.failed, stats.stopped), (0, 2), "counted as stopped");
        assert_echo(&s, "3", 4).await;
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// A run let go of while its worker still runs it is counted out of the strategy (stopped) at
/// once, and stays counted in its worker until the worker answers it or is gone, as
/// `WorkerStats::in_flight` says.
fn a_run_let_go_of_stays_counted_in_its_worker_until_the_worker_is_done_with_it() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .cancel_grace(Duration::from_secs(60))
            .start()
            .await
            .unwrap();
        let mut running = task_core::run(&s, Task::portable("1", Spin(60_000)).into_erased());
        until_held(&s, &mut running).await;
        drop(running);
        wait_until("the dropped run to be counted out", || {
            let stats = s.stats();
            (stats.in_flight, stats.stopped) == (0, 1)
        });
        // The node never waits, and its grace is a minute: the worker still runs it.
        let workers: Vec<u64> = s.stats().workers.iter().map(|w| w.in_flight).collect();
        assert_eq!(
            workers,
            [1],
            "the worker still holds the run it was told to drop"
        );
        s.shutdown(Duration::from_millis(200)).await;
    });
}

fn a_queued_run_cancelled_behind_a_blocking_node_never_starts() {
    // One task at a time on one thread: the worker runs a node on the thread that reads its
    // input. A run queued behind a node that blocks that thread, and cancelled meanwhile, is
    // dropped: its cancellation is read before it starts.
    runtime().block_on(async {
        let s = pool(1).await;
        let tag = std::process::id();
        let marker = std::env::temp_dir().join(format!("exec-touch-{tag}"));
        let gate = std::env::temp_dir().join(format!("exec-held-{tag}"));
        let _ = std::fs::remove_file(&marker);
        let _ = std::fs::remove_file(&gate);
        let busy = tokio::spawn(task_core::run(
            &s.clone(),
            Task::portable("busy", block_until(&gate)).into_erased(),
        ));
        wait_until("the blocking node to start", || {
            s.stats().workers.iter().any(|w| w.in_flight > 0)
        });
        let mut queued = task_core::run(
            &s,
            Task::portable("queued", Touch(marker.clone())).into_erased(),
        );
        let start = Instant::now();
        while s.stats().workers[0].in_flight < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never handed over"
            );
            let polled = tokio::time::timeout(Duration::from_millis(10), &mut queued).await;
            assert!(
                polled.is_err(),
                "handed to the busy worker, not run: {polled:?}"
            );
        }
        // The cancellation is in the worker's pipe once the drop returns; only then does the
        // blocking node end.
        drop(queued);
        std::fs::write(&gate, b"").unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_echo(&s, "after", 1).await;
        let ran = marker.exists();
        let _ = std::fs::remove_file(&marker);
        let _ = std::fs::remove_file(&gate);
        assert!(
            !ran,
            "the cancelled run started once the blocking node returned"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// A run cancelled while it waits for a place in the pool is counted out (stopped, no longer in
/// flight) before its completion says the run is over: whatever hears of that (a request waiting
/// for the place it frees under a coordinator's limit) reads current counts.
fn a_run_cancelled_while_it_waits_for_a_place_is_counted_out_before_its_run_is_over() {
    runtime().block_on(async {
        // One place in the whole pool, which a long node holds.
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .tasks_per_worker(1)
            .prefetch(0)
            .start()
            .await
            .unwrap();
        // Cancelled once the test is done with it.
        let busy = tokio::spawn(task_core::run(
            &s.clone(),
            Task::portable("busy", Sleep(600_000)).into_erased(),
        ));
        wait_until("the long node to start", || {
            s.stats().workers.iter().any(|w| w.in_flight > 0)
        });
        let (probe, _outcome) = Probe::of(&s);
        let waiting = Task::portable("waiting", Echo(1)).into_erased();
        s.execute(waiting, probe.completion());
        wait_until("the second run to wait", || s.stats().in_flight == 2);
        probe.cancel();
        let seen = probe.at_run_over().await;
        assert_eq!((seen.in_flight, seen.stopped), (1, 1), "{seen:?}");
        busy.abort();
        s.shutdown(Duration::from_secs(5)).await;
        assert_eq!(s.stats().in_flight, 0);
    });
}

fn a_run_started_unseen_when_the_readers_runtime_ends_never_runs_twice() {
    // Answers are read on the runtime the pool was started on. When it shuts down with a
    // worker's frames unread (its only thread is held here), the pool cannot tell which runs the
    // worker had started: none is handed to another worker, so none runs twice.
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = first.block_on(pool(1));
    let tag = std::process::id();
    let log = std::env::temp_dir().join(format!("exec-ran-{tag}"));
    let gate = std::env::temp_dir().join(format!("exec-gate-{tag}"));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&gate);
    let second = runtime();
    let (busy, queued) = second.block_on(async {
        let busy = tokio::spawn(task_core::run(
            &s.clone(),
            Task::portable("busy", block_until(&gate)).into_erased(),
        ));
        let queued = tokio::spawn(task_core::run(
            &s.clone(),
            Task::portable("queued", Touch(log.clone())).into_erased(),
        ));
        (busy, queued)
    });
    wait_until("both runs handed to the worker", || {
        s.stats().in_flight == 2
    });
    // The readers' runtime can no longer read: its one thread is held until the test is done.
    let (held, holding) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    first.spawn(async move {
        held.send(()).unwrap();
        let _ = released.recv_timeout(Duration::from_secs(60));
    });
    holding.recv_timeout(Duration::from_secs(20)).unwrap();
    std::fs::write(&gate, b"").unwrap();
    wait_until("the queued run to start in the worker", || log.exists());
    first.shutdown_background();
    drop(release);
    let _ = std::fs::remove_file(&gate);
    let (busy, queued) = second.block_on(async {
        let wait = |h| tokio::time::timeout(Duration::from_secs(20), h);
        (
            wait(busy).await.unwrap().unwrap(),
            wait(queued).await.unwrap().unwrap(),
        )
    });
    let ran = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let _ = std::fs::remove_file(&log);
    assert!(busy.unwrap_err().is_worker_lost());
    assert_eq!(ran, 1, "the queued run ran twice: {queued:?}");
    assert!(queued.unwrap_err().is_worker_lost());
    second.block_on(async {
        assert_echo(&s, "after", 1).await;
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// The write system calls process `pid` has made.
fn writes_of(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let line = io.lines().find(|l| l.starts_with("syscw:")).unwrap();
    line["syscw:".len()..].trim().parse().unwrap()
}

fn a_pipelined_worker_answers_each_run_with_the_next_start_in_one_write() {
    // One worker, one task at a time on one thread, its queue kept full: each answer goes out
    // in the write that says the next run starts, so the pipe costs a write per task, not two.
    let tasks = 400;
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .prefetch(tasks as usize)
            .start()
            .await
            .unwrap();
        assert_echo(&s, "warm", 1).await;
        let pid = s.worker_pids()[0];
        let before = writes_of(pid);
        let calls = (0..tasks)
            .map(|i| task_core::run(&s, Task::portable(format!("p{i}"), Echo(i)).into_erased()));
        for answer in futures::future::join_all(calls).await {
            answer.unwrap();
        }
        let writes = writes_of(pid) - before;
        assert!(
            writes < tasks * 3 / 2,
            "{writes} writes for {tasks} pipelined tasks"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn tasks_queued_on_a_dying_worker_go_to_another() {
    // One worker, so every task is queued behind the one that kills it.
    runtime().block_on(async {
        let s = pool(1).await;
        let pid = s.worker_pids()[0];
        let crash = task_core::run(&s, Task::portable("crash", ExitLater(200)).into_erased());
        let queued = (0..12_u64)
            .map(|i| task_core::run(&s, Task::portable(format!("q{i}"), Echo(i)).into_erased()));
        let (crash, queued) = tokio::join!(crash, futures::future::join_all(queued));
        let e = crash.unwrap_err();
        assert!(e.is_worker_lost(), "{e:?}");
        assert!(e.message().contains("exited with status 7"), "{e}");
        for (i, answer) in (0..12_u64).zip(queued) {
            let v = answer.unwrap_or_else(|e| panic!("queued task {i} failed: {e}"));
            assert_eq!(v.downcast_ref::<u64>(), Some(&i));
        }
        assert!(is_dead(pid));
        assert_eq!(s.restarts(), 1);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// A worker never holds more runs than its place and its prefetch, even while another is down:
/// the queued runs of a worker that died wait for its replacement rather than queue behind a
/// survivor that may be busy for long (here, stopped).
fn the_runs_of_a_dead_worker_wait_for_its_replacement_not_a_full_survivor() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .prefetch(2)
            .start()
            .await
            .unwrap();
        let pids = s.worker_pids();
        let signal = |pid: u32, signal| assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
        // The second stops: what it holds (its place and prefetch, 3) stays there.
        signal(pids[1], libc::SIGSTOP);
        let s = std::sync::Arc::new(s);
        let runs: Vec<_> = (0..6_u64)
            .map(|i| {
                let s = std::sync::Arc::clone(&s);
                let task = Task::portable(format!("r{i}"), Sleep(1_000)).into_erased();
                tokio::spawn(async move { task_core::run(&*s, task).await })
            })
            .collect();
        // Each worker holds 3; the first dies running one, with two queued behind it.
        wait_until("each worker to hold 3 runs", || {
            s.stats().workers.iter().all(|w| w.in_flight == 3)
        });
        signal(pids[0], libc::SIGKILL);
        let (mut ran, mut lost) = (Vec::new(), 0);
        let mut waiting = runs;
        let deadline = Instant::now() + Duration::from_secs(20);
        while ran.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the dead worker's queued runs never ran"
            );
            let mut still = Vec::new();
            for run in waiting {
                if !run.is_finished() {
                    still.push(run);
                    continue;
                }
                match run.await.unwrap() {
                    Ok(pid) => ran.push(*pid.downcast_ref::<u32>().unwrap()),
                    Err(e) if e.is_worker_lost() => lost += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            waiting = still;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lost, 1, "only the run the dead worker was running fails");
        assert!(
            ran.iter().all(|pid| !pids.contains(pid)),
            "ran on {ran:?}, not a replacement"
        );
        signal(pids[1], libc::SIGCONT);
        for run in waiting {
            let pid = run.await.unwrap().unwrap();
            assert_eq!(pid.downcast_ref::<u32>(), Some(&pids[1]));
        }
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn crashes_among_many_tasks_fail_only_themselves() {
    // Crashing tasks in among many others, all in flight at once over 2 workers: each crash
    // fails itself, and no other task fails for it (not one given to the dying worker, not one
    // dispatched while its slot was being replaced).
    runtime().block_on(async {
        let s = pool(2).await;
        let calls = (0..600_u64).map(|i| {
            let task = if i % 40 == 13 {
                Task::portable(format!("c{i}"), Exit(3)).into_erased()
            } else {
                Task::portable(format!("e{i}"), Echo(i)).into_erased()
            };
            let s = &s;
            async move { (i, task_core::run(s, task).await) }
        });
        let answers =
            tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
                .await
                .expect("every task is answered");
        for (i, answer) in answers {
            if i % 40 == 13 {
                let e = answer.unwrap_err();
                assert!(e.is_worker_lost(), "crash {i}: {e:?}");
                assert!(
                    e.message().contains("exited with status 3"),
                    "crash {i}: {e}"
                );
            } else {
                let v = answer.unwrap_or_else(|e| panic!("task {i} failed beside a crash: {e}"));
                assert_eq!(v.downcast_ref::<u64>(), Some(&i));
            }
        }
        // The last crash is answered before its worker's replacement has started.
        wait_until("one replacement per crash", || s.restarts() == 15);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_worker_is_seen_to_end_even_when_a_process_it_started_lives_on() {
    runtime().block_on(async {
        let s = pool(1).await;
        let started = Instant::now();
        let e = task_core::run(&s, Task::portable("o", OrphanThenExit).into_erased())
            .await
            .unwrap_err();
        assert!(e.message().contains("exited with status 3"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "its end was seen only when the process it started ended"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_crash_while_decoding_a_task_is_that_tasks_alone() {
    // Both workers busy: the task is queued in one of them, and aborts it as it is decoded.
    runtime().block_on(async {
        let s = pool(2).await;
        let sleeps = (0..2).map(|i| {
            task_core::run(
                &s,
                Task::portable(format!("s{i}"), Sleep(300)).into_erased(),
            )
        });
        let sleeps = futures::future::join_all(sleeps);
        let crash = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            task_core::run(&s, Task::portable("d", AbortOnDecode).into_erased()).await
        };
        let (sleeps, crash) = tokio::join!(sleeps, crash);
        assert!(sleeps.iter().all(Result::is_ok), "{sleeps:?}");
        let e = crash.unwrap_err();
        assert!(e.is_worker_lost(), "{e:?}");
        assert!(e.message().contains("SIGABRT"), "{e}");
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn with_several_tasks_per_worker_each_answer_comes_when_its_task_ends() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .tasks_per_worker(3)
            .start()
            .await
            .unwrap();
        let gate = std::env::temp_dir().join(format!("exec-long-{}", std::process::id()));
        let _ = std::fs::remove_file(&gate);
        let run = |task: task_core::ErasedTask| {
            let s = s.clone();
            tokio::spawn(async move { task_core::run(&s, task).await })
        };
        // The long one waits until the others are answered.
        let long = run(Task::portable("long", wait_for(&gate)).into_erased());
        wait_until("the long one in the worker", || {
            s.stats().workers[0].in_flight == 1
        });
        let spin = run(Task::portable("spin", Spin(300)).into_erased());
        let echo = run(Task::portable("echo", Echo(1)).into_erased());
        let both = tokio::time::timeout(Duration::from_secs(20), async {
            let (spin, echo) = tokio::join!(spin, echo);
            (spin.unwrap(), echo.unwrap())
        });
        let answered = both.await;
        std::fs::write(&gate, b"").unwrap();
        let (spin, echo) = answered.expect("the answers waited for the long task beside them");
        assert!(spin.is_ok() && echo.is_ok(), "{spin:?} {echo:?}");
        assert!(long.await.unwrap().is_ok());
        let _ = std::fs::remove_file(&gate);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn a_task_that_keeps_crashing_its_workers_is_poison() {
    runtime().block_on(async {
        let s = pool(1).await;
        // Retries of one request share its id: the second crash in a row makes it poison.
        let first = task_core::run(&s, Task::portable("p", Exit(3)).into_erased())
            .await
            .unwrap_err();
        assert!(first.is_worker_lost() && !first.is_poison(), "{first:?}");
        let other = task_core::run(&s, Task::portable("other", Echo(1)).into_erased()).await;
        assert!(other.is_ok(), "another request is not disturbed");
        let second = task_core::run(&s, Task::portable("p", Exit(3)).into_erased())
            .await
            .unwrap_err();
        assert!(second.is_poison(), "{second:?}");
        assert!(second.message().contains("2 times in a row"), "{second}");
        assert!(
            second.message().contains("exited with status 3"),
            "{second}"
        );
        // An answer starts the count again.
        let _ = task_core::run(&s, Task::portable("q", Exit(3)).into_erased()).await;
        let fine = task_core::run(&s, Task::portable("q", Echo(2)).into_erased()).await;
        assert!(fine.is_ok());
        let again = task_core::run(&s, Task::portable("q", Exit(3)).into_erased())
            .await
            .unwrap_err();
        assert!(again.is_worker_lost() && !again.is_poison(), "{again:?}");
        s.shutdown(Duration::from_secs(5)).await;

        let strict = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .poison_after(1)
            .start()
            .await
            .unwrap();
        let e = task_core::run(&strict, Task::portable("p", Exit(3)).into_erased())
            .await
            .unwrap_err();
        assert!(e.is_poison(), "{e:?}");
        let once = "its worker died running it, the last time: worker";
        assert!(e.message().contains(once), "{e}");
        // A kill from outside counts as a crash: the pool cannot tell an operator's SIGKILL from
        // the OOM killer's, which a task eating memory brings on itself.
        let victim = tokio::spawn({
            let strict = strict.clone();
            async move {
                task_core::run(&strict, Task::portable("k", Sleep(30_000)).into_erased()).await
            }
        });
        while strict.stats().workers.iter().all(|w| w.in_flight == 0) {
            tokio::task::yield_now().await;
        }
        let pid = strict.worker_pids()[0];
        // SAFETY: sending a signal to a child process of this test.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let e = victim.await.unwrap().unwrap_err();
        assert!(e.is_poison() && e.message().contains("SIGKILL"), "{e:?}");
        strict.shutdown(Duration::from_secs(5)).await;
    });
}

fn one_task_runs_at_a_time_per_worker_unless_asked() {
    runtime().block_on(async {
        for (per_worker, at_once) in [(None, 1), (Some(4), 4)] {
            let mut builder = ProcessExecutionStrategy::builder(registry()).workers(1);
            if let Some(n) = per_worker {
                builder = builder.tasks_per_worker(n);
            }
            let s = builder.start().await.unwrap();
            let calls = (0..8).map(|i| {
                task_core::run(&s, Task::portable(format!("o{i}"), Overlap).into_erased())
            });
            let most = futures::future::join_all(calls)
                .await
                .into_iter()
                .map(|v| *v.unwrap().downcast_ref::<usize>().unwrap())
                .max();
            assert_eq!(most, Some(at_once), "tasks_per_worker {per_worker:?}");
            s.shutdown(Duration::from_secs(5)).await;
        }
    });
}

fn a_node_reading_stdin_or_printing_cannot_touch_a_frame() {
    runtime().block_on(async {
        let s = pool(1).await;
        let calls = (0..20_u64).map(|i| {
            let task = match i % 3 {
                0 => Task::portable(format!("r{i}"), ReadStdin).into_erased(),
                1 => Task::portable(format!("b{i}"), Blob(vec![1; 10])).into_erased(),
                _ => Task::portable(format!("e{i}"), Echo(i)).into_erased(),
            };
            let s = &s;
            async move { (i, task_core::run(s, task).await) }
        });
        let answers =
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
                .await
                .expect("no frame is eaten, so every task is answered");
        for (i, answer) in answers {
            let value = answer.unwrap_or_else(|e| panic!("task {i}: {e}"));
            match i % 3 {
                0 => assert_eq!(value.downcast_ref::<usize>(), Some(&0), "stdin is empty"),
                1 => assert_eq!(value.downcast_ref::<Vec<u8>>().map(Vec::len), Some(10)),
                _ => assert_eq!(value.downcast_ref::<u64>(), Some(&i)),
            }
        }
        assert_eq!(s.restarts(), 0);
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// The ids of this process's threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            let tid = path.file_name()?.to_string_lossy().into_owned();
            name.starts_with(prefix).then_some(tid)
        })
        .collect()
}

fn dropping_the_last_handle_stops_its_workers_and_supervisor() {
    runtime().block_on(async {
        // Earlier tests' supervisors may still be ending: this pool's is the one not among them.
        let before = threads_named("exec-process");
        let s = pool(2).await;
        let pids = s.worker_pids();
        let ours: Vec<String> = threads_named("exec-process")
            .into_iter()
            .filter(|tid| !before.contains(tid))
            .collect();
        assert_eq!(ours.len(), 1, "one supervisor thread per pool");
        let clone = s.clone();
        drop(s);
        assert!(pids.iter().all(|p| !is_dead(*p)), "a clone still holds it");
        let running = task_core::run(&clone, Task::portable("r", Sleep(30_000)).into_erased());
        drop(clone);
        let e = running.await.unwrap_err();
        assert!(e.is_shutdown() || e.is_worker_lost(), "{e:?}");
        wait_until("the workers to be reaped", || {
            pids.iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        });
        wait_until("the supervisor thread to end", || {
            !std::path::Path::new(&format!("/proc/self/task/{}", ours[0])).exists()
        });
    });
}

/// The pids of this process's children, zombies included.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .to_owned();
            (ppid == me).then_some(pid)
        })
        .collect()
}

/// A `start` its caller stops waiting for (a timeout around it, a worker slow to announce
/// itself) leaves no worker process, not even a zombie, and no supervisor thread behind.
fn a_start_dropped_midway_leaves_nothing_behind() {
    let threads = threads_named("exec-process");
    let others = children();
    runtime().block_on(async {
        let start = fake("silent")
            .handshake_timeout(Duration::from_secs(60))
            .start();
        let dropped = tokio::time::timeout(Duration::from_millis(300), start).await;
        assert!(dropped.is_err(), "a silent worker cannot have started");
        wait_until("the worker reaped", || {
            children().iter().all(|pid| others.contains(pid))
        });
    });
    wait_until("the supervisor thread to end", || {
        threads_named("exec-process")
            .iter()
            .all(|tid| threads.contains(tid))
    });
}

fn workers_are_recycled_after_k_tasks() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .recycle_after(3)
            .start()
            .await
            .unwrap();
        let mut pids = Vec::new();
        for i in 0..9 {
            let v = task_core::run(&s, Task::portable(format!("{i}"), Sleep(0)).into_erased())
                .await
                .unwrap();
            pids.push(*v.downcast_ref::<u32>().unwrap());
        }
        pids.dedup();
        assert_eq!(
            pids.len(),
            3,
            "three workers served three tasks each: {pids:?}"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn shutdown_finishes_in_flight_work_refuses_new_and_leaves_no_process() {
    runtime().block_on(async {
        let s = pool(2).await;
        let pids = s.worker_pids();
        let s1 = s.clone();
        let running = tokio::spawn(async move {
            task_core::run(&s1, Task::portable("1", Sleep(300)).into_erased()).await
        });
        // On a worker, not merely counted: a task counted just before shutdown may be refused.
        while s.stats().workers.iter().all(|w| w.in_flight == 0) {
            tokio::task::yield_now().await;
        }
        let s2 = s.clone();
        let shutting = tokio::spawn(async move { s2.shutdown(Duration::from_secs(10)).await });
        while s.stats().accepting {
            tokio::task::yield_now().await;
        }
        let late = task_core::run(&s, Task::portable("2", Echo(1)).into_erased())
            .await
            .unwrap_err();
        assert!(late.is_shutdown());
        assert!(running.await.unwrap().is_ok(), "the running task finished");
        shutting.await.unwrap();
        for pid in pids {
            // Reaped: not even a zombie is left.
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "worker {pid} left behind"
            );
        }
        s.shutdown(Duration::from_secs(1)).await;
    });
    // Shut down again, with nothing running: nothing to warn of (the supervisor's runtime,
    // which the wait ran on, is gone).
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let log = Arc::clone(&log);
        move || Captured(Arc::clone(&log))
    };
    let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
    tracing::subscriber::with_default(subscriber, || {
        runtime().block_on(async {
            let s = pool(1).await;
            s.shutdown(Duration::from_secs(1)).await;
            s.shutdown(Duration::from_secs(1)).await;
        });
    });
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(!log.contains("grace period over"), "{log}");
}

/// Where a test's log goes.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A pool of one worker running a 30 s task: the pool, its worker's pid and the run.
fn one_worker_busy_for_long(
    rt: &tokio::runtime::Runtime,
) -> (
    ProcessExecutionStrategy,
    Vec<u32>,
    tokio::task::JoinHandle<task_core::Outcome>,
) {
    let s = rt.block_on(pool(1));
    let pids = s.worker_pids();
    let s1 = s.clone();
    let running = rt.spawn(async move {
        task_core::run(&s1, Task::portable("long", Sleep(30_000)).into_erased()).await
    });
    wait_until("the task on its worker", || {
        s.stats().workers.iter().any(|w| w.in_flight > 0)
    });
    (s, pids, running)
}

/// The pool's grace and kill timers run on its supervisor's runtime: shut down from a runtime
/// without timers while a task runs past the grace, or from no runtime at all, it returns and
/// leaves no worker.
fn shutdown_needs_no_timer_of_the_callers_runtime() {
    let rt = runtime();
    let (s, pids, running) = one_worker_busy_for_long(&rt);
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    no_timers.block_on(s.shutdown(Duration::from_millis(100)));
    let killed = rt.block_on(running).unwrap();
    assert!(killed.is_err(), "the task past the grace was stopped");
    for pid in pids {
        wait_until("the worker gone", || is_dead(pid));
    }
    let s = rt.block_on(pool(1));
    let pids = s.worker_pids();
    futures::executor::block_on(s.shutdown(Duration::from_secs(1)));
    for pid in pids {
        wait_until("the worker gone", || is_dead(pid));
    }
}

/// A second shutdown with a shorter grace (an impatient second Ctrl-C) shortens the one under
/// way: both return once the shorter grace is over, the task past it stopped and its worker
/// reaped.
fn a_shorter_second_shutdown_shortens_the_first() {
    let rt = runtime();
    let (s, pids, running) = one_worker_busy_for_long(&rt);
    let s2 = s.clone();
    let patient = rt.spawn(async move { s2.shutdown(Duration::from_secs(60)).await });
    wait_until("the first shutdown under way", || !s.stats().accepting);
    let impatient = s.shutdown(Duration::from_millis(100));
    let bounded = Duration::from_secs(20);
    rt.block_on(async {
        let both = futures::future::join(impatient, patient);
        let (_, patient) = tokio::time::timeout(bounded, both)
            .await
            .expect("both shutdowns return once the shorter grace is over");
        patient.unwrap();
    });
    let stopped = rt.block_on(running).unwrap();
    assert!(stopped.is_err(), "the task past the grace was stopped");
    for pid in pids {
        wait_until("the worker gone", || is_dead(pid));
    }
}

/// A shutdown whose caller stops waiting (a timeout around it, a `select!` with a second signal)
/// goes on by itself: at its deadline the task still running is stopped and answered and the
/// worker reaped, and a later shutdown returns at once.
fn a_shutdown_dropped_midway_goes_on_by_itself() {
    let rt = runtime();
    let (s, pids, running) = one_worker_busy_for_long(&rt);
    rt.block_on(async {
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            s.shutdown(Duration::from_millis(300)),
        );
        assert!(dropped.await.is_err(), "the task holds the shutdown");
        let answered = tokio::time::timeout(Duration::from_secs(20), running).await;
        let outcome = answered.expect("the running task is answered").unwrap();
        assert!(outcome.is_err(), "stopped by the shutdown: {outcome:?}");
    });
    for pid in pids {
        wait_until("the worker reaped", || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    let again = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), s.shutdown(Duration::ZERO)).await
    });
    assert!(again.is_ok(), "a later shutdown returns");
}

/// The impatient second Ctrl-C where the first shutdown's future is kept but no longer polled
/// (pinned outside a `select!` that went on to the second signal): the second shutdown still
/// stops the running task and reaps the worker, and returns.
fn a_second_shutdown_needs_no_poll_of_the_first() {
    let rt = runtime();
    let (s, pids, running) = one_worker_busy_for_long(&rt);
    rt.block_on(async {
        let mut first = s.shutdown(Duration::from_secs(60));
        let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the task holds the first shutdown");
        let second = tokio::time::timeout(Duration::from_secs(20), s.shutdown(Duration::ZERO));
        assert!(second.await.is_ok(), "the second shutdown returns");
        let answered = tokio::time::timeout(Duration::from_secs(20), running).await;
        let outcome = answered.expect("the running task is answered").unwrap();
        assert!(outcome.is_err(), "stopped by the shutdown: {outcome:?}");
        for pid in &pids {
            let reaped = !std::path::Path::new(&format!("/proc/{pid}")).exists();
            assert!(
                reaped,
                "the worker is reaped when the second shutdown returns"
            );
        }
        drop(first);
    });
}

fn shutdown_while_a_worker_is_being_replaced_returns() {
    runtime().block_on(async {
        for round in 0..5 {
            let s = pool(1).await;
            let crashed = task_core::run(&s, Task::portable("c", Exit(3)).into_erased()).await;
            assert!(crashed.unwrap_err().is_worker_lost());
            // The replacement is starting now: shutdown must not wait for it forever, even with
            // a grace that never runs out.
            let shut = tokio::time::timeout(Duration::from_secs(20), s.shutdown(Duration::MAX));
            assert!(shut.await.is_ok(), "round {round}: shutdown hung");
        }
    });
}

/// A worker that closes its output before announcing itself and lives on fails `start` at once
/// (it is killed, not waited for to exit), as one that exits does.
fn a_worker_that_closes_its_output_and_lives_on_fails_start() {
    runtime().block_on(async {
        let start = fake("close-and-hang").start();
        let e = tokio::time::timeout(Duration::from_secs(10), start)
            .await
            .expect("start returns")
            .unwrap_err();
        assert!(e.is_spawn(), "{e:?}");
        assert!(
            e.to_string().contains("closed its output without exiting"),
            "{e}"
        );
    });
}

/// Starts a one-worker pool whose replacements play `mode` with `handshake` to announce
/// themselves, kills its worker, and shuts the pool down (grace 1 s) while its replacement starts
/// and a task waits for it: the shutdown returns within its grace and a few seconds.
fn shut_down_while_a_replacement_plays(mode: &str, handshake: Duration) {
    let marker =
        std::env::temp_dir().join(format!("exec-strategies-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    runtime().block_on(async {
        let me = std::env::current_exe().unwrap();
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command(me, ["--fake-worker", mode, marker.to_str().unwrap()])
            .handshake_timeout(handshake)
            .start()
            .await
            .unwrap();
        // The first worker serves.
        assert_echo(&s, "1", 1).await;
        std::fs::write(&marker, b"").unwrap();
        let pid = s.worker_pids()[0];
        // SAFETY: sending a signal to a child process of this test.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        wait_until("the worker's slot to empty", || s.worker_pids().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { task_core::run(&s, Task::portable("2", Echo(2)).into_erased()).await }
        });
        let started = Instant::now();
        let shut =
            tokio::time::timeout(Duration::from_secs(15), s.shutdown(Duration::from_secs(1)));
        let shut = shut.await;
        let _ = std::fs::remove_file(&marker);
        assert!(
            shut.is_ok(),
            "{mode}: shutdown still pending after {:?}",
            started.elapsed()
        );
        let e = waiting.await.unwrap().unwrap_err();
        assert!(e.is_shutdown() || e.is_worker_lost(), "{mode}: {e:?}");
    });
}

/// A replacement that closes its output and lives on is killed: shutdown does not wait for it.
fn shutdown_returns_while_a_replacement_closes_its_output_and_lives_on() {
    shut_down_while_a_replacement_plays("close-and-hang", Duration::from_millis(500));
}

/// A replacement still being started is out of reach of the shutdown's kill: shutdown waits for
/// it a moment, not for its whole handshake timeout.
fn shutdown_returns_while_a_replacement_has_yet_to_announce_itself() {
    shut_down_while_a_replacement_plays("silent", Duration::from_secs(60));
}

/// Two shutdowns at once, the second ending later: it waits for the first, which keeps its grace
/// (the worker finishing an abandoned run is not killed when the second returns), and no worker is left.
fn a_second_shutdown_waits_for_the_first_which_keeps_its_grace() {
    runtime().block_on(async {
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .cancel_grace(Duration::from_secs(20))
            .start()
            .await
            .unwrap();
        let pid = s.worker_pids()[0];
        // A run that blocks its worker for 6 s, abandoned by its caller once it started: with so
        // long a cancel grace its worker finishes it, then exits when its input closes.
        let marker = std::env::temp_dir().join(format!("exec-spun-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let node = Marked {
            marker: marker.clone(),
            ms: 6_000,
            blocking: true,
        };
        let running = tokio::spawn({
            let s = s.clone();
            async move { task_core::run(&s, Task::portable("1", node).into_erased()).await }
        });
        wait_until("the run to start", || marker.exists());
        let _ = std::fs::remove_file(&marker);
        running.abort();
        let _ = running.await;
        let started = Instant::now();
        let (first, second) = tokio::join!(
            async {
                s.shutdown(Duration::from_secs(10)).await;
                started.elapsed()
            },
            async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                s.shutdown(Duration::from_secs(10)).await;
                started.elapsed()
            }
        );
        assert!(
            first >= Duration::from_secs(2),
            "the first shutdown was cut short after {first:?}"
        );
        assert!(
            second >= first,
            "the second returned first: {second:?} < {first:?}"
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} left behind"
        );
    });
}

/// Kills the child on every path, so a failed assertion cannot leave it running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workers_die_with_their_parent() {
    let me = std::env::current_exe().unwrap();
    let mut parent = KillOnDrop(
        std::process::Command::new(me)
            .arg("--orphan-parent")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut out = parent.0.stdout.take().unwrap();
    let mut byte = [0; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    assert!(pids.iter().all(|p| !is_dead(*p)));
    drop(parent);
    wait_until("the orphaned workers to die", || {
        pids.iter().all(|p| is_dead(*p))
    });
}

fn handshake_problems_are_clear_errors() {
    runtime().block_on(async {
        let e = fake("old-protocol").start().await.unwrap_err();
        assert!(e.is_handshake_mismatch(), "{e:?}");
        assert!(e.to_string().contains("protocol 999"), "{e}");
        let e = fake("garbage").start().await.unwrap_err();
        assert!(e.is_protocol(), "{e:?}");
        let e = fake("silent").start().await.unwrap_err();
        assert!(e.is_handshake_timeout(), "{e:?}");
        // A program that is not a worker (it never calls `run_worker_if_requested`) and exits:
        // the error says what to check.
        let e = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command("true", Vec::<String>::new())
            .start()
            .await
            .unwrap_err();
        assert!(e.is_spawn(), "{e:?}");
        assert!(e.to_string().contains("run_worker_if_requested"), "{e}");
        let mut bigger = registry();
        bigger.register::<Unknown>().unwrap();
        let e = ProcessExecutionStrategy::builder(bigger)
            .workers(1)
            .start()
            .await
            .unwrap_err();
        assert!(e.is_handshake_mismatch(), "{e:?}");
        assert!(e.to_string().contains("unknown"), "{e}");
        let e = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command("/nonexistent/worker", Vec::<String>::new())
            .start()
            .await
            .unwrap_err();
        assert!(e.is_spawn(), "{e:?}");
    });
    // Awaited outside any tokio runtime: a typed error, not a panic.
    let e = futures::executor::block_on(ProcessExecutionStrategy::builder(registry()).start())
        .unwrap_err();
    assert!(e.is_runtime(), "{e:?}");
}

/// A worker program whose main forgot `run_worker_if_requested` and starts a pool instead:
/// refused, so it exits, and the parent hears so at once (rather than each worker starting
/// workers of its own until the handshake times out).
fn a_worker_that_starts_a_pool_instead_of_serving_is_refused() {
    runtime().block_on(async {
        let me = std::env::current_exe().unwrap();
        let e = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command(me, ["--forgetful-worker"])
            .handshake_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap_err();
        assert!(e.is_spawn(), "{e:?}");
        assert!(e.to_string().contains("status 4"), "{e}");
    });
}

/// The worker side of the test above: a pool of its own, as a program that forgot to serve.
fn forgetful_worker() -> ! {
    let pool = ProcessExecutionStrategy::builder(registry())
        .workers(1)
        .start();
    match runtime().block_on(pool) {
        Err(e) if e.is_spawn() && e.to_string().contains("run_worker_if_requested") => {
            eprintln!("forgetful worker: {e}");
            std::process::exit(4)
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_pool) => {
            // A pool of its own started: it never announces itself to its parent.
            std::thread::sleep(Duration::from_secs(120));
            std::process::exit(0)
        }
    }
}

fn misbehaving_workers_fail_their_task_and_are_replaced() {
    runtime().block_on(async {
        for (mode, expected) in [
            ("garbage-after-hello", "malformed"),
            ("wrong-id", "which it was not given"),
            ("oversize-answer", "exceeds the maximum"),
        ] {
            let s = fake(mode).start().await.unwrap();
            let e = task_core::run(&s, Task::portable("1", Echo(1)).into_erased())
                .await
                .unwrap_err();
            assert!(e.is_worker_lost(), "{mode}: {e:?}");
            assert!(e.message().contains(expected), "{mode}: {e}");
            wait_until("a replacement", || {
                s.restarts() == 1 && s.worker_pids().len() == 1
            });
            s.shutdown(Duration::from_secs(2)).await;
        }
    });
}

/// A worker that dies in the middle of writing a frame (killed while it writes a large answer,
/// say) has died, not broken the protocol: the task it ran fails as lost, and the one queued in
/// it runs on its replacement.
fn a_worker_dying_mid_frame_hands_its_queued_tasks_on() {
    let marker =
        std::env::temp_dir().join(format!("exec-strategies-cut-short-{}", std::process::id()));
    std::fs::write(&marker, b"").unwrap();
    runtime().block_on(async {
        let me = std::env::current_exe().unwrap();
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command(me, ["--fake-worker", "cut-short", marker.to_str().unwrap()])
            .start()
            .await
            .unwrap();
        let running = task_core::run(&s, Task::portable("running", Echo(1)).into_erased());
        let queued = task_core::run(&s, Task::portable("queued", Echo(2)).into_erased());
        let both = futures::future::join(running, queued);
        let (running, queued) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("both tasks are answered");
        let e = running.unwrap_err();
        assert!(e.is_worker_lost() && !e.is_poison(), "{e:?}");
        let queued = queued.unwrap_or_else(|e| panic!("the queued task failed: {e}"));
        assert_eq!(queued.downcast_ref::<u64>(), Some(&2));
        s.shutdown(Duration::from_secs(5)).await;
    });
    let _ = std::fs::remove_file(&marker);
}

/// A worker whose end is seen before the end of its output (a process it started holds it) is
/// read to the end of what it wrote. When that breaks the protocol, what follows the breach may
/// say that a queued run started: such a run fails as lost rather than go to another worker,
/// where it would run twice.
fn a_run_started_behind_a_late_protocol_breach_is_not_run_twice() {
    let (dir, pid) = (std::env::temp_dir(), std::process::id());
    let marker = dir.join(format!("exec-strategies-late-breach-{pid}"));
    let ran = dir.join(format!("exec-strategies-late-breach-ran-{pid}"));
    std::fs::write(&marker, b"").unwrap();
    std::fs::write(&ran, b"").unwrap();
    runtime().block_on(async {
        let me = std::env::current_exe().unwrap();
        let args = ["--fake-worker", "late-breach", marker.to_str().unwrap()];
        let s = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .command(me, args.into_iter().chain([ran.to_str().unwrap()]))
            .start()
            .await
            .unwrap();
        let running = task_core::run(&s, Task::portable("running", Sleep(60_000)).into_erased());
        let running = tokio::spawn(running);
        wait_until("the first run is given", || {
            s.stats().workers.iter().any(|w| w.in_flight == 1)
        });
        let queued = Task::portable("queued", Touch(ran.clone())).into_erased();
        let queued = task_core::run(&s, queued);
        let both = futures::future::join(running, queued);
        let (running, queued) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("both runs are answered");
        let running = running.unwrap();
        assert!(running.unwrap_err().is_worker_lost());
        let times = std::fs::read_to_string(&ran).unwrap().lines().count();
        assert_eq!(times, 1, "the queued run ran {times} times: {queued:?}");
        assert!(queued.unwrap_err().is_worker_lost());
        s.shutdown(Duration::from_secs(5)).await;
    });
    let _ = std::fs::remove_file(&ran);
}

/// Workers that end on their own as soon as they start, with nothing run (a broken environment),
/// are not replaced in a tight loop: the pool pauses, longer each time, and a task waiting for a
/// worker meanwhile fails saying why instead of waiting.
fn workers_that_keep_ending_at_once_are_not_restarted_in_a_storm() {
    runtime().block_on(async {
        let s = fake("hello-then-exit").start().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Pausing 50 ms, doubled each time, the pool starts a handful in 2 s; without a pause,
        // one every few milliseconds.
        let restarts = s.restarts();
        assert!(restarts <= 10, "{restarts} workers started in 2 s");
        let waiting = task_core::run(&s, Task::portable("w", Echo(1)).into_erased());
        let e = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("the task is answered")
            .unwrap_err();
        assert!(e.is_worker_lost(), "{e:?}");
        assert!(e.message().contains("with nothing run"), "{e}");
        tokio::time::timeout(Duration::from_secs(20), s.shutdown(Duration::from_secs(1)))
            .await
            .expect("shutdown returns");
    });
}

fn a_pool_outlives_the_runtime_it_was_started_on() {
    // Answers are read on the runtime the pool was started on; when that runtime is gone, the
    // workers are replaced and read on the supervisor's runtime instead.
    let first = runtime();
    let s = first.block_on(async {
        let s = pool(2).await;
        // Both workers answer a few tasks: both readers run on this runtime.
        let calls = (0..8)
            .map(|i| task_core::run(&s, Task::portable(format!("w{i}"), Echo(i)).into_erased()));
        assert!(
            futures::future::join_all(calls)
                .await
                .iter()
                .all(Result::is_ok)
        );
        s
    });
    let before = s.worker_pids();
    drop(first);
    wait_until("both workers replaced", || {
        s.restarts() == 2 && s.worker_pids().len() == 2
    });
    runtime().block_on(async {
        for i in 0..20 {
            assert_echo(&s, format!("{i}"), i).await;
        }
        // Enough at once that frames are queued for the writing task, which runs on the pool's
        // own runtime and so outlives the first one too.
        let calls = (0..200_u64)
            .map(|i| task_core::run(&s, Task::portable(format!("p{i}"), Echo(i)).into_erased()));
        let answers =
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
                .await
                .expect("every task in flight is answered");
        for (i, answer) in (0..200_u64).zip(answers) {
            assert_eq!(answer.unwrap().downcast_ref::<u64>(), Some(&i));
        }
        assert_eq!(s.worker_pids().len(), 2);
        assert!(s.worker_pids().iter().all(|p| !before.contains(p)));
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// A multi-thread runtime reads the workers' answers, with its IO driver: a pool started on one
/// without it is a typed error from `start`, and nothing is left running. It started, and then
/// every task failed `worker_lost` as each worker's reader panicked.
fn a_pool_needs_the_io_driver_of_a_multi_thread_runtime_it_starts_on() {
    let no_io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let before = children();
    // The probe catches tokio's panic, which the default hook would print with its backtrace in
    // the test output as if something failed: a quiet hook meanwhile, as an application that
    // knows may set.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = no_io.block_on(ProcessExecutionStrategy::builder(registry()).start());
    std::panic::set_hook(hook);
    let error = started.expect_err("refused");
    assert!(error.is_runtime(), "{error}");
    assert!(error.to_string().contains("enable_io"), "{error}");
    assert_eq!(children(), before, "no worker was started");
}

/// A current-thread runtime runs its tasks only while a thread blocks on it, and may have no IO
/// driver: a pool started there answers whatever that runtime does (read on the pool's own
/// thread), from it and from any other runtime.
fn a_pool_started_on_a_current_thread_runtime_answers_while_it_idles() {
    let no_io = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let s = no_io.block_on(pool(1));
    let answer = no_io.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), assert_echo(&s, "no-io", 3)).await
    });
    assert!(answer.is_ok(), "answered on a runtime without IO");
    assert_eq!(s.restarts(), 0, "its worker was not lost");
    no_io.block_on(s.shutdown(Duration::from_secs(5)));

    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = idle.block_on(pool(1));
    // Nothing blocks on `idle` from here on.
    runtime().block_on(async {
        let answer =
            tokio::time::timeout(Duration::from_secs(10), assert_echo(&s, "idle", 4)).await;
        assert!(
            answer.is_ok(),
            "answered while the runtime it started on idles"
        );
        s.shutdown(Duration::from_secs(5)).await;
    });
}

fn many_tasks_in_flight_each_get_their_own_answer() {
    // Thousands in flight: past a few per worker, frames are queued and written together by the
    // pool's writing task, large ones (above a pipe's 64 KiB) across several writes.
    runtime().block_on(async {
        let s = pool(2).await;
        let calls = (0..3_000_u64).map(|i| {
            let task = if i % 100 == 7 {
                let len = 1_000 * usize::try_from(i).unwrap();
                Task::portable(format!("b{i}"), Blob(vec![(i % 251) as u8; len])).into_erased()
            } else {
                Task::portable(format!("e{i}"), Echo(i)).into_erased()
            };
            let s = &s;
            async move { (i, task_core::run(s, task).await) }
        });
        let answers =
            tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
                .await
                .expect("every task in flight is answered");
        for (i, answer) in answers {
            let value = answer.unwrap_or_else(|e| panic!("task {i}: {e}"));
            if i % 100 == 7 {
                let bytes = value.downcast_ref::<Vec<u8>>().expect("a blob's bytes");
                assert_eq!(bytes.len(), 1_000 * usize::try_from(i).unwrap(), "task {i}");
                assert!(bytes.iter().all(|&b| b == (i % 251) as u8), "task {i}");
            } else {
                assert_eq!(value.downcast_ref::<u64>(), Some(&i), "task {i}");
            }
        }
        s.shutdown(Duration::from_secs(5)).await;
    });
}

/// Plays a worker that breaks the protocol in the way `mode` names.
fn fake_worker(mode: &str) -> ! {
    let (mut input, mut output) = exec_strategies::process::worker_pipes().unwrap();
    if mode == "cut-short" || mode == "late-breach" {
        // Plays the pool's first worker only: its replacement serves.
        let marker = std::env::args().nth(3).expect("a marker");
        std::fs::remove_file(marker).unwrap();
    }
    if mode == "close-and-hang" {
        // Closes the protocol's pipes (as a program closing the descriptors it inherited does)
        // and lives on.
        drop((input, output));
        std::thread::sleep(Duration::from_secs(60));
        std::process::exit(0);
    }
    let mut send = |bytes: &[u8]| {
        output.write_all(bytes).unwrap();
        output.flush().unwrap();
    };
    let hello = |protocol| FromWorker::Hello {
        protocol,
        names: registry().names().into_iter().map(String::from).collect(),
        pid: std::process::id(),
    };
    match mode {
        "old-protocol" => send(&wire::encode_frame(&hello(999), usize::MAX).unwrap()),
        "garbage" => send(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]),
        "silent" => {}
        _ => send(&wire::encode_frame(&hello(PROTOCOL_VERSION), usize::MAX).unwrap()),
    }
    if mode == "hello-then-exit" {
        // Announces itself, then ends on its own before it is given anything: a broken
        // environment (a background thread's crash, a watchdog) rather than any task.
        std::process::exit(0);
    }
    loop {
        let mut header = [0; 4];
        if input.read_exact(&mut header).is_err() {
            std::process::exit(0);
        }
        let mut body = vec![0; u32::from_le_bytes(header) as usize];
        input.read_exact(&mut body).unwrap();
        let Ok(ToWorker::Run { id, announce, .. }) = wire::decode_body::<ToWorker>(&body) else {
            std::process::exit(0);
        };
        match mode {
            // Given a second run (queued: its start is to be announced), starts it (adds a line
            // to the file named after the marker) and ends at once, leaving a process that holds
            // its output to write, a moment later, a broken frame and then the run's `Started`.
            "late-breach" if announce => {
                let ran = std::env::args().nth(4).expect("a file to add a line to");
                let mut file = std::fs::OpenOptions::new().append(true).open(ran).unwrap();
                file.write_all(b"ran\n").unwrap();
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--late-writer", &id.to_string()])
                    .env_remove(exec_strategies::process::WORKER_ENV)
                    .stdout(output.try_clone().unwrap())
                    .spawn()
                    .unwrap();
                std::process::exit(0);
            }
            "garbage-after-hello" => send(&[3, 0, 0, 0, 0xfe, 0xfe, 0xfe]),
            "wrong-id" => {
                let done = FromWorker::Done {
                    id: id + 1_000,
                    outcome: Ok(vec![]),
                };
                send(&wire::encode_frame(&done, usize::MAX).unwrap());
            }
            "oversize-answer" => send(&u32::MAX.to_le_bytes()),
            // Given a second run (the first running, the second queued), dies in the middle of
            // a frame, as a worker killed while it writes a large answer does: its output closes
            // before its exit is seen.
            "cut-short" if id > 0 => {
                send(&[100, 0, 0, 0, 1, 2, 3]);
                drop(output);
                std::thread::sleep(Duration::from_millis(500));
                std::process::exit(9);
            }
            _ => {}
        }
    }
}

/// Names descriptors in the protocol's variable as a process that inherited a worker's
/// environment would find them: files, other pipes, closed numbers. Prints what `worker_pipes`
/// made of each, and whether the files it refused are still usable.
fn foreign_pipes() -> ! {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir();
    let path = |i| {
        dir.join(format!(
            "exec-strategies-foreign-{}-{i}",
            std::process::id()
        ))
    };
    let mut files = [0, 1].map(|i| std::fs::File::create(path(i)).unwrap());
    let (reads, writes) = std::io::pipe().unwrap();
    let inode = |fd: &dyn AsRawFd| {
        let named = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::metadata(named).map_or(0, |m| m.ino())
    };
    let file = |i: usize| {
        format!(
            "{}:{}",
            files[i].as_raw_fd(),
            files[i].metadata().unwrap().ino()
        )
    };
    let cases = [
        ("files", format!("{},{}", file(0), file(1))),
        (
            "other pipes",
            format!("{}:1,{}:2", reads.as_raw_fd(), writes.as_raw_fd()),
        ),
        ("closed", "900:1,901:2".to_owned()),
        (
            "the pipes",
            format!(
                "{}:{},{}:{}",
                reads.as_raw_fd(),
                inode(&reads),
                writes.as_raw_fd(),
                inode(&writes)
            ),
        ),
    ];
    for (what, named) in cases {
        // SAFETY: this process runs no other thread, so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("EXEC_STRATEGIES_PIPES", named) };
        let taken = exec_strategies::process::worker_pipes();
        println!(
            "{what}: {}",
            if taken.is_ok() { "taken" } else { "refused" }
        );
        // The pipes taken are owned by `taken` now, and must not be closed twice.
        std::mem::forget((taken, reads.try_clone(), writes.try_clone()));
    }
    let usable = files.iter_mut().all(|f| f.write_all(b"still mine").is_ok());
    println!("files usable: {usable}");
    let _ = [0, 1].map(|i| std::fs::remove_file(path(i)));
    std::mem::forget((reads, writes));
    std::process::exit(0)
}

/// A process that inherited a worker's environment (a program a node started, say) takes no
/// descriptor that is not the protocol's pipe: it would close what someone else owns.
fn a_process_that_inherited_a_workers_environment_takes_nothing() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("--foreign-pipes")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "files: refused",
            "other pipes: refused",
            "closed: refused",
            "the pipes: taken",
            "files usable: true"
        ]
    );
}

/// More workers than a pool keeps is a typed error from `start`, before anything is spawned
/// or allocated for them.
fn too_many_workers_is_a_clear_error() {
    runtime().block_on(async {
        for workers in [4097, usize::MAX] {
            let started = ProcessExecutionStrategy::builder(registry())
                .workers(workers)
                .start()
                .await;
            let error = started.expect_err("refused");
            assert!(error.is_spawn(), "{error}");
            assert!(error.to_string().contains("at most 4096"), "{error}");
        }
    });
}

/// Starts a pool, prints its workers' pids, and waits to be killed.
fn orphan_parent() -> ! {
    runtime().block_on(async {
        let s = pool(2).await;
        let pids: Vec<String> = s.worker_pids().iter().map(u32::to_string).collect();
        println!("{}", pids.join(" "));
        std::future::pending::<()>().await;
    });
    unreachable!()
}

/// The `(name, test)` pairs `main` runs, each named after its function.
macro_rules! named_tests {
    ($($test:ident),* $(,)?) => {
        [$((stringify!($test), $test as fn())),*]
    };
}

/// A program a worker's node starts inherits the worker's environment, not its pipes: it is no
/// worker, and runs as it would anywhere. It was taken for one and exited with status 3, so a node
/// could not run a tool of its own binary (or any program built on this crate).
fn a_program_a_node_starts_is_not_taken_for_a_worker() {
    runtime().block_on(async {
        let s = pool(1).await;
        let run = task_core::run(&s, Task::portable("self", RunSelf).into_erased()).await;
        let out = run.expect("the node ran the tool");
        let (code, said, err) = out.downcast_ref::<(Option<i32>, String, String)>().unwrap();
        s.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            (*code, said.as_str()),
            (Some(0), "the tool ran"),
            "stderr: {err}"
        );
    });
}

/// A worker whose pipes were closed on its way (a launcher that closes inherited descriptors)
/// fails, as it did before programs a node starts were told apart from workers: taken for one
/// of those, it ran the program's `main` (and a `main` that starts a pool would start more).
fn a_worker_that_lost_its_pipes_fails_and_runs_no_main() {
    let marker = std::env::temp_dir().join(format!("main-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let exe = std::env::current_exe().unwrap();
    // Closes every descriptor above stderr, then runs the worker in its place.
    let launcher =
        r#"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#;
    let args: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        launcher.into(),
        "launcher".into(),
        exe.into(),
        "--main-ran".into(),
        marker.clone().into(),
    ];
    let builder = ProcessExecutionStrategy::builder(registry()).workers(1);
    let builder = builder.handshake_timeout(Duration::from_secs(5));
    let started = runtime().block_on(builder.command("/bin/bash", args).start());
    let ran = marker.exists();
    let _ = std::fs::remove_file(&marker);
    let error = started.expect_err("a worker without its pipes serves nothing");
    assert!(!ran, "the worker ran the program's main: {error}");
    assert!(error.to_string().contains("status 3"), "{error}");
}

/// What `--late-writer ID` does for the `late-breach` worker, its output as stdout: waits for
/// the worker's end to be seen, then writes a frame no worker writes and run ID's `Started`.
fn late_writer(id: &str) -> ! {
    std::thread::sleep(Duration::from_millis(100));
    let started = FromWorker::Started {
        id: id.parse().unwrap(),
    };
    let mut bytes = vec![3, 0, 0, 0, 0xfe, 0xfe, 0xfe];
    bytes.extend(wire::encode_frame(&started, usize::MAX).unwrap());
    std::io::stdout().write_all(&bytes).unwrap();
    std::process::exit(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--late-writer") {
        late_writer(&args[2]);
    }
    if args.get(1).map(String::as_str) == Some("--fake-worker")
        && args
            .get(3)
            .is_none_or(|marker| std::path::Path::new(marker).exists())
    {
        fake_worker(args.get(2).map_or("", String::as_str));
    }
    if args.get(1).map(String::as_str) == Some("--orphan-parent") {
        orphan_parent();
    }
    if args.get(1).map(String::as_str) == Some("--foreign-pipes") {
        foreign_pipes();
    }
    if args.get(1).map(String::as_str) == Some("--forgetful-worker") {
        forgetful_worker();
    }
    if std::env::var_os(exec_strategies::process::WORKER_ENV).is_some() {
        // The nodes here panic on purpose, and a caught panic comes back to the test as the
        // task's error: the worker need not print it as well.
        std::panic::set_hook(Box::new(|_| {}));
    }
    run_worker_if_requested(&registry());
    if args.get(1).map(String::as_str) == Some("--tool") {
        println!("the tool ran");
        std::process::exit(0);
    }
    if args.get(1).map(String::as_str) == Some("--main-ran") {
        std::fs::write(&args[2], "main ran").unwrap();
        std::process::exit(0);
    }

    let tests: &[(&str, fn())] = &named_tests![
        a_program_a_node_starts_is_not_taken_for_a_worker,
        a_worker_that_lost_its_pipes_fails_and_runs_no_main,
        the_runs_of_a_dead_worker_wait_for_its_replacement_not_a_full_survivor,
        shutdown_needs_no_timer_of_the_callers_runtime,
        a_shorter_second_shutdown_shortens_the_first,
        round_trips_values_errors_and_panics,
        a_pool_outlives_the_runtime_it_was_started_on,
        a_pool_needs_the_io_driver_of_a_multi_thread_runtime_it_starts_on,
        a_pool_started_on_a_current_thread_runtime_answers_while_it_idles,
        many_tasks_in_flight_each_get_their_own_answer,
        refuses_what_cannot_cross_the_boundary,
        oversize_tasks_and_outputs_are_typed_errors,
        a_handshake_past_the_frame_limit_and_absurd_threads_still_start,
        the_smallest_frame_still_carries_the_error_of_an_output_too_large,
        a_sigkilled_worker_fails_only_its_own_task_and_is_replaced,
        a_worker_that_exits_reports_its_status,
        a_task_past_its_timeout_is_cancelled_in_its_worker,
        a_run_dropped_by_its_caller_is_cancelled_in_its_worker,
        a_run_let_go_of_stays_counted_in_its_worker_until_the_worker_is_done_with_it,
        tasks_queued_on_a_dying_worker_go_to_another,
        a_pipelined_worker_answers_each_run_with_the_next_start_in_one_write,
        a_queued_run_cancelled_behind_a_blocking_node_never_starts,
        a_run_cancelled_while_it_waits_for_a_place_is_counted_out_before_its_run_is_over,
        a_run_started_unseen_when_the_readers_runtime_ends_never_runs_twice,
        crashes_among_many_tasks_fail_only_themselves,
        a_worker_is_seen_to_end_even_when_a_process_it_started_lives_on,
        a_crash_while_decoding_a_task_is_that_tasks_alone,
        with_several_tasks_per_worker_each_answer_comes_when_its_task_ends,
        a_task_that_keeps_crashing_its_workers_is_poison,
        one_task_runs_at_a_time_per_worker_unless_asked,
        a_node_reading_stdin_or_printing_cannot_touch_a_frame,
        dropping_the_last_handle_stops_its_workers_and_supervisor,
        a_start_dropped_midway_leaves_nothing_behind,
        workers_are_recycled_after_k_tasks,
        shutdown_finishes_in_flight_work_refuses_new_and_leaves_no_process,
        a_shutdown_dropped_midway_goes_on_by_itself,
        a_second_shutdown_needs_no_poll_of_the_first,
        shutdown_while_a_worker_is_being_replaced_returns,
        a_second_shutdown_waits_for_the_first_which_keeps_its_grace,
        shutdown_returns_while_a_replacement_closes_its_output_and_lives_on,
        shutdown_returns_while_a_replacement_has_yet_to_announce_itself,
        workers_die_with_their_parent,
        a_process_that_inherited_a_workers_environment_takes_nothing,
        too_many_workers_is_a_clear_error,
        handshake_problems_are_clear_errors,
        a_worker_that_closes_its_output_and_lives_on_fails_start,
        a_worker_that_starts_a_pool_instead_of_serving_is_refused,
        a_worker_dying_mid_frame_hands_its_queued_tasks_on,
        a_run_started_behind_a_late_protocol_breach_is_not_run_twice,
        workers_that_keep_ending_at_once_are_not_restarted_in_a_storm,
        misbehaving_workers_fail_their_task_and_are_replaced,
    ];
    let filters: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
