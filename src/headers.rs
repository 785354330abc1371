//! NATS header blocks.
//!
//! ```text
//! NATS/1.0[ <status>[ <description>]]\r\n
//! Name: value\r\n        (any number, names may repeat)
//! \r\n
//! ```
//! Names keep their case and their order; a name may carry several values.

use crate::error::{Error, Invalid, ProtoError};

/// An ordered, multi-valued header map with an optional status line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderMap {
    status: Option<u16>,
    description: Option<String>,
    entries: Vec<(String, String)>,
}

fn invalid(value: &str, reason: &'static str) -> Error {
    Error::InvalidHeader(Invalid {
        value: value.to_owned(),
        reason,
    })
}

/// Checks a header name: not empty, printable ASCII (33–126) without `:`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(name, "empty header name"));
    }
    for b in name.bytes() {
        if b == b':' {
            return Err(invalid(name, "header name contains ':'"));
        }
        if !(33..=126).contains(&b) {
            return Err(invalid(
                name,
                "header name must be printable ASCII without spaces",
            ));
        }
    }
    Ok(())
}

/// Checks a header value: no CR or LF (which would end the header line). The error does
/// not show the value, which may be a secret (`Authorization`); [`HeaderMap::append`] and
/// [`HeaderMap::insert`] name the header instead.
pub fn validate_value(value: &str) -> Result<(), Error> {
    if value.contains(['\r', '\n']) {
        return Err(invalid(
            "a value (not shown)",
            "header value contains CR or LF",
        ));
    }
    Ok(())
}

/// [`validate_value`], with the header named in the error.
fn validate_value_of(name: &str, value: &str) -> Result<(), Error> {
    validate_value(value).map_err(|_| invalid(name, "its value contains CR or LF"))
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// A map with a status line, such as `503` for "no responders": a code of three
    /// digits at most, a description without CR or LF (an empty one is none).
    pub fn with_status(status: u16, description: Option<&str>) -> Result<HeaderMap, Error> {
        if status > 999 {
            return Err(invalid(
                &status.to_string(),
                "status code over three digits",
            ));
        }
        if let Some(d) = description {
            validate_value(d)?;
        }
        Ok(HeaderMap {
            status: Some(status),
            description: description.filter(|d| !d.is_empty()).map(str::to_owned),
            entries: Vec::new(),
        })
    }

    /// Adds a value, keeping the ones already there.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), Error> {
        validate_name(name)?;
        validate_value_of(name, value)?;
        self.entries.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Sets the value, replacing every value of that exact name.
    pub fn insert(&mut self, name: &str, value: &str) -> Result<(), Error> {
        validate_name(name)?;
        validate_value_of(name, value)?;
        self.entries.retain(|(n, _)| n != name);
        self.entries.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// The first value of `name` (exact case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (exact case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every (name, value) pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many (name, value) pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without pairs and without a status.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.status.is_none()
    }

    /// The status code of the first line, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The status description of the first line, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Appends the block's wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"NATS/1.0");
        if let Some(s) = self.status {
            out.push(b' ');
            // Always three digits: `NATS/1.0 008` must not come back as `NATS/1.0 8`.
            out.extend_from_slice(format!("{s:03}").as_bytes());
            if let Some(d) = &self.description {
                out.push(b' ');
                out.extend_from_slice(d.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.entries {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The length of [`HeaderMap::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let status = match self.status {
            Some(s) => {
                // Three digits at least, as `encode` writes them.
                1 + format!("{s:03}").len() + self.description.as_ref().map_or(0, |d| 1 + d.len())
            }
            None => 0,
        };
        let entries: usize = self
            .entries
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        8 + status + 2 + entries + 2
    }

    /// Parses a whole block, from `NATS/1.0` through the blank line.
    pub fn parse(block: &[u8]) -> Result<HeaderMap, ProtoError> {
        // nats-server relays any bytes: a value that is not UTF-8 keeps what it can
        // (U+FFFD for the rest) rather than costing the message all its headers.
        let text = String::from_utf8_lossy(block);
        let body = text
            .strip_suffix("\r\n\r\n")
            .ok_or(ProtoError::BadHeader("does not end with a blank line"))?;
        let mut lines = body.split("\r\n");
        let first = lines.next().unwrap_or_default();
        if first.contains(['\r', '\n']) {
            return Err(ProtoError::BadHeader("bare CR or LF"));
        }
        let rest = first
            .strip_prefix("NATS/1.0")
            .ok_or(ProtoError::BadHeader("missing NATS/1.0"))?;
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            return Err(ProtoError::BadHeader("missing NATS/1.0"));
        }
        let mut map = HeaderMap::default();
        let rest = rest.trim_matches([' ', '\t']);
        if !rest.is_empty() {
            let (code, desc) = match rest.split_once([' ', '\t']) {
                Some((c, d)) => (c, Some(d.trim_matches([' ', '\t']))),
                None => (rest, None),
            };
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProtoError::BadHeader("bad status code"));
            }
            map.status = code.parse().ok();
            map.description = desc.filter(|d| !d.is_empty()).map(str::to_owned);
        }
        for line in lines {
            if line.contains(['\r', '\n']) {
                return Err(ProtoError::BadHeader("bare CR or LF"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or(ProtoError::BadHeader("line without ':'"))?;
            if validate_name(name).is_err() {
                return Err(ProtoError::BadHeader("bad header name"));
            }
            map.entries
                .push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_exact_bytes_and_length() {
        let mut h = HeaderMap::new();
        h.append("A", "b").unwrap();
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, b"NATS/1.0\r\nA: b\r\n\r\n");
        assert_eq!(out.len(), 18);
        assert_eq!(h.encoded_len(), 18);

        let mut h = HeaderMap::with_status(503, Some("No Responders")).unwrap();
        h.append("Multi", "1").unwrap();
        h.append("Multi", "2").unwrap();
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(
            out,
            b"NATS/1.0 503 No Responders\r\nMulti: 1\r\nMulti: 2\r\n\r\n".to_vec()
        );
        assert_eq!(h.encoded_len(), out.len());
        let empty = HeaderMap::new();
        let mut out = Vec::new();
        empty.encode(&mut out);
        assert_eq!(out, b"NATS/1.0\r\n\r\n");
        assert_eq!(empty.encoded_len(), 12);
    }

    #[test]
    fn parse_valid_blocks() {
        let h = HeaderMap::parse(b"NATS/1.0\r\nMixed-Case: v1\r\nx: a\r\nx:   b \r\n\r\n").unwrap();
        assert_eq!(h.get("Mixed-Case"), Some("v1"));
        assert_eq!(h.get("mixed-case"), None);
        assert_eq!(h.get_all("x").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.status(), None);
        let h = HeaderMap::parse(b"NATS/1.0 503\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(503));
        assert!(h.description().is_none());
        let h = HeaderMap::parse(b"NATS/1.0 408 Request Timeout\r\n\r\n").unwrap();
        assert_eq!(h.status(), Some(408));
        assert_eq!(h.description(), Some("Request Timeout"));
        let h = HeaderMap::parse(b"NATS/1.0\r\nk: v:with:colons\r\n\r\n").unwrap();
        assert_eq!(h.get("k"), Some("v:with:colons"));
    }

    #[test]
    fn parse_invalid_blocks() {
        let table: &[(&[u8], &str)] = &[
            (b"HTTP/1.0\r\n\r\n", "missing NATS/1.0"),
            (b"NATS/1.0\r\nA: b\r\n", "does not end with a blank line"),
            (b"NATS/1.0\r\nno colon\r\n\r\n", "line without ':'"),
            (b"NATS/1.0\r\nbad name: v\r\n\r\n", "bad header name"),
            (b"NATS/1.0\r\n: v\r\n\r\n", "bad header name"),
            (b"NATS/1.0 50x\r\n\r\n", "bad status code"),
            (b"NATS/1.0503\r\n\r\n", "missing NATS/1.0"),
            (b"NATS/1.0\r\nA: b\nc\r\n\r\n", "bare CR or LF"),
            (b"NATS/1.0 408 Time\rout\r\n\r\n", "bare CR or LF"),
        ];
        for (block, want) in table {
            assert_eq!(
                HeaderMap::parse(block),
                Err(ProtoError::BadHeader(want)),
                "{:?}",
                String::from_utf8_lossy(block)
            );
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_costs_only_itself() {
        let h = HeaderMap::parse(b"NATS/1.0\r\nfoo: \xff\xfe\r\nNats-Msg-Id: x\r\n\r\n").unwrap();
        assert_eq!(h.get("Nats-Msg-Id"), Some("x"));
        assert_eq!(h.get("foo"), Some("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn status_lines_are_checked_when_built() {
        assert!(HeaderMap::with_status(408, Some("x\r\nInjected: yes")).is_err());
        assert!(HeaderMap::with_status(1000, None).is_err());
        let h = HeaderMap::with_status(408, Some("")).unwrap();
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(HeaderMap::parse(&out).unwrap(), h);
    }

    #[test]
    fn round_trip() {
        let mut h = HeaderMap::with_status(100, None).unwrap();
        h.append("Nats-Msg-Id", "abc").unwrap();
        h.append("producer", "ansible-runner").unwrap();
        h.append("producer", "second").unwrap();
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(HeaderMap::parse(&out).unwrap(), h);
    }

    #[test]
    fn validation_errors() {
        let reason = |r: Result<(), Error>| match r {
            Err(Error::InvalidHeader(i)) => i.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(validate_value("a\r\nb")),
            "header value contains CR or LF"
        );
        assert_eq!(
            reason(validate_value("a\nb")),
            "header value contains CR or LF"
        );
        assert_eq!(reason(validate_name("")), "empty header name");
        assert_eq!(reason(validate_name("a:b")), "header name contains ':'");
        assert_eq!(
            reason(validate_name("a b")),
            "header name must be printable ASCII without spaces"
        );
        validate_value("utf-8 ✓ and tabs\tok").unwrap();
        let mut h = HeaderMap::new();
        // The value may be a secret: the error names the header instead.
        let err = h.append("Authorization", "Bearer s3cr3t\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "header: \"Authorization\": its value contains CR or LF"
        );
        let err = validate_value("s3cr3t\n").unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(h.is_empty());
        h.insert("k", "1").unwrap();
        h.append("k", "2").unwrap();
        h.insert("k", "3").unwrap();
        assert_eq!(h.get_all("k").collect::<Vec<_>>(), ["3"]);
    }
}
