//! Splits a command written as one string into words, the way a POSIX shell would but without any
//! expansion, so `--engine '1.1.0=/usr/bin/engine --config-root "/etc/my cf"'` can carry a program
//! and its arguments in a single flag or environment variable.
//!
//! Supported: whitespace between words, `'…'` (everything literal), `"…"` (literal except `\"`,
//! `\\`, `\$` and `` \` ``), a backslash outside quotes (keeps the next character), and `;` between
//! commands. Nothing is expanded: `$HOME`, `~` and `*` stay as written, because the shim does not run
//! a shell and a half-implemented expansion would be worse than none.

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("a {0} quote is never closed")]
    UnterminatedQuote(char),
    #[error("a trailing backslash escapes nothing")]
    TrailingBackslash,
}

/// The words of one command; `;` is an ordinary character here.
pub fn split_words(text: &str) -> Result<Vec<String>, SplitError> {
    Ok(tokenize(text, false)?.into_iter().flatten().collect())
}

/// Several commands separated by unquoted `;`, each split into words. Empty commands (`a;;b`, a
/// trailing `;`) are dropped, so the result holds only commands with at least one word.
pub fn split_commands(text: &str) -> Result<Vec<Vec<String>>, SplitError> {
    tokenize(text, true)
}

fn tokenize(text: &str, semicolon_separates: bool) -> Result<Vec<Vec<String>>, SplitError> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    // `in_word` is separate from `word.is_empty()` so `''` yields an empty word, as in a shell.
    let mut word = String::new();
    let mut in_word = false;
    fn end_word(word: &mut String, in_word: &mut bool, words: &mut Vec<String>) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut words),
            ';' if semicolon_separates => {
                end_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::UnterminatedQuote('"')),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::UnterminatedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                // A backslash-newline continues the line.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(SplitError::TrailingBackslash),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split_words(text).unwrap()
    }

    #[test]
    fn whitespace_separates_words() {
        assert_eq!(
            words("  /usr/bin/engine-1.1\t--config-root   /etc/cf \n"),
            ["/usr/bin/engine-1.1", "--config-root", "/etc/cf"]
        );
        assert!(words("").is_empty());
        assert!(words("   ").is_empty());
    }

    #[test]
    fn quotes_keep_spaces_and_join_with_neighbours() {
        assert_eq!(
            words("'/opt/my dir/engine' -x"),
            ["/opt/my dir/engine", "-x"]
        );
        assert_eq!(words(r#""/opt/my dir/engine""#), ["/opt/my dir/engine"]);
        assert_eq!(words(r#"--root="/etc/my cf"/x"#), ["--root=/etc/my cf/x"]);
        assert_eq!(words(r#"a'b'"c""#), ["abc"]);
        assert_eq!(words("'' x \"\""), ["", "x", ""]);
    }

    #[test]
    fn single_quotes_are_fully_literal() {
        assert_eq!(words(r"'a\b \' "), [r"a\b \"]);
        assert_eq!(words(r#"'say "hi"; $HOME'"#), [r#"say "hi"; $HOME"#]);
    }

    #[test]
    fn backslashes_escape_outside_and_selectively_inside_double_quotes() {
        assert_eq!(words(r"/opt/my\ dir/engine"), ["/opt/my dir/engine"]);
        assert_eq!(words(r#"\'\"\\"#), [r#"'"\"#]);
        assert_eq!(words(r#""a\"b\\c\$d\`e""#), [r#"a"b\c$d`e"#]);
        // Inside double quotes any other backslash stays, as in a POSIX shell.
        assert_eq!(words(r#""C:\path\n""#), [r"C:\path\n"]);
        assert_eq!(words("a\\\nb"), ["ab"]);
    }

    #[test]
    fn nothing_is_expanded() {
        assert_eq!(words("$HOME ~ *.db"), ["$HOME", "~", "*.db"]);
    }

    #[test]
    fn broken_quoting_is_an_error() {
        assert_eq!(
            split_words("'abc"),
            Err(SplitError::UnterminatedQuote('\''))
        );
        assert_eq!(
            split_words(r#"x "abc"#),
            Err(SplitError::UnterminatedQuote('"'))
        );
        assert_eq!(
            split_words(r#""abc\"#),
            Err(SplitError::UnterminatedQuote('"'))
        );
        assert_eq!(split_words(r"abc\"), Err(SplitError::TrailingBackslash));
    }

    #[test]
    fn unquoted_semicolons_separate_commands() {
        assert_eq!(
            split_commands("1.0.0=/bin/e0 -a; 1.1.0=/bin/e1 'x;y' a\\;b;;  ;").unwrap(),
            vec![
                vec!["1.0.0=/bin/e0", "-a"],
                vec!["1.1.0=/bin/e1", "x;y", "a;b"]
            ]
        );
        assert_eq!(words("a;b"), ["a;b"]);
        assert!(split_commands(" ; ").unwrap().is_empty());
    }
}
