//! The application's own text on the event streams: the text of a result (`show_payloads`) is
//! the dashboard's to bound, whatever the result's own `Debug` does, and so are long request ids.

use std::fmt;
use std::time::Duration;

use coordinator::{NodeId, RequestCompletionMessage, RequestSuccess, TaskInfo, Value};

use crate::support::*;

/// A result whose `Debug` writes some text, then fails.
#[derive(Clone)]
struct FailingDebug;

impl fmt::Debug for FailingDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("half")?;
        Err(fmt::Error)
    }
}

fn success(id: &str, result: Value) -> RequestCompletionMessage {
    let info = TaskInfo::new(id.into(), NodeId::generate(), None, "shown");
    RequestSuccess { info, result }.into()
}

pub(crate) async fn a_result_whose_debug_fails_leaves_the_dashboard_reading() {
    let (publisher, coordinator, dashboard) = started_with(|b| b.show_payloads(true)).await;
    let mut events = open_events(&dashboard, "").await;
    publisher
        .publish(success("odd", Value::new(FailingDebug)))
        .unwrap();
    publisher
        .publish(success("plain", Value::new(7u32)))
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(10), next_event(&mut events));
        let (kind, data) = next.await.expect("the dashboard still sends outcomes");
        let json: serde_json::Value = serde_json::from_str(&data).unwrap();
        seen.push((kind, json["request_id"].clone(), json["result"].clone()));
    }
    let expected = |id: &str, result: &str| ("success".to_owned(), id.into(), result.into());
    assert_eq!(seen, [expected("odd", "half"), expected("plain", "7")]);
    within("the dashboard's shutdown", dashboard.shutdown()).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A request id over the 1 KiB the dashboard keeps of it: a stream asked for it by its whole id
/// gets its outcome, cut, and not another's.
pub(crate) async fn a_stream_follows_a_request_whose_id_is_over_the_cut() {
    let (publisher, coordinator, dashboard) = started().await;
    let long = |first: char| format!("{first}{}", "x".repeat(4096));
    let mut events = open_events(&dashboard, &format!("?request={}", long('a'))).await;
    for id in [long('b'), long('a')] {
        publisher.publish(success(&id, Value::new(1u32))).unwrap();
    }
    let next = tokio::time::timeout(Duration::from_secs(10), next_event(&mut events));
    let (kind, data) = next.await.expect("the followed request's outcome");
    let json: serde_json::Value = serde_json::from_str(&data).unwrap();
    let shown = json["request_id"].as_str().unwrap();
    assert_eq!(kind, "success");
    assert!(shown.starts_with('a') && shown.len() < 1100, "{shown}");
    within("the dashboard's shutdown", dashboard.shutdown()).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
