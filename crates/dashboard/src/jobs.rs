//! `/api/jobs/{id}`: one job's record, found by its request id, as an operator checking on a
//! request reads it.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::Shared;
use crate::history::clip;

/// The job of request `id` as JSON (as [`Job`](coordinator::Job) serializes: ids, node name,
/// status, result, attempts, times, error), every text cut to 1 KiB as the dashboard's other
/// answers cut theirs; `404` when the job table holds none (never submitted, or dropped by its
/// retention policy); `400` for an id that is not text once decoded.
pub(crate) async fn job(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(unread) => return bad_request(format!("the request id: {}", unread.body_text())),
    };
    let found = shared.coordinator.job(&id).map(serde_json::to_value);
    let (status, mut json) = match found {
        Some(Ok(json)) => (StatusCode::OK, json),
        Some(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("the job could not be written: {e}") }),
        ),
        None => (
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": "no such job in the job table: never submitted, or dropped by its retention policy",
                "request_id": id,
            }),
        ),
    };
    clip_texts(&mut json);
    let json = json.to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// `/api/jobs/` with no id: `404`, with the shape of the answer for an id the table does not
/// hold, and how to ask.
pub(crate) async fn no_id() -> Response {
    let json = serde_json::json!({
        "error": "no request id: ask for /api/jobs/{request id}",
        "request_id": "",
    });
    let json = json.to_string();
    let content = [(header::CONTENT_TYPE, "application/json")];
    (StatusCode::NOT_FOUND, content, json).into_response()
}

/// A `400` saying `why`, as JSON like the dashboard's other errors.
pub(crate) fn bad_request(why: String) -> Response {
    let json = serde_json::json!({ "error": why }).to_string();
    let content = [(header::CONTENT_TYPE, "application/json")];
    (StatusCode::BAD_REQUEST, content, json).into_response()
}

/// `/api/events`' query.
#[derive(serde::Deserialize)]
pub(crate) struct EventsQuery {
    /// Only this request's updates.
    request: Option<String>,
}

/// The request whose updates `/api/events` is asked for (`None`: every request's), or why the
/// query is refused (for a `400`): it does not read, or names an empty id (no request has one).
pub(crate) fn request_filter(
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Option<String>, String> {
    match query {
        Ok(Query(EventsQuery { request: Some(id) })) if id.is_empty() => Err(
            "an empty request id: no request has one (leave `request` out for every request)"
                .into(),
        ),
        Ok(Query(query)) => Ok(query.request.map(clip)),
        Err(unread) => Err(format!("the query: {}", unread.body_text())),
    }
}

/// Cuts every string in `json` as [`clip`] does.
fn clip_texts(json: &mut Value) {
    match json {
        Value::String(text) => *text = clip(std::mem::take(text)),
        Value::Array(items) => items.iter_mut().for_each(clip_texts),
        Value::Object(fields) => fields.values_mut().for_each(clip_texts),
        _ => {}
    }
}
