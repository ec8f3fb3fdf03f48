//! Helpers shared by the storage tests.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use pepper_storage::{Body, DocPut, Event, LeaseGrant, Options, Party, Store, Target, TupleSet};

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, Options::new("test-site")).unwrap()
}

pub fn tuple(channel: &str, field: &str, value: &str) -> Body {
    Body::TupleSet(TupleSet {
        channel: channel.into(),
        field: field.into(),
        value: value.into(),
        expires_at_us: None,
        source: Party { service: "svc".into(), instance: "i".into() },
    })
}

pub fn event(channel: &str, ty: &str, payload: &[u8]) -> Body {
    Body::Event(Event {
        id: String::new(),
        channel: channel.into(),
        event_type: ty.into(),
        from: Party::default(),
        to: Target::default(),
        distribution: Default::default(),
        payload: payload.to_vec(),
        assigned: Vec::new(),
        tuple: None,
    })
}

pub fn doc(key: &str, value: &[u8]) -> Body {
    Body::DocPut(DocPut { key: key.into(), value: value.to_vec() })
}

pub fn grant(id: &str, pattern: &str) -> Body {
    Body::LeaseGrant(LeaseGrant {
        id: id.into(),
        pattern: pattern.into(),
        types: vec![],
        ttl_ms: 1000,
        expires_at_us: far_future(),
        group: None,
        from_seq: None,
        holder: Party::default(),
    })
}

/// An expiry no test outlives.
pub fn far_future() -> u64 {
    pepper_storage::now_us() + 3_600_000_000
}
