//! Fuzzes the JSON event envelope: a publish body as `POST /v1/events`
//! reads it, each event through the envelope's rules, and every accepted
//! event out again as JSON and as PsEPR XML, which must be well-formed
//! (every JSON payload) and read back (flat payloads, the ones the XML
//! envelope takes).
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
        well_formed(&xml);
        // The XML reader takes flat payloads (a text, or elements of text);
        // those read back. Nested ones are refused by design: the XML
        // envelope tells the sender to use JSON for them.
        let flat = match &out.payload {
            serde_json::Value::Object(fields) => fields.values().all(|v| !v.is_object() && !v.is_array()),
            _ => true,
        };
        if flat {
            let back = pepper_adapters::xml::parse_events(&xml).unwrap_or_else(|e| panic!("{}: {xml}", e.message()));
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].channel, out.channel);
            if let serde_json::Value::String(s) = &out.payload {
                assert_eq!(back[0].payload, serde_json::Value::String(s.clone()), "{xml}");
            }
        }
    }
});

/// Panics unless `xml` is well-formed: every tag, attribute and text read
/// by a strict parser, with only characters XML 1.0 allows.
fn well_formed(xml: &str) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    loop {
        match reader.read_event().unwrap_or_else(|e| panic!("ill-formed ({e}): {xml}")) {
            Event::Start(e) => {
                depth += 1;
                for a in e.attributes() {
                    a.unwrap_or_else(|e| panic!("bad attribute ({e}): {xml}"));
                }
            }
            Event::End(_) => depth -= 1,
            Event::Text(t) => {
                let text = t.xml_content(quick_xml::XmlVersion::Implicit1_0);
                assert!(
                    text.chars().all(|c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)),
                    "a character XML forbids: {xml}"
                );
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "unclosed elements: {xml}");
}
