//! The peer frames: how a batch of one origin's log records travels from
//! site to site (`POST /v1/peer/records`), each frame a `u32` length and
//! the record's stored bytes, and what a receiving site does with a record
//! it cannot take (a `pepper.refused` marker in its place) or with a gap
//! (a `pepper.gap` marker, allowed only for what the origin announced it
//! trimmed).

use pepper_storage::{Body, Distribution, Event, Party, Record, Target};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The channel prefix of site announcements.
pub const SITES_CHANNEL_PREFIX: &str = "/pepper/sites/";

/// A forwarded batch's bounds, as the forwarder decides them (records, and
/// about the most bytes of log frames).
pub use pepper_router::{FORWARD_BATCH_BYTES, FORWARD_BATCH_RECORDS};

/// Largest `POST /v1/peer/records` body: a full batch plus the one record
/// that may cross [`FORWARD_BATCH_BYTES`], with their length prefixes.
pub const PEER_BODY_BYTES_MAX: usize =
    FORWARD_BATCH_BYTES + pepper_storage::limits::RECORD_BYTES_MAX + 4 * (FORWARD_BATCH_RECORDS + 1);

/// Decodes a peer batch: frames of `origin`'s log, each a `u32`
/// big-endian length then the frame, crc-checked, into (its seq there, the
/// record's body). The bodies are checked by the store's rules when
/// appended, as every record is.
///
/// # Errors
/// 400 `invalid_body` for a batch that is empty, cut inside a frame, holds a
/// frame that does not decode or fails its crc, or one from another origin.
pub fn decode_batch(origin: &str, body: &[u8]) -> Result<Vec<(u64, Body)>, ApiError> {
    let mut received = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (len, after) =
            rest.split_first_chunk::<4>().ok_or_else(|| ApiError::invalid_body("batch ends inside a frame length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let frame = after.get(..len).ok_or_else(|| ApiError::invalid_body("batch ends inside a frame"))?;
        // The origin's crc, checked here: the frame is as the origin logged it.
        let record = Record::decode(frame).map_err(|e| ApiError::invalid_body(format!("bad frame: {e}")))?;
        if record.origin != origin {
            return Err(ApiError::invalid_body(format!(
                "frame {} originated on {}, not on {origin}; sites forward only their own records",
                record.seq, record.origin
            )));
        }
        received.push((record.seq, record.body));
        rest = &after[len..];
    }
    if received.is_empty() {
        return Err(ApiError::invalid_body("an empty batch"));
    }
    Ok(received)
}

/// The type of the marker that takes the place of a received event that
/// breaks this site's rules.
pub const REFUSED_TYPE: &str = "pepper.refused";

/// A received record as it is appended: an event that breaks this site's
/// rules (one logged by a site of an earlier version, with a line break in
/// its type, say) is replaced by a `pepper.refused` marker on the origin's
/// site channel that says which record it was and why, in its place and
/// with its origin seq. Refusing the whole batch instead would stall
/// forwarding from that origin for good, and dropping the event would skip
/// it silently.
pub(crate) fn admit(origin: &str, seq: u64, body: Body) -> Body {
    let Body::Event(mut e) = body else { return body };
    // The writer chooses these at commit; a received event's are cleared.
    e.assigned.clear();
    let Err(reason) = pepper_storage::validate::event(&e) else { return Body::Event(e) };
    tracing::warn!(origin, seq, %reason, "a received event breaks this site's rules; a marker takes its place");
    // Cut, so that the marker always fits a record whatever it replaces.
    let cut = |s: &str| s.chars().take(256).collect::<String>();
    let payload = json!({ "origin": origin, "origin_seq": seq, "reason": cut(&reason.to_string()),
                          "channel": cut(&e.channel), "type": cut(&e.event_type), "id": cut(&e.id) });
    marker(format!("{SITES_CHANNEL_PREFIX}{origin}/"), REFUSED_TYPE, origin, &payload)
}

/// An event pepper appends about what an origin sent (a gap, a refused
/// record): from service `pepper`, instance the origin.
pub(crate) fn marker(channel: String, event_type: &str, origin: &str, payload: &Value) -> Body {
    Body::Event(Event {
        id: crate::wire::envelope::new_event_id(),
        channel,
        event_type: event_type.into(),
        from: Party { service: "pepper".into(), instance: origin.to_string() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    })
}

/// The marker of a gap: records `from..=to` of `origin` that its retention
/// trimmed before they could be sent, on `channel`.
pub fn gap_marker(channel: String, origin: &str, from: u64, to: u64) -> Body {
    let payload = json!({ "origin": origin, "from_seq": from, "to_seq": to,
                          "reason": "the origin's retention trimmed these records before they could be sent" });
    marker(channel, GAP_TYPE, origin, &payload)
}

/// The type of gap markers; leases receive them whatever their types.
pub const GAP_TYPE: &str = pepper_router::GAP_EVENT_TYPE;
