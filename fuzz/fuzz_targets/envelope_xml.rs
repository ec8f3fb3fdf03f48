//! Fuzzes the PsEPR XML envelope reader with arbitrary text: no panic, and
//! every event it accepts writes back out as XML that reads again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepper_adapters::envelope::EventOut;
use pepper_storage::{Body, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((events, _single)) = pepper_adapters::xml::parse_body(text) else { return };
    for e in events {
        let Ok(event) = e.into_event() else { continue };
        let record = Record { seq: 1, time_us: 0, origin: "fuzz".into(), body: Body::Event(event) };
        let out = EventOut::from_record(&record).expect("an event");
        let xml = pepper_adapters::xml::write_events(std::slice::from_ref(&out), true);
        let back = pepper_adapters::xml::parse_events(&xml).unwrap_or_else(|e| panic!("{}: {xml}", e.message()));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].channel, out.channel);
        assert_eq!(back[0].payload, out.payload, "{xml}");
    }
});
