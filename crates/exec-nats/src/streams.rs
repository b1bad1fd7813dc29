//! Making the streams, or binding those already there, and saying which stream is in the way
//! when another holds their subjects.

use crate::error::NatsError;

/// Creates the stream `config` describes, or binds the one of that name when it takes the
/// subject `needed` this side uses (a config error names it otherwise, with `way_out`). When
/// another stream already holds its subjects (a stream left by an earlier setup under another
/// name), the error names that stream and `way_out`, instead of the server's bare "subjects
/// overlap".
pub(crate) async fn create_or_bind(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
    needed: &str,
    context: &'static str,
    way_out: &str,
) -> Result<async_nats::jetstream::stream::Stream, NatsError> {
    let subject = config.subjects.first().cloned().unwrap_or_default();
    let name = config.name.clone();
    let error = match js.get_or_create_stream(config).await {
        Ok(stream) if holds(&stream.cached_info().config.subjects, needed) => return Ok(stream),
        // One of that name made for other subjects (an earlier setup's, with another prefix):
        // this side's messages would go to no stream.
        Ok(stream) => {
            let held = &stream.cached_info().config.subjects;
            let why =
                format!("stream {name} does not take {needed} (it holds {held:?}): {way_out}");
            return Err(NatsError::config(context, why));
        }
        Err(error) => error,
    };
    if !overlaps(&error) {
        return Err(NatsError::new(context, error));
    }
    Err(subjects_held(js, subject, name, context, way_out, error).await)
}

/// The error of a stream refused because another holds (some of) its subjects: that stream is
/// named, with `way_out`, where the server says which it is.
pub(crate) async fn subjects_held(
    js: &async_nats::jetstream::Context,
    subject: String,
    name: String,
    context: &'static str,
    way_out: &str,
    error: async_nats::jetstream::context::CreateStreamError,
) -> NatsError {
    match js.stream_by_subject(subject.clone()).await {
        Ok(holder) => NatsError::config(
            context,
            SubjectsHeld {
                subject,
                name,
                holder,
                way_out: way_out.to_owned(),
                source: error,
            },
        ),
        _ => NatsError::config(context, error),
    }
}

/// Whether the server refused a stream because another holds its subjects.
pub(crate) fn overlaps(error: &async_nats::jetstream::context::CreateStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind;
    matches!(error.kind(),
        CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP)
}

/// Another stream holds the subjects a stream needs (the server's error is the source).
#[derive(Debug, thiserror::Error)]
#[error(
    "the subjects {subject} of stream {name} are already held by stream {holder} on this \
     server: {way_out}"
)]
struct SubjectsHeld {
    subject: String,
    name: String,
    holder: String,
    way_out: String,
    #[source]
    source: async_nats::jetstream::context::CreateStreamError,
}

/// Whether one of `filters` (stream subjects, with `*` for a token and `>` for the rest) takes
/// messages on every subject `subject` (which may hold `*` too) matches.
fn holds(filters: &[String], subject: &str) -> bool {
    filters.iter().any(|filter| {
        let mut wanted = subject.split('.');
        for token in filter.split('.') {
            match (token, wanted.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (token, Some(part)) if token == part => {}
                _ => return false,
            }
        }
        wanted.next().is_none()
    })
}

#[cfg(test)]
mod tests {
    use super::holds;

    #[test]
    fn a_stream_holds_a_subject_its_filters_match() {
        let held = |filters: &[&str], subject| {
            holds(
                &filters.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                subject,
            )
        };
        assert!(held(&["app.run.*"], "app.run.*"));
        assert!(held(&["app.run.gpu", "app.run.cpu"], "app.run.gpu"));
        assert!(!held(&["app.run.gpu"], "app.run.*"));
        assert!(held(&["app.run.*"], "app.run.gpu"));
        assert!(held(&["app.>"], "app.run.*"));
        assert!(held(&["other", ">"], "app.run.gpu"));
        assert!(!held(&["app-other.run.*"], "app.run.*"));
        assert!(!held(&["app.run"], "app.run.gpu"));
        assert!(!held(&["app.run.*.x"], "app.run.gpu"));
        assert!(!held(&["app.>"], "app"));
        assert!(!held(&[], "app.run.gpu"));
    }
}
