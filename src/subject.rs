//! Subject validation.
//!
//! A subject is a list of tokens separated by `.`. A token is never empty and never holds
//! whitespace or control characters. In a subscription, `*` as a whole token matches any
//! one token and `>` as the whole last token matches one or more. Publish subjects hold
//! no wildcard at all: we also refuse `*` and `>` inside a token (`a*b`), which the server
//! accepts but which breaks consumers that subscribe with wildcards.

use crate::error::{Error, Invalid};
use crate::words::short_word;

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
/// token: valid for publish and subscribe alike. It runs whenever a publisher's subject
/// changes and for every reply subject, so it looks at 8 bytes at a time (a word, each
/// byte tested in parallel with carry-free arithmetic); anything else takes the full check,
/// which says what is wrong.
fn plain_ascii(subject: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (subject.first(), subject.last()) else {
        return false;
    };
    if first == b'.' || last == b'.' {
        return false;
    }
    // Whether the byte before the current word was a dot, as a flag in its first byte.
    let mut dot_before = 0;
    let mut rest = subject;
    while let Some((word, more)) = rest.split_first_chunk::<8>() {
        if !plain_word(u64::from_le_bytes(*word), &mut dot_before) {
            return false;
        }
        rest = more;
    }
    // The last, short word padded with a plain letter.
    plain_word(short_word(rest, b'a'), &mut dot_before)
}

/// One word of [`plain_ascii`]: printable ASCII, no wildcard, no two dots in a row.
#[inline(always)]
fn plain_word(w: u64, dot_before: &mut u64) -> bool {
    let dots = bytes_equal(w, b'.');
    let refused = outside_printable_ascii(w)
        | bytes_equal(w, b'*')
        | bytes_equal(w, b'>')
        // Two dots in a row: an empty token.
        | (dots & ((dots << 8) | *dot_before));
    *dot_before = dots >> 56;
    refused == 0
}

const LOW_BITS: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit set in each byte of `w` equal to `b`, and only there. The low 7 bits of
/// each byte are added separately from the high one, so no carry crosses a byte.
#[inline]
fn bytes_equal(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES * u64::from(b));
    !(((x & LOW_BITS).wrapping_add(LOW_BITS)) | x) & HIGH_BITS
}

/// The high bit set in each byte of `w` outside `0x21..=0x7e`.
#[inline]
fn outside_printable_ascii(w: u64) -> u64 {
    let low = w & LOW_BITS;
    // Below 0x21: adding 0x5f leaves the high bit clear. 0x7f: adding 1 sets it.
    let below = !low.wrapping_add(ONES * 0x5f);
    let del = low.wrapping_add(ONES);
    (w | below | del) & HIGH_BITS
}

#[inline]
fn check(subject: &str, wildcards: bool) -> Result<(), Error> {
    if plain_ascii(subject.as_bytes()) {
        return Ok(());
    }
    check_tokens(subject, wildcards)
}

/// The full check, token by token, with the reason for a refusal.
#[cold]
#[inline(never)]
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

    /// The fast path's rule one byte at a time, as a reference.
    fn plain_ascii_bytewise(subject: &[u8]) -> bool {
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

    #[test]
    fn the_word_at_a_time_check_equals_the_bytewise_rule() {
        // Every byte value at every position of subjects up to 17 bytes long, and dots on
        // either side of every word boundary.
        for len in 1..=17 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'x'; len];
                    s[pos] = b;
                    assert_eq!(plain_ascii(&s), plain_ascii_bytewise(&s), "{s:?}");
                    if pos + 1 < len {
                        s[pos + 1] = b'.';
                        assert_eq!(plain_ascii(&s), plain_ascii_bytewise(&s), "{s:?}");
                    }
                }
            }
        }
        // Random subjects over an alphabet that makes every rule matter.
        let alphabet = b"ab.*> \x7f\xc3-";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 26) as usize;
            let s: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 20 * 3)) as usize + i) % alphabet.len()])
                .collect();
            assert_eq!(plain_ascii(&s), plain_ascii_bytewise(&s), "{s:?}");
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
