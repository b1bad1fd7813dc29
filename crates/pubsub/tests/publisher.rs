//! Integration tests of the publisher's guarantees.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures::StreamExt;
use pubsub::{Buffer, Missed, Publisher};

fn started<M: Clone + Send + 'static>(capacity: usize) -> Publisher<M> {
    let p = Publisher::with_capacity(capacity);
    p.start().unwrap();
    p
}

/// A callback that records every message; a missed run is recorded as `u32::MAX`, which no
/// test publishes, so an assertion on the messages catches it.
type Seen = Arc<Mutex<Vec<u32>>>;

fn collector() -> (Seen, impl FnMut(Result<u32, Missed>) + Send + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |m: Result<u32, Missed>| {
        sink.lock().unwrap().push(m.unwrap_or(u32::MAX));
    })
}

/// Reads a stream to its end, failing on a missed message.
async fn read_all(mut stream: pubsub::Subscription<u32>) -> Vec<u32> {
    let mut got = Vec::new();
    while let Some(m) = stream.next().await {
        got.push(m.expect("nothing missed"));
    }
    got
}

/// Fails rather than hangs when `future` never finishes.
async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_sees_messages_in_publish_order() {
    // A ring larger than the run: no bounded subscriber can fall a whole buffer behind.
    let p = started::<u32>(4_096);
    let (a, cb_a) = collector();
    let (b, cb_b) = collector();
    let (c, cb_c) = collector();
    p.subscribe(cb_a).unwrap();
    p.subscribe(cb_b).unwrap();
    p.subscribe_with(Buffer::Unbounded, cb_c).unwrap();
    let bounded = tokio::spawn(read_all(p.subscribe_stream().unwrap()));
    let unbounded = tokio::spawn(read_all(
        p.subscribe_stream_with(Buffer::Unbounded).unwrap(),
    ));
    for i in 0..2_000 {
        p.publish(i).unwrap();
    }
    p.shutdown().await;
    let expected: Vec<u32> = (0..2_000).collect();
    assert_eq!(*a.lock().unwrap(), expected);
    assert_eq!(*b.lock().unwrap(), expected);
    assert_eq!(*c.lock().unwrap(), expected);
    assert_eq!(bounded.await.unwrap(), expected);
    assert_eq!(unbounded.await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_give_every_subscriber_the_same_order() {
    let p = started::<u32>(8);
    let (a, cb_a) = collector();
    let (b, cb_b) = collector();
    p.subscribe_with(Buffer::Unbounded, cb_a).unwrap();
    p.subscribe_with(Buffer::Unbounded, cb_b).unwrap();
    let stream = tokio::spawn(read_all(
        p.subscribe_stream_with(Buffer::Unbounded).unwrap(),
    ));
    // Four threads publish at once; publish never waits, so no runtime is involved.
    let publishers: Vec<_> = (0..4)
        .map(|k| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..2_500 {
                    p.publish(k * 10_000 + i).unwrap();
                }
            })
        })
        .collect();
    for t in publishers {
        t.join().unwrap();
    }
    p.shutdown().await;
    let a = a.lock().unwrap().clone();
    assert_eq!(a.len(), 10_000);
    assert_eq!(a, *b.lock().unwrap());
    assert_eq!(a, stream.await.unwrap());
    // Each publisher's own messages stay in its order.
    for k in 0..4 {
        let mine: Vec<u32> = a.iter().copied().filter(|m| m / 10_000 == k).collect();
        assert_eq!(mine, (0..2_500).map(|i| k * 10_000 + i).collect::<Vec<_>>());
    }
}

/// A `MakeWriter` that captures log lines for assertions.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_panicking_subscriber_is_logged_at_warn_and_the_others_keep_receiving() {
    // Callbacks run on threads of their own, so the capture is the process's default; other
    // tests log too, so only this subscriber's lines are counted.
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let p = started::<u32>(16);
    let (panicky_seen, mut record) = collector();
    let id = p
        .subscribe(move |m| {
            let m = m.unwrap();
            record(Ok(m));
            assert!(m % 2 == 0, "odd message {m}");
        })
        .unwrap();
    let (healthy, cb) = collector();
    p.subscribe(cb).unwrap();
    for i in 0..10 {
        p.publish(i).unwrap();
    }
    // No runtime: shutdown needs none either.
    futures::executor::block_on(p.shutdown());
    assert_eq!(*healthy.lock().unwrap(), (0..10).collect::<Vec<_>>());
    // The panicking subscriber itself kept receiving after each panic.
    assert_eq!(*panicky_seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let number = id.to_string().trim_start_matches("subscriber-").to_owned();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains("subscriber panicked")
                && l.contains(&format!("subscriber={number} "))
        })
        .collect();
    assert_eq!(warnings.len(), 5, "{text}");
    assert!(warnings[0].contains("odd message 1"), "{text}");
}

#[tokio::test]
async fn an_unread_subscriber_delays_nobody_and_is_told_exactly_what_it_missed() {
    const N: u32 = 10_000;
    let capacity = 100;
    let p = started::<u32>(capacity);
    // Held, never read while the messages go out.
    let mut laggard = p.subscribe_stream().unwrap();
    let reader = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    for i in 0..N {
        // Synchronous: nothing here can wait for the laggard.
        p.publish(i).unwrap();
    }
    p.shutdown().await;
    assert_eq!(read_all(reader).await, (0..N).collect::<Vec<_>>());

    // The ring keeps the last `capacity` messages, rounded up to a power of two.
    let kept = u32::try_from(capacity.next_power_of_two()).unwrap();
    let first = laggard.next().await.expect("an item");
    let missed = first.expect_err("the oldest messages were overwritten");
    assert_eq!(missed.count(), u64::from(N - kept));
    let mut rest = Vec::new();
    while let Some(item) = laggard.next().await {
        rest.push(item.expect("missed only once"));
    }
    assert_eq!(missed.count() + rest.len() as u64, u64::from(N));
    assert_eq!(
        rest,
        (N - kept..N).collect::<Vec<_>>(),
        "the last ones, in order"
    );
}

/// A message that runs its closure as it is dropped.
struct OnDrop(Box<dyn Fn() + Send + Sync>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// A message, for `publisher` to publish, that calls `publisher` as it is dropped and sends
/// `dropped` how many subscribers it has.
fn calls_back<M: Clone + Send + 'static>(
    publisher: &Publisher<M>,
    dropped: &mpsc::Sender<usize>,
) -> Arc<OnDrop> {
    let (publisher, dropped) = (publisher.clone(), dropped.clone());
    Arc::new(OnDrop(Box::new(move || {
        let _ = dropped.send(publisher.lags().len());
    })))
}

#[test]
fn a_message_overwritten_for_a_laggard_is_dropped_outside_the_publishers_lock() {
    let p = started::<Arc<OnDrop>>(1);
    // Never read: each publish overwrites the message before, whose last reference the ring
    // held, so it is dropped by the publish. Never dropped either: a failing run would wait
    // for the lock there.
    std::mem::forget(p.subscribe_stream().unwrap());
    let (dropped_tx, dropped) = mpsc::channel();
    let publisher = p.clone();
    let publishing = std::thread::spawn(move || {
        for _ in 0..3 {
            publisher
                .publish(calls_back(&publisher, &dropped_tx))
                .unwrap();
        }
    });
    // Dropped under the lock, a message calling the publisher would never return.
    for _ in 0..2 {
        let seen = dropped.recv_timeout(Duration::from_secs(30));
        assert_eq!(seen, Ok(1), "an overwritten message called its publisher");
    }
    publishing.join().unwrap();
}

/// A message whose `Clone` publishes to another publisher: user code run under the lock.
struct PublishesWhenCloned(Publisher<Arc<OnDrop>>);

impl Clone for PublishesWhenCloned {
    fn clone(&self) -> Self {
        let _ = self.0.publish(Arc::new(OnDrop(Box::new(|| {}))));
        Self(self.0.clone())
    }
}

#[test]
fn what_a_publish_inside_a_publish_lets_go_of_is_dropped_after_the_outer_lock() {
    let outer = started::<PublishesWhenCloned>(4);
    // Its queue takes a clone of each message, under the outer lock.
    let _all = outer.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let inner = started::<Arc<OnDrop>>(1);
    std::mem::forget(inner.subscribe_stream().unwrap());
    let (dropped_tx, dropped) = mpsc::channel();
    inner.publish(calls_back(&outer, &dropped_tx)).unwrap();
    // The clone's publish overwrites that message, which calls the outer publisher as it drops.
    std::thread::spawn(move || outer.publish(PublishesWhenCloned(inner)).is_ok());
    let seen = dropped.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        seen,
        Ok(1),
        "the overwritten message called the outer publisher"
    );
}

#[test]
fn a_message_whose_drop_panics_leaves_the_publish_that_overwrote_it_whole() {
    let p = started::<Arc<OnDrop>>(1);
    std::mem::forget(p.subscribe_stream().unwrap());
    let panics = Arc::new(OnDrop(Box::new(|| panic!("the message's drop broke"))));
    let (dropped_tx, dropped) = mpsc::channel();
    let later = pubsub::defer_drops();
    p.publish(panics).unwrap();
    p.publish(calls_back(&p, &dropped_tx)).unwrap();
    // Both overwritten, each dropped apart: the second's drop still runs.
    p.publish(Arc::new(OnDrop(Box::new(|| {})))).unwrap();
    drop(later);
    assert_eq!(dropped.recv_timeout(Duration::from_secs(30)), Ok(1));
    assert!(p.publish(Arc::new(OnDrop(Box::new(|| {})))).is_ok());
}

#[test]
fn a_laggard_dropped_holding_the_last_copies_of_messages_lets_their_drops_publish() {
    let p = started::<Arc<OnDrop>>(4);
    let mut reader = p.subscribe_stream().unwrap();
    let laggard = p.subscribe_stream().unwrap();
    let (dropped_tx, dropped) = mpsc::channel();
    for _ in 0..4 {
        let (publisher, dropped) = (p.clone(), dropped_tx.clone());
        let publishes = move || {
            let published = publisher.publish(Arc::new(OnDrop(Box::new(|| {}))));
            let _ = dropped.send(published.is_ok());
        };
        p.publish(Arc::new(OnDrop(Box::new(publishes)))).unwrap();
    }
    futures::executor::block_on(async {
        for _ in 0..4 {
            reader.next().await.unwrap().unwrap();
        }
    });
    // Never dropped: on a failure it would wait for the lock the stuck publish holds.
    std::mem::forget(reader);
    // The laggard's receiver drops the messages as it goes, under the ring's own locks.
    std::thread::spawn(move || drop(laggard));
    for _ in 0..4 {
        let published = dropped.recv_timeout(Duration::from_secs(30));
        assert_eq!(published, Ok(true), "a dropped message published");
    }
}

/// A message each of whose copies runs its hook as it is dropped: a value, not an `Arc`, so the
/// ring's own copy runs it too.
#[derive(Clone)]
struct Hooked(Option<Arc<dyn Fn() + Send + Sync>>);

impl Drop for Hooked {
    fn drop(&mut self) {
        if let Some(hook) = &self.0 {
            hook();
        }
    }
}

/// The ring's copy of a message is dropped as its last reader reads it, under a lock of the
/// ring's that a publish takes too: a `Drop` that published there froze the bus for good (a
/// slow one held up every publisher).
#[test]
fn the_copy_a_last_reader_leaves_is_dropped_outside_the_rings_locks() {
    let p = started::<Hooked>(1);
    let mut reader = p.subscribe_stream().unwrap();
    let (published_tx, published) = mpsc::channel();
    let (publisher, once) = (p.clone(), Mutex::new(Some(published_tx)));
    // Publishes once, from whichever copy is dropped first.
    let hook = move || {
        if let Some(tx) = once.lock().unwrap().take() {
            let _ = tx.send(publisher.publish(Hooked(None)).is_ok());
        }
    };
    p.publish(Hooked(Some(Arc::new(hook)))).unwrap();
    std::thread::spawn(move || {
        let first = futures::executor::block_on(reader.next());
        drop(first);
        // Never dropped: on a failure it would wait for the lock the stuck publish holds.
        std::mem::forget(reader);
    });
    let seen = published.recv_timeout(Duration::from_secs(30));
    assert_eq!(seen, Ok(true), "the dropped copy published");
    let other = p.clone();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(other.publish(Hooked(None)).is_ok()));
    assert_eq!(
        done.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the bus froze"
    );
}

/// A message whose first `Clone` waits until the test lets it go.
struct Gated(Option<Arc<Mutex<mpsc::Receiver<()>>>>);

impl Clone for Gated {
    fn clone(&self) -> Self {
        if let Some(gate) = &self.0 {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(60));
        }
        Gated(None)
    }
}

/// A bounded reader's copy of a message was cloned under the lock of its slot in the ring, which
/// a publish landing on that slot takes too: a slow `Clone` held up every publisher.
#[test]
fn a_bounded_readers_slow_clone_holds_no_publish_up() {
    let p = started::<Gated>(1);
    let mut reader = p.subscribe_stream().unwrap();
    // Never reads: it keeps the ring's copy, so the reader's must be cloned.
    let _holder = p.subscribe_stream().unwrap();
    let (open, gate) = mpsc::channel();
    p.publish(Gated(Some(Arc::new(Mutex::new(gate))))).unwrap();
    std::thread::spawn(move || {
        let _ = futures::executor::block_on(reader.next());
        std::mem::forget(reader);
    });
    std::thread::sleep(Duration::from_millis(200));
    let (done_tx, done) = mpsc::channel();
    let other = p.clone();
    // Lands on the slot being read: capacity 1.
    std::thread::spawn(move || done_tx.send(other.publish(Gated(None)).is_ok()));
    let published = done.recv_timeout(Duration::from_secs(30));
    let _ = open.send(());
    assert_eq!(published, Ok(true), "a publish waited for a reader's Clone");
}

/// A lone bounded subscriber is handed the message itself, not a clone: the last reader of a
/// message takes it (here one whose `Clone` would panic).
#[tokio::test]
async fn the_last_reader_of_a_message_takes_it_uncloned() {
    let p = started::<Fragile>(8);
    let mut stream = p.subscribe_stream().unwrap();
    p.publish(Fragile(true)).unwrap();
    let taken = within("the message", stream.next()).await.unwrap();
    assert!(taken.expect("not cloned, so not missed").0);
}

thread_local! {
    /// What a thread leaves to its locals' destructors.
    static LEFT: std::cell::RefCell<Option<OnDrop>> = const { std::cell::RefCell::new(None) };
}

#[test]
fn a_publish_from_a_thread_locals_destructor_works() {
    let p = started::<u32>(4);
    let mut stream = p.subscribe_stream().unwrap();
    let publisher = p.clone();
    std::thread::spawn(move || {
        // Set before the thread's first publish: destroyed after the bus's own locals.
        let last = publisher.clone();
        LEFT.with(|left| {
            *left.borrow_mut() = Some(OnDrop(Box::new(move || last.publish(2).unwrap())));
        });
        publisher.publish(1).unwrap();
    })
    .join()
    .expect("the thread ended without a panic");
    let read =
        futures::executor::block_on(async { vec![stream.next().await, stream.next().await] });
    assert_eq!(read, [Some(Ok(1)), Some(Ok(2))]);
}

/// A message whose `Clone` panics when asked to.
#[derive(Debug)]
struct Fragile(bool);

impl Clone for Fragile {
    fn clone(&self) -> Self {
        assert!(!self.0, "this message refuses to be cloned");
        Fragile(false)
    }
}

/// A message whose `Clone` panics (the first in each run here) is missed by every kind of
/// subscriber, each told so, while the publisher goes on and nothing stops: a callback's thread
/// lived on, and a bounded stream had skipped it without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_clone_panics_is_missed_by_each_subscriber_which_is_told_so() {
    let p = started::<Fragile>(8);
    let mut bounded = p.subscribe_stream().unwrap();
    // Never reads: it keeps the ring's copy, so each reader's must be cloned (the last reader of
    // a message takes it uncloned).
    let _holder = p.subscribe_stream().unwrap();
    let mut unbounded = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let (tx, called) = mpsc::channel();
    p.subscribe(move |m: Result<Fragile, Missed>| {
        let _ = tx.send(m.map(|_| ()).map_err(|missed| missed.count()));
    })
    .unwrap();
    p.publish(Fragile(true))
        .expect("the publisher is not disturbed");
    p.publish(Fragile(false)).unwrap();
    for stream in [&mut bounded, &mut unbounded] {
        let missed = within("the missed one", stream.next()).await.unwrap();
        let missed = missed.expect_err("told it missed the message");
        assert_eq!(missed.count(), 1);
        assert_eq!(missed.to_string(), "missed 1 message: its Clone panicked");
        let next = within("the next one", stream.next()).await.unwrap();
        assert!(next.is_ok(), "the next message arrives");
    }
    let wait = Duration::from_secs(60);
    assert_eq!(
        called.recv_timeout(wait),
        Ok(Err(1)),
        "the callback is told"
    );
    assert_eq!(
        called.recv_timeout(wait),
        Ok(Ok(())),
        "and its thread goes on"
    );
    within("shutdown", p.shutdown()).await;
}

#[tokio::test]
async fn a_laggard_resumes_after_what_it_missed_and_misses_again_only_when_it_falls_behind() {
    let p = started::<u32>(4);
    let mut stream = p.subscribe_stream().unwrap();
    for i in 0..6 {
        p.publish(i).unwrap();
    }
    assert_eq!(stream.next().await, Some(Err(missed(2))));
    for i in 2..6 {
        assert_eq!(stream.next().await, Some(Ok(i)));
    }
    // Caught up: four more fit.
    for i in 6..10 {
        p.publish(i).unwrap();
    }
    for i in 6..10 {
        assert_eq!(stream.next().await, Some(Ok(i)));
    }
}

/// A `Missed` of `n`, read off a stream that missed exactly that many.
fn missed(n: u32) -> Missed {
    let p = started::<u32>(1);
    let mut stream = p.subscribe_stream().unwrap();
    for i in 0..=n {
        p.publish(i).unwrap();
    }
    futures::executor::block_on(stream.next())
        .unwrap()
        .unwrap_err()
}

#[test]
fn missed_says_how_many() {
    let m = missed(12);
    assert_eq!(m.count(), 12);
    assert_eq!(
        m.to_string(),
        "missed 12 messages: the subscriber fell a whole buffer behind"
    );
    assert_eq!(
        missed(1).to_string(),
        "missed 1 message: the subscriber fell a whole buffer behind"
    );
    let as_error: &dyn std::error::Error = &m;
    assert!(as_error.source().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_and_panicking_callbacks_stall_only_themselves() {
    const N: u32 = 10_000;
    let p = started::<u32>(16_384);
    // Blocks until the test ends (the sender is dropped then).
    let (_never, blocked) = mpsc::channel::<()>();
    let (entered_tx, entered) = mpsc::channel::<()>();
    p.subscribe(move |_| {
        let _ = entered_tx.send(());
        let _ = blocked.recv();
    })
    .unwrap();
    p.subscribe(|m| panic!("always: {m:?}")).unwrap();
    let (normal, cb) = collector();
    p.subscribe(cb).unwrap();
    let stream = tokio::spawn(read_all(p.subscribe_stream().unwrap()));
    for i in 0..N {
        p.publish(i).unwrap();
    }
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the stuck callback was called");
    within(
        "shutdown",
        p.shutdown_with_grace(Duration::from_millis(100)),
    )
    .await;
    assert_eq!(*normal.lock().unwrap(), (0..N).collect::<Vec<_>>());
    assert_eq!(stream.await.unwrap(), (0..N).collect::<Vec<_>>());
    assert!(p.publish(N).unwrap_err().is_shut_down());
}

#[tokio::test]
async fn an_unbounded_subscriber_never_misses_a_message() {
    const N: u32 = 10_000;
    let p = started::<u32>(4);
    let mut unbounded = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let mut bounded = p.subscribe_stream().unwrap();
    for i in 0..N {
        p.publish(i).unwrap();
    }
    for i in 0..N {
        assert_eq!(unbounded.next().await, Some(Ok(i)));
    }
    // The bounded one beside it on the same small ring did miss.
    assert!(bounded.next().await.unwrap().is_err());
    p.shutdown().await;
    assert_eq!(unbounded.next().await, None);
}

#[tokio::test]
async fn subscriber_ids_are_unique_across_publishers() {
    let one = started::<u32>(16);
    let other = started::<u32>(16);
    let (seen, cb) = collector();
    let theirs = other.subscribe_with(Buffer::Unbounded, cb).unwrap();
    let mine = one.subscribe_stream().unwrap();
    assert_ne!(mine.id(), theirs);
    let err = one.unsubscribe(theirs).unwrap_err();
    assert!(err.is_unknown_subscriber(), "{err}");
    // The other publisher's subscriber is unaffected.
    other.publish(7).unwrap();
    assert_eq!(other.subscriber_count(), 1);
    other.shutdown().await;
    assert_eq!(*seen.lock().unwrap(), vec![7]);
    // Many ids, none repeated, between the two.
    let mut ids: Vec<_> = (0..100)
        .flat_map(|_| {
            [
                one.subscribe_stream().unwrap().id(),
                one.subscribe_stream_with(Buffer::Unbounded).unwrap().id(),
            ]
        })
        .collect();
    ids.push(theirs);
    ids.push(mine.id());
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_an_unrepresentable_grace_waits_without_a_deadline() {
    // Room for every message: the slow callback misses none.
    let p = started::<u32>(64);
    let (seen, mut cb) = collector();
    p.subscribe(move |m| {
        std::thread::sleep(Duration::from_millis(1));
        cb(m);
    })
    .unwrap();
    for i in 0..50 {
        p.publish(i).unwrap();
    }
    within("shutdown", p.shutdown_with_grace(Duration::MAX)).await;
    assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
    // Again, with nothing left to wait for.
    within("shutdown", p.shutdown_with_grace(Duration::MAX)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_callbacks_within_the_grace() {
    let p = started::<u32>(16);
    let (seen, mut cb) = collector();
    p.subscribe(move |m| {
        std::thread::sleep(Duration::from_millis(20));
        cb(m);
    })
    .unwrap();
    for i in 0..5 {
        p.publish(i).unwrap();
    }
    // The grace is far longer than the work: shutdown returns only once all of it is done.
    p.shutdown_with_grace(Duration::from_secs(600)).await;
    assert_eq!(*seen.lock().unwrap(), (0..5).collect::<Vec<_>>());
}

/// A shutdown that follows a callback's subscription as closely as it can (while its thread is
/// being started) still waits for the callback to take what was published before.
#[test]
fn shutdown_right_after_a_callback_subscribes_waits_for_it() {
    let mut early = 0;
    for _ in 0..200 {
        let p = started::<u32>(16);
        let done = Arc::new(AtomicBool::new(false));
        let (subscriber, flag) = (p.clone(), Arc::clone(&done));
        let subscribing = std::thread::spawn(move || {
            subscriber.subscribe(move |m| {
                if m.is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                    flag.store(true, Ordering::SeqCst);
                }
            })
        });
        while !p.has_subscribers() {
            std::hint::spin_loop();
        }
        p.publish(7).unwrap();
        futures::executor::block_on(p.shutdown_with_grace(Duration::from_secs(60)));
        early += usize::from(!done.load(Ordering::SeqCst));
        subscribing.join().unwrap().unwrap();
    }
    assert_eq!(
        early, 0,
        "shutdowns that returned before the callback was done"
    );
}

#[test]
fn nobody_subscribed_is_visible_and_publishing_to_nobody_succeeds() {
    let p = started::<u32>(16);
    assert!(!p.has_subscribers());
    p.publish(1).unwrap();
    let stream = p.subscribe_stream().unwrap();
    assert!(p.has_subscribers());
    drop(stream);
    assert!(!p.has_subscribers());
    let listener = p.listener(|_: &u32| true, |m| m);
    assert!(p.has_subscribers());
    drop(listener);
    assert!(!p.has_subscribers());
    let unbounded = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    assert!(p.has_subscribers());
    p.unsubscribe(unbounded.id()).unwrap();
    assert!(!p.has_subscribers());
    p.publish(2).unwrap();
}

#[tokio::test]
async fn a_listener_is_subscribed_when_created_not_when_awaited() {
    let p = started::<u32>(16);
    let listener = p.listener(|m: &u32| *m > 10, |m| m * 2);
    assert_eq!(p.subscriber_count(), 1);
    p.publish(5).unwrap();
    p.publish(11).unwrap();
    p.publish(12).unwrap();
    // Awaited only now, after its message was published.
    assert_eq!(listener.await.unwrap(), 22);
    assert_eq!(p.subscriber_count(), 0, "a resolved listener unsubscribes");
}

#[tokio::test]
async fn a_dropped_listener_unsubscribes() {
    let p = started::<u32>(16);
    let listener = p.listener(|_: &u32| true, |m| m);
    let other = p.listener(|m: &u32| *m == 1, |m| m);
    assert_eq!(p.subscriber_count(), 2);
    drop(listener);
    assert_eq!(p.subscriber_count(), 1);
    p.publish(1).unwrap();
    assert_eq!(other.await.unwrap(), 1);
    assert_eq!(p.subscriber_count(), 0);
}

#[tokio::test]
async fn a_dropped_stream_unsubscribes() {
    let p = started::<u32>(16);
    let stream = p.subscribe_stream().unwrap();
    let unbounded = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    assert_eq!(p.subscriber_count(), 2);
    drop(stream);
    drop(unbounded);
    assert_eq!(p.subscriber_count(), 0);
    p.publish(1).unwrap();
}

#[tokio::test]
async fn a_listener_pending_at_shutdown_resolves_with_an_error() {
    let p = started::<u32>(16);
    let listener = p.listener(|m: &u32| *m == 99, |m| m);
    p.publish(1).unwrap();
    p.shutdown().await;
    let err = listener.await.unwrap_err();
    assert!(err.is_shut_down());
    // A listener made after shutdown resolves with the same error at once.
    let late = p.listener(|_: &u32| true, |m| m);
    assert!(late.await.unwrap_err().is_shut_down());
}

#[tokio::test]
async fn a_panicking_filter_fails_its_listener_only() {
    let p = started::<u32>(16);
    let bad = p.listener(|_: &u32| panic!("bad filter"), |m| m);
    let good = p.listener(|m: &u32| *m == 3, |m| m);
    p.publish(3).unwrap();
    assert!(bad.await.unwrap_err().is_filter_panic());
    assert_eq!(good.await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_every_message_published_before_it() {
    let p = started::<u32>(2_000);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let held = Arc::new(AtomicBool::new(true));
    let hold = Arc::clone(&held);
    p.subscribe(move |m| {
        // A slow consumer, held until everything is published: the queue is still full when
        // shutdown starts.
        let start = std::time::Instant::now();
        while hold.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(200));
        sink.lock().unwrap().push(m.unwrap());
    })
    .unwrap();
    for i in 0..1_000 {
        p.publish(i).unwrap();
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the queue should not be drained yet"
    );
    held.store(false, Ordering::SeqCst);
    // Far longer than the work: shutdown returns once it is done.
    p.shutdown_with_grace(Duration::from_secs(600)).await;
    assert_eq!(*seen.lock().unwrap(), (0..1_000).collect::<Vec<_>>());
    assert!(!p.is_running());
    assert_eq!(p.subscriber_count(), 0);
    // Idempotent.
    p.shutdown().await;
}

#[tokio::test]
async fn refused_publishes_hand_the_message_back() {
    let p = Publisher::<String>::new();
    let err = p.publish("early".into()).unwrap_err();
    assert!(err.is_not_started());
    assert_eq!(err.into_inner(), "early");
    // Refused with a subscriber attached too (not only on the path for nobody).
    let _stream = p.subscribe_stream().unwrap();
    assert!(p.publish("early".into()).unwrap_err().is_not_started());
    p.start().unwrap();
    assert!(p.is_running());
    p.shutdown().await;
    let err = p.publish("late".into()).unwrap_err();
    assert!(err.is_shut_down());
    assert_eq!(err.to_string(), "the publisher is shut down");
    assert_eq!(err.into_inner(), "late");
    assert!(p.start().unwrap_err().is_shut_down());
    assert!(p.subscribe_stream().unwrap_err().is_shut_down());
    assert!(
        p.subscribe_stream_with(Buffer::Unbounded)
            .unwrap_err()
            .is_shut_down()
    );
    assert!(p.subscribe(|_| {}).unwrap_err().is_shut_down());
}

#[test]
fn unsubscribe_stops_delivery_and_unknown_ids_are_errors() {
    for buffer in [Buffer::Bounded, Buffer::Unbounded] {
        let p = started::<u32>(16);
        let (tx, rx) = mpsc::channel();
        let id = p
            .subscribe_with(buffer, move |m| tx.send(m.unwrap()).unwrap())
            .unwrap();
        p.publish(1).unwrap();
        p.unsubscribe(id).unwrap();
        p.publish(2).unwrap();
        assert!(p.unsubscribe(id).unwrap_err().is_unknown_subscriber());
        // The callback's thread gets what was published before, then ends (dropping `tx`)
        // without a later message or a shutdown.
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(1));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)),
            Err(mpsc::RecvTimeoutError::Disconnected),
            "{buffer:?}"
        );
    }
}

#[test]
fn a_callback_subscriber_runs_on_a_thread_of_its_own_without_a_runtime() {
    let p = started::<u32>(16);
    let (tx, rx) = mpsc::channel();
    let id = p
        .subscribe(move |m| {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send((m.unwrap(), name)).unwrap();
        })
        .unwrap();
    p.publish(1).unwrap();
    let (m, name) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(m, 1);
    assert_eq!(name, Some(format!("pubsub-{id}")));
    futures::executor::block_on(p.shutdown());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Publisher<pubsub::RequestCompletionMessage>>();
    send_sync::<pubsub::RequestCompletionMessage>();
    send_sync::<pubsub::Error>();
    send_sync::<Missed>();
    send_sync::<Buffer>();
    send::<pubsub::Subscription<pubsub::RequestCompletionMessage>>();
    send::<pubsub::Listener<pubsub::RequestCompletionMessage, String>>();
}

/// A waker that counts its wake-ups.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn an_idle_publisher_never_wakes_its_subscribers() {
    use futures::Stream;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let p = started::<u32>(16);
    let mut stream = p.subscribe_stream().unwrap();
    let mut unbounded = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let mut listener = Box::pin(p.listener(|m: &u32| *m == 1, |m| m));
    let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    assert!(
        std::pin::Pin::new(&mut stream)
            .poll_next(&mut cx)
            .is_pending()
    );
    assert!(
        std::pin::Pin::new(&mut unbounded)
            .poll_next(&mut cx)
            .is_pending()
    );
    assert!(listener.as_mut().poll(&mut cx).is_pending());
    // Idle: a publisher that polled (on a timer or by re-waking itself) would wake them here.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        0,
        "an idle publisher woke a subscriber"
    );
    p.publish(1).unwrap();
    assert!(
        counter.0.load(Ordering::SeqCst) >= 1,
        "a publish wakes them"
    );
    assert_eq!(
        std::pin::Pin::new(&mut stream).poll_next(&mut cx),
        Poll::Ready(Some(Ok(1)))
    );
    assert_eq!(
        std::pin::Pin::new(&mut unbounded).poll_next(&mut cx),
        Poll::Ready(Some(Ok(1)))
    );
    assert!(matches!(
        listener.as_mut().poll(&mut cx),
        Poll::Ready(Ok(1))
    ));
}

#[tokio::test]
async fn an_unsubscribed_stream_ends_after_what_was_published_before() {
    for buffer in [Buffer::Bounded, Buffer::Unbounded] {
        let p = started::<u32>(16);
        let mut stream = p.subscribe_stream_with(buffer).unwrap();
        let id = stream.id();
        p.publish(1).unwrap();
        p.unsubscribe(id).unwrap();
        assert_eq!(p.subscriber_count(), 0);
        p.publish(2).unwrap();
        assert_eq!(stream.next().await, Some(Ok(1)));
        assert_eq!(stream.next().await, None, "{buffer:?}");
        assert!(p.unsubscribe(id).unwrap_err().is_unknown_subscriber());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_when_unsubscribed_ends_without_another_publish() {
    let p = started::<u32>(16);
    let mut stream = p.subscribe_stream().unwrap();
    let id = stream.id();
    let reader = tokio::spawn(async move {
        let first = stream.next().await;
        let second = stream.next().await;
        (first, second)
    });
    p.publish(1).unwrap();
    // Give the reader time to wait for the next message; the test holds either way.
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.unsubscribe(id).unwrap();
    let (first, second) = within("the unsubscribed reader", reader).await.unwrap();
    assert_eq!(first, Some(Ok(1)));
    assert_eq!(second, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_on_a_small_ring_account_for_every_message() {
    const N: u32 = 5_000;
    let p = started::<u32>(2);
    let readers: Vec<_> = (0..16)
        .map(|k| {
            let mut stream = p.subscribe_stream().unwrap();
            tokio::spawn(async move {
                let (mut seen, mut missed) = (Vec::new(), 0_u64);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(m) => {
                            seen.push(m);
                            if m % (k + 2) == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                        Err(gap) => missed += gap.count(),
                    }
                }
                (seen, missed)
            })
        })
        .collect();
    let items = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&items);
    p.subscribe(move |item| sink.lock().unwrap().push(item))
        .unwrap();
    for i in 0..N {
        p.publish(i).unwrap();
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    p.shutdown().await;
    let check = |seen: &[u32], missed: u64| {
        assert_eq!(seen.len() as u64 + missed, u64::from(N));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in publish order");
        assert_eq!(
            seen.last(),
            Some(&(N - 1)),
            "the last message is never missed"
        );
    };
    for reader in readers {
        let (seen, missed) = reader.await.unwrap();
        check(&seen, missed);
    }
    let items = items.lock().unwrap();
    let seen: Vec<u32> = items
        .iter()
        .filter_map(|i| i.as_ref().ok().copied())
        .collect();
    let missed: u64 = items
        .iter()
        .filter_map(|i| i.as_ref().err())
        .map(Missed::count)
        .sum();
    check(&seen, missed);
}

#[tokio::test]
async fn capacities_out_of_range_are_clamped_not_refused() {
    // Zero would make every subscriber miss every message; a huge ring would exhaust memory up
    // front.
    let p = started::<u32>(0);
    let mut stream = p.subscribe_stream().unwrap();
    for i in 1..=3 {
        p.publish(i).unwrap();
    }
    assert_eq!(stream.next().await.unwrap().unwrap_err().count(), 2);
    assert_eq!(stream.next().await, Some(Ok(3)));
    let huge = started::<u32>(usize::MAX);
    let mut stream = huge.subscribe_stream().unwrap();
    let max = u32::try_from(pubsub::MAX_CAPACITY).unwrap();
    for i in 0..=max {
        huge.publish(i).unwrap();
    }
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().count(),
        1,
        "full at MAX_CAPACITY"
    );
    assert_eq!(stream.next().await, Some(Ok(1)));
}

#[tokio::test]
async fn a_filtered_subscriber_yields_only_its_messages_and_is_told_what_the_bus_overwrote() {
    let publisher = started::<u32>(4);
    // Bounded: the shared ring of the last 4 messages, filtered as it is read.
    let mut even = publisher
        .subscribe_stream_where(Buffer::Bounded, |n| n % 2 == 0)
        .unwrap();
    let all_even = publisher
        .subscribe_stream_where(Buffer::Unbounded, |n| n % 2 == 0)
        .unwrap();
    for n in 0..20 {
        publisher.publish(n).unwrap();
    }
    // 0..=15 were overwritten (matching or not: it is told of all of them), 16..=19 are left.
    assert_eq!(even.next().await, Some(Err(missed(16))));
    assert_eq!(even.next().await, Some(Ok(16)));
    assert_eq!(even.next().await, Some(Ok(18)));
    for n in 20..23 {
        publisher.publish(n).unwrap();
    }
    within("shutdown", publisher.shutdown()).await;
    let rest: Vec<_> = even.collect().await;
    assert_eq!(rest, [Ok(20), Ok(22)]);
    let every: Vec<u32> = (0..=22).filter(|n| n % 2 == 0).collect();
    assert_eq!(read_all(all_even).await, every);
}

/// Filters run on the subscriber's side: one stuck in a filter (a stream's, a callback's, a
/// listener's) delays no publish and no other subscriber.
#[test]
fn a_filter_that_never_returns_stalls_only_its_own_subscriber() {
    let publisher = started::<u32>(64);
    let (release, stuck) = mpsc::channel::<()>();
    let stuck = Arc::new(Mutex::new(stuck));
    let blocking = move |_: &u32| {
        // Blocks until `release` is dropped.
        let _ = stuck.lock().unwrap().recv();
        true
    };
    let stream = publisher
        .subscribe_stream_where(Buffer::Bounded, blocking.clone())
        .unwrap();
    let reader =
        std::thread::spawn(move || futures::executor::block_on(stream.collect::<Vec<_>>()).len());
    let (seen, callback) = collector();
    publisher
        .subscribe_where(Buffer::Unbounded, blocking.clone(), |_| {})
        .unwrap();
    publisher.subscribe(callback).unwrap();
    let listener = publisher.listener(blocking, |n| n);
    let listening = std::thread::spawn(move || futures::executor::block_on(listener).is_ok());
    let (done, published) = mpsc::channel();
    let publishing = publisher.clone();
    std::thread::spawn(move || {
        for n in 0..10 {
            publishing.publish(n).unwrap();
        }
        let _ = done.send(());
    });
    published
        .recv_timeout(Duration::from_secs(60))
        .expect("every publish returned while filters were stuck");
    // The unfiltered callback gets everything meanwhile.
    let start = std::time::Instant::now();
    while seen.lock().unwrap().len() < 10 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    drop(release);
    futures::executor::block_on(publisher.shutdown_with_grace(Duration::from_secs(60)));
    assert_eq!(reader.join().unwrap(), 10);
    assert!(listening.join().unwrap());
}

#[test]
fn a_filtered_callback_sees_only_matches_and_a_panicking_filter_disturbs_nobody() {
    // The filter's panic is expected: keep its message out of the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("the filter panics") {
            default_hook(info);
        }
    }));
    let publisher = started::<u32>(64);
    let (seen, callback) = collector();
    publisher
        .subscribe_where(Buffer::Bounded, |n| *n > 2, callback)
        .unwrap();
    let mut panicky = publisher
        .subscribe_stream_where(Buffer::Unbounded, |n| {
            assert!(*n != 3, "the filter panics on 3");
            true
        })
        .unwrap();
    for n in 0..6 {
        publisher.publish(n).unwrap();
    }
    // Shutdown waits for the callback to have been given everything.
    futures::executor::block_on(publisher.shutdown());
    assert_eq!(*seen.lock().unwrap(), [3, 4, 5]);
    let got: Vec<_> = futures::executor::block_on((&mut panicky).collect::<Vec<_>>());
    assert_eq!(got, [Ok(0), Ok(1), Ok(2), Ok(4), Ok(5)]);
}

#[tokio::test]
async fn lags_count_what_each_subscriber_has_not_read() {
    let publisher = started::<u32>(8);
    // A pending listener is no subscriber of its own: never listed.
    let _pending = publisher.listener(|_: &u32| false, |n| n);
    let mut ring = publisher.subscribe_stream().unwrap();
    let mut queue = publisher.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let mut even = publisher
        .subscribe_stream_where(Buffer::Bounded, |n| n % 2 == 0)
        .unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let (release, released) = mpsc::channel::<()>();
    let stuck = publisher
        .subscribe({
            let entered = Arc::clone(&entered);
            move |_: Result<u32, Missed>| {
                entered.notify_one();
                // Blocks until `release` is dropped.
                let _ = released.recv();
            }
        })
        .unwrap();
    let lag = |id| {
        let lags = publisher.lags();
        lags.iter().find(|(of, _)| *of == id).map(|(_, n)| *n)
    };
    for n in 0..6 {
        publisher.publish(n).unwrap();
    }
    // A filtered subscriber reads every message, to filter it.
    assert_eq!(
        (lag(ring.id()), lag(queue.id()), lag(even.id())),
        (Some(6), Some(6), Some(6))
    );
    ring.next().await;
    ring.next().await;
    queue.next().await;
    assert_eq!(even.next().await, Some(Ok(0)));
    assert_eq!(even.next().await, Some(Ok(2)));
    assert_eq!(
        (lag(ring.id()), lag(queue.id()), lag(even.id())),
        (Some(4), Some(5), Some(3))
    );
    // A callback stuck in its first message: the other five wait for it.
    within("the callback", entered.notified()).await;
    assert_eq!(lag(stuck), Some(5));
    // Past the ring's capacity (8): a lag of 18, of which the oldest 10 are gone.
    for n in 6..20 {
        publisher.publish(n).unwrap();
    }
    assert_eq!(lag(ring.id()), Some(18));
    assert_eq!(ring.next().await, Some(Err(missed(10))));
    assert_eq!(lag(ring.id()), Some(8));
    drop(release);
    drop(queue);
    assert_eq!(
        publisher.lags().len(),
        3,
        "a dropped subscriber (or a pending listener) is not listed"
    );
    publisher.shutdown().await;
}

/// Dropping the last handle without `shutdown` closes the bus: each subscriber is given what was
/// published, then ends, a callback's thread with it (its closure is dropped as it ends).
#[test]
fn dropping_the_last_handle_ends_every_subscriber_after_what_was_published() {
    struct OnDrop(mpsc::Sender<&'static str>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send("callback dropped");
        }
    }
    let p = started::<u32>(16);
    let (tx, rx) = mpsc::channel();
    let guard = OnDrop(tx.clone());
    p.subscribe(move |m| {
        let _ = &guard;
        let _ = tx.send(if m.is_ok() { "message" } else { "missed" });
    })
    .unwrap();
    let stream = p.subscribe_stream_with(Buffer::Unbounded).unwrap();
    p.publish(1).unwrap();
    p.publish(2).unwrap();
    drop(p);
    let hear = || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("heard within a minute")
    };
    let heard: Vec<_> = (0..3).map(|_| hear()).collect();
    assert_eq!(heard, ["message", "message", "callback dropped"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        rt.block_on(within("the stream's end", read_all(stream))),
        [1, 2]
    );
}
