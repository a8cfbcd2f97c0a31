//! The scan's first try: a byte loop over the payloads gateways send nearly always (an
//! object or an array of objects, whose values are scalars or a `values` object of
//! scalars, with no escapes in keys or strings). It fills the same `Scanned` slots as the
//! serde scan, without a visitor call or a key copy per field. Anything else (an escape, a
//! nested value other than `values`, a number beyond what it converts exactly, malformed
//! JSON) makes it give up, and the serde scan takes the payload: this path only ever
//! accepts what that one accepts, with the same values (a test compares them).

use std::borrow::Cow;

use smallvec::SmallVec;

use super::{FieldIndex, INLINE_SLOTS, Scalar, Scanned, VALUES};

/// Powers of ten that are exact in an `f64`: a significand up to 2^53 times or over one of
/// them is a single correctly rounded operation, as in serde_json.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The largest significand an `f64` holds exactly.
const EXACT_SIGNIFICAND: u64 = 1 << 53;

/// The most rows reserved ahead from the first row's length; beyond, the slots grow as usual.
const MAX_RESERVED_ROWS: usize = 1024;

/// Scans `text` (already checked as UTF-8); `None` means "let the serde scan decide".
/// The numbers match serde_json's as long as its `arbitrary_precision` feature stays off
/// (with it, the serde scan would see numbers as maps and give up).
#[cfg(test)]
pub(super) fn scan_plain<'a>(text: &'a str, fields: &FieldIndex) -> Option<Scanned<'a>> {
    let mut scanned = Scanned::with_width(fields.width());
    fill_plain(text, fields, &mut scanned)?;
    Some(scanned)
}

/// `scan_plain` into `scanned` (empty), in place: a scan's slots are not moved about.
pub(super) fn fill_plain<'a>(text: &'a str, fields: &FieldIndex, scanned: &mut Scanned<'a>) -> Option<()> {
    let mut cursor = Cursor {
        text,
        at: 0,
        keys: KeyOrder::default(),
    };
    match cursor.peek_past_space()? {
        b'[' => {
            cursor.at += 1;
            loop {
                cursor.consume(b'{')?;
                let row_from = cursor.at;
                cursor.row(fields, scanned)?;
                if scanned.slots.len() == fields.width() {
                    // Room for as many rows as the payload holds if they are all this long
                    // (at most `MAX_RESERVED_ROWS`: a tiny first row must not reserve megabytes).
                    let rows = text.len() / (cursor.at - row_from + 1).max(1);
                    scanned.slots.reserve(rows.min(MAX_RESERVED_ROWS) * fields.width());
                }
                match cursor.next_past_space()? {
                    b',' => cursor.skip_space(),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        b'{' => {
            cursor.at += 1;
            cursor.row(fields, scanned)?;
        }
        _ => return None,
    }
    cursor.skip_space();
    (cursor.at == text.len()).then_some(())
}

/// A position in the payload.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
    keys: KeyOrder<'a>,
}

/// The keys of the previous row, in order, with the field each named. The rows of one
/// payload nearly always list the same keys in the same order, so a key is matched with
/// one comparison instead of a search of the table's fields.
#[derive(Default)]
struct KeyOrder<'a> {
    previous: SmallVec<[(&'a str, Option<usize>); INLINE_SLOTS]>,
}

impl<'a> KeyOrder<'a> {
    /// The field named `key`, the `nth` key of its row.
    fn field(&mut self, nth: usize, key: &'a str, fields: &FieldIndex) -> Option<usize> {
        match self.previous.get_mut(nth) {
            Some((seen, field)) if *seen == key => *field,
            Some(slot) => {
                *slot = (key, fields.position(key, 0));
                slot.1
            }
            None => {
                let field = fields.position(key, 0);
                self.previous.push((key, field));
                field
            }
        }
    }
}

impl<'a> Cursor<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    fn peek_past_space(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes().get(self.at).copied()
    }

    fn next_past_space(&mut self) -> Option<u8> {
        let b = self.peek_past_space()?;
        self.at += 1;
        Some(b)
    }

    /// Skips whitespace, then takes `byte`, or gives up.
    fn consume(&mut self, byte: u8) -> Option<()> {
        (self.next_past_space()? == byte).then_some(())
    }

    /// One row object, its `{` already read: its known fields into a new row of slots. A
    /// field of its `values` object wins over the row's own; of repeated keys the last wins.
    fn row(&mut self, fields: &FieldIndex, out: &mut Scanned<'a>) -> Option<()> {
        let base = out.slots.len();
        out.slots.resize(base + fields.width(), None);
        // Where the (last) `values` object's fields went: a second row of slots past this one.
        let mut values: Option<usize> = None;
        if self.peek_past_space()? == b'}' {
            self.at += 1;
            return Some(());
        }
        for nth in 0.. {
            self.consume(b'"')?;
            let key = self.string_body()?;
            self.consume(b':')?;
            // Every key, `values` too, keeps its place in the order the next row is matched to.
            let field = self.keys.field(nth, key, fields);
            if key == VALUES {
                values = match self.peek_past_space()? {
                    b'{' => {
                        self.at += 1;
                        let inner = out.slots.len();
                        out.slots.resize(inner + fields.width(), None);
                        self.values_object(fields, &mut out.slots[inner..])?;
                        Some(inner)
                    }
                    b'[' => return None,
                    _ => {
                        self.scalar()?;
                        None
                    }
                };
            } else {
                let value = self.scalar()?;
                if let Some(i) = field {
                    out.slots[base + i] = Some(value);
                }
            }
            match self.next_past_space()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        // The last `values` object's fields win; its slots (and any earlier `values`
        // object's) past the row are dropped.
        if let Some(inner) = values {
            for i in 0..fields.width() {
                if let Some(value) = out.slots[inner + i].take() {
                    out.slots[base + i] = Some(value);
                }
            }
        }
        out.slots.truncate(base + fields.width());
        Some(())
    }

    /// The `values` object, its `{` already read: known fields into `slots`.
    fn values_object(&mut self, fields: &FieldIndex, slots: &mut [Option<Scalar<'a>>]) -> Option<()> {
        if self.peek_past_space()? == b'}' {
            self.at += 1;
            return Some(());
        }
        let mut hint = 0;
        loop {
            self.consume(b'"')?;
            let key = self.string_body()?;
            self.consume(b':')?;
            let value = self.scalar()?;
            if let Some(i) = fields.position(key, hint) {
                slots[i] = Some(value);
                hint = i + 1;
            }
            match self.next_past_space()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string's text up to its closing quote (the opening one already read); gives up on
    /// an escape or a control character.
    fn string_body(&mut self) -> Option<&'a str> {
        let start = self.at;
        let bytes = self.bytes();
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => self.at += 1,
            }
        }
        let body = self.text.get(start..self.at)?;
        self.at += 1;
        Some(body)
    }

    /// A scalar value; nested values give up.
    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek_past_space()? {
            b'"' => {
                self.at += 1;
                Some(Scalar::Text(Cow::Borrowed(self.string_body()?)))
            }
            b't' => self.word("true", Scalar::Bool(true)),
            b'f' => self.word("false", Scalar::Bool(false)),
            b'n' => self.word("null", Scalar::Null),
            b'-' => {
                self.at += 1;
                self.number(false)
            }
            b'0'..=b'9' => self.number(true),
            _ => None,
        }
    }

    fn word(&mut self, word: &str, value: Scalar<'a>) -> Option<Scalar<'a>> {
        self.bytes()[self.at..].starts_with(word.as_bytes()).then(|| {
            self.at += word.len();
            value
        })
    }

    /// A number after its sign, as serde_json reads it: an integer is `Int` (or `UInt`
    /// beyond `i64`, or a `Float` for `-0` and below `i64::MIN`); a fraction or exponent
    /// makes a `Float`. Gives up where serde_json would round in a way this does not copy.
    fn number(&mut self, positive: bool) -> Option<Scalar<'a>> {
        let bytes = self.bytes();
        let mut significand: u64 = match bytes.get(self.at)? {
            b'0' => {
                self.at += 1;
                if bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                0
            }
            d @ b'1'..=b'9' => {
                self.at += 1;
                u64::from(d - b'0')
            }
            _ => return None,
        };
        while let Some(d @ b'0'..=b'9') = bytes.get(self.at) {
            significand = significand.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        let mut exponent: i32 = 0;
        let mut float = false;
        if bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            float = true;
            let digits_from = self.at;
            while let Some(d @ b'0'..=b'9') = bytes.get(self.at) {
                significand = significand.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                exponent -= 1;
                self.at += 1;
            }
            if self.at == digits_from {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(self.at) {
            self.at += 1;
            float = true;
            let positive_exp = match bytes.get(self.at) {
                Some(b'-') => {
                    self.at += 1;
                    false
                }
                Some(b'+') => {
                    self.at += 1;
                    true
                }
                _ => true,
            };
            let digits_from = self.at;
            let mut exp: i32 = 0;
            while let Some(d @ b'0'..=b'9') = bytes.get(self.at) {
                exp = exp.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
                self.at += 1;
            }
            if self.at == digits_from {
                return None;
            }
            exponent = if positive_exp {
                exponent.checked_add(exp)?
            } else {
                exponent.checked_sub(exp)?
            };
        }
        if !float {
            return Some(if positive {
                i64::try_from(significand).map_or(Scalar::UInt(significand), Scalar::Int)
            } else {
                let negative = (significand as i64).wrapping_neg();
                if negative >= 0 {
                    Scalar::Float(-(significand as f64))
                } else {
                    Scalar::Int(negative)
                }
            });
        }
        if significand > EXACT_SIGNIFICAND {
            return None;
        }
        let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
        let f = if exponent >= 0 {
            significand as f64 * pow
        } else {
            significand as f64 / pow
        };
        Some(Scalar::Float(if positive { f } else { -f }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan_serde;
    use super::*;

    fn fields() -> FieldIndex {
        FieldIndex::new(["kind", "value"].into_iter())
    }

    /// The slots, with floats as bits (so `-0.0` and `0.0` differ).
    fn comparable(scanned: &Scanned<'_>) -> Vec<Option<String>> {
        scanned
            .slots
            .iter()
            .map(|slot| {
                slot.as_ref().map(|s| match s {
                    Scalar::Float(f) => format!("float {:#x}", f.to_bits()),
                    other => format!("{other:?}"),
                })
            })
            .collect()
    }

    #[test]
    fn a_gateway_payload_scans_as_the_serde_scan_reads_it() {
        let payload = r#"[{"device_id":"gas-032804","kind":"gas_lel","ts":1768435200003,"unit":"%LEL","value":1.41},
            {"ts": 1768435200011, "values": {"value": -0.5, "kind": "b"}, "kind": "a", "district": "east"}]"#;
        let plain = scan_plain(payload, &fields()).expect("plain payload");
        let serde = scan_serde(payload, &fields()).expect("valid payload");
        assert_eq!(comparable(&plain), comparable(&serde));
        assert_eq!(plain.slots.len(), 2 * fields().width());
        assert_eq!(plain.slots[3], Some(Scalar::Text(Cow::Borrowed("gas_lel"))));
        assert_eq!(plain.slots[4], Some(Scalar::Float(1.41)));
        assert_eq!(plain.slots[5 + 4], Some(Scalar::Float(-0.5)));
        assert_eq!(plain.slots[5 + 3], Some(Scalar::Text(Cow::Borrowed("b"))));
    }

    #[test]
    fn escapes_nested_values_and_inexact_numbers_are_left_to_the_serde_scan() {
        for payload in [
            r#"{"kind": "a\"b"}"#,
            r#"{"k\u0069nd": "a"}"#,
            r#"{"lat": [1, 2], "value": 1}"#,
            r#"{"values": [1], "value": 1}"#,
            r#"{"value": 0.30000000000000004}"#,
            r#"{"value": 1e300}"#,
            r#"{"value": 18446744073709551616}"#,
        ] {
            assert!(scan_plain(payload, &fields()).is_none(), "{payload}");
            assert!(scan_serde(payload, &fields()).is_some(), "{payload}");
        }
    }

    /// Deterministic payloads from pieces, valid and not: wherever the plain scanner
    /// accepts one, the serde scan must accept it too, with exactly the same slots.
    #[test]
    fn the_plain_scanner_never_disagrees_with_the_serde_scan() {
        const KEYS: [&str; 9] = [
            "\"ts\"",
            "\"device_id\"",
            "\"district\"",
            "\"kind\"",
            "\"value\"",
            "\"values\"",
            "\"lat\"",
            "\"k\\u0069nd\"",
            "\"\"",
        ];
        const VALUES: [&str; 44] = [
            "0",
            "-0",
            "1",
            "-1",
            "01",
            "1.",
            "1.5",
            "-1.5",
            "54.18",
            "-3.0",
            "1e3",
            "1E-3",
            "1e+2",
            "12.345e-5",
            "0.30000000000000004",
            "9007199254740993.0",
            "123456789012345678901",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "1e400",
            "1e22",
            "1e23",
            "-",
            "+1",
            ".5",
            "1.5.3",
            "\"gas\"",
            "\"a\\nb\"",
            "\"\"",
            "\"é\"",
            "\"tab\there\"",
            "true",
            "false",
            "null",
            "tru",
            "nulll",
            "[1,2]",
            "{\"a\":1}",
            "{\"value\":2,\"kind\":\"x\"}",
            "{}",
            "[]",
        ];
        const SPACE: [&str; 4] = ["", " ", "\n", "\t "];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut accepted, mut left) = (0, 0);
        for _ in 0..20_000 {
            let mut payload = String::new();
            let rows = next(4);
            let array = rows != 1 || next(2) == 0;
            if array {
                payload.push('[');
            }
            for r in 0..rows.max(1) {
                if r > 0 {
                    payload.push(',');
                }
                payload.push_str(SPACE[next(4)]);
                payload.push('{');
                for f in 0..next(5) {
                    if f > 0 {
                        payload.push(if next(40) == 0 { ';' } else { ',' });
                    }
                    payload.push_str(SPACE[next(4)]);
                    payload.push_str(KEYS[next(KEYS.len())]);
                    payload.push_str(SPACE[next(4)]);
                    payload.push(':');
                    payload.push_str(SPACE[next(4)]);
                    payload.push_str(VALUES[next(VALUES.len())]);
                }
                payload.push_str(SPACE[next(4)]);
                payload.push('}');
            }
            if array {
                payload.push(']');
            }
            payload.push_str(["", " ", "x", ","][next(4)]);
            let serde = scan_serde(&payload, &fields());
            match scan_plain(&payload, &fields()) {
                Some(plain) => {
                    accepted += 1;
                    let serde = serde.unwrap_or_else(|| panic!("serde rejects what plain accepts: {payload}"));
                    assert_eq!(comparable(&plain), comparable(&serde), "{payload}");
                }
                None => left += 1,
            }
        }
        // Both outcomes are exercised.
        assert!(accepted > 2_000 && left > 2_000, "accepted {accepted}, left {left}");
    }
}
