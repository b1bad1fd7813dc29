//! Completions handed straight to their submitting side, which confirms each: stored in the
//! completion stream only when that side is away or does not confirm, and never lost either way.

use futures::FutureExt;

use super::*;

/// The completions the completion stream has stored so far.
async fn completions_stored(config: &NatsConfig) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let mut done = js.get_stream(config.completion_stream()).await.unwrap();
    done.info().await.unwrap().state.last_sequence
}

/// Waits up to 20 s for the completion stream to have stored `count` completions.
async fn until_stored(config: &NatsConfig, count: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while completions_stored(config).await < count {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While the submitting side is connected its completions reach it directly, each confirmed
/// (many in flight at once too), and nothing is stored; one ready while that side is cut off from
/// the server is stored, and answers its request once the side is back.
pub(crate) async fn a_completion_is_stored_only_while_its_submitting_side_is_away() {
    let (config, proxy, publisher, coordinator) = coordinator_behind_a_proxy("direct").await;
    // A place for every task: all 64 completions are handed over, and wait, at once.
    let worker = Worker::start(&config, &["--concurrency", "64"]);
    let near =
        (0..64).map(|i| coordinator.submit(Task::portable(format!("near{i}"), Echo(i)), "nats"));
    let values = futures::future::join_all(near).await;
    let values: Vec<u64> = values.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (0..64).collect::<Vec<_>>());
    // The worker acknowledges a task once its completion is confirmed, or stored unconfirmed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tasks_in_stream(&config).await > 0 {
        assert!(Instant::now() < deadline, "every task acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        completions_stored(&config).await,
        0,
        "handed over directly, confirmed"
    );

    let call = spawn_submit(
        &coordinator,
        Task::portable("far", Nap(1_000)),
        Duration::MAX,
    );
    until_published(&config).await;
    proxy.cut();
    until_stored(
        &config,
        1,
        "the completion is stored while its side is away",
    )
    .await;
    proxy.restore();
    let ended = tokio::time::timeout(Duration::from_secs(15), call).await;
    let pid = ended.expect("answered once back").expect("the caller");
    assert_eq!(pid.unwrap(), worker.pid());
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// A side that takes a completion and does not confirm it (its reader is stuck, or a stream's
/// acknowledgement answers in its place): the worker stores the completion all the same, so the
/// side reads it from there. A task naming a subject other than a side's own for completions
/// (published by hand: it could name an API's) has its completion stored, and nothing sent there.
pub(crate) async fn a_completion_its_side_does_not_confirm_is_stored() {
    let config = config("unconfirmed");
    let _worker = Worker::start(&config, &[]);
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let answer = format!("{}.answer.me", config.prefix);
    let elsewhere = format!("{}.elsewhere", config.prefix);
    let mut handed = client.subscribe(answer.clone()).await.unwrap();
    let mut misdirected = client.subscribe(elsewhere.clone()).await.unwrap();
    for (run, to) in [("me.1", &answer), ("me.2", &answer), ("me.3", &elsewhere)] {
        publish_by_hand(&js, &config, run, to).await;
        if to != &answer {
            continue;
        }
        let next = tokio::time::timeout(Duration::from_secs(10), handed.next()).await;
        let message = next.expect("handed over").expect("subscribed");
        // The first is answered as a stream would acknowledge it; the second not at all.
        if run == "me.1" {
            let not_a_confirmation = r#"{"stream":"OTHER","seq":1}"#;
            let to = message.reply.expect("a request");
            client.publish(to, not_a_confirmation.into()).await.unwrap();
        }
    }
    until_stored(&config, 3, "every completion is stored").await;
    let sent_elsewhere = misdirected.next().now_or_never();
    assert!(sent_elsewhere.is_none(), "nothing went to {elsewhere}");
    drop(_worker);
    cleanup(&config).await;
}

/// Publishes an echo task of run `run` by hand, its completion to go to `answer` directly, or
/// else to the completion subject of side `me`.
async fn publish_by_hand(
    js: &async_nats::jetstream::Context,
    config: &NatsConfig,
    run: &str,
    answer: &str,
) {
    publish_node_by_hand(js, config, run, answer, Echo(1)).await;
}

/// [`publish_by_hand`], of any node.
async fn publish_node_by_hand<N: PortableNode>(
    js: &async_nats::jetstream::Context,
    config: &NatsConfig,
    run: &str,
    answer: &str,
    node: N,
) {
    use exec_nats::wire::{ANSWER_HEADER, PROTOCOL_VERSION, REPLY_HEADER, RUN_HEADER};
    use exec_nats::wire::{TaskMessage, encode};
    let reply = format!("{}.done.me", config.prefix);
    let task = TaskMessage {
        version: PROTOCOL_VERSION,
        run: run.into(),
        request_id: "r".into(),
        name: N::NAME.into(),
        payload: task_core::encode(&node).unwrap(),
        reply: reply.clone(),
    };
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        (RUN_HEADER, run),
        (REPLY_HEADER, &reply),
        (ANSWER_HEADER, answer),
    ] {
        headers.insert(name, value);
    }
    let bytes = encode(&task).unwrap().into();
    let sent = js.publish_with_headers(config.task_subject(), headers, bytes);
    sent.await.unwrap().await.unwrap();
}

/// A side that let a confirmation wait past its limit (its process stuck, its subscription
/// full) has its next completions stored at once: a worker's places wait on it once, not for
/// each of its tasks, and the other sides' tasks behind them go on.
pub(crate) async fn a_side_that_did_not_confirm_in_time_is_let_be() {
    let config = config("stuck-side");
    let worker = Worker::start(&config, &["--concurrency", "2"]);
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stuck = format!("{}.answer.me", config.prefix);
    let mut handed = client.subscribe(stuck.clone()).await.unwrap();
    for n in 0..10 {
        publish_by_hand(&js, &config, &format!("me.{n}"), &stuck).await;
    }
    until_stored(&config, 10, "every completion is stored").await;
    drop(worker);
    let mut tried = 0;
    while handed.next().now_or_never().flatten().is_some() {
        tried += 1;
    }
    assert!(
        (1..=2).contains(&tried),
        "handed over once for each of the worker's 2 places, not for each of 10 tasks: {tried}"
    );
    cleanup(&config).await;
}

/// A worker that loses its own connection while it waits for a confirmation blames no side:
/// the side's next completion is handed to it again, not stored.
pub(crate) async fn a_worker_cut_off_while_it_hands_over_blames_no_side() {
    use exec_nats::wire::{Reply, decode};
    let config = config("worker-cut");
    let proxy = Proxy::start(&config.url).await;
    let behind = NatsConfig {
        url: proxy.url(),
        ..config.clone()
    };
    let worker = Worker::start(&behind, &["--concurrency", "2"]);
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let side = format!("{}.answer.me", config.prefix);
    let mut answers = client.subscribe(side.clone()).await.unwrap();
    // A side that confirms every completion it gets, saying which.
    let (heard, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
    let confirming = tokio::spawn({
        let client = client.clone();
        async move {
            while let Some(message) = answers.next().await {
                if let (Ok(Reply::Done(done)), Some(to)) =
                    (decode::<Reply>(&message.payload), message.reply)
                {
                    let _ = client.publish(to, done.run.clone().into()).await;
                    let _ = heard.send(done.run);
                }
            }
        }
    });
    // Cut off while it runs, and for longer than a confirmation is waited for.
    publish_node_by_hand(&js, &config, "me.1", &side, Nap(800)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    until_stored(&config, 1, "the completion waited for in vain is stored").await;
    publish_by_hand(&js, &config, "me.2", &side).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), confirmed.recv()).await;
        let run = next.expect("me.2 handed to its side").expect("the side");
        if run == "me.2" {
            break;
        }
    }
    assert_eq!(completions_stored(&config).await, 1, "me.2 was not stored");
    confirming.abort();
    drop(worker);
    cleanup(&config).await;
}
