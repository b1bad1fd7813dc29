//! `--watch N`: one agent's stream, live.

use std::collections::BTreeMap;

use coordinator::{Buffer, RequestCompletionMessage, RequestCompletionPublisher};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Shows agent `agent`'s events as they come: a line of the progress display holds the words of
/// its model call under way, live; each call's whole line is printed above the display when it
/// ends, as are the agent's own progress events.
pub(crate) fn watch(
    publisher: &RequestCompletionPublisher,
    multi: &MultiProgress,
    agent: u64,
) -> anyhow::Result<()> {
    let suffix = format!("-{agent}");
    let mine = move |m: &RequestCompletionMessage| {
        m.request_id()
            .is_some_and(|r| r.as_str().ends_with(&suffix))
            && (m.is_broadcast() || m.is_terminal())
    };
    let multi = multi.clone();
    let live = multi.add(ProgressBar::new_spinner());
    live.set_style(ProgressStyle::with_template("{prefix:>9} {msg}").expect("a valid template"));
    live.set_prefix(format!("agent-{agent}"));
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    publisher.subscribe_where(Buffer::Unbounded, mine, move |message| {
        let Ok(message) = message else { return };
        let Some(id) = message.request_id().map(ToString::to_string) else {
            return;
        };
        let print = |line: String| {
            // Hidden (with --quiet) the display prints nothing: print directly then.
            if multi.is_hidden() {
                println!("{line}");
            } else {
                let _ = multi.println(line);
            }
        };
        match message {
            RequestCompletionMessage::Broadcast(event) if event.info.name() == "agent" => {
                print(format!("[{id}] {}", event.event));
            }
            RequestCompletionMessage::Broadcast(event) => {
                let line = lines.entry(id.clone()).or_default();
                line.push_str(&event.event);
                live.set_message(format!("[{id}] {line}"));
            }
            terminal => {
                let words = lines.remove(&id).unwrap_or_default();
                let how = match terminal {
                    RequestCompletionMessage::Success(_) => "done".to_owned(),
                    RequestCompletionMessage::Failure(f) => format!("failed: {}", f.error),
                    _ => String::new(),
                };
                let line = match words.is_empty() {
                    true => format!("[{id}] {how}"),
                    false => format!("[{id}] {words} ({how})"),
                };
                print(line);
                if id == format!("agent-{agent}") {
                    live.finish_and_clear();
                }
            }
        }
    })?;
    Ok(())
}
