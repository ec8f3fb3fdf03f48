//! The JSON shape of a PLDB tuple and of a tombstone, shared by the tuple
//! queries, snapshots and live streams.

use pepper_storage::{Tombstone, Tuple};
use serde::Serialize;
use serde_json::{json, Value};

use crate::wire::envelope::rfc3339_us;

/// A tuple on the wire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TupleJson {
    /// The channel.
    pub channel: String,
    /// The field.
    pub field: String,
    /// The latest value.
    pub value: String,
    /// The sequence number of the event that last set or refreshed it.
    pub seq: u64,
    /// When that was (RFC 3339).
    pub time: String,
    /// When it expires (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Who set it.
    pub source: SourceJson,
}

/// The sender of a tuple's value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceJson {
    /// Its service.
    pub service: String,
    /// Its instance.
    pub instance: String,
}

impl From<&Tuple> for TupleJson {
    fn from(t: &Tuple) -> TupleJson {
        TupleJson {
            channel: t.channel.clone(),
            field: t.field.clone(),
            value: t.value.clone(),
            seq: t.seq,
            time: rfc3339_us(t.time_us),
            expires_at: t.expires_at_us.map(rfc3339_us),
            source: SourceJson { service: t.source.service.clone(), instance: t.source.instance.clone() },
        }
    }
}

/// A removed tuple on the wire.
pub(crate) fn tombstone_json(t: &Tombstone) -> Value {
    json!({ "channel": t.channel, "field": t.field, "seq": t.seq, "time": rfc3339_us(t.time_us),
            "reason": t.reason.name() })
}
