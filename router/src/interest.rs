//! What a site wants from its peers: an [`Interest`] (a lease pattern and
//! its types) as announcements carry it, and [`Wants`], a peer's interests
//! parsed into a routing trie, which its forwarder matches records against.
//! Both the peer registry and the forwarder use them; neither owns them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::channel::{Channel, Pattern};
use crate::error::Result;
use crate::trie::Trie;

/// What a site is interested in: the events of one lease pattern and types.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interest {
    /// A lease pattern.
    pub pattern: String,
    /// Event types; empty means all.
    #[serde(default)]
    pub types: Vec<String>,
}

/// A peer's interests, parsed into a routing trie: each pattern maps to its
/// types (empty means all), so matching a record is O(channel depth)
/// whatever the number of interests.
#[derive(Debug, Default)]
pub struct Wants {
    trie: Trie<Vec<String>>,
}

impl Wants {
    /// Parses interests as an announcement carries them.
    ///
    /// # Errors
    /// [`crate::Error::InvalidChannel`] for the first pattern that does not
    /// parse.
    pub fn parse(interests: &[Interest]) -> Result<Wants> {
        let mut trie = Trie::new();
        for i in interests {
            trie.insert(&Pattern::parse(&i.pattern)?, i.types.clone());
        }
        Ok(Wants { trie })
    }

    /// How many (pattern, types) there are.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Whether an event on `channel` of type `event_type` is wanted. A
    /// channel that does not parse is not.
    pub fn covers(&self, channel: &str, event_type: &str) -> bool {
        let Ok(channel) = Channel::parse(channel) else { return false };
        let mut hit = false;
        self.trie.for_each_match(&channel, |types| {
            hit = hit || types.is_empty() || types.iter().any(|t| t == event_type);
        });
        hit
    }
}

/// A peer's parsed interests for its forwarder, and where that forwarder
/// starts if it never sent to the peer before.
#[derive(Clone, Debug)]
pub struct PeerWants {
    /// The interests, parsed.
    pub wants: Arc<Wants>,
    /// This site's log head + 1 when the peer was first heard in this run:
    /// a record committed after that may match its interests, so none may
    /// be skipped.
    pub first_cursor: u64,
}
