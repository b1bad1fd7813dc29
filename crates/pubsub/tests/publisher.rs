//! Integration tests of the publisher's guarantees.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use pubsub::Publisher;

fn started<M: Clone + Send + 'static>(capacity: usize) -> Publisher<M> {
    let p = Publisher::with_capacity(capacity);
    p.start().unwrap();
    p
}

fn collector() -> (Arc<Mutex<Vec<u32>>>, impl FnMut(u32) + Send + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |m| sink.lock().unwrap().push(m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_sees_messages_in_publish_order() {
    let p = started::<u32>(16);
    let (a, cb_a) = collector();
    let (b, cb_b) = collector();
    p.subscribe(cb_a).unwrap();
    p.subscribe(cb_b).unwrap();
    let mut stream = p.subscribe_stream().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(m) = stream.next().await {
            got.push(m);
        }
        got
    });
    for i in 0..2_000 {
        p.publish(i).await.unwrap();
    }
    p.shutdown().await;
    let expected: Vec<u32> = (0..2_000).collect();
    assert_eq!(*a.lock().unwrap(), expected);
    assert_eq!(*b.lock().unwrap(), expected);
    assert_eq!(reader.await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_give_every_subscriber_the_same_order() {
    let p = started::<u32>(8);
    let (a, cb_a) = collector();
    let (b, cb_b) = collector();
    p.subscribe(cb_a).unwrap();
    p.subscribe(cb_b).unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|k| {
            let p = p.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    p.publish(k * 1_000 + i).await.unwrap();
                }
            })
        })
        .collect();
    for t in publishers {
        t.await.unwrap();
    }
    p.shutdown().await;
    let a = a.lock().unwrap().clone();
    assert_eq!(a.len(), 2_000);
    assert_eq!(a, *b.lock().unwrap());
    // Each publisher's own messages stay in its order.
    for k in 0..4 {
        let mine: Vec<u32> = a.iter().copied().filter(|m| m / 1_000 == k).collect();
        assert_eq!(mine, (0..500).map(|i| k * 1_000 + i).collect::<Vec<_>>());
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
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let p = started::<u32>(16);
        let (panicky_seen, mut record) = collector();
        p.subscribe(move |m| {
            record(m);
            assert!(m % 2 == 0, "odd message {m}");
        })
        .unwrap();
        let (healthy, cb) = collector();
        p.subscribe(cb).unwrap();
        for i in 0..10 {
            p.publish(i).await.unwrap();
        }
        p.shutdown().await;
        assert_eq!(*healthy.lock().unwrap(), (0..10).collect::<Vec<_>>());
        // The panicking subscriber itself kept receiving after each panic.
        assert_eq!(*panicky_seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("subscriber panicked"))
        .collect();
    assert_eq!(warnings.len(), 5, "{text}");
    assert!(warnings[0].contains("odd message 1"), "{text}");
}

#[tokio::test]
async fn a_slow_subscriber_does_not_delay_the_others() {
    let p = started::<u32>(256);
    let mut slow = p.subscribe_stream().unwrap();
    let (fast, cb) = collector();
    p.subscribe(cb).unwrap();
    for i in 0..100 {
        p.publish(i).await.unwrap();
    }
    // The slow subscriber has read nothing, yet every publish returned and the fast one is served.
    let listener = p.listener(|m: &u32| *m == 100, |m| m);
    p.publish(100).await.unwrap();
    assert_eq!(listener.await.unwrap(), 100);
    tokio::task::yield_now().await;
    while fast.lock().unwrap().len() < 101 {
        tokio::task::yield_now().await;
    }
    assert_eq!(*fast.lock().unwrap(), (0..=100).collect::<Vec<_>>());
    // The slow one still gets everything, in order, when it reads.
    for i in 0..=100 {
        assert_eq!(slow.next().await, Some(i));
    }
}

#[tokio::test]
async fn a_full_queue_applies_backpressure_instead_of_growing() {
    // The capacity is exact, a power of two or not.
    for capacity in [4, 3] {
        let p = started::<u32>(capacity as usize);
        let mut stream = p.subscribe_stream().unwrap();
        for i in 0..capacity {
            p.publish(i).await.unwrap();
        }
        let mut blocked = Box::pin(p.publish(capacity));
        assert!(
            (&mut blocked).now_or_never().is_none(),
            "publish must wait for room"
        );
        assert_eq!(stream.next().await, Some(0));
        blocked.await.unwrap();
        for i in 1..=capacity {
            assert_eq!(stream.next().await, Some(i));
        }
    }
}

#[tokio::test]
async fn a_listener_is_subscribed_when_created_not_when_awaited() {
    let p = started::<u32>(16);
    let listener = p.listener(|m: &u32| *m > 10, |m| m * 2);
    assert_eq!(p.subscriber_count(), 1);
    p.publish(5).await.unwrap();
    p.publish(11).await.unwrap();
    p.publish(12).await.unwrap();
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
    p.publish(1).await.unwrap();
    assert_eq!(other.await.unwrap(), 1);
    assert_eq!(p.subscriber_count(), 0);
}

#[tokio::test]
async fn a_dropped_stream_unsubscribes() {
    let p = started::<u32>(16);
    let stream = p.subscribe_stream().unwrap();
    assert_eq!(p.subscriber_count(), 1);
    drop(stream);
    assert_eq!(p.subscriber_count(), 0);
    p.publish(1).await.unwrap();
}

#[tokio::test]
async fn a_listener_pending_at_shutdown_resolves_with_an_error() {
    let p = started::<u32>(16);
    let listener = p.listener(|m: &u32| *m == 99, |m| m);
    p.publish(1).await.unwrap();
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
    p.publish(3).await.unwrap();
    assert!(bad.await.unwrap_err().is_filter_panic());
    assert_eq!(good.await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_every_message_published_before_it() {
    let p = started::<u32>(2_000);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    p.subscribe(move |m| {
        // A slow consumer: the queue is still full when shutdown starts.
        std::thread::sleep(std::time::Duration::from_micros(200));
        sink.lock().unwrap().push(m);
    })
    .unwrap();
    for i in 0..1_000 {
        p.publish(i).await.unwrap();
    }
    assert!(
        seen.lock().unwrap().len() < 1_000,
        "the queue should not be drained yet"
    );
    p.shutdown().await;
    assert_eq!(*seen.lock().unwrap(), (0..1_000).collect::<Vec<_>>());
    assert!(!p.is_running());
    assert_eq!(p.subscriber_count(), 0);
    // Idempotent.
    p.shutdown().await;
}

#[tokio::test]
async fn refused_publishes_hand_the_message_back() {
    let p = Publisher::<String>::new();
    let err = p.publish("early".into()).await.unwrap_err();
    assert!(err.is_not_started());
    assert_eq!(err.into_inner(), "early");
    p.start().unwrap();
    assert!(p.is_running());
    p.shutdown().await;
    let err = p.publish("late".into()).await.unwrap_err();
    assert!(err.is_shut_down());
    assert_eq!(err.to_string(), "the publisher is shut down");
    assert_eq!(err.into_inner(), "late");
    assert!(p.start().unwrap_err().is_shut_down());
    assert!(p.subscribe_stream().unwrap_err().is_shut_down());
    assert!(p.subscribe(|_| {}).unwrap_err().is_shut_down());
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_unknown_ids_are_errors() {
    let p = started::<u32>(16);
    let (seen, cb) = collector();
    let id = p.subscribe(cb).unwrap();
    p.publish(1).await.unwrap();
    p.unsubscribe(id).unwrap();
    p.publish(2).await.unwrap();
    assert!(p.unsubscribe(id).unwrap_err().is_unknown_subscriber());
    p.shutdown().await;
    tokio::task::yield_now().await;
    assert_eq!(*seen.lock().unwrap(), vec![1]);
}

#[test]
fn a_callback_subscriber_needs_a_runtime() {
    let p = Publisher::<u32>::new();
    assert!(p.subscribe(|_| {}).unwrap_err().is_no_runtime());
    assert_eq!(p.subscriber_count(), 0);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Publisher<pubsub::RequestCompletionMessage>>();
    send_sync::<pubsub::RequestCompletionMessage>();
    send_sync::<pubsub::Error>();
    send::<pubsub::Subscription<pubsub::RequestCompletionMessage>>();
    send::<pubsub::Listener<pubsub::RequestCompletionMessage, String>>();
}

/// A waker that counts its wake-ups.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_idle_publisher_never_wakes_its_subscribers() {
    use futures::Stream;
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll, Waker};

    let p = started::<u32>(16);
    let mut stream = p.subscribe_stream().unwrap();
    let mut listener = Box::pin(p.listener(|m: &u32| *m == 1, |m| m));
    let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    assert!(
        std::pin::Pin::new(&mut stream)
            .poll_next(&mut cx)
            .is_pending()
    );
    assert!(listener.as_mut().poll(&mut cx).is_pending());
    // Idle: a publisher that polled (on a timer or by re-waking itself) would wake them here.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        0,
        "an idle publisher woke a subscriber"
    );
    futures::executor::block_on(p.publish(1)).unwrap();
    assert!(
        counter.0.load(Ordering::SeqCst) >= 1,
        "a publish wakes them"
    );
    assert_eq!(
        std::pin::Pin::new(&mut stream).poll_next(&mut cx),
        Poll::Ready(Some(1))
    );
    assert!(matches!(
        listener.as_mut().poll(&mut cx),
        Poll::Ready(Ok(1))
    ));
}

#[tokio::test]
async fn dropping_the_subscriber_a_publish_waits_for_releases_it() {
    let p = started::<u32>(2);
    let mut fast = p.subscribe_stream().unwrap();
    let slow = p.subscribe_stream().unwrap();
    for i in 0..2 {
        p.publish(i).await.unwrap();
    }
    assert_eq!(fast.next().await, Some(0));
    let mut blocked = Box::pin(p.publish(2));
    assert!(
        (&mut blocked).now_or_never().is_none(),
        "the slow subscriber holds it"
    );
    drop(slow);
    blocked.await.unwrap();
    assert_eq!(fast.next().await, Some(1));
    assert_eq!(fast.next().await, Some(2));
}

#[tokio::test]
async fn an_unsubscribed_stream_ends_after_what_was_published_before() {
    let p = started::<u32>(16);
    let mut stream = p.subscribe_stream().unwrap();
    let id = stream.id();
    p.publish(1).await.unwrap();
    p.unsubscribe(id).unwrap();
    assert_eq!(p.subscriber_count(), 0);
    p.publish(2).await.unwrap();
    assert_eq!(stream.next().await, Some(1));
    assert_eq!(stream.next().await, None);
    assert!(p.unsubscribe(id).unwrap_err().is_unknown_subscriber());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_on_a_small_ring_each_see_every_message() {
    let p = started::<u32>(2);
    let readers: Vec<_> = (0..16)
        .map(|k| {
            let mut stream = p.subscribe_stream().unwrap();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(m) = stream.next().await {
                    seen.push(m);
                    if m % (k + 2) == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                seen
            })
        })
        .collect();
    let (callback_seen, cb) = collector();
    p.subscribe(cb).unwrap();
    for i in 0..5_000 {
        p.publish(i).await.unwrap();
    }
    p.shutdown().await;
    let expected: Vec<u32> = (0..5_000).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
    assert_eq!(*callback_seen.lock().unwrap(), expected);
}

#[tokio::test]
async fn capacities_out_of_range_are_clamped_not_refused() {
    // Zero would make every publish wait forever; a huge ring would exhaust memory up front.
    let p = started::<u32>(0);
    let mut stream = p.subscribe_stream().unwrap();
    p.publish(1).await.unwrap();
    assert!(Box::pin(p.publish(2)).now_or_never().is_none());
    assert_eq!(stream.next().await, Some(1));
    let huge = started::<u32>(usize::MAX);
    let mut stream = huge.subscribe_stream().unwrap();
    let max = u32::try_from(pubsub::MAX_CAPACITY).unwrap();
    for i in 0..max {
        assert!(Box::pin(huge.publish(i)).now_or_never().is_some());
    }
    let mut blocked = Box::pin(huge.publish(max));
    assert!(
        (&mut blocked).now_or_never().is_none(),
        "full at MAX_CAPACITY"
    );
    assert_eq!(stream.next().await, Some(0));
    blocked.await.unwrap();
}

#[tokio::test]
async fn try_publish_refuses_without_waiting_when_there_is_no_room() {
    let p = started::<u32>(2);
    let mut stream = p.subscribe_stream().unwrap();
    p.try_publish(0).unwrap();
    p.try_publish(1).unwrap();
    let full = p.try_publish(2).unwrap_err();
    assert!(full.is_full() && !full.is_shut_down() && !full.is_not_started());
    assert_eq!(full.into_inner(), 2, "the message is handed back");
    assert_eq!(stream.next().await, Some(0));
    p.try_publish(2).unwrap();
    assert_eq!(stream.next().await, Some(1));
    assert_eq!(stream.next().await, Some(2));
    p.shutdown().await;
    assert!(p.try_publish(3).unwrap_err().is_shut_down());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_publish_waiting_for_room_finish() {
    let p = started::<u32>(1);
    let mut stream = p.subscribe_stream().unwrap();
    p.publish(0).await.unwrap();
    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.publish(1).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the ring is full");
    let shutdown = tokio::spawn({
        let p = p.clone();
        async move { p.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the publish under way"
    );
    assert!(
        p.publish(9).await.unwrap_err().is_shut_down(),
        "later ones are refused"
    );
    // The reader makes room: the waiting publish goes out, then shutdown ends the stream.
    assert_eq!(stream.next().await, Some(0));
    waiting.await.unwrap().unwrap();
    assert_eq!(stream.next().await, Some(1));
    assert_eq!(stream.next().await, None);
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publisher_waiting_for_room_is_woken() {
    let p = started::<u32>(1);
    let mut stream = p.subscribe_stream().unwrap();
    p.publish(0).await.unwrap();
    let publishers: Vec<_> = (1..=4)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.publish(i).await })
        })
        .collect();
    // All four wait for the one place before the reader frees it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(publishers.iter().all(|p| !p.is_finished()));
    let mut seen = Vec::new();
    for _ in 0..5 {
        // A publisher never woken leaves its message unsent: fail rather than hang.
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        seen.push(next.expect("every waiting publisher sends").unwrap());
    }
    for publisher in publishers {
        publisher.await.unwrap().unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}
