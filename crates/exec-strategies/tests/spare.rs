//! Spare threads: a pool whose threads wait too deep in `block_on` to run more tasks hands them
//! to a spare thread, and only then; the spare keeps the tasks' order, limits, cancellation and
//! answers, and lingers a moment between tasks rather than starting anew for each.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exec_strategies::{ThreadedExecutionStrategy, block_on};
use task_core::{BoxError, Task, TaskExecutionStrategy};

fn name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Samples the process's OS thread count until dropped; `.peak()`.
struct Monitor {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
}
impl Monitor {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(os_threads(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self { stop, peak }
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}
impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `depth` block_ons stacked on this thread, the innermost saying so on `up`, then waiting for
/// `rx`.
fn nest(
    depth: usize,
    up: std::sync::mpsc::Sender<()>,
    rx: futures::channel::oneshot::Receiver<()>,
) {
    if depth <= 1 {
        let _ = block_on(async move {
            up.send(()).unwrap();
            rx.await
        });
    } else {
        block_on(async move { nest(depth - 1, up, rx) })
    }
}

/// Occupies the pool's (one) thread with a task whose thread waits 34 `block_on`s deep.
fn deep_waiter(
    s: &ThreadedExecutionStrategy,
) -> (task_core::Running, futures::channel::oneshot::Sender<()>) {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let (up, is_up) = std::sync::mpsc::channel();
    let t = Task::blocking("deep", "deep", move || {
        nest(34, up, rx);
        Ok::<_, BoxError>(())
    });
    let r = task_core::run(s, t.into_erased());
    is_up.recv_timeout(Duration::from_secs(5)).unwrap();
    (r, tx)
}

/// A strategy on a pool of one thread.
fn one_thread() -> ThreadedExecutionStrategy {
    ThreadedExecutionStrategy::builder()
        .threads(1)
        .build()
        .unwrap()
}

/// Starts a task on `s` that holds its thread until the returned sender is used, then returns
/// `output()`; returns once the task runs, with the name of the thread it runs on.
fn held<O>(
    s: &ThreadedExecutionStrategy,
    id: &str,
    output: impl FnOnce() -> O + Send + 'static,
) -> (task_core::Running, std::sync::mpsc::Sender<()>, String)
where
    O: std::fmt::Debug + Send + Sync + 'static,
{
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let (up, is_up) = std::sync::mpsc::channel::<String>();
    let task = Task::blocking(id, "held", move || {
        up.send(name()).unwrap();
        gate.recv().unwrap();
        Ok::<_, BoxError>(output())
    });
    let running = task_core::run(s, task.into_erased());
    let on = is_up.recv_timeout(Duration::from_secs(5)).unwrap();
    (running, go, on)
}

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// 300 parents each waiting for one trivial child, on a one-thread pool: a shallow tree.
#[test]
fn shallow_parents_each_waiting_for_one_child_pile_up_no_waits() {
    let s = one_thread();
    let mon = Monitor::start();
    let waiting = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads = Arc::new(Mutex::new(HashSet::new()));
    // Hold the pool thread (no block_on) while the parents queue.
    let (hold, go, _) = held(&s, "hold", || ());
    let runs: Vec<_> = (0..300)
        .map(|i| {
            let (s2, w, pk, th) = (s.clone(), waiting.clone(), peak.clone(), threads.clone());
            let t = Task::blocking(format!("p{i}"), "parent", move || {
                th.lock()
                    .unwrap()
                    .insert(format!("{:?}/{}", std::thread::current().id(), name()));
                pk.fetch_max(w.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let child = Task::blocking(format!("c{i}"), "child", move || Ok::<_, BoxError>(i));
                let out = block_on(task_core::run(&s2, child.into_erased()));
                w.fetch_sub(1, Ordering::SeqCst);
                out?;
                Ok::<_, BoxError>(i)
            });
            task_core::run(&s, t.into_erased())
        })
        .collect();
    go.send(()).unwrap();
    futures::executor::block_on(hold).unwrap();
    for r in runs {
        futures::executor::block_on(r).unwrap();
    }
    let th = threads.lock().unwrap();
    eprintln!(
        "peak parents waiting at once = {}, distinct threads running parents = {} ({:?}), peak OS threads = {}",
        peak.load(Ordering::SeqCst),
        th.len(),
        th.iter().filter(|n| n.contains("spare")).count(),
        mon.peak()
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "a shallow tree piled up {} waits",
        peak.load(Ordering::SeqCst)
    );
}

/// Async nodes that compute (never pending) on a pool whose thread waits deep: how many spares.
fn cpu_tasks_while_deep(asynchronous: bool) -> (usize, usize) {
    let s = one_thread();
    let (deep, release) = deep_waiter(&s);
    let base = os_threads();
    let mon = Monitor::start();
    let spares = Arc::new(Mutex::new(HashSet::new()));
    let runs: Vec<_> = (0..40)
        .map(|i| {
            let sp = spares.clone();
            let t = if asynchronous {
                Task::from_fn(format!("a{i}"), "cpu", move || async move {
                    sp.lock().unwrap().insert(std::thread::current().id());
                    spin(Duration::from_millis(150));
                    Ok::<_, BoxError>(())
                })
            } else {
                Task::blocking(format!("b{i}"), "cpu", move || {
                    sp.lock().unwrap().insert(std::thread::current().id());
                    spin(Duration::from_millis(150));
                    Ok::<_, BoxError>(())
                })
            };
            task_core::run(&s, t.into_erased())
        })
        .collect();
    let t = Instant::now();
    for r in runs {
        futures::executor::block_on(r).unwrap();
    }
    eprintln!("  took {:?}", t.elapsed());
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    let n = spares.lock().unwrap().len();
    (n, mon.peak() - base)
}

#[test]
fn cpu_bound_nodes_on_a_spare_start_no_more_spares() {
    let (threads_b, extra_b) = cpu_tasks_while_deep(false);
    eprintln!(
        "blocking: distinct threads ran tasks = {threads_b}, peak extra OS threads = {extra_b}"
    );
    let (threads_a, extra_a) = cpu_tasks_while_deep(true);
    eprintln!(
        "async:    distinct threads ran tasks = {threads_a}, peak extra OS threads = {extra_a}"
    );
    assert!(
        extra_a <= 2,
        "40 CPU-bound async nodes started {extra_a} threads at once on a 1-thread pool"
    );
}

/// A chain of nodes each waiting for the next on a user pool of one thread; the last uses
/// `pool.install` (its own pool's parallelism).
#[test]
fn a_node_on_a_spare_can_install_work_on_its_pool() {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let s = ThreadedExecutionStrategy::builder()
        .pool(pool.clone())
        .build()
        .unwrap();
    fn link(
        s: ThreadedExecutionStrategy,
        pool: Arc<rayon::ThreadPool>,
        i: usize,
        n: usize,
    ) -> Task<usize> {
        Task::blocking(format!("l{i}"), "link", move || {
            if i == n {
                eprintln!(
                    "last node on {:?}, rayon::current_thread_index = {:?}, current_num_threads = {}",
                    name(),
                    rayon::current_thread_index(),
                    rayon::current_num_threads()
                );
                return Ok::<_, BoxError>(pool.install(|| 42));
            }
            let next = link(s.clone(), pool.clone(), i + 1, n);
            let v = block_on(task_core::run(&s, next.into_erased()))?;
            Ok(*v.downcast_ref::<usize>().unwrap())
        })
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let top = link(s.clone(), pool.clone(), 0, 40);
    let run = task_core::run(&s, top.into_erased());
    std::thread::spawn(move || {
        let _ =
            tx.send(futures::executor::block_on(run).map(|v| *v.downcast_ref::<usize>().unwrap()));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    eprintln!("{got:?}");
    assert!(matches!(got, Ok(Ok(42))), "the chain never ended: {got:?}");
}

#[test]
fn max_in_flight_holds_for_nodes_on_spares() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(1)
        .max_in_flight(2)
        .build()
        .unwrap();
    let (deep, release) = deep_waiter(&s);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let runs: Vec<_> = (0..20)
        .map(|i| {
            let (r, p) = (running.clone(), peak.clone());
            let t = Task::from_fn(format!("a{i}"), "cpu", move || async move {
                p.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                spin(Duration::from_millis(30));
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            });
            task_core::run(&s, t.into_erased())
        })
        .collect();
    for r in runs {
        futures::executor::block_on(r).unwrap();
    }
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    eprintln!(
        "peak = {} stats {:?}",
        peak.load(Ordering::SeqCst),
        s.stats()
    );
    assert_eq!(peak.load(Ordering::SeqCst), 1);
    assert_eq!(s.stats().succeeded, 21);
}

/// A task queued while the pool waits deep and its spare is busy, cancelled before it starts.
#[test]
fn a_task_cancelled_while_queued_behind_a_busy_spare_never_starts() {
    let s = one_thread();
    let (deep, release) = deep_waiter(&s);
    let (busy, go, on) = held(&s, "busy", || ());
    assert_eq!(on, "threaded-spare", "the pool's one thread waits deep");
    let started = Arc::new(AtomicBool::new(false));
    let st = started.clone();
    let x = task_core::run(
        &s,
        Task::blocking("x", "x", move || {
            st.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .into_erased(),
    );
    let y = task_core::run(
        &s,
        Task::blocking("y", "y", move || Ok::<_, BoxError>(1)).into_erased(),
    );
    drop(x);
    go.send(()).unwrap();
    futures::executor::block_on(busy).unwrap();
    futures::executor::block_on(y).unwrap();
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    assert!(!started.load(Ordering::SeqCst));
    assert_eq!(s.stats().stopped, 1);
}

/// Shutdown with tasks queued behind a deep waiter, then everything dropped.
#[test]
fn shutdown_and_drop_with_tasks_queued_answer_each_once() {
    let s = one_thread();
    let (deep, release) = deep_waiter(&s);
    let (busy, go, _) = held(&s, "busy", || ());
    let queued: Vec<_> = (0..5)
        .map(|i| {
            task_core::run(
                &s,
                Task::blocking(format!("q{i}"), "q", move || Ok::<_, BoxError>(i)).into_erased(),
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(s.shutdown(Duration::from_millis(50)));
    let late = futures::executor::block_on(task_core::run(
        &s,
        Task::blocking("late", "l", || Ok::<_, BoxError>(0)).into_erased(),
    ));
    assert!(late.unwrap_err().is_shutdown());
    drop(s);
    go.send(()).unwrap();
    futures::executor::block_on(busy).unwrap();
    for q in queued {
        let r = futures::executor::block_on(q);
        assert!(r.is_ok(), "{r:?}");
    }
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
}

/// 200 tasks, one at a time, on a pool of `threads` whose first thread waits deep: how many ran
/// on spares, on how many spare threads, and how many started more than a spare's lingering
/// (100 ms) after the last one's body returned, when a new spare may start.
fn trickle_beside_a_deep_waiter(threads: usize) -> (usize, usize, usize) {
    let s = ThreadedExecutionStrategy::builder()
        .threads(threads)
        .build()
        .unwrap();
    let (deep, release) = deep_waiter(&s);
    let spares = Arc::new(Mutex::new(HashSet::new()));
    let (mut on_spare, mut late) = (0, 0);
    let mut last_end: Option<Instant> = None;
    for i in 0..200 {
        let sp = spares.clone();
        let t = Task::blocking(format!("t{i}"), "tiny", move || {
            let started = Instant::now();
            let spare = name() == "threaded-spare";
            if spare {
                sp.lock().unwrap().insert(std::thread::current().id());
            }
            Ok::<_, BoxError>((spare, started, Instant::now()))
        });
        let v = futures::executor::block_on(task_core::run(&s, t.into_erased())).unwrap();
        let (spare, started, ended) = *v.downcast_ref::<(bool, Instant, Instant)>().unwrap();
        late += usize::from(last_end.is_some_and(|end| started - end > LINGER_AT_LEAST));
        last_end = Some(ended);
        on_spare += usize::from(spare);
        std::thread::sleep(Duration::from_millis(1));
    }
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    let distinct = spares.lock().unwrap().len();
    (on_spare, distinct, late)
}

/// A little less than a spare's lingering: a gap longer than this may see a new spare.
const LINGER_AT_LEAST: Duration = Duration::from_millis(90);

#[test]
fn no_spare_runs_a_task_while_a_pool_thread_is_idle() {
    let (on_spare, _, _) = trickle_beside_a_deep_waiter(2);
    assert_eq!(on_spare, 0);
}

#[test]
fn one_spare_lingers_through_a_trickle_of_tasks() {
    let (on_spare, spares, late) = trickle_beside_a_deep_waiter(1);
    assert_eq!(on_spare, 200, "the pool's one thread waits deep");
    assert!(
        spares <= 1 + late,
        "a spare lingers between tasks: {spares} started, {late} tasks came late"
    );
}

#[derive(Debug)]
struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("panic in an output's Drop");
    }
}

/// An output whose Drop panics, dropped by the completion of a cancelled run on a spare.
#[test]
fn a_panic_escaping_a_task_on_a_spare_leaves_spares_working() {
    let s = one_thread();
    let (deep, release) = deep_waiter(&s);
    let (a, go, on) = held(&s, "a", || PanicOnDrop);
    assert_eq!(on, "threaded-spare", "the pool's one thread waits deep");
    drop(a); // cancelled: its outcome is dropped where it is delivered
    go.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let b = task_core::run(
        &s,
        Task::blocking("b", "b", || Ok::<_, BoxError>(name())).into_erased(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(futures::executor::block_on(b).map(|v| v.downcast_ref::<String>().cloned()))
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    eprintln!("b -> {got:?}");
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    assert!(got.is_ok(), "b never ran while the pool thread waited deep");
}

fn nest_then(depth: usize, f: Box<dyn FnOnce() + Send>) {
    if depth == 0 {
        f()
    } else {
        block_on(async move { nest_then(depth - 1, f) })
    }
}

/// A node whose thread waits `depth` deep joins: one half waits (helping) for the other.
fn join_at(depth: usize) -> Result<(), std::sync::mpsc::RecvTimeoutError> {
    let s = one_thread();
    let t = Task::blocking("j", "join", move || {
        nest_then(
            depth,
            Box::new(|| {
                let (tx, rx) = futures::channel::oneshot::channel::<()>();
                rayon::join(|| block_on(rx).unwrap(), move || tx.send(()).unwrap());
            }),
        );
        Ok::<_, BoxError>(())
    });
    let run = task_core::run(&s, t.into_erased());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(futures::executor::block_on(run).is_ok()));
    rx.recv_timeout(Duration::from_secs(5)).map(drop)
}

#[test]
fn a_node_waiting_past_the_depth_runs_its_own_join_half() {
    let shallow = join_at(3);
    let deep = join_at(40);
    eprintln!("depth 3 -> {shallow:?}, depth 40 -> {deep:?}");
    assert!(deep.is_ok());
}

#[test]
fn two_strategies_on_one_pool_with_a_deep_waiter_keep_their_limits() {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let a = ThreadedExecutionStrategy::builder()
        .pool(pool.clone())
        .max_in_flight(1)
        .build()
        .unwrap();
    let b = ThreadedExecutionStrategy::builder()
        .pool(pool.clone())
        .build()
        .unwrap();
    let (deep, release) = deep_waiter(&b);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut runs = Vec::new();
    for i in 0..20 {
        let (r, p) = (running.clone(), peak.clone());
        let ta = Task::from_fn(format!("a{i}"), "a", move || async move {
            p.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            spin(Duration::from_millis(10));
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        });
        runs.push(task_core::run(&a, ta.into_erased()));
        runs.push(task_core::run(
            &b,
            Task::from_fn(format!("b{i}"), "b", || async { Ok::<_, BoxError>(()) }).into_erased(),
        ));
    }
    for r in runs {
        futures::executor::block_on(r).unwrap();
    }
    release.send(()).unwrap();
    futures::executor::block_on(deep).unwrap();
    eprintln!(
        "peak a = {}, a {:?}, b {:?}",
        peak.load(Ordering::SeqCst),
        a.stats(),
        b.stats()
    );
    assert_eq!(peak.load(Ordering::SeqCst), 1);
}

fn wait_in_thread(
    run: task_core::Running,
    secs: u64,
) -> Result<bool, std::sync::mpsc::RecvTimeoutError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(futures::executor::block_on(run).is_ok()));
    rx.recv_timeout(Duration::from_secs(secs))
}

/// A spare waiting 33 deep for its own child, handed on while the spare was busy (so counted
/// free), after the pool thread that handed it on has gone back to depth 0.
#[test]
fn a_spare_waiting_deep_for_its_own_handed_on_child_gets_another_spare() {
    let s = one_thread();
    let (done_tx, done_rx) = futures::channel::oneshot::channel::<()>();
    let s2 = s.clone();
    let j0 = Task::blocking("j0", "j0", move || {
        let j = Task::blocking("j", "j", || Ok::<_, BoxError>(1));
        let r = task_core::run(&s2, j.into_erased()); // from the spare: to the injector
        std::thread::sleep(Duration::from_millis(50)); // busy: the pool thread hands j on now
        done_tx.send(()).unwrap(); // the pool thread's deep wait ends
        std::thread::sleep(Duration::from_millis(50));
        nest_then(
            32,
            Box::new(move || {
                block_on(r).unwrap();
            }),
        ); // waits 33 deep
        Ok::<_, BoxError>(())
    });
    let j0_cell = Arc::new(std::sync::Mutex::new(None));
    let (c, s3) = (j0_cell.clone(), s.clone());
    let root = Task::blocking("root", "root", move || {
        nest_then(
            33,
            Box::new(move || {
                *c.lock().unwrap() = Some(task_core::run(&s3, j0.into_erased()));
                let _ = block_on(done_rx);
            }),
        );
        Ok::<_, BoxError>(())
    });
    let root = task_core::run(&s, root.into_erased());
    assert_eq!(wait_in_thread(root, 5), Ok(true), "root");
    let j0 = j0_cell.lock().unwrap().take().unwrap();
    let got = wait_in_thread(j0, 5);
    assert_eq!(
        got,
        Ok(true),
        "j0 never finished: its child stays handed on"
    );
}
