//! Fuzzes the channel and lease-pattern parsers with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepper_router::{Channel, Pattern, CHANNEL_BYTES_MAX, CHANNEL_DEPTH_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Channel::parse(input) {
        assert_eq!(c.as_str(), input);
        assert!(c.depth() >= 1 && c.depth() <= CHANNEL_DEPTH_MAX);
        assert!(input.len() <= CHANNEL_BYTES_MAX);
        assert!(c.elements().all(|e| !e.is_empty() && !e.contains('*') && !e.chars().any(char::is_control)));
        let p = Pattern::parse(input).expect("every channel is a pattern");
        assert!(p.matches(&c));
    }
    if let Ok(p) = Pattern::parse(input) {
        assert_eq!(p.as_str(), input);
        assert!(p.segments().len() <= CHANNEL_DEPTH_MAX);
        let _ = p.literal_prefix();
    }
});
