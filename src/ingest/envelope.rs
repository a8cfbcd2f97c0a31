//! A fixture line's envelope, `{"at": …, "topic": "…", "payload": {…}}` in any key order,
//! scanned by hand: the payload is skipped structurally (strings, escapes and nesting
//! followed, nothing else looked at), not parsed, since the decode worker parses it anyway.
//! Anything else (`raw`, escapes in the topic, a scalar payload, a missing or repeated key,
//! trailing bytes, a payload whose brackets do not close) is left to the full parser, so
//! every line reads as it did; a payload that closes but is not JSON inside reaches the
//! decoder, which dead-letters it as `malformed_json` with its topic.
//!
//! `cut` is the cheaper reading a file replay at full speed uses: the keys before the
//! payload are scanned, the topic is read back from the line's end, and the payload is what
//! lies between, not looked at. Whether that really is the payload is settled by the
//! decoder, which parses it anyway: a cut that is not one JSON value sends the decoder back
//! to the whole line, read as `scan` and the full parser read it (`decode`). The one thing
//! a cut line does before it is checked is move the replay's clock to its `at`: a broken line
//! whose `at` and topic read (a repeated key after the payload, say) still moves it, where a
//! broken line read whole does not.

/// The envelope's parts, borrowed from the line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Envelope<'a> {
    pub(crate) at: f64,
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
}

/// The common envelope shape, or `None` for the full parser.
pub(crate) fn scan(line: &[u8]) -> Option<Envelope<'_>> {
    let mut s = Scanner { bytes: line, at: 0 };
    s.eat(b'{')?;
    let (mut at, mut topic, mut payload) = (None, None, None);
    loop {
        match s.key()? {
            b"at" if at.is_none() => at = Some(s.number()?),
            b"topic" if topic.is_none() => topic = Some(std::str::from_utf8(s.plain_string()?).ok()?),
            b"payload" if payload.is_none() => payload = Some(s.container()?),
            _ => return None,
        }
        s.skip_space();
        match s.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    s.skip_space();
    if s.at != line.len() {
        return None;
    }
    Some(Envelope {
        at: at?,
        topic: topic?,
        payload: payload?,
    })
}

/// The common envelope with its payload cut, not scanned: `{"at": …, "payload": …,
/// "topic": "…"}` (the topic read back from the end) or `{"at": …, "topic": "…",
/// "payload": …}`, the payload everything between (trimmed) and starting and ending with a
/// bracket. `None` for any other shape (`scan` then reads it). What is cut is the payload
/// only if it is one JSON value: a line with another key after the payload, or a payload
/// that does not parse, is cut all the same, and the decoder reads such a line again.
pub(crate) fn cut(line: &[u8]) -> Option<Envelope<'_>> {
    let mut s = Scanner { bytes: line, at: 0 };
    s.eat(b'{')?;
    let (mut at, mut topic) = (None, None);
    loop {
        match s.key()? {
            b"at" if at.is_none() => at = Some(s.number()?),
            b"topic" if topic.is_none() => topic = Some(s.plain_string()?),
            b"payload" => break,
            _ => return None,
        }
        s.eat(b',')?;
    }
    let rest = line[s.at..].trim_ascii_end().strip_suffix(b"}")?;
    let (payload, topic) = match topic {
        Some(topic) => (rest, topic),
        None => topic_at_end(rest)?,
    };
    let payload = payload.trim_ascii();
    let brackets = (payload.first()?, payload.last()?);
    if !matches!(brackets, (b'{' | b'[', b'}' | b']')) {
        return None;
    }
    Some(Envelope {
        at: at?,
        topic: std::str::from_utf8(topic).ok()?,
        payload,
    })
}

/// `…, "topic": "<text>"` (the line's end, its closing brace taken off) split into what
/// comes before the comma and the topic's text, which has no escape.
fn topic_at_end(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = rest.trim_ascii_end().strip_suffix(b"\"")?;
    let open = memchr::memrchr(b'"', rest)?;
    let topic = &rest[open + 1..];
    if topic.contains(&b'\\') {
        return None;
    }
    let before = rest[..open].trim_ascii_end().strip_suffix(b":")?;
    let before = before.trim_ascii_end().strip_suffix(b"\"topic\"")?;
    let before = before.trim_ascii_end().strip_suffix(b",")?;
    Some((before, topic))
}

/// Where the first `"` or `\\` of `bytes` is. The strings of an envelope and its payload
/// are a few bytes long: a plain loop finds their end sooner than `memchr2`'s setup.
fn quote_or_escape(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'"' || b == b'\\')
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn skip_space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.next()? == byte).then_some(())
    }

    /// An object key without escapes and its colon, up to the value.
    fn key(&mut self) -> Option<&'a [u8]> {
        let key = self.plain_string()?;
        self.eat(b':')?;
        self.skip_space();
        Some(key)
    }

    /// A string without escapes (its bytes between the quotes).
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let end = quote_or_escape(rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.at += end + 1;
        Some(&rest[..end])
    }

    /// A JSON number (what `f64` parses of it).
    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.at += 1;
        }
        let number = &self.bytes[start..self.at];
        // Whole milliseconds, as fixtures write them: read without the float parser.
        if (1..=15).contains(&number.len())
            && number.iter().all(u8::is_ascii_digit)
            && (number[0] != b'0' || number.len() == 1)
        {
            return Some(number.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) as f64);
        }
        let text = std::str::from_utf8(number).ok()?;
        // JSON has no leading `+`, no bare `.5`, no leading zeros; anything odd goes to the
        // full parser.
        let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
        let leading_zero = digits.len() > 1 && digits[0] == b'0' && digits[1].is_ascii_digit();
        if !digits.first().is_some_and(u8::is_ascii_digit) || leading_zero {
            return None;
        }
        text.parse().ok()
    }

    /// An object or array, skipped to its closing bracket; its bytes.
    fn container(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        if !matches!(self.bytes.get(start), Some(b'{' | b'[')) {
            return None;
        }
        let mut depth = 0usize;
        while let Some(b) = self.next() {
            match b {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(&self.bytes[start..self.at]);
                    }
                }
                b'"' => loop {
                    let rest = self.bytes.get(self.at..)?;
                    let hit = quote_or_escape(rest)?;
                    self.at += hit + 1;
                    if rest[hit] == b'"' {
                        break;
                    }
                    self.at += 1; // the escaped byte
                },
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Full<'a> {
        at: f64,
        topic: String,
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }

    /// The scan agrees with the full parser wherever it answers.
    fn same_as_serde(line: &str) -> Envelope<'_> {
        let fast = scan(line.as_bytes()).unwrap_or_else(|| panic!("not scanned: {line}"));
        let full: Full = serde_json::from_str(line).unwrap();
        assert_eq!(fast.at, full.at, "{line}");
        assert_eq!(fast.topic, full.topic, "{line}");
        assert_eq!(fast.payload, full.payload.get().as_bytes(), "{line}");
        fast
    }

    #[test]
    fn common_lines_scan_as_the_full_parser_reads_them() {
        same_as_serde(
            r#"{"at":0,"payload":{"kind":"station","ts":1768435200000},"topic":"city/chaoyang/heating/hs-1"}"#,
        );
        same_as_serde(r#"{"at":2460,"topic":"city/a/water/w1","payload":{"ts":"2026-01-14T16:00:02Z","v":-1.5e3}}"#);
        same_as_serde(r#"{"at":999999999999999,"topic":"t","payload":{}}"#);
        same_as_serde(r#"{"at":1234567890123456789,"topic":"t","payload":{}}"#);
        same_as_serde(r#"{"at":2.5,"topic":"t","payload":{"s":"a\"b\\"}}"#);
        same_as_serde(r#"{ "at" : 12.5 , "topic" : "t/x" , "payload" : [ {"a":"}]{["}, 5, "\"}\\" ] }"#);
        same_as_serde("{\"at\":1,\"topic\":\"t\",\"payload\":{\"名\":\"朝阳区 \\u00e9 {\"}}");
        let nested = same_as_serde(r#"{"at":3,"topic":"t","payload":{"a":{"b":[1,{"c":"]"}]}}}"#);
        assert_eq!(nested.payload, br#"{"a":{"b":[1,{"c":"]"}]}}"#);
    }

    #[test]
    fn everything_else_is_left_to_the_full_parser() {
        for line in [
            r#"{"at":1,"topic":"t","raw":"{not json"}"#,
            r#"{"at":1,"topic":"a\/b","payload":{}}"#,
            r#"{"at":1,"topic":"t","payload":42}"#,
            r#"{"at":1,"topic":"t"}"#,
            r#"{"at":1,"at":2,"topic":"t","payload":{}}"#,
            r#"{"at":1,"topic":"t","payload":{"a":1}} trailing"#,
            r#"{"at":1,"topic":"t","payload":{"a":[1}"#,
            r#"{"at":"soon","topic":"t","payload":{}}"#,
            r#"{"at":01,"topic":"t","payload":{}}"#,
            r#"{"at":+1,"topic":"t","payload":{}}"#,
            "{\"at\":1,\"topic\":\"t\",\"payload\":{\"a\":\"x\\",
            r#"{"at":1,"topic":"t","payload":{"a":"unclosed}}"#,
            r#"{"at":1,"topic":"t","payload":{},"extra":1}"#,
            "",
        ] {
            assert_eq!(scan(line.as_bytes()), None, "{line}");
        }
    }

    #[test]
    fn a_cut_is_the_scanned_payload_wherever_the_line_is_common() {
        for line in [
            r#"{"at":0,"payload":{"kind":"station","ts":1768435200000},"topic":"city/chaoyang/heating/hs-1"}"#,
            r#"{"at":2460,"topic":"city/a/water/w1","payload":{"ts":"2026-01-14T16:00:02Z","v":-1.5e3}}"#,
            r#"{ "at" : 12.5 , "payload" : [ {"a":"}]{["}, 5, "\"}\\" ] , "topic" : "t/x" }"#,
            r#"{"at":3,"payload":{"a":{"b":[1,{"c":"]"}]},"topic":"x"},"topic":"t"}"#,
            "{\"at\":1,\"payload\":{\"名\":\"朝阳区 {\"},\"topic\":\"城市/朝阳\"}",
        ] {
            assert_eq!(cut(line.as_bytes()), scan(line.as_bytes()), "{line}");
            assert!(cut(line.as_bytes()).is_some(), "{line}");
        }
    }

    #[test]
    fn a_cut_takes_what_lies_between_and_leaves_other_shapes_to_the_scan() {
        // Cut though the payload is not all that lies between: the decoder finds out.
        for (line, between) in [
            (r#"{"at":1,"payload":{"a":1},"x":{},"topic":"t"}"#, r#"{"a":1},"x":{}"#),
            (
                r#"{"at":1,"payload":{"a":1},"at":2,"payload":[],"topic":"t"}"#,
                r#"{"a":1},"at":2,"payload":[]"#,
            ),
            (r#"{"at":1,"payload":{"a":1,},"topic":"t"}"#, r#"{"a":1,}"#),
            (r#"{"at":1,"payload":{"a":1}},"topic":"t"}"#, r#"{"a":1}}"#),
        ] {
            let envelope = cut(line.as_bytes()).unwrap_or_else(|| panic!("not cut: {line}"));
            assert_eq!(
                (envelope.at, envelope.topic, envelope.payload),
                (1.0, "t", between.as_bytes()),
                "{line}"
            );
        }
        for line in [
            r#"{"payload":{},"at":1,"topic":"t"}"#,
            r#"{"topic":"t","payload":{},"at":1}"#,
            r#"{"at":1,"topic":"t","raw":"{not json"}"#,
            r#"{"at":1,"payload":42,"topic":"t"}"#,
            r#"{"at":1,"payload":null,"topic":"t"}"#,
            r#"{"at":1,"payload":{},"topic":"a\/b"}"#,
            r#"{"at":1,"payload":{},"topic":"a\"b"}"#,
            r#"{"at":1,"payload":{},"topic":"t"} x"#,
            r#"{"at":1,"payload":{},"topic":5}"#,
            r#"{"at":1,"payload":{},"subject":"t"}"#,
            r#"{"at":1,"payload":{}"topic":"t"}"#,
            r#"{"at":1,"topic":"t","payload":{},"x":1}"#,
            r#"{"at":1,"topic":"t","payload":{},"topic":"u"}"#,
            r#"{"at":1,"at":2,"payload":{},"topic":"t"}"#,
            r#"{"at":1,"payload":{},"topic":"t""#,
            r#"{"at":1,"payload":"#,
            "",
        ] {
            assert_eq!(cut(line.as_bytes()), None, "{line}");
        }
    }
}
