//! Text log lines for people: `TIME LEVEL MESSAGE [fields the message does not say]`.
//!
//! Every message already names what it is about (`starting engine 1.1.0: compatible with release
//! 1.1.0 since block #6 (0x…)`), so repeating the same values as fields after it
//! (`engine_version=1.1.0 release=1.1.0 block_number=6 block_hash=0x…`) only doubled each line
//! and pushed it off the terminal. In text, a field is left out when its value appears in the
//! message as a word of its own (a `*_ms` field also when its duration does, as `2s`), and so is
//! the module path; the engine's forwarded output is labelled `[engine 1.1.0]` instead of
//! `engine: … engine=1.1.0 stream="stdout"`. JSON lines keep every field: machines want them all.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target under which the supervisor forwards the engine's own output.
const ENGINE_TARGET: &str = "engine";

/// The `tracing-subscriber` event format of `--log-format text`; the decisions are in [`render`].
pub struct PeopleFormat;

impl<S, N> FormatEvent<S, N> for PeopleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = render(
            SystemTime::now(),
            *meta.level(),
            meta.target(),
            &fields.message,
            &fields.others,
        );
        writeln!(writer, "{line}")
    }
}

/// An event's message and its other fields, in the order they were given.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here already in their Display form.
        self.keep(field, format!("{value:?}"));
    }
}

impl Fields {
    fn keep(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// One text line (without its newline): time to the millisecond, level, the engine label for
/// forwarded output, the message, then only the fields the message does not already say.
pub fn render(
    at: SystemTime,
    level: Level,
    target: &str,
    message: &str,
    fields: &[(&str, String)],
) -> String {
    let mut line = format!("{} {level:>5} ", humantime::format_rfc3339_millis(at));
    let mut labelled: &[&str] = &[];
    if target == ENGINE_TARGET {
        let field = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        if let Some(engine) = field("engine") {
            let _ = write!(line, "[engine {engine}");
            if let Some(stream) = field("stream").filter(|s| s.as_str() != "stdout") {
                let _ = write!(line, " {stream}");
            }
            line.push_str("] ");
            labelled = &["engine", "stream"];
        }
    }
    line.push_str(message);
    for (name, value) in fields {
        if labelled.contains(name) || said_by(message, name, value) {
            continue;
        }
        if value.is_empty() || value.contains(char::is_whitespace) {
            let _ = write!(line, " {name}={value:?}");
        } else {
            let _ = write!(line, " {name}={value}");
        }
    }
    line
}

/// Whether `message` already says the field's value: as a word of its own, or for a duration in
/// milliseconds (`retry_in_ms=2000`) as the message writes durations (`2s`).
fn said_by(message: &str, name: &str, value: &str) -> bool {
    if has_word(message, value) {
        return true;
    }
    name.ends_with("_ms")
        && value.parse::<u64>().is_ok_and(|ms| {
            let spoken = humantime::format_duration(Duration::from_millis(ms)).to_string();
            has_word(message, &spoken)
        })
}

/// Whether `needle` occurs in `text` not as a part of a longer word, number or version: `0` is
/// not in `1.0.0` nor in `0x00`, but `1.0.0` is in `release 1.0.0;` and a hash is in `(0x…).`.
fn has_word(text: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let joins = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    text.match_indices(needle).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let rest = &text[at + needle.len()..];
        let mut after = rest.chars();
        let first_after = after.next();
        let free_before = before.is_none_or(|c| !joins(c));
        // A full stop ends a sentence, not a version: `block: 0x…. WAITING`.
        let free_after = match first_after {
            None => true,
            Some('.') => after.next().is_none_or(char::is_whitespace),
            Some(c) => !joins(c),
        };
        free_before && free_after
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        humantime::parse_rfc3339("2026-11-29T09:46:37.271568Z").unwrap()
    }

    fn fields(list: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        list.iter().map(|(n, v)| (*n, v.to_string())).collect()
    }

    const HASH: &str = "0x28c12cead99bb51792b3adcee3dd5077b8008ecbb3b66fd7e689741d134c7b6f";

    #[test]
    fn fields_the_message_says_are_left_out() {
        let message =
            format!("starting engine 1.1.0: compatible with release 1.1.0 since block #6 ({HASH})");
        let line = render(
            at(),
            Level::INFO,
            "engine_shim::telemetry",
            &message,
            &fields(&[
                ("engine_version", "1.1.0"),
                ("release", "1.1.0"),
                ("block_number", "6"),
                ("block_hash", HASH),
            ]),
        );
        assert_eq!(line, format!("2026-11-29T09:46:37.271Z  INFO {message}"));
    }

    #[test]
    fn chainflip_lines_stay_verbatim_and_lose_their_repeated_fields() {
        let waiting = format!("This version '1.1.0' is incompatible with the current release '1.0.0' at block: {HASH}. WAITING for a compatible release version.");
        let line = render(
            at(),
            Level::INFO,
            "engine_shim::telemetry",
            &waiting,
            &fields(&[
                ("engine_version", "1.1.0"),
                ("release", "1.0.0"),
                ("block_number", "0"),
                ("block_hash", HASH),
            ]),
        );
        // The block number is not in Chainflip's wording, so it stays.
        assert_eq!(
            line,
            format!("2026-11-29T09:46:37.271Z  INFO {waiting} block_number=0")
        );
    }

    #[test]
    fn fields_the_message_does_not_say_stay() {
        let line = render(
            at(),
            Level::INFO,
            "engine_shim::run",
            "engine 1.0.0 started (pid 1370)",
            &fields(&[
                ("engine_version", "1.0.0"),
                ("pid", "1370"),
                ("block_number", "0"),
            ]),
        );
        assert_eq!(
            line,
            "2026-11-29T09:46:37.271Z  INFO engine 1.0.0 started (pid 1370) block_number=0"
        );
        let line = render(
            at(),
            Level::INFO,
            "engine_shim::supervisor",
            "stopping engine: SIGTERM to its process group",
            &fields(&[("engine", "1.0.0"), ("pid", "1370"), ("grace", "5s")]),
        );
        assert!(
            line.ends_with("process group engine=1.0.0 pid=1370 grace=5s"),
            "{line}"
        );
    }

    #[test]
    fn durations_in_milliseconds_count_as_said_when_the_message_says_them() {
        let line = render(
            at(),
            Level::WARN,
            "engine_shim::telemetry",
            "lost the node: connection reset; reconnecting in 2s (the engine's state is kept)",
            &fields(&[("retry_in_ms", "2000")]),
        );
        assert!(line.ends_with("(the engine's state is kept)"), "{line}");
        let line = render(
            at(),
            Level::WARN,
            "x",
            "asking again in 2s",
            &fields(&[("retry_in_ms", "1500")]),
        );
        assert!(
            line.ends_with("asking again in 2s retry_in_ms=1500"),
            "{line}"
        );
    }

    #[test]
    fn values_with_spaces_are_quoted() {
        let line = render(
            at(),
            Level::ERROR,
            "x",
            "engine 1.0.0 exited",
            &fields(&[("status", "exit status: 3"), ("note", "")]),
        );
        assert!(
            line.ends_with("engine 1.0.0 exited status=\"exit status: 3\" note=\"\""),
            "{line}"
        );
        let line = render(
            at(),
            Level::INFO,
            "x",
            "engine 1.0.0 stopped (exit status: 0)",
            &fields(&[("status", "exit status: 0")]),
        );
        assert!(line.ends_with("stopped (exit status: 0)"), "{line}");
    }

    #[test]
    fn engine_output_is_labelled_with_its_version_and_stream() {
        let out = render(
            at(),
            Level::INFO,
            "engine",
            "fake-engine 1.0.0 started pid 1370",
            &fields(&[("engine", "1.0.0"), ("stream", "stdout")]),
        );
        assert_eq!(
            out,
            "2026-11-29T09:46:37.271Z  INFO [engine 1.0.0] fake-engine 1.0.0 started pid 1370"
        );
        let err = render(
            at(),
            Level::WARN,
            "engine",
            "Error: You need to update your CFE.",
            &fields(&[("engine", "2.3.0"), ("stream", "stderr")]),
        );
        assert_eq!(
            err,
            "2026-11-29T09:46:37.271Z  WARN [engine 2.3.0 stderr] Error: You need to update your CFE."
        );
    }

    #[test]
    fn a_word_is_a_whole_word_number_or_version() {
        assert!(has_word("release 1.0.0; next", "1.0.0"));
        assert!(has_word("at block: 0xab. WAITING", "0xab"));
        assert!(has_word("block #0 (0xab)", "0"));
        assert!(!has_word("engine 1.0.0 started", "0"));
        assert!(!has_word("engine 11.0.0", "1.0.0"));
        assert!(!has_word("hash 0x00", "0"));
        assert!(!has_word("pid 13700", "1370"));
        assert!(!has_word("anything", ""));
    }
}
