//! The `metrics` feature: the messages a subscriber missed are counted, and how far behind it
//! is gauged, under its id.
//! (A test binary of its own: the recorder is global to the process.)

use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pubsub::Publisher;

#[tokio::test]
async fn each_subscribers_missed_messages_are_counted_under_its_id() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let publisher = Publisher::<u64>::with_capacity(4);
    publisher.start().unwrap();
    let mut behind = publisher.subscribe_stream().unwrap();
    let mut reading = publisher.subscribe_stream().unwrap();
    for i in 0..10 {
        publisher.publish(i).unwrap();
        assert_eq!(reading.next().await.unwrap().unwrap(), i);
    }
    // Ten published into a ring of four: the first six were overwritten.
    let missed = behind.next().await.unwrap().unwrap_err();
    assert_eq!(missed.count(), 6);
    let counted: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) if key.key().name() == "pubsub_missed_messages_total" => {
                let label = key.key().labels().next().map(|l| l.value().to_owned());
                Some((label.unwrap_or_default(), n))
            }
            _ => None,
        })
        .collect();
    assert_eq!(counted, vec![(behind.id().to_string(), 6)]);

    // The gauges are set on the 64th and the 128th message: `reading` reads them all, `behind`
    // none, and `gone` leaves between the two samples.
    let mut gone = Some(publisher.subscribe_stream().unwrap());
    let gone_id = gone.as_ref().unwrap().id();
    for i in 10..128 {
        if i == 100 {
            gone = None;
        }
        publisher.publish(i).unwrap();
        reading.next().await.unwrap().unwrap();
    }
    assert!(gone.is_none());
    let gauge = |id| lag_gauge(&snapshotter, id);
    assert_eq!(publisher.lags().len(), 2);
    assert_eq!(
        gauge(behind.id()),
        Some(122.0),
        "told of the first 6, not read the other 122"
    );
    assert_eq!(gauge(reading.id()), Some(0.0));
    assert_eq!(gauge(gone_id), Some(0.0), "gone: 0, not its last lag");
    publisher.shutdown().await;
}

/// The lag gauge named by `id` in `snapshotter`'s recorder, if it was ever set.
fn lag_gauge(
    snapshotter: &metrics_util::debugging::Snapshotter,
    id: pubsub::SubscriberId,
) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(lag)
                if key.key().name() == "pubsub_subscriber_lag"
                    && key.key().labels().any(|l| l.value() == id.to_string()) =>
            {
                Some(lag.into_inner())
            }
            _ => None,
        })
}

/// A subscriber's gauge goes to 0 when it leaves, even when nobody is left to publish to (then
/// no later publish samples the lags), and every gauge goes to 0 at shutdown.
#[test]
fn the_gauge_of_a_subscriber_that_leaves_goes_to_zero_with_nobody_left() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let publisher = Publisher::<u64>::with_capacity(256);
        publisher.start().unwrap();
        let last = publisher.subscribe_stream().unwrap();
        let id = last.id();
        (0..64).for_each(|n| publisher.publish(n).unwrap());
        assert_eq!(lag_gauge(&snapshotter, id), Some(64.0));
        drop(last);
        (0..128).for_each(|n| publisher.publish(n).unwrap());
        assert_eq!(lag_gauge(&snapshotter, id), Some(0.0), "gone: 0");

        let unsubscribed = publisher.subscribe_stream().unwrap();
        (0..64).for_each(|n| publisher.publish(n).unwrap());
        publisher.unsubscribe(unsubscribed.id()).unwrap();
        assert_eq!(lag_gauge(&snapshotter, unsubscribed.id()), Some(0.0));

        let open = publisher.subscribe_stream().unwrap();
        (0..64).for_each(|n| publisher.publish(n).unwrap());
        assert_eq!(lag_gauge(&snapshotter, open.id()), Some(64.0));
        futures::executor::block_on(publisher.shutdown());
        assert_eq!(
            lag_gauge(&snapshotter, open.id()),
            Some(0.0),
            "shut down: 0"
        );
    });
}

/// A recorder that panics at every registration: the application's code, run by a publish (the
/// lag gauges) and a read (the missed count).
struct Broken;

impl metrics::Recorder for Broken {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        panic!("the recorder broke")
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        panic!("the recorder broke")
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        panic!("the recorder broke")
    }
}

#[test]
fn a_recorder_that_panics_takes_nothing_from_a_publish_or_a_read() {
    let publisher = Publisher::<u64>::with_capacity(4);
    publisher.start().unwrap();
    let mut reading = publisher
        .subscribe_stream_with(pubsub::Buffer::Unbounded)
        .unwrap();
    let mut behind = publisher.subscribe_stream().unwrap();
    metrics::with_local_recorder(&Broken, || {
        // The lag gauges are set on the 64th and the 128th publish.
        for i in 0..200 {
            publisher.publish(i).unwrap();
        }
        let missed = futures::executor::block_on(behind.next()).unwrap();
        assert!(missed.unwrap_err().count() > 0);
    });
    futures::executor::block_on(publisher.shutdown());
    let read: Vec<u64> =
        futures::executor::block_on(reading.by_ref().map(Result::unwrap).collect());
    assert_eq!(read, (0..200).collect::<Vec<_>>());
}
