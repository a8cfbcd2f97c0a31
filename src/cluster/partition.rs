//! Where a reading lives in the stream: its partition and its subject. A device's readings
//! always land in one partition, chosen from its district and device id by the same hash
//! NATS's `partition()` subject mapping uses (FNV-1a, 32 bit, over the tokens' bytes one
//! after the other, modulo the partition count), so readings a device publishes through
//! NATS's MQTT listener (mapped by the server) and readings `replay --to-nats` publishes
//! (partitioned here) meet in the same partition.
//!
//! ```text
//! MQTT topic     city/north/water/w17
//! NATS subject   city.north.water.w17                 (NATS's MQTT listener, or a bridge)
//! stream subject cityops.7.city.north.water.w17       (the server's mapping, or replay)
//! ```
//!
//! The stream subject is the topic with `/` as `.` behind `<subject>.<partition>`, so any
//! `topics.pattern` works and the pipeline gets its topic back unchanged.
//!
//! Leases cover the partitions and, when some rule needs readings of many devices (per
//! district, city-wide: not grouped by `device_id`), one more slot, the *whole stream*,
//! numbered after the partitions: its owner reads every partition's readings, in stream
//! order, for those rules alone, as one instance would; the partitions compute the rest.

use crate::topic::{Segment, TopicPattern};

/// The stream's layout: its subject token and partition count, and whether a whole-stream
/// slot is leased besides the partitions.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    subject: String,
    partitions: u32,
    pattern: TopicPattern,
    whole_stream: bool,
}

/// A topic that cannot travel as a NATS subject (a segment with `.`, `*`, `>` or
/// whitespace, or an empty one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{0}` is not a valid NATS subject (a segment is empty or holds `.`, `*`, `>` or whitespace)")]
pub(crate) struct NotASubject(pub String);

/// NATS's `partition()` hash: FNV-1a (32 bit) over the tokens' bytes, concatenated.
pub(crate) fn partition_of(tokens: &[&str], partitions: u32) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut hash = OFFSET;
    for byte in tokens.iter().flat_map(|t| t.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash % partitions.max(1)
}

impl Layout {
    pub(crate) fn new(subject: &str, partitions: u32, pattern: TopicPattern) -> Self {
        Layout {
            subject: subject.to_string(),
            partitions: partitions.max(1),
            pattern,
            whole_stream: false,
        }
    }

    /// With the whole-stream slot (when `on`: some rule needs every partition's readings).
    pub(crate) fn with_whole_stream(mut self, on: bool) -> Self {
        self.whole_stream = on;
        self
    }

    pub(crate) fn partitions(&self) -> u32 {
        self.partitions
    }

    /// What is leased: the partitions, then the whole-stream slot if there is one.
    pub(crate) fn slots(&self) -> u32 {
        self.partitions + u32::from(self.whole_stream)
    }

    /// Whether `slot` is the whole-stream slot.
    pub(crate) fn is_whole_stream(&self, slot: u32) -> bool {
        self.whole_stream && slot == self.partitions
    }

    /// The stream's first subject token.
    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }

    /// The stream's subjects: `<subject>.>`.
    pub(crate) fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject)
    }

    /// Every reading of one partition, `<subject>.<p>.>`; of every partition for the
    /// whole-stream slot, `<subject>.>`.
    pub(crate) fn partition_filter(&self, slot: u32) -> String {
        match self.is_whole_stream(slot) {
            true => self.stream_subjects(),
            false => format!("{}.{slot}.>", self.subject),
        }
    }

    /// A topic's partition: by district and device where the topic matches the pattern;
    /// by the whole topic otherwise (the pipeline then dead-letters it, as it would from MQTT).
    pub(crate) fn partition_for_topic(&self, topic: &str) -> u32 {
        match self.pattern.parts(topic) {
            Some(parts) => partition_of(&[parts.district, parts.device_id], self.partitions),
            None => partition_of(&[topic], self.partitions),
        }
    }

    /// The stream subject a topic is published to.
    pub(crate) fn subject_for_topic(&self, topic: &str) -> Result<String, NotASubject> {
        let valid = topic.split('/').all(|segment| {
            !segment.is_empty() && !segment.contains(['.', '*', '>']) && !segment.contains(char::is_whitespace)
        });
        if !valid {
            return Err(NotASubject(topic.to_string()));
        }
        let partition = self.partition_for_topic(topic);
        Ok(format!("{}.{partition}.{}", self.subject, topic.replace('/', ".")))
    }

    /// A stream subject's partition and topic; `None` for a subject outside the layout.
    pub(crate) fn topic_of_subject(&self, subject: &str) -> Option<(u32, String)> {
        let rest = subject.strip_prefix(&self.subject)?.strip_prefix('.')?;
        let (partition, topic) = rest.split_once('.')?;
        let partition: u32 = partition.parse().ok()?;
        (partition < self.partitions).then(|| (partition, topic.replace('.', "/")))
    }

    /// The server mapping that partitions what devices publish over NATS (its MQTT listener
    /// or a bridge) as `replay --to-nats` does: the `mappings` entry of the server's config,
    /// as (source subject, destination).
    pub(crate) fn server_mapping(&self) -> (String, String) {
        let mut source = Vec::new();
        let mut target = Vec::new();
        let (mut wildcards, mut district, mut device) = (0, 0, 0);
        for segment in self.pattern.segments() {
            if let Segment::Literal(literal) = segment {
                source.push(literal.clone());
                target.push(literal.clone());
                continue;
            }
            wildcards += 1;
            match segment {
                Segment::District => district = wildcards,
                Segment::Device => device = wildcards,
                _ => {}
            }
            source.push("*".to_string());
            target.push(format!("{{{{wildcard({wildcards})}}}}"));
        }
        let destination = format!(
            "{}.{{{{partition({},{district},{device})}}}}.{}",
            self.subject,
            self.partitions,
            target.join(".")
        );
        (source.join("."), destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(partitions: u32) -> Layout {
        Layout::new(
            "cityops",
            partitions,
            TopicPattern::parse("city/{district}/{table}/{device_id}").unwrap(),
        )
    }

    #[test]
    fn the_hash_is_fnv1a_over_the_tokens_one_after_the_other() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c (the reference vectors).
        assert_eq!(
            partition_of(&[], u32::MAX),
            0x811c_9dc5,
            "below u32::MAX: the remainder is the hash"
        );
        assert_eq!(partition_of(&["a"], u32::MAX), 0xe40c_292c);
        assert_eq!(partition_of(&["foo"], u32::MAX), 0xa9f3_7ed7);
        // Tokens are joined with nothing between them, as NATS does.
        assert_eq!(partition_of(&["fo", "o"], 7), partition_of(&["foo"], 7));
    }

    #[test]
    fn a_device_keeps_its_partition_and_its_topic_comes_back() {
        let layout = layout(32);
        let subject = layout.subject_for_topic("city/north/water/w17").unwrap();
        let p = partition_of(&["north", "w17"], 32);
        assert_eq!(subject, format!("cityops.{p}.city.north.water.w17"));
        assert_eq!(
            layout.topic_of_subject(&subject),
            Some((p, "city/north/water/w17".to_string()))
        );
        // Another table of the same device: the same partition.
        assert_eq!(layout.partition_for_topic("city/north/gas/w17"), p);
        assert_eq!(layout.partition_filter(p), format!("cityops.{p}.>"));
        assert_eq!(
            layout.topic_of_subject("cityops.32.city.a.b.c"),
            None,
            "no partition 32 of 32"
        );
        assert_eq!(layout.topic_of_subject("other.1.city.a.b.c"), None);
    }

    #[test]
    fn topics_nats_cannot_carry_are_refused_and_unmatched_ones_still_partition() {
        let layout = layout(8);
        assert!(layout.subject_for_topic("city/north/water/w.17").is_err());
        assert!(layout.subject_for_topic("city//water/w17").is_err());
        assert!(layout.subject_for_topic("city/north/water/w 17").is_err());
        assert!(layout.subject_for_topic("city/north/water/>").is_err());
        // Not the pattern's shape: partitioned by the whole topic, for the pipeline to dead-letter.
        let odd = layout.subject_for_topic("elsewhere/x").unwrap();
        assert_eq!(
            odd,
            format!("cityops.{}.elsewhere.x", partition_of(&["elsewhere/x"], 8))
        );
    }

    #[test]
    fn the_server_mapping_partitions_by_district_and_device() {
        assert_eq!(
            layout(32).server_mapping(),
            (
                "city.*.*.*".to_string(),
                "cityops.{{partition(32,1,3)}}.city.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}".to_string()
            )
        );
        let other = Layout::new(
            "x",
            4,
            TopicPattern::parse("{table}/site/{device_id}/{district}").unwrap(),
        );
        assert_eq!(
            other.server_mapping(),
            (
                "*.site.*.*".to_string(),
                "x.{{partition(4,3,2)}}.{{wildcard(1)}}.site.{{wildcard(2)}}.{{wildcard(3)}}".to_string()
            )
        );
    }

    #[test]
    fn the_whole_stream_slot_follows_the_partitions_and_reads_them_all() {
        let plain = layout(8);
        assert_eq!(plain.slots(), 8);
        assert!(!plain.is_whole_stream(8));
        let whole = layout(8).with_whole_stream(true);
        assert_eq!(whole.slots(), 9);
        assert!(whole.is_whole_stream(8) && !whole.is_whole_stream(7));
        assert_eq!(whole.partition_filter(7), "cityops.7.>");
        assert_eq!(whole.partition_filter(8), "cityops.>");
        // Readings keep their own partition: the whole-stream slot is never a subject's.
        assert_eq!(whole.topic_of_subject("cityops.8.city.a.water.w1"), None);
    }
}
