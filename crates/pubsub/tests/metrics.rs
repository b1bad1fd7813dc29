//! The `metrics` feature: the messages a subscriber missed are counted under its id.
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
    publisher.shutdown().await;
}
