//! Which records a feed or a log scan yields.
//!
//! A [`Filter`] is a predicate over one record: a channel prefix, payload
//! types and record kinds, each optional. It is applied where the records are
//! read ([`crate::View::scan`], and so every [`crate::Feed`]), after the crc
//! check, so a filtered feed still reads the log in order and skips nothing
//! silently: the records it leaves out are the ones the filter says to.

use crate::record::{Kind, Record};

/// Which records a feed yields. An empty filter yields every record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records whose channel starts with this prefix. Records without a
    /// channel (documents, lease renewals and ends) never match a prefix.
    pub channel_prefix: Option<String>,
    /// Only records whose type is one of these: an event's payload type, or
    /// the kind name (`tuple.set`, `lease.grant`, `doc.put`, ...) of any
    /// other record. Empty means every type.
    pub types: Vec<String>,
    /// Only records of these kinds. Empty means every kind.
    pub kinds: Vec<Kind>,
}

impl Filter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &Record) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&record.kind()) {
            return false;
        }
        if let Some(prefix) = &self.channel_prefix {
            match record.body.channel() {
                Some(c) if c.starts_with(prefix.as_str()) => {}
                _ => return false,
            }
        }
        self.types.is_empty() || self.types.iter().any(|t| t == record.body.type_name())
    }
}
