//! The fuzz targets' invariants (`fuzz/fuzz_targets/wql.rs`), as property
//! tests that run on every CI build.
#![allow(clippy::unwrap_used, missing_docs)]

use pepper_query::path::{KeyValue, ObjectPath};
use pepper_query::wql;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,8}"
}

fn key_value() -> impl Strategy<Value = KeyValue> {
    prop_oneof![
        any::<String>().prop_map(KeyValue::Str),
        any::<i64>().prop_map(|n| KeyValue::Int(n.into())),
        any::<bool>().prop_map(KeyValue::Bool),
    ]
}

proptest! {
    #[test]
    fn the_parser_never_panics_and_points_inside_the_text(input in any::<String>()) {
        if let Err(pepper_query::Error::Syntax { at, .. }) = wql::parse(&input) {
            prop_assert!(at <= input.len());
        }
    }

    #[test]
    fn query_shaped_text_never_panics(
        words in prop::collection::vec(prop_oneof![
            Just("SELECT".to_string()), Just("*".into()), Just("FROM".into()), Just("WHERE".into()),
            Just("AND".into()), Just("OR".into()), Just("NOT".into()), Just("(".into()), Just(")".into()),
            Just("=".into()), Just("<>".into()), Just("LIKE".into()), Just("IS".into()), Just("NULL".into()),
            Just("ISA".into()), Just("'x'".into()), Just("12".into()), Just("a".into()), Just("C".into()),
        ], 0..30)
    ) {
        let _ = wql::parse(&words.join(" "));
    }

    #[test]
    fn canonical_paths_round_trip_whatever_the_key_order(
        ns in prop::collection::vec(name(), 1..3),
        class in name(),
        keys in prop::collection::btree_map(name(), key_value(), 0..5),
    ) {
        // Key names must differ case-insensitively.
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<(String, KeyValue)> =
            keys.into_iter().filter(|(k, _)| seen.insert(k.to_ascii_lowercase())).collect();
        let mut reversed = keys.clone();
        reversed.reverse();
        let a = ObjectPath::new(&ns.join("/"), &class, keys).unwrap();
        let b = ObjectPath::new(&ns.join("/"), &class, reversed).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.to_string(), b.to_string());
        let back = ObjectPath::parse(&a.to_string()).unwrap();
        prop_assert_eq!(back.to_string(), a.to_string());
        prop_assert_eq!(back.identity(), a.identity());
    }
}
