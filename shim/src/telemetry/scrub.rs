//! What every log line goes through before it is written: control characters escaped, passwords
//! cut out.
//!
//! Engine output and node answers are text from outside. Printed raw, a `\n` or `\r` in them
//! forges a whole log line that alerts and operators would trust, and an ESC sequence rewrites the
//! operator's terminal. A password that slipped into any message (a mistyped `--lock`, an error
//! that quotes a URL) would be stored by every log collector. Both are handled here once, on the
//! finished line, so no call site can forget them. Pure functions: the writer calls them, tests
//! call them directly.

use std::borrow::Cow;

use super::LogFormat;

/// What stands where a password was.
pub const REDACTED: &str = "<redacted>";

/// The line as it may be written: passwords redacted, and control characters escaped (text) or
/// the ones JSON leaves raw escaped (JSON). `line` is one formatted event, ending in `\n`.
pub fn clean_line(format: LogFormat, line: &str) -> String {
    let (body, newline) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let escaped = match format {
        LogFormat::Text => escape_controls(body),
        LogFormat::Json => escape_json_raw_controls(body),
    };
    let mut clean = redact_passwords(&escaped).into_owned();
    clean.push_str(newline);
    clean
}

/// Every control character written as an escape: `\n`, `\r`, `\t`, other C0 controls and DEL
/// as `\x1b`, C1 controls as `\u{9b}` (the spelling `tracing-subscriber` already uses for the
/// few it escapes itself, so every escape in a line looks alike). Everything else, non-ASCII
/// text included, is unchanged. Backslashes are left alone: a literal `\n` typed by an engine
/// stays on its line and forges nothing.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON encoders escape C0 controls but leave DEL and the C1 controls (such as U+009B, a one-byte
/// CSI for some terminals) raw; this writes those as `\u007f`-style escapes, which decode to the
/// same string. They can only occur inside JSON strings, so the line stays valid JSON.
pub fn escape_json_raw_controls(line: &str) -> Cow<'_, str> {
    if !line.chars().any(char::is_control) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Replaces the password of every `SCHEME://USER:PASSWORD@HOST` (any scheme, any case) and the
/// value of every `password=VALUE` (any case) with [`REDACTED`].
///
/// As URL syntax requires, the password ends at the last `@` of the authority, which ends at
/// whitespace, `/`, `?`, `#` or a `"` (a `\`-escaped character, as in JSON or Debug strings, never
/// ends it). A URL without user-info (`ws://127.0.0.1:9944`) is left alone.
pub fn redact_passwords(line: &str) -> Cow<'_, str> {
    let mut cuts = url_password_spans(line);
    cuts.extend(key_value_password_spans(line));
    if cuts.is_empty() {
        return Cow::Borrowed(line);
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    for (start, end) in cuts {
        if start < copied {
            // Overlaps a span already cut.
            copied = copied.max(end);
            continue;
        }
        out.push_str(&line[copied..start]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&line[copied..]);
    Cow::Owned(out)
}

/// Byte spans of the passwords in URL user-info parts.
fn url_password_spans(line: &str) -> Vec<(usize, usize)> {
    let bytes = line.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = line[from..].find("://") {
        let separator = from + found;
        let authority_start = separator + 3;
        let authority_end = value_end(bytes, authority_start, b"/?#");
        from = authority_end.max(authority_start);
        if !has_scheme_before(bytes, separator) {
            continue;
        }
        let authority = &line[authority_start..authority_end];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        if let Some(colon) = authority[..at].find(':') {
            let start = authority_start + colon + 1;
            let end = authority_start + at;
            if start < end {
                spans.push((start, end));
            }
        }
    }
    spans
}

/// Byte spans of the values in `password=VALUE` (a URL query, a connection string, an
/// environment assignment).
fn key_value_password_spans(line: &str) -> Vec<(usize, usize)> {
    const KEY: &[u8] = b"password=";
    let bytes = line.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i + KEY.len() <= bytes.len() {
        if bytes[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            let start = i + KEY.len();
            let end = value_end(bytes, start, b"&;,");
            if start < end {
                spans.push((start, end));
            }
            i = end.max(start);
        } else {
            i += 1;
        }
    }
    spans
}

/// Where a value starting at `start` ends: at whitespace, a `"`, or one of `stops`; a `\` and the
/// character after it are part of the value.
fn value_end(bytes: &[u8], start: usize, stops: &[u8]) -> usize {
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => break,
            b if b.is_ascii_whitespace() || stops.contains(&b) => break,
            _ => i += 1,
        }
    }
    i.min(bytes.len())
}

/// Whether an RFC 3986 scheme (a letter, then letters, digits, `+`, `-`, `.`) ends at `end`.
fn has_scheme_before(bytes: &[u8], end: usize) -> bool {
    let start = bytes[..end]
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .map_or(0, |i| i + 1);
    // Lenient on purpose (`3x://` counts): cutting too much is safer than leaking.
    bytes[start..end].iter().any(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(line: &str) -> String {
        redact_passwords(line).into_owned()
    }

    #[test]
    fn url_passwords_are_cut_whatever_the_schemes_case() {
        for scheme in [
            "postgres",
            "POSTGRES",
            "PostgreSQL",
            "postgresql",
            "https",
            "redis",
        ] {
            assert_eq!(
                redact(&format!(
                    "--lock {scheme}://shim:s3cret@db:5432/locks: refused"
                )),
                format!("--lock {scheme}://shim:<redacted>@db:5432/locks: refused")
            );
        }
    }

    #[test]
    fn leading_spaces_quotes_and_no_path_do_not_hide_a_password() {
        assert_eq!(
            redact("--lock  POSTGRES://shim:s3cret@127.0.0.1:1"),
            "--lock  POSTGRES://shim:<redacted>@127.0.0.1:1"
        );
        assert_eq!(
            redact("unknown lock `postgress://shim:s3cret@db`"),
            "unknown lock `postgress://shim:<redacted>@db`"
        );
        assert_eq!(
            redact(r#"{"lock":"postgres://shim:s3cret@db/locks","x":1}"#),
            r#"{"lock":"postgres://shim:<redacted>@db/locks","x":1}"#
        );
    }

    #[test]
    fn percent_encoding_at_signs_and_escaped_quotes_stay_inside_the_password() {
        assert_eq!(
            redact("postgres://shim:s%40cr%2Fet@db/locks"),
            "postgres://shim:<redacted>@db/locks"
        );
        assert_eq!(
            redact("postgres://shim:s@cr@et@db/locks"),
            "postgres://shim:<redacted>@db/locks"
        );
        assert_eq!(
            redact(r#"{"m":"postgres://shim:a\"b:c@db"}"#),
            r#"{"m":"postgres://shim:<redacted>@db"}"#
        );
        assert_eq!(
            redact(r"postgres://shim:a\u{1b}b@db"),
            "postgres://shim:<redacted>@db"
        );
        // An empty user or an empty password is still a password field.
        assert_eq!(redact("postgres://:s3cret@db"), "postgres://:<redacted>@db");
        assert_eq!(redact("postgres://shim:@db"), "postgres://shim:@db");
    }

    #[test]
    fn several_urls_in_one_line_are_all_cut() {
        assert_eq!(
            redact("from postgres://a:one@h1/x to postgresql://b:two@h2/y via ws://127.0.0.1:9944"),
            "from postgres://a:<redacted>@h1/x to postgresql://b:<redacted>@h2/y via ws://127.0.0.1:9944"
        );
    }

    #[test]
    fn password_keys_are_cut_in_queries_and_assignments() {
        assert_eq!(
            redact("postgres://shim@db/locks?sslmode=disable&Password=s3cret&x=1"),
            "postgres://shim@db/locks?sslmode=disable&Password=<redacted>&x=1"
        );
        assert_eq!(
            redact("host=db user=shim password=s3cret dbname=locks"),
            "host=db user=shim password=<redacted> dbname=locks"
        );
        assert_eq!(
            redact("ENGINE_SHIM_LOCK_PASSWORD=s3cret"),
            "ENGINE_SHIM_LOCK_PASSWORD=<redacted>"
        );
        // A URL password and a query password in one URL.
        assert_eq!(
            redact("postgres://u:one@db?password=two"),
            "postgres://u:<redacted>@db?password=<redacted>"
        );
    }

    #[test]
    fn plain_text_and_urls_without_user_info_are_untouched() {
        for line in [
            "connected to node ws://127.0.0.1:9944; finalized head #12 (0xab)",
            r#"{"fields":{"node":"ws://127.0.0.1:9944","message":"user:x@y"}}"#,
            "lost the node: ws://[::1]:9944/path?q=a:b@c#frag",
            "mail ops:team@example.org about it at 12:30",
            "the database asks for a password: set ENGINE_SHIM_LOCK_PASSWORD",
            "a :// b:c@d",
            "ratio 3://4",
            "password= nothing follows",
            "ünïcödé ✓ — 0x4d66…fb38",
            "",
        ] {
            assert_eq!(redact(line), line);
        }
    }

    #[test]
    fn text_lines_escape_every_control_character_and_keep_unicode() {
        assert_eq!(
            clean_line(LogFormat::Text, "innocent\rINFO forged line\n"),
            "innocent\\rINFO forged line\n"
        );
        assert_eq!(
            clean_line(LogFormat::Text, "a\nb\tc\u{1b}[2J\u{7}\u{0}\u{7f}\u{9b}d\n"),
            "a\\nb\\tc\\x1b[2J\\x07\\x00\\x7f\\u{9b}d\n"
        );
        let unicode = "ünïcödé ✓ — 0x4d66…fb38 😀\n";
        assert_eq!(clean_line(LogFormat::Text, unicode), unicode);
        // A literal backslash-n typed by an engine is not a line break: it stays as it is.
        assert_eq!(clean_line(LogFormat::Text, "a\\nb\n"), "a\\nb\n");
    }

    #[test]
    fn json_lines_escape_the_controls_encoders_leave_raw_and_stay_valid() {
        let line = serde_json::json!({"message": "a\u{9b}2J\u{7f}b\u{1b}c ü"}).to_string();
        let clean = clean_line(LogFormat::Json, &format!("{line}\n"));
        assert!(!clean.trim_end().chars().any(char::is_control), "{clean:?}");
        let back: serde_json::Value = serde_json::from_str(&clean).unwrap();
        assert_eq!(back["message"], "a\u{9b}2J\u{7f}b\u{1b}c ü");
    }

    #[test]
    fn both_formats_redact_after_escaping() {
        assert_eq!(
            clean_line(LogFormat::Text, "POSTGRES://shim:s3\ncret@db\n"),
            "POSTGRES://shim:<redacted>@db\n"
        );
        let json = serde_json::json!({"message": "--lock  PostgreSQL://shim:s3\"cret@db:1/x"});
        let clean = clean_line(LogFormat::Json, &format!("{json}\n"));
        assert!(!clean.contains("s3"), "{clean}");
        let back: serde_json::Value = serde_json::from_str(&clean).unwrap();
        assert_eq!(
            back["message"],
            "--lock  PostgreSQL://shim:<redacted>@db:1/x"
        );
    }
}
