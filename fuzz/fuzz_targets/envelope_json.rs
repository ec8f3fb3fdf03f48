//! Fuzzes the JSON event envelope: a publish body as `POST /v1/events`
//! reads it, each event through the envelope's rules, and every accepted
//! event out again as JSON and as PsEPR XML, which must be well-formed and
//! read back to the same payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepper_adapters::envelope::{parse_json, EventOut};
use pepper_storage::{Body, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((events, _single)) = parse_json(text) else { return };
    for e in events {
        let Ok(event) = e.into_event() else { continue };
        pepper_storage::validate::event(&event).expect("an accepted event passes the store's rules");
        let record = Record { seq: 1, time_us: 0, origin: "fuzz".into(), body: Body::Event(event) };
        let out = EventOut::from_record(&record).expect("an event");
        serde_json::to_string(&out).expect("JSON out");
        let xml = pepper_adapters::xml::write_events(std::slice::from_ref(&out), false);
        let back = pepper_adapters::xml::parse_events(&xml).unwrap_or_else(|e| panic!("{}: {xml}", e.message()));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].channel, out.channel);
        // Objects of plain values and strings round-trip; numbers and
        // nested values come back as text, by design of the XML mapping.
        if let serde_json::Value::String(s) = &out.payload {
            assert_eq!(back[0].payload, serde_json::Value::String(s.clone()), "{xml}");
        }
    }
});
