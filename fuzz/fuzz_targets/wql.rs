//! Fuzzes the WQL parser and the object path parser with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepper_query::path::ObjectPath;
use pepper_query::wql;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    // Never panics; an error points inside (or just past) the text.
    match wql::parse(input) {
        Ok(q) => assert!(!q.from.is_empty()),
        Err(pepper_query::Error::Syntax { at, .. }) => assert!(at <= input.len().max(wql::QUERY_BYTES_MAX)),
        Err(other) => panic!("unexpected error kind: {other}"),
    }
    // A path that parses prints in canonical form, which parses back equal.
    if let Ok(p) = ObjectPath::parse(input) {
        let again = ObjectPath::parse(&p.to_string()).expect("the canonical form parses");
        assert_eq!(again, p);
        assert_eq!(again.to_string(), p.to_string());
    }
});
