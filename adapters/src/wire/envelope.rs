//! The event envelope on the wire, in JSON, and its mapping to log records.
//!
//! A published event (input) has `channel`, `type` and `payload`, and may
//! have `id` (for idempotent retries), `from`, `to` and `distribution`. A
//! delivered event (output) adds what the site assigned: `seq`, `time`
//! (RFC 3339, UTC, microseconds) and `site`.
//!
//! ```json
//! {"id": "e-1", "channel": "/example.com/node/h1/", "type": "attribute",
//!  "from": {"service": "agent", "instance": "h1"},
//!  "to": {"service": "pldb"}, "distribution": "all",
//!  "payload": {"field": "load", "value": "0.5", "expire": 90},
//!  "seq": 42, "time": "2026-11-27T11:00:00.000000Z", "site": "lab"}
//! ```
//!
//! **Types.** PsEPR payload types are namespace URIs such as
//! `http://psepr.org/xs/payload/attribute`. pepper stores the types in that
//! namespace by their short name (`attribute`), so a lease on `attribute`
//! and one on the URI see the same events; any other type is kept as given.
//!
//! **Payloads** are any JSON value. The log stores the payload's compact JSON
//! encoding, so what a subscriber receives is exactly what was published.
//!
//! Unknown fields are refused rather than ignored: a misspelt `distribution`
//! must not silently become `all`.

use pepper_router::Channel;
use pepper_storage::{Distribution, Event, Party, Record, Target, TupleUpdate};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The namespace of PsEPR's own payload types.
pub const PSEPR_PAYLOAD_NS: &str = "http://psepr.org/xs/payload/";

/// The canonical form of a payload type: PsEPR's URIs by short name.
pub fn canonical_type(t: &str) -> &str {
    t.strip_prefix(PSEPR_PAYLOAD_NS).filter(|s| !s.is_empty()).unwrap_or(t)
}

/// A type filter as given (a comma-split query or a JSON list), trimmed and
/// canonical, with empty entries dropped.
pub fn canonical_types<'a>(types: impl IntoIterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>) -> Vec<String> {
    types.into_iter().map(|t| canonical_type(t.as_ref().trim()).to_string()).filter(|t| !t.is_empty()).collect()
}

/// The namespace URI of a payload type, for the XML envelope.
pub fn type_namespace(t: &str) -> String {
    if t.contains(':') {
        t.to_string()
    } else {
        format!("{PSEPR_PAYLOAD_NS}{t}")
    }
}

/// A sender or receiver identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyJson {
    /// The service.
    #[serde(default)]
    pub service: String,
    /// The instance of the service.
    #[serde(default)]
    pub instance: String,
}

/// The receivers an event is narrowed to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetJson {
    /// Only this service's leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only this instance's leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// `all` or `one`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistributionJson {
    /// Every matching lease.
    #[default]
    All,
    /// One lease of each anycast group.
    One,
}

/// An event as a client publishes it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Client-chosen id for idempotent retries; the site assigns one if absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The channel to publish on.
    pub channel: String,
    /// The payload type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The sender.
    #[serde(default)]
    pub from: PartyJson,
    /// The receivers it is narrowed to.
    #[serde(default)]
    pub to: TargetJson,
    /// All receivers, or one per group.
    #[serde(default)]
    pub distribution: DistributionJson,
    /// The payload.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// An event as a subscriber receives it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventOut {
    /// The event's id.
    pub id: String,
    /// Its channel.
    pub channel: String,
    /// Its payload type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The sender.
    pub from: PartyJson,
    /// The receivers it was narrowed to.
    pub to: TargetJson,
    /// All receivers, or one per group.
    pub distribution: DistributionJson,
    /// The payload.
    pub payload: serde_json::Value,
    /// Its sequence number on the site that logged it.
    pub seq: u64,
    /// When that site committed it (RFC 3339).
    pub time: String,
    /// The site it originated on.
    pub site: String,
    /// The principal that published it, stamped by its origin site when
    /// auth is on there; absent otherwise. Clients cannot set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

/// Most events one publish may carry (the store's batch limit). More get 413.
pub const EVENTS_PER_REQUEST_MAX: usize = pepper_storage::limits::BATCH_RECORDS_MAX;

/// Parses a JSON publish body: an event object, or an array of them.
/// Returns the events and whether the body was a single object.
///
/// # Errors
/// 400 `invalid_body` for JSON that is not an object or array, 400
/// `invalid_event` naming the event at fault, 413 for too many events.
pub fn parse_json(text: &str) -> Result<(Vec<EventIn>, bool), ApiError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ApiError::invalid_body(format!("body is not JSON: {e}")))?;
    match value {
        serde_json::Value::Array(items) => {
            if items.len() > EVENTS_PER_REQUEST_MAX {
                return Err(ApiError::too_large(format!(
                    "{} events in one request, over the limit of {EVENTS_PER_REQUEST_MAX}",
                    items.len()
                )));
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value(v).map_err(|e| ApiError::invalid_event(format!("event {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<EventIn>, _>>()?;
            Ok((events, false))
        }
        v @ serde_json::Value::Object(_) => {
            let event = serde_json::from_value(v).map_err(|e| ApiError::invalid_event(e.to_string()))?;
            Ok((vec![event], true))
        }
        _ => Err(ApiError::invalid_body("body must be an event object or an array of events")),
    }
}

/// A new server-assigned event id: 128 random bits in hex.
pub fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl EventIn {
    /// Validates the event and turns it into the log's event body. Clients
    /// may not publish on pepper's reserved `/pepper/` channels.
    ///
    /// # Errors
    /// 400 `invalid_channel`, `invalid_event` or 403 `reserved_channel`.
    pub fn into_event(self) -> Result<Event, ApiError> {
        let channel = Channel::parse(&self.channel).map_err(ApiError::bad_channel)?;
        if channel.is_reserved() {
            return Err(ApiError::reserved_channel(channel.as_str()));
        }
        let event_type = canonical_type(self.event_type.trim());
        if event_type.is_empty() {
            return Err(ApiError::invalid_event("type must not be empty"));
        }
        if is_reserved_type(event_type) {
            return Err(ApiError::invalid_event(format!(
                "type {event_type:?} is reserved for pepper's own stream events"
            )));
        }
        let id = match self.id {
            Some(id) if id.is_empty() => return Err(ApiError::invalid_event("id must not be empty when given")),
            Some(id) => id,
            None => new_event_id(),
        };
        let tuple = match event_type {
            ATTRIBUTE_TYPE => Some(attribute_tuple(&self.payload)?),
            _ => None,
        };
        let payload = serde_json::to_vec(&self.payload)
            .map_err(|e| ApiError::invalid_event(format!("payload does not encode: {e}")))?;
        let event = Event {
            id,
            channel: channel.as_str().to_string(),
            event_type: event_type.to_string(),
            from: Party { service: self.from.service, instance: self.from.instance },
            to: Target { service: self.to.service, instance: self.to.instance },
            distribution: match self.distribution {
                DistributionJson::All => Distribution::All,
                DistributionJson::One => Distribution::One,
            },
            payload,
            assigned: Vec::new(),
            principal: None,
            tuple,
        };
        // The store's own rules (lengths, no control characters in the
        // names that reach SSE lines and XML), as this envelope's error.
        pepper_storage::validate::event(&event).map_err(|e| {
            let message = e.to_string();
            ApiError::new(ApiError::from(e).status(), "invalid_event", message)
        })?;
        Ok(event)
    }
}

/// Whether a type names one of the events pepper's streams send of their
/// own (`pepper.*`, snapshot pages, tuple ends), which a published event
/// must not impersonate.
pub fn is_reserved_type(t: &str) -> bool {
    t.starts_with("pepper.") || matches!(t, "tuples" | "tuples.removed" | "tuple.expired" | "tuple.deleted")
}

/// The payload type whose events set PLDB tuples.
pub const ATTRIBUTE_TYPE: &str = "attribute";

/// The longest expiry an attribute may ask for, in seconds (ten years).
pub const ATTRIBUTE_EXPIRE_S_MAX: u64 = 10 * 365 * 24 * 3600;

/// The tuple an attribute payload (`{"field", "value", "expire"?}`) sets.
/// The value may be a string, a number or a boolean (stored as text);
/// `expire` is in seconds from now.
///
/// # Errors
/// 400 `invalid_event` naming what is missing or wrong.
pub fn attribute_tuple(payload: &serde_json::Value) -> Result<TupleUpdate, ApiError> {
    let bad = |m: &str| ApiError::invalid_event(format!("attribute payload: {m}"));
    let obj = payload.as_object().ok_or_else(|| bad("must be an object with field and value"))?;
    let field = match obj.get("field") {
        Some(serde_json::Value::String(f)) if !f.is_empty() => f.clone(),
        _ => return Err(bad("field must be a non-empty string")),
    };
    let value = match obj.get("value") {
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
        _ => return Err(bad("value must be a string, a number or a boolean")),
    };
    let expires_at_us = match obj.get("expire") {
        None | Some(serde_json::Value::Null) => None,
        Some(e) => match e.as_u64() {
            Some(s) if s <= ATTRIBUTE_EXPIRE_S_MAX => Some(pepper_storage::now_us() + s * 1_000_000),
            _ => return Err(bad(&format!("expire must be whole seconds, 0 to {ATTRIBUTE_EXPIRE_S_MAX}"))),
        },
    };
    Ok(TupleUpdate { field, value, expires_at_us, recorded: true })
}

/// An RFC 3339 UTC time with microseconds.
pub fn rfc3339_us(time_us: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(time_us);
    humantime::format_rfc3339_micros(t).to_string()
}

impl EventOut {
    /// The wire form of a logged event; `None` if the record is not an event.
    pub fn from_record(record: &Record) -> Option<EventOut> {
        let pepper_storage::Body::Event(e) = &record.body else { return None };
        // The log holds the JSON the site encoded; anything else would be
        // damage, which is passed on as text rather than dropped.
        let payload = serde_json::from_slice(&e.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&e.payload).into_owned()));
        Some(EventOut {
            id: e.id.clone(),
            channel: e.channel.clone(),
            event_type: e.event_type.clone(),
            from: PartyJson { service: e.from.service.clone(), instance: e.from.instance.clone() },
            to: TargetJson { service: e.to.service.clone(), instance: e.to.instance.clone() },
            distribution: match e.distribution {
                Distribution::All => DistributionJson::All,
                Distribution::One => DistributionJson::One,
            },
            payload,
            seq: record.seq,
            time: rfc3339_us(record.time_us),
            site: record.origin.clone(),
            principal: e.principal.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Event, String> {
        let e: EventIn = serde_json::from_str(json).map_err(|e| e.to_string())?;
        e.into_event().map_err(|e| e.message().to_string())
    }

    #[test]
    fn json_round_trip_through_the_log() {
        let e = parse(
            r#"{"id":"e-1","channel":"/example.com/h1/","type":"http://psepr.org/xs/payload/attribute",
                "from":{"service":"agent","instance":"h1"},"to":{"service":"pldb"},"distribution":"one",
                "payload":{"field":"load","value":"0.5","expire":90}}"#,
        )
        .expect("valid");
        assert_eq!(e.event_type, "attribute", "PsEPR URIs are stored by short name");
        assert_eq!(e.distribution, Distribution::One);
        let rec = Record {
            seq: 7,
            time_us: 1_700_000_000_000_000,
            origin: "lab".into(),
            body: pepper_storage::Body::Event(e),
        };
        let out = EventOut::from_record(&rec).expect("event");
        let json = serde_json::to_value(&out).expect("json");
        assert_eq!(json["payload"]["expire"], 90);
        assert_eq!(json["seq"], 7);
        assert_eq!(json["time"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(json["to"], serde_json::json!({"service": "pldb"}));
        assert_eq!(json["distribution"], "one");
    }

    #[test]
    fn bad_events_are_refused_with_reasons() {
        for (json, needle) in [
            (r#"{"channel":"/a/","type":"t","colour":"red"}"#, "unknown field"),
            (r#"{"channel":"/a/","type":"t","distribution":"some"}"#, "unknown variant"),
            (r#"{"channel":"a","type":"t"}"#, "start with '/'"),
            (r#"{"channel":"/pepper/sites/","type":"t"}"#, "reserved"),
            (r#"{"channel":"/a/","type":" "}"#, "type must not be empty"),
            (r#"{"channel":"/a/","type":"t","id":""}"#, "id must not be empty"),
            (r#"{"type":"t"}"#, "missing field `channel`"),
            (r#"{"channel":"/x/","type":"x\ny"}"#, "control character"),
            (r#"{"channel":"/x/","type":"t","id":"a\rb"}"#, "control character"),
            (r#"{"channel":"/x/","type":"t","from":{"service":"s\u0000"}}"#, "control character"),
            (r#"{"channel":"/x/","type":"attribute","payload":{"field":"f\n","value":"1"}}"#, "control character"),
        ] {
            let err = parse(json).expect_err(json);
            assert!(err.contains(needle), "{json}: {err}");
        }
        let e = parse(r#"{"channel":"/a/","type":"ping"}"#).expect("minimal");
        assert_eq!(e.id.len(), 32, "server-assigned id");
        assert_eq!(e.payload, b"null");
    }
}
