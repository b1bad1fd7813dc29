//! A configuration that cannot work is refused before anything is connected: a typed error
//! naming the setting, whichever side starts. No server is needed (none is reached: the URL
//! points where nothing listens, so a check that came after connecting would fail otherwise).

use exec_nats::{NatsConfig, NatsError, NatsStrategy, NatsWorker};

/// Where nothing listens: a builder that tried to connect would fail with a connect error.
const NOWHERE: &str = "nats://127.0.0.1:1";

fn config(change: impl FnOnce(&mut NatsConfig)) -> NatsConfig {
    let mut config = NatsConfig {
        url: NOWHERE.into(),
        ..NatsConfig::default()
    };
    change(&mut config);
    config
}

/// Both sides refuse `config` as a configuration error whose message names `setting`.
async fn refused_by_both(config: NatsConfig, setting: &str) {
    let registry = exec_nats::example_nodes::registry();
    let strategy = NatsStrategy::builder().config(config.clone()).start().await;
    let worker = NatsWorker::builder(registry)
        .config(config.clone())
        .connect()
        .await;
    for error in [
        strategy.map(drop).unwrap_err(),
        worker.map(drop).unwrap_err(),
    ] {
        assert_refused(&error, setting, &config);
    }
}

fn assert_refused(error: &NatsError, setting: &str, config: &NatsConfig) {
    assert!(error.is_config_error(), "{config:?}: {error}");
    assert!(error.to_string().contains(setting), "{error}");
}

#[tokio::test]
async fn a_mode_that_is_not_one_subject_token_is_refused() {
    for mode in ["", "a.b", "*", ">", "a b"] {
        refused_by_both(config(|c| c.mode = mode.into()), "the mode").await;
    }
}

#[tokio::test]
async fn a_prefix_with_an_empty_or_wildcard_token_is_refused() {
    for prefix in ["", "a.", ".a", "a..b", "a.*", ">", "a b"] {
        refused_by_both(config(|c| c.prefix = prefix.into()), "the prefix").await;
    }
}

#[tokio::test]
async fn a_stream_name_the_server_would_refuse_is_refused() {
    for stream in ["", "A.B", "A*", "A>", "A B", "A/B", "A\\B"] {
        refused_by_both(config(|c| c.stream = stream.into()), "the stream name").await;
    }
}

#[tokio::test]
async fn a_largest_message_below_one_byte_is_refused() {
    for size in [0, -5] {
        let bad = config(|c| c.max_message_size = size);
        refused_by_both(bad, "the largest message").await;
    }
}

#[tokio::test]
async fn a_worker_whose_consumer_name_the_server_would_refuse_is_refused() {
    let registry = exec_nats::example_nodes::registry;
    for name in ["", "a.b", "a*", "a b", "a/b"] {
        let worker = NatsWorker::builder(registry())
            .config(config(|_| {}))
            .consumer(name);
        let error = worker.connect().await.map(drop).unwrap_err();
        assert_refused(&error, "the consumer name", &config(|_| {}));
    }
}

/// A mode may hold `/` (a subject token may), but the workers' default consumer name, made of
/// it, may not: such a worker names its consumer.
#[tokio::test]
async fn a_mode_with_a_slash_needs_a_worker_to_name_its_consumer() {
    let gpu = config(|c| c.mode = "gpu/large".into());
    gpu.validate().unwrap();
    let strategy = NatsStrategy::builder().config(gpu.clone()).start().await;
    assert!(strategy.map(drop).unwrap_err().is_connect_error());
    let registry = exec_nats::example_nodes::registry;
    let default = NatsWorker::builder(registry())
        .config(gpu.clone())
        .connect()
        .await;
    assert_refused(&default.map(drop).unwrap_err(), "`gpu/large-workers`", &gpu);
    let named = NatsWorker::builder(registry())
        .config(gpu)
        .consumer("gpu-large");
    assert!(
        named
            .connect()
            .await
            .map(drop)
            .unwrap_err()
            .is_connect_error()
    );
}

/// What passes the checks goes on to connect: here, to nowhere.
#[tokio::test]
async fn a_configuration_that_can_work_goes_on_to_connect() {
    let good = config(|c| {
        c.prefix = "team-a.jobs".into();
        c.mode = "gpu_1".into();
        c.stream = "TEAM_A-JOBS".into();
    });
    good.validate().unwrap();
    let error = NatsStrategy::builder().config(good).start().await.map(drop);
    assert!(error.unwrap_err().is_connect_error());
}
