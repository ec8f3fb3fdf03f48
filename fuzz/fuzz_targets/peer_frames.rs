//! Fuzzes the peer batch decoder (`POST /v1/peer/records`): arbitrary
//! bytes as a batch of length-prefixed frames. No panic; every frame it
//! accepts encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepper_storage::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(received) = pepper_adapters::wire::frames::decode_batch("fuzz", data) else { return };
    assert!(!received.is_empty());
    // Walk the frames again and check each one re-encodes exactly.
    let mut rest = data;
    for (seq, body) in received {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let frame = &rest[4..4 + len];
        let record = Record::decode(frame).expect("decoded once already");
        assert_eq!((record.seq, &record.body), (seq, &body));
        let _ = pepper_storage::validate::body(&body);
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty());
});
