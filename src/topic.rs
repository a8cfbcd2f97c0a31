//! Topic convention, e.g. `city/{district}/{table}/{device_id}`: which segments carry the
//! table, district and device. Parsing borrows from the topic; nothing is allocated.

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    District,
    Table,
    Device,
    Any,
}

/// A parsed topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
    /// The place of the `{table}` segment (routing reads only that one).
    table_place: usize,
}

/// The parts of a topic that matched a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicParts<'a> {
    pub district: &'a str,
    pub table: &'a str,
    pub device_id: &'a str,
}

impl TopicPattern {
    /// Parses a pattern; `{table}`, `{district}` and `{device_id}` must each appear once.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let segments: Vec<Segment> = pattern
            .split('/')
            .map(|s| match s {
                "{district}" => Segment::District,
                "{table}" => Segment::Table,
                "{device_id}" => Segment::Device,
                "+" => Segment::Any,
                other => Segment::Literal(other.to_string()),
            })
            .collect();
        for (needed, name) in [
            (Segment::District, "{district}"),
            (Segment::Table, "{table}"),
            (Segment::Device, "{device_id}"),
        ] {
            let count = segments.iter().filter(|s| **s == needed).count();
            if count != 1 {
                return Err(format!("`{pattern}` must contain {name} exactly once"));
            }
        }
        let table_place = segments.iter().position(|s| *s == Segment::Table).unwrap_or_default();
        Ok(TopicPattern { segments, table_place })
    }

    /// Splits a topic by the pattern; `None` when it does not match. Runs for every
    /// message, in its decoder: a plain byte loop, faster than `str::split` on topics this
    /// short.
    pub fn parts<'a>(&self, topic: &'a str) -> Option<TopicParts<'a>> {
        let mut district = "";
        let mut table = "";
        let mut device_id = "";
        let bytes = topic.as_bytes();
        let mut start = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            let end = match bytes[start..].iter().position(|&b| b == b'/') {
                Some(slash) => start + slash,
                None => bytes.len(),
            };
            let last = i + 1 == self.segments.len();
            if last != (end == bytes.len()) {
                return None;
            }
            // `/` is ASCII: both ends are character boundaries.
            let piece = &topic[start..end];
            start = end + 1;
            match segment {
                Segment::Literal(lit) if lit != piece => return None,
                Segment::Literal(_) | Segment::Any => {}
                Segment::District => district = piece,
                Segment::Table => table = piece,
                Segment::Device => device_id = piece,
            }
        }
        if table.is_empty() {
            return None;
        }
        Some(TopicParts {
            district,
            table,
            device_id,
        })
    }

    /// The bytes of a topic's table segment (the segment at the table's place, whatever the
    /// others hold); `None` when the topic has fewer segments. Routing needs only this: the
    /// decoder that gets the topic checks the rest.
    pub fn table_segment<'a>(&self, topic: &'a [u8]) -> Option<&'a [u8]> {
        topic.split(|&b| b == b'/').nth(self.table_place)
    }

    /// The pattern's segments, in order.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The MQTT subscription filter for one table, e.g. `city/+/water/+`.
    pub fn filter_for(&self, table: &str) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(lit) => lit.as_str(),
                Segment::Table => table,
                Segment::District | Segment::Device | Segment::Any => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pattern_splits_a_topic_into_its_parts() {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("valid");
        assert_eq!(
            pattern.parts("city/haidian/heating/hs-07"),
            Some(TopicParts {
                district: "haidian",
                table: "heating",
                device_id: "hs-07"
            })
        );
        assert_eq!(pattern.parts("city/haidian/heating"), None);
        assert_eq!(pattern.parts("town/haidian/heating/hs-07"), None);
        assert_eq!(pattern.parts("city/haidian/heating/hs-07/extra"), None);
        assert_eq!(
            pattern.parts("city/haidian/heating/"),
            Some(TopicParts {
                district: "haidian",
                table: "heating",
                device_id: ""
            })
        );
        assert_eq!(pattern.parts("city//heating/hs-07").map(|p| p.district), Some(""));
        assert_eq!(pattern.parts("city"), None);
        assert_eq!(pattern.parts(""), None);
        assert_eq!(pattern.filter_for("water"), "city/+/water/+");
    }

    #[test]
    fn the_table_segment_is_found_wherever_the_rest_fails_to_match() {
        let pattern = TopicPattern::parse("city/{district}/{table}/{device_id}").expect("valid");
        let table = |topic: &str| {
            pattern
                .table_segment(topic.as_bytes())
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        assert_eq!(table("city/haidian/heating/hs-07").as_deref(), Some("heating"));
        assert_eq!(table("town/haidian/heating/hs-07/extra").as_deref(), Some("heating"));
        assert_eq!(table("city/haidian/").as_deref(), Some(""));
        assert_eq!(table("city/haidian"), None);
        let first = TopicPattern::parse("{table}/{district}/{device_id}").expect("valid");
        assert_eq!(first.table_segment(b"water/a/w1"), Some(&b"water"[..]));
    }

    #[test]
    fn patterns_without_a_table_segment_are_rejected() {
        assert!(TopicPattern::parse("city/{district}/{device_id}").is_err());
    }
}
