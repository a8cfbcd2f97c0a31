//! The decoder's fast path: one pass over a payload with serde's visitor API, keeping only
//! the fields a table knows (`ts`, `device_id`, `district` and its columns) as scalars
//! borrowed from the payload — no JSON tree, no per-key allocation. Unknown fields are
//! skipped unparsed. Anything unusual (not an object or an array of objects, a nested
//! value where a scalar belongs, malformed JSON) makes the scan give up, and the decoder
//! takes its full path, which explains every rejection. `plain` tries every payload first:
//! a byte scanner for payloads of plain scalars with no escapes, filling the same slots.

use std::borrow::Cow;
use std::fmt;

use smallvec::SmallVec;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

mod plain;

use plain::fill_plain;

/// One field value as the payload wrote it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Int(i64),
    /// A non-negative integer beyond `i64`.
    UInt(u64),
    Float(f64),
    Text(Cow<'a, str>),
    Bool(bool),
    /// An array or object where a scalar belongs (`"an array"`, `"an object"`).
    Nested(&'static str),
}

impl Scalar<'_> {
    /// The number as JSON writes it (serde_json's formatting, so both decode paths agree).
    pub(crate) fn number_text(&self) -> Option<String> {
        match self {
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::UInt(u) => Some(u.to_string()),
            Scalar::Float(f) => Some(serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string())),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::UInt(_) | Scalar::Float(_) => "a number",
            Scalar::Text(_) => "text",
            Scalar::Nested(kind) => kind,
        }
    }
}

/// The fields of a table a payload may carry, numbered: 0 `ts`, 1 `device_id`,
/// 2 `district`, then the table's columns in order.
#[derive(Debug, Clone)]
pub(crate) struct FieldIndex {
    names: Vec<Box<str>>,
    /// Per name, its length and first eight bytes (`KeyWord`): a key is compared with a
    /// name's text only where both agree, so a search costs no string comparison per name.
    words: Vec<KeyWord>,
}

/// A key's length and its first eight bytes, as one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyWord {
    len: usize,
    head: u64,
}

impl KeyWord {
    fn of(key: &str) -> Self {
        let mut head = 0u64;
        for (i, &b) in key.as_bytes().iter().take(8).enumerate() {
            head |= u64::from(b) << (8 * i);
        }
        KeyWord { len: key.len(), head }
    }
}

/// Key of the ThingsBoard-style nested object whose fields take precedence.
pub(super) const VALUES: &str = "values";

impl FieldIndex {
    pub(crate) fn new<'n>(columns: impl Iterator<Item = &'n str>) -> Self {
        let names = ["ts", "device_id", "district"]
            .into_iter()
            .chain(columns)
            .map(Box::<str>::from)
            .collect::<Vec<_>>();
        let words = names.iter().map(|n| KeyWord::of(n)).collect();
        FieldIndex { names, words }
    }

    /// Fields per row.
    pub(crate) fn width(&self) -> usize {
        self.names.len()
    }

    /// The field named `key`, trying `hint` first: payloads of one kind of device list
    /// their fields in the same order, so the field after the last one usually matches.
    pub(super) fn position(&self, key: &str, hint: usize) -> Option<usize> {
        let word = KeyWord::of(key);
        let is = |i: usize| self.words[i] == word && (word.len <= 8 || self.names[i].as_ref() == key);
        if hint < self.words.len() && is(hint) {
            return Some(hint);
        }
        (0..self.words.len()).find(|&i| is(i))
    }
}

/// How many slots a scan keeps without allocating: a row of the widest built-in table
/// (`heating`, 11 fields). Most messages carry one row, so most scans allocate nothing.
pub(crate) const INLINE_SLOTS: usize = 16;

/// The known fields of every row of one payload: `width` slots per row, the `values`
/// object's field where it has one, else the row's own.
#[derive(Debug, Default)]
pub(crate) struct Scanned<'a> {
    pub(super) slots: SmallVec<[Option<Scalar<'a>>; INLINE_SLOTS]>,
    width: usize,
}

impl<'a> Scanned<'a> {
    pub(crate) fn with_width(width: usize) -> Self {
        Scanned {
            slots: SmallVec::new(),
            width,
        }
    }

    pub(crate) fn rows(&self) -> impl Iterator<Item = &[Option<Scalar<'a>>]> {
        self.slots.chunks_exact(self.width.max(1))
    }
}

/// Scans `payload` (one object or a non-empty array of objects) into `scanned` (empty, of
/// the fields' width); `false` means "take the full path". The payload is checked as UTF-8
/// once, with SIMD, so neither scanner need check each string it reads (a third of a
/// gateway payload's parse time). The plain scanner (`plain`) tries first; the serde scan
/// takes what it gives up. The slots are filled in place: a one-row scan, inline, is not
/// moved from scanner to caller.
pub(crate) fn scan<'a>(payload: &'a [u8], fields: &FieldIndex, scanned: &mut Scanned<'a>) -> bool {
    let Ok(text) = simdutf8::basic::from_utf8(payload) else {
        return false;
    };
    if fill_plain(text, fields, scanned).is_some() {
        return true;
    }
    scanned.slots.clear();
    fill_serde(text, fields, scanned).is_some()
}

/// The serde scan: any JSON serde_json reads, with escapes and nested values skipped.
#[cfg(test)]
pub(super) fn scan_serde<'a>(text: &'a str, fields: &FieldIndex) -> Option<Scanned<'a>> {
    let mut scanned = Scanned::with_width(fields.width());
    fill_serde(text, fields, &mut scanned)?;
    Some(scanned)
}

/// `scan_serde` into `scanned` (empty), in place.
fn fill_serde<'a>(text: &'a str, fields: &FieldIndex, scanned: &mut Scanned<'a>) -> Option<()> {
    let mut de = serde_json::Deserializer::from_str(text);
    RowsSeed {
        fields,
        out: scanned,
        nested: false,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    (!scanned.slots.is_empty()).then_some(())
}

/// Gives up the scan (the full path will explain).
fn give_up<E: de::Error>() -> E {
    E::custom("take the full path")
}

/// The payload (`nested: false`: an object or an array of objects) or one element of its
/// array (`nested: true`: an object only).
struct RowsSeed<'s, 'a> {
    fields: &'s FieldIndex,
    out: &'s mut Scanned<'a>,
    nested: bool,
}

impl<'de, 's> DeserializeSeed<'de> for RowsSeed<'s, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 's> Visitor<'de> for RowsSeed<'s, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or an array of objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        scan_row(map, self.fields, self.out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.nested {
            return Err(give_up());
        }
        while seq
            .next_element_seed(RowsSeed {
                fields: self.fields,
                out: &mut *self.out,
                nested: true,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One row object: its known fields into a new row of slots. A field of the row's `values`
/// object wins over the row's own field of the same name; of repeated keys the last wins.
fn scan_row<'de, A: MapAccess<'de>>(mut map: A, fields: &FieldIndex, out: &mut Scanned<'de>) -> Result<(), A::Error> {
    let base = out.slots.len();
    out.slots.resize(base + fields.width(), None);
    let mut values: Option<Vec<Option<Scalar<'de>>>> = None;
    let mut hint = 0;
    while let Some(key) = map.next_key_seed(KeySeed)? {
        if key == VALUES {
            values = map.next_value_seed(ValuesSeed { fields })?;
        } else if let Some(i) = fields.position(&key, hint) {
            out.slots[base + i] = Some(map.next_value_seed(ScalarSeed)?);
            hint = i + 1;
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    if let Some(values) = values {
        for (slot, inner) in out.slots[base..].iter_mut().zip(values) {
            if inner.is_some() {
                *slot = inner;
            }
        }
    }
    Ok(())
}

/// An object key, borrowed from the payload unless it has escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The `values` object's known fields; anything but an object counts as no `values`.
struct ValuesSeed<'s> {
    fields: &'s FieldIndex,
}

impl<'de> DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = Option<Vec<Option<Scalar<'de>>>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match deserializer.deserialize_any(ScalarOrObject { fields: self.fields })? {
            Some(values) => Ok(Some(values)),
            None => Ok(None),
        }
    }
}

/// Visits `values`: an object gives its known fields, any other value gives none.
struct ScalarOrObject<'s> {
    fields: &'s FieldIndex,
}

impl<'de> Visitor<'de> for ScalarOrObject<'_> {
    type Value = Option<Vec<Option<Scalar<'de>>>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inner: Vec<Option<Scalar<'de>>> = vec![None; self.fields.width()];
        let mut hint = 0;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.fields.position(&key, hint) {
                Some(i) => {
                    inner[i] = Some(map.next_value_seed(ScalarSeed)?);
                    hint = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(inner))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A field value; nested arrays and objects give up the scan (the full path explains).
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(give_up())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(give_up())
    }
}

/// A JSON value of the full path as a scalar (borrowing its text).
pub(crate) fn scalar_of(value: &serde_json::Value) -> Scalar<'_> {
    use serde_json::Value;
    match value {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Int(i),
            (None, Some(u)) => Scalar::UInt(u),
            _ => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Scalar::Text(Cow::Borrowed(s.as_str())),
        Value::Array(_) => Scalar::Nested("an array"),
        Value::Object(_) => Scalar::Nested("an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FieldIndex {
        FieldIndex::new(["kind", "value"].into_iter())
    }

    fn rows(payload: &str) -> Option<Vec<Vec<Option<Scalar<'_>>>>> {
        let mut scanned = Scanned::with_width(fields().width());
        scan(payload.as_bytes(), &fields(), &mut scanned).then(|| scanned.rows().map(<[_]>::to_vec).collect())
    }

    #[test]
    fn known_fields_are_kept_borrowed_and_unknown_ones_skipped() {
        let got = rows(r#"{"ts": 1768418100000, "kind": "gas", "lat": [1, 2], "value": 0.5, "device_id": null}"#);
        assert_eq!(
            got,
            Some(vec![vec![
                Some(Scalar::Int(1_768_418_100_000)),
                Some(Scalar::Null),
                None,
                Some(Scalar::Text(Cow::Borrowed("gas"))),
                Some(Scalar::Float(0.5)),
            ]])
        );
    }

    #[test]
    fn values_win_and_the_last_repeated_key_wins() {
        let got = rows(r#"{"value": 1, "values": {"value": 2, "kind": "a"}, "kind": "b", "kind": "c"}"#).unwrap();
        assert_eq!(got[0][3], Some(Scalar::Text(Cow::Borrowed("a"))));
        assert_eq!(got[0][4], Some(Scalar::Int(2)));
        let not_an_object = rows(r#"{"value": 1, "values": 7}"#).unwrap();
        assert_eq!(not_an_object[0][4], Some(Scalar::Int(1)));
    }

    #[test]
    fn fields_are_found_by_their_whole_name() {
        let fields = FieldIndex::new(["supply_temp_c", "supply_temp_k", "kind", "kin", "kind2"].into_iter());
        assert_eq!(fields.position("supply_temp_k", 0), Some(4));
        assert_eq!(fields.position("supply_temp_c", 4), Some(3));
        assert_eq!(fields.position("supply_temp_", 0), None);
        assert_eq!(fields.position("supply_temp_cc", 3), None);
        assert_eq!(fields.position("kin", 0), Some(6));
        assert_eq!(fields.position("kind", 6), Some(5));
        assert_eq!(fields.position("kind\0", 0), None);
        assert_eq!(fields.position("ts", 0), Some(0));
        assert_eq!(fields.position("", 0), None);
    }

    #[test]
    fn a_row_of_the_widest_table_is_scanned_without_allocating() {
        let heating = crate::schema::Catalog::builtin()
            .get("heating")
            .cloned()
            .expect("heating table");
        let fields = FieldIndex::new(heating.columns.iter().map(|c| c.name.as_str()));
        let payload = br#"{"flow_m3h":54.06,"kind":"station","outdoor_temp_c":-3.0,"return_pressure_mpa":0.3,"return_temp_c":55.81,"supply_pressure_mpa":0.6,"supply_temp_c":75.81,"room_temp_c":20.5,"ts":1768435200000,"device_id":"hs-1","district":"haidian"}"#;
        let mut scanned = Scanned::with_width(fields.width());
        assert!(scan(payload, &fields, &mut scanned), "plain payload");
        assert_eq!(scanned.rows().count(), 1);
        assert!(!scanned.slots.spilled(), "{} slots", scanned.slots.len());
    }

    #[test]
    fn arrays_give_a_row_per_object_and_odd_shapes_take_the_full_path() {
        assert_eq!(rows(r#"[{"ts": 1}, {"ts": 2}]"#).unwrap().len(), 2);
        for odd in [
            "[]",
            "7",
            r#"[{"ts": 1}, 7]"#,
            r#"{"value": [1]}"#,
            r#"{"ts": 1"#,
            r#"{"ts": 1} x"#,
        ] {
            assert!(rows(odd).is_none(), "{odd}");
        }
    }
}
