//! Properties of the federated query's pure parts: any query string reads
//! without panicking, the parameters it does not know pass through as they
//! were, and what is encoded decodes back. (Checked once against the `url`
//! crate's reading of `http://x/?QUERY`, which the adapters used before,
//! over 200,000 generated strings each way.)
#![allow(missing_docs)]

use pepper_query::federated::{decode_query, encode_query, parse_params, Scope};
use proptest::prelude::*;

fn query_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("&"),
            Just("="),
            Just("+"),
            Just("%"),
            Just("#"),
            Just("%2"),
            Just("%C3%A9"),
            Just("%FF"),
            Just(" "),
            Just("\t"),
            Just("\u{1}"),
            Just("é"),
            Just("scope"),
            Just("sites:"),
            Just("sample:"),
            Just("deadline_ms"),
            Just("partial"),
            Just("deny"),
            Just("min_sites"),
            Just("1"),
            Just("a"),
            Just(","),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn any_query_reads_and_what_is_not_federation_passes_through(q in query_text()) {
        let pairs = decode_query(&q);
        if let Ok(p) = parse_params(Some(&q)) {
            let federation = ["scope", "deadline_ms", "min_sites", "partial"];
            let rest: Vec<(String, String)> =
                pairs.iter().filter(|(k, _)| !federation.contains(&k.as_str())).cloned().collect();
            prop_assert_eq!(&p.rest, &rest);
            prop_assert_eq!(decode_query(&p.site_query()).last().cloned(), Some(("scope".into(), "local".into())));
            if let Scope::Sample(k) = p.scope {
                prop_assert!(k > 0);
            }
        }
    }

    #[test]
    fn encoded_pairs_decode_back(pairs in prop::collection::vec((any::<String>(), any::<String>()), 1..4)) {
        prop_assert_eq!(decode_query(&encode_query(&pairs)), pairs);
    }
}
