//! The optional bearer token, in a header or (for a browser's event stream, which cannot set
//! one) in the query string.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Shared;

/// Lets a request through when no token is set or it carries the token.
pub(crate) async fn authorize(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    use subtle::ConstantTimeEq;
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    let matches = |given: &[u8]| bool::from(given.ct_eq(token.as_bytes()));
    // The scheme's name is case-insensitive (RFC 7235). The value is taken as bytes: a token
    // beyond visible ASCII comes as its UTF-8 bytes.
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .and_then(|value| Some(value.split_at(value.iter().position(|&b| b == b' ')?)))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer"))
        .is_some_and(|(_, given)| matches(given.trim_ascii()));
    // Computed before awaiting: a borrow of the request held across it is not `Send`.
    let allowed = bearer || {
        let query = request.uri().query().unwrap_or_default();
        form_urlencoded::parse(query.as_bytes())
            .any(|(key, given)| key == "token" && matches(given.as_bytes()))
    };
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a token is required",
        )
            .into_response()
    }
}
