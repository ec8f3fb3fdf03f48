//! Property tests of the channel parser and the trie. The same invariants
//! drive the fuzz target in `fuzz/fuzz_targets/channel.rs`.
#![allow(missing_docs)]

use pepper_router::{Channel, Pattern, Segment, Trie, CHANNEL_BYTES_MAX, CHANNEL_DEPTH_MAX};
use proptest::prelude::*;

/// Strings built from the characters that matter to the grammar.
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![Just("/"), Just("*"), Just("a"), Just("b"), Just("é"), Just("\u{1}"), Just(" ")],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn parse_never_panics_and_accepted_names_keep_their_invariants(input in name()) {
        if let Ok(c) = Channel::parse(&input) {
            prop_assert_eq!(c.as_str(), input.as_str());
            prop_assert!(c.depth() >= 1 && c.depth() <= CHANNEL_DEPTH_MAX);
            prop_assert!(c.as_str().len() <= CHANNEL_BYTES_MAX);
            let invisible = |ch: char| ch.is_control() || matches!(ch, '\u{200B}' | '\u{202E}' | '\u{FEFF}');
            let printable = c.elements().all(|e| !e.is_empty() && !e.contains('*') && !e.chars().any(invisible));
            prop_assert!(printable);
            // A channel read as a pattern covers itself.
            let p = Pattern::parse(&input).expect("every channel is a pattern");
            prop_assert!(p.matches(&c));
        }
        if let Ok(p) = Pattern::parse(&input) {
            prop_assert_eq!(p.as_str(), input.as_str());
            prop_assert!(p.segments().len() <= CHANNEL_DEPTH_MAX);
        }
    }

    #[test]
    fn trie_agrees_with_matching_each_pattern(
        patterns in prop::collection::vec(prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 0..4), 0..20),
        channels in prop::collection::vec(prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..5), 1..10),
    ) {
        let patterns: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(&format!("/{}", p.iter().map(|e| format!("{e}/")).collect::<String>())).expect("pattern"))
            .collect();
        let mut trie = Trie::new();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        for c in &channels {
            let channel = Channel::parse(&format!("/{}/", c.join("/"))).expect("channel");
            let mut got = Vec::new();
            trie.for_each_match(&channel, |i| got.push(*i));
            got.sort_unstable();
            let want: Vec<usize> = (0..patterns.len()).filter(|i| patterns[*i].matches(&channel)).collect();
            prop_assert_eq!(got, want);
        }
        // Removing everything leaves nothing behind.
        for (i, p) in patterns.iter().enumerate() {
            prop_assert!(trie.remove(p, &i));
        }
        prop_assert!(trie.is_empty());
        let _ = Segment::Any;
    }
}
