//! The configuration both sides share (server, stream, subjects, limits), its errors, and the
//! connection.

use crate::error::NatsError;
use crate::streams::{create_or_bind, overlaps, subjects_held};
use std::time::Duration;

/// The setters both builders share, for the server and the configuration both sides must agree
/// on. The builder has a `config: NatsConfig` and an `options: Option<ConnectOptions>`.
macro_rules! config_setters {
    () => {
        /// The server URL (default `$EXEC_NATS_URL`, else `nats://127.0.0.1:4222`).
        #[must_use]
        pub fn url(mut self, url: impl Into<String>) -> Self {
            self.config.url = url.into();
            self
        }

        /// Connect options passed through as they are: credentials, TLS, timeouts, names...
        #[must_use]
        pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
            self.options = Some(options);
            self
        }

        /// The whole shared configuration (stream, subjects, limits) at once; the submitting
        /// side's and the workers' must match.
        #[must_use]
        pub fn config(mut self, config: NatsConfig) -> Self {
            self.config = config;
            self
        }

        /// The stream name (default `EXEC_TASKS`).
        #[must_use]
        pub fn stream(mut self, stream: impl Into<String>) -> Self {
            self.config.stream = stream.into();
            self
        }

        /// The subject prefix (default `exec`).
        #[must_use]
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.config.prefix = prefix.into();
            self
        }

        /// The mode token of the task subject (default `distributed`): the submitting side
        /// publishes its tasks there, and workers of the same mode take them.
        #[must_use]
        pub fn mode(mut self, mode: impl Into<String>) -> Self {
            self.config.mode = mode.into();
            self
        }
    };
}
pub(crate) use config_setters;

/// The environment variable tests and the worker binary read the server URL from.
pub const URL_ENV: &str = "EXEC_NATS_URL";

/// The server URL used when none is configured: `$EXEC_NATS_URL`, else the local default.
pub fn default_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// What the submitting side and the workers must agree on: the server, the stream, the subjects.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server URL (`nats://`, `tls://`; several separated by commas).
    pub url: String,
    /// The JetStream stream that holds tasks until a worker acknowledges them.
    pub stream: String,
    /// Subject prefix: tasks of mode `m` go to `{prefix}.run.{m}`; cancellations to
    /// `{prefix}.cancel`.
    pub prefix: String,
    /// The mode token of the subject (one subject, and one worker consumer, per mode).
    pub mode: String,
    /// Largest task message the stream accepts, in bytes (set on the stream explicitly).
    pub max_message_size: i32,
    /// How long an unworked task stays in the stream (0: no limit). Like every span the server
    /// is given, at most a century (it reads signed 64-bit nanoseconds); a longer one is cut.
    pub max_age: Duration,
    /// How long the stream remembers message ids to drop duplicate publishes.
    pub duplicate_window: Duration,
    /// Copies of each stream a JetStream cluster keeps (default 1: a single server). 3 on a
    /// cluster keeps tasks and completions through the loss of a server. Set when the streams
    /// are created.
    pub replicas: usize,
}

/// The longest span the server is given, a century: it reads spans as signed 64-bit nanoseconds
/// (a longer one would be negative), and adds to some: an `ack_wait` near that limit spins it.
pub(crate) const LONGEST_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            stream: "EXEC_TASKS".into(),
            prefix: "exec".into(),
            mode: "distributed".into(),
            max_message_size: 1 << 20,
            max_age: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// Written by hand: the servers are shown without their users and passwords, so that a logged
/// configuration (or builder, or strategy) shows no credentials.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            url,
            stream,
            prefix,
            mode,
            max_message_size,
            max_age,
            duplicate_window,
            replicas,
        } = self;
        f.debug_struct("NatsConfig")
            .field("url", &url_without_credentials(url))
            .field("stream", stream)
            .field("prefix", prefix)
            .field("mode", mode)
            .field("max_message_size", max_message_size)
            .field("max_age", max_age)
            .field("duplicate_window", duplicate_window)
            .field("replicas", replicas)
            .finish()
    }
}

/// Why `value` cannot be a name the server keeps (a stream's, a durable consumer's) or a
/// subject token: empty, or holding whitespace, a wildcard (`*`, `>`) or a `.` (which splits a
/// subject, and which a name cannot hold), or, in a name, a path separator.
pub(crate) fn bad_token(value: &str, name: bool) -> Option<&'static str> {
    let forbidden = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>');
    match value {
        "" => Some("it is empty"),
        _ if value.contains(forbidden) => Some("it holds whitespace, `.`, `*` or `>`"),
        _ if name && value.contains(['/', '\\']) => Some("it holds `/` or `\\`"),
        _ => None,
    }
}

impl NatsConfig {
    /// Checks, before anything is connected or created, what the server would refuse or take
    /// in a way that cannot work: the stream's name, the prefix (subject tokens separated by
    /// `.`), the mode (one subject token), the largest message, and a duplicate window that
    /// leaves no time to try a publish again (0 takes the server's default). The builders call
    /// it as they start; the worker's also checks its consumer's name.
    ///
    /// # Errors
    ///
    /// A [`NatsError::is_config_error`] naming the setting and what is wrong with it.
    pub fn validate(&self) -> Result<(), NatsError> {
        let context = "checking the configuration";
        let fail = |setting: &str, value: &str, why: &str| {
            let why = format!("{setting} `{value}` cannot work: {why}");
            Err(NatsError::config(context, why))
        };
        if let Some(why) = bad_token(&self.stream, true) {
            return fail("the stream name (NatsConfig::stream)", &self.stream, why);
        }
        let prefix = self
            .prefix
            .split('.')
            .find_map(|token| bad_token(token, false));
        if let Some(why) = prefix {
            let why = format!("a token of it is not a subject token ({why})");
            return fail("the prefix (NatsConfig::prefix)", &self.prefix, &why);
        }
        if let Some(why) = bad_token(&self.mode, false) {
            return fail("the mode (NatsConfig::mode)", &self.mode, why);
        }
        if self.max_message_size <= 0 {
            let setting = "the largest message (NatsConfig::max_message_size)";
            let why = "a message of at least 1 byte must fit";
            return fail(setting, &self.max_message_size.to_string(), why);
        }
        // Whatever stream a side binds: it makes the stream with this window when it is missing.
        if !self.duplicate_window.is_zero() {
            crate::client::retry_period(self.task_duplicate_window(), self.task_max_age())?;
        }
        Ok(())
    }

    /// The subject tasks of this mode are published on.
    pub fn task_subject(&self) -> String {
        format!("{}.run.{}", self.prefix, self.mode)
    }

    /// The subject cancellations are announced on.
    pub fn cancel_subject(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// The stream that holds completions until the submitting side has read them:
    /// `{stream}_DONE`.
    pub fn completion_stream(&self) -> String {
        format!("{}_DONE", self.stream)
    }

    /// The task stream's `max_age`, as the server takes it.
    fn task_max_age(&self) -> Duration {
        self.max_age.min(LONGEST_SPAN)
    }

    /// The task stream's duplicate window: at most `max_age` (the server refuses a longer one),
    /// unless `max_age` is 0 (no limit).
    pub(crate) fn task_duplicate_window(&self) -> Duration {
        let window = self.duplicate_window.min(LONGEST_SPAN);
        if self.max_age.is_zero() {
            window
        } else {
            window.min(self.task_max_age())
        }
    }

    /// How long an unread completion is kept: `max_age`, at most an hour (a submitting side gone
    /// that long has failed what it waited for; the server drops its consumer too).
    fn completion_max_age(&self) -> Duration {
        if self.max_age.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.max_age.min(Duration::from_secs(3600))
        }
    }

    /// The stream that keeps the server's advisories of this stream's tasks that reached their
    /// last delivery unanswered, so that a submitting side away from the server when one came
    /// reads it on its return: `{stream}_ADVISORIES`.
    pub fn advisory_stream(&self) -> String {
        format!("{}_ADVISORIES", self.stream)
    }

    /// The subject of the server's advisories of this stream's tasks that reached their last
    /// delivery.
    pub(crate) fn advisory_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.stream
        )
    }

    /// Creates the advisory stream if it is missing (kept as long as an unread completion, file
    /// storage), or binds the existing one. When a stream of another name holds the advisories'
    /// subject already (an application's stream of every advisory, say), that stream is bound:
    /// it keeps them as well. One holding only some of them (one consumer's) is named in the
    /// error.
    pub(crate) async fn ensure_advisory_stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<async_nats::jetstream::stream::Stream, NatsError> {
        let context = "creating or binding the advisory stream";
        let subject = self.advisory_subject();
        let config = async_nats::jetstream::stream::Config {
            name: self.advisory_stream(),
            subjects: vec![subject.clone()],
            storage: async_nats::jetstream::stream::StorageType::File,
            max_age: self.completion_max_age(),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        };
        let error = match js.get_or_create_stream(config).await {
            Ok(stream) => return Ok(stream),
            Err(error) if overlaps(&error) => error,
            Err(error) => return Err(NatsError::new(context, error)),
        };
        // Any subject under the filter finds a stream that holds every one of them.
        if let Ok(holder) = js.stream_by_subject(subject.replace('*', "probe")).await {
            return js
                .get_stream(holder)
                .await
                .map_err(|e| NatsError::new(context, e));
        }
        let way_out = "let that stream hold all of them, or give this side and its workers \
                       another stream name (NatsConfig::stream)";
        let name = self.advisory_stream();
        Err(subjects_held(js, subject, name, context, way_out, error).await)
    }

    /// The subject the completions of one submitting side (`client`) are published on.
    pub fn completion_subject(&self, client: &str) -> String {
        format!("{}.done.{client}", self.prefix)
    }

    /// The subject one submitting side (`client`) takes completions on directly, confirming
    /// each: a worker stores in the completion stream only what nobody confirmed there.
    pub(crate) fn answer_subject(&self, client: &str) -> String {
        format!("{}.answer.{client}", self.prefix)
    }

    /// Creates the completion stream if it is missing (work-queue retention: a completion is
    /// gone once its submitting side acknowledged it; file storage, so completions outlive a
    /// server restart and a disconnected submitting side), or binds the existing one.
    pub(crate) async fn ensure_completion_stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<async_nats::jetstream::stream::Stream, NatsError> {
        use async_nats::jetstream::stream;
        let config = stream::Config {
            name: self.completion_stream(),
            subjects: vec![format!("{}.done.*", self.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_message_size: self.max_message_size,
            // A completion nobody reads within the hour (its submitting side is gone) is dropped.
            max_age: self.completion_max_age(),
            duplicate_window: self.duplicate_window.min(self.completion_max_age()),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        };
        let way_out = "give this side and its workers another prefix (NatsConfig::prefix)";
        // Every submitting side's subject.
        let needed = self.completion_subject("*");
        let context = "creating or binding the completion stream";
        create_or_bind(js, config, &needed, context, way_out).await
    }

    /// Creates the stream if it is missing (work-queue retention, file storage, the limits
    /// above), or binds the existing one.
    pub(crate) async fn ensure_stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<async_nats::jetstream::stream::Stream, NatsError> {
        use async_nats::jetstream::stream;
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.run.*", self.prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_message_size: self.max_message_size,
            max_age: self.task_max_age(),
            duplicate_window: self.task_duplicate_window(),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        };
        let way_out = "give this side and its workers another prefix (NatsConfig::prefix), or \
                       that stream's name (NatsConfig::stream)";
        let context = "creating or binding the stream";
        create_or_bind(js, config, &self.task_subject(), context, way_out).await
    }
}

/// The largest body a message with `headers` (its `Nats-Msg-Id` among them) may have: the
/// smaller of the streams' `max_message_size` and the server's `max_payload` (each counts the
/// headers too), less what the headers take. A larger one would be refused whatever the tries.
pub(crate) fn largest_body(
    client: &async_nats::Client,
    max_message_size: usize,
    headers: &[(&str, &str)],
) -> usize {
    // `NATS/1.0\r\n{name}: {value}\r\n...\r\n`
    let lines: usize = headers
        .iter()
        .map(|(name, value)| name.len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    let header = "NATS/1.0\r\n".len() + lines + "\r\n".len();
    let largest = max_message_size.min(client.max_payload());
    largest.saturating_sub(header)
}

/// The `max_message_size` of `stream` as the server keeps it (an earlier setup may have made
/// the stream with another than this side's configuration says), in bytes; no limit as
/// `usize::MAX`.
pub(crate) fn stream_limit(stream: &async_nats::jetstream::stream::Stream) -> usize {
    usize::try_from(stream.cached_info().config.max_message_size).unwrap_or(usize::MAX)
}

/// Publishes `bytes` to `subject` with `headers`, its message id (`Nats-Msg-Id`) among them (the
/// stream keeps one copy however many tries reach it), and waits until the stream has stored it.
pub(crate) async fn publish_stored(
    js: &async_nats::jetstream::Context,
    subject: String,
    headers: &[(&str, &str)],
    bytes: bytes::Bytes,
) -> Result<async_nats::jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError>
{
    let mut map = async_nats::HeaderMap::new();
    for &(name, value) in headers {
        map.insert(name, value);
    }
    js.publish_with_headers(subject, map, bytes).await?.await
}

/// Whether the server refused a message for its size (its `max_payload`, or the stream's
/// `max_message_size`): no try will get it in.
pub(crate) fn too_large(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::PublishErrorKind;
    let refused = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    refused || error.kind() == PublishErrorKind::MaxPayloadExceeded
}

/// Connects with `options` (credentials, TLS and every other connect option pass through).
pub(crate) async fn connect(
    url: &str,
    options: Option<async_nats::ConnectOptions>,
) -> Result<async_nats::Client, NatsError> {
    options
        .unwrap_or_default()
        .connect(url)
        .await
        .map_err(|source| {
            let url = url_without_credentials(url);
            NatsError::connect(At { url, source })
        })
}

/// A connection error, with the servers it was to (their credentials left out).
#[derive(Debug, thiserror::Error)]
#[error("{url}: {source}")]
struct At {
    url: String,
    #[source]
    source: async_nats::ConnectError,
}

/// `url` (servers separated by commas) without any server's user and password.
pub(crate) fn url_without_credentials(url: &str) -> String {
    url.split(',')
        .map(without_credentials)
        .collect::<Vec<_>>()
        .join(",")
}

/// `server` (`[scheme://][user[:password]@]host[:port]`) without its user and password.
fn without_credentials(server: &str) -> String {
    let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if scheme.is_empty() {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_a_connect_error() {
        // Nothing listens on port 1 of the loopback: refused at once.
        let error = connect("nats://127.0.0.1:1", None).await.unwrap_err();
        assert!(error.is_connect_error(), "{error}");
        assert!(
            !error.is_config_error() && !error.is_consumer_gone(),
            "{error}"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the server said no")]
    struct Refused(#[source] std::io::Error);

    /// As the client's own errors do: its cause in its message and as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct SaysItsCause(#[source] std::io::Error);

    #[test]
    fn a_servers_credentials_are_left_out_of_errors() {
        assert_eq!(
            without_credentials("nats://user:secret@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(without_credentials("tls://token@host"), "tls://host");
        assert_eq!(without_credentials("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(without_credentials("a:b@host:1"), "host:1");
    }

    #[test]
    fn a_configurations_debug_shows_no_credentials() {
        let config = NatsConfig {
            url: "nats://someone:secret@10.0.0.1:4222,tls://token@10.0.0.2".into(),
            ..NatsConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains(r#"url: "nats://10.0.0.1:4222,tls://10.0.0.2""#),
            "{shown}"
        );
        assert!(
            !shown.contains("secret") && !shown.contains("token"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let url = format!("nats://someone:secret@127.0.0.1:{port}");
        let error = connect(&url, None).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "connecting to the NATS server: nats://127.0.0.1:{port}: "
            )),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }

    /// The client's error is in the message, its cause is the source: each said once, however
    /// the client's error words itself.
    #[test]
    fn the_chain_says_each_cause_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = NatsError::new("connecting to the NATS server", Refused(refused()));
        let message = error.to_string();
        assert_eq!(message, "connecting to the NATS server: the server said no");
        let source = error.source().expect("the client error's cause");
        assert_eq!(source.to_string(), "refused");
        assert!(!message.contains("refused"));
        let error = NatsError::new("connecting to the NATS server", SaysItsCause(refused()));
        assert_eq!(
            error.to_string(),
            "connecting to the NATS server: IO error: refused"
        );
        assert!(error.source().is_none());
    }
}
