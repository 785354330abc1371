//! Subject validation.
//!
//! A subject is a list of tokens separated by `.`. A token is never empty and never holds
//! whitespace or control characters. In a subscription, `*` as a whole token matches any
//! one token and `>` as the whole last token matches one or more. Publish subjects hold
//! no wildcard at all: we also refuse `*` and `>` inside a token (`a*b`), which the server
//! accepts but which breaks consumers that subscribe with wildcards.

use crate::error::{Error, Invalid};

fn invalid(value: &str, reason: &'static str) -> Error {
    Error::InvalidSubject(Invalid {
        value: value.to_owned(),
        reason,
    })
}

/// Why `token` (one token of `whole`) is unusable in any subject, if it is.
fn check_token_chars(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        return Some("empty token");
    }
    for c in token.chars() {
        if c == ' ' || c == '\t' || c == '\r' || c == '\n' || c.is_whitespace() {
            return Some("contains whitespace");
        }
        if c.is_control() {
            return Some("contains a control character");
        }
    }
    None
}

/// True for a subject of printable ASCII without wildcard characters and without an empty
/// token: valid for publish and subscribe alike. One pass over the bytes (this runs for
/// every message published); anything else takes the full check, which says what is wrong.
fn plain_ascii(subject: &[u8]) -> bool {
    // At the start as after a dot: a token must begin here.
    let mut token_begins = true;
    for &b in subject {
        match b {
            b'.' if token_begins => return false,
            b'.' => token_begins = true,
            b'*' | b'>' => return false,
            0x21..=0x7e => token_begins = false,
            _ => return false,
        }
    }
    !token_begins
}

fn check(subject: &str, wildcards: bool) -> Result<(), Error> {
    if plain_ascii(subject.as_bytes()) {
        return Ok(());
    }
    check_tokens(subject, wildcards)
}

/// The full check, token by token, with the reason for a refusal.
fn check_tokens(subject: &str, wildcards: bool) -> Result<(), Error> {
    if subject.is_empty() {
        return Err(invalid(subject, "empty subject"));
    }
    let count = subject.split('.').count();
    for (i, token) in subject.split('.').enumerate() {
        if let Some(reason) = check_token_chars(token) {
            return Err(invalid(subject, reason));
        }
        let last = i + 1 == count;
        match token {
            "*" if wildcards => {}
            ">" if wildcards && last => {}
            ">" if wildcards => return Err(invalid(subject, "`>` must be the last token")),
            t if t.contains(['*', '>']) => {
                return Err(invalid(
                    subject,
                    if wildcards {
                        "a wildcard must be a whole token"
                    } else {
                        "wildcard not allowed in a publish subject"
                    },
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a subject for PUB/HPUB (and reply subjects): no wildcards.
pub fn validate_publish(subject: &str) -> Result<(), Error> {
    check(subject, false)
}

/// Checks a subject for SUB: `*` as a whole token, `>` as the whole last token.
pub fn validate_subscribe(subject: &str) -> Result<(), Error> {
    check(subject, true)
}

/// Checks a queue group name: non-empty, no whitespace or control characters.
pub fn validate_queue_group(name: &str) -> Result<(), Error> {
    match check_token_chars(name) {
        Some("empty token") => Err(invalid(name, "empty queue group")),
        Some(reason) => Err(invalid(name, reason)),
        None => Ok(()),
    }
}

/// Checks one token used to build subjects (such as the emitter's subject id): no `.`,
/// no wildcard characters, no whitespace or control characters, not empty.
pub fn validate_token(token: &str) -> Result<(), Error> {
    if let Some(reason) = check_token_chars(token) {
        return Err(invalid(token, reason));
    }
    if token.contains('.') {
        return Err(invalid(token, "contains `.` (would add a subject token)"));
    }
    if token.contains(['*', '>']) {
        return Err(invalid(token, "contains a wildcard character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<(), Error>) -> &'static str {
        match r {
            Err(Error::InvalidSubject(i)) => i.reason,
            other => panic!("expected an invalid subject, got {other:?}"),
        }
    }

    #[test]
    fn the_fast_path_accepts_only_what_the_full_check_accepts() {
        // Every string up to 5 characters over an alphabet of the interesting kinds.
        let alphabet = [
            'a', 'Z', '.', '*', '>', ' ', '\t', '\u{1}', '\u{7f}', 'é', '$',
        ];
        let mut subjects = vec![String::new()];
        let mut accepted = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for s in &subjects {
                for c in alphabet {
                    let mut t = s.clone();
                    t.push(c);
                    if plain_ascii(t.as_bytes()) {
                        accepted += 1;
                        assert!(check_tokens(&t, false).is_ok(), "{t:?}");
                        assert!(check_tokens(&t, true).is_ok(), "{t:?}");
                    }
                    longer.push(t);
                }
            }
            subjects = longer;
        }
        assert!(accepted > 500, "{accepted}");
    }

    #[test]
    fn valid_publish_subjects() {
        for s in [
            "a",
            "a.b.c",
            "pub.ansible.runner.x.y.event",
            "_INBOX.abc",
            "ü.ñ",
            "a-b_c.$d",
        ] {
            validate_publish(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn invalid_publish_subjects() {
        let table = [
            ("", "empty subject"),
            (".a", "empty token"),
            ("a.", "empty token"),
            ("a..b", "empty token"),
            ("a b", "contains whitespace"),
            ("a\tb", "contains whitespace"),
            ("a\r\nb", "contains whitespace"),
            ("a\u{0}b", "contains a control character"),
            ("a\u{7f}", "contains a control character"),
            ("a.*", "wildcard not allowed in a publish subject"),
            ("a.>", "wildcard not allowed in a publish subject"),
            ("a*b", "wildcard not allowed in a publish subject"),
        ];
        for (s, want) in table {
            assert_eq!(reason(validate_publish(s)), want, "{s:?}");
        }
    }

    #[test]
    fn subscribe_wildcards() {
        for s in ["*", ">", "a.*", "a.>", "*.b.>", "a.*.c"] {
            validate_subscribe(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert_eq!(
            reason(validate_subscribe("a.>.b")),
            "`>` must be the last token"
        );
        assert_eq!(
            reason(validate_subscribe("a*")),
            "a wildcard must be a whole token"
        );
        assert_eq!(reason(validate_subscribe("a..b")), "empty token");
    }

    #[test]
    fn tokens() {
        validate_token("my-host_1").unwrap();
        assert_eq!(
            reason(validate_token("a.b")),
            "contains `.` (would add a subject token)"
        );
        assert_eq!(reason(validate_token("*")), "contains a wildcard character");
        assert_eq!(
            reason(validate_token("a>b")),
            "contains a wildcard character"
        );
        assert_eq!(reason(validate_token("te st")), "contains whitespace");
        assert_eq!(reason(validate_token("a\nb")), "contains whitespace");
        assert_eq!(reason(validate_token("")), "empty token");
    }

    #[test]
    fn queue_groups() {
        validate_queue_group("workers").unwrap();
        assert_eq!(reason(validate_queue_group("")), "empty queue group");
        assert_eq!(reason(validate_queue_group("a b")), "contains whitespace");
    }

    #[test]
    fn error_text_names_the_subject() {
        let e = validate_publish("a b").unwrap_err();
        assert_eq!(e.to_string(), "subject: \"a b\": contains whitespace");
    }
}
