//! A trie of channel elements that maps a channel to the values (leases)
//! whose patterns match it.
//!
//! Each node is one pattern element. A node holds the values of the patterns
//! that end there, a map of literal children, and at most one `*` child.
//! Matching walks the channel's elements once: at each depth it follows the
//! literal child for that element and the `*` child, collecting every value
//! on the way (a pattern covers its subtree, so a value matches as soon as
//! its node is reached). The work is O(depth x live branches), independent
//! of how many patterns are stored; branches multiply only where patterns
//! put `*` at the same place as literals.
//!
//! Rejected alternative: testing each lease's pattern against each record,
//! O(leases) per record, which is what the original PsEPR routers did.

use std::collections::HashMap;

use crate::channel::{Channel, Pattern, Segment};

/// Values keyed by lease pattern, matched by channel.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    here: Vec<V>,
    literal: HashMap<Box<str>, Node<V>>,
    any: Option<Box<Node<V>>>,
}

impl<V> Default for Node<V> {
    fn default() -> Node<V> {
        Node { here: Vec::new(), literal: HashMap::new(), any: None }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.literal.is_empty() && self.any.is_none()
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Trie<V> {
        Trie { root: Node::default(), len: 0 }
    }
}

impl<V: PartialEq> Trie<V> {
    /// An empty trie.
    pub fn new() -> Trie<V> {
        Trie::default()
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, value: V) {
        let mut node = &mut self.root;
        for segment in pattern.segments() {
            node = match segment {
                Segment::Literal(l) => node.literal.entry(l.as_str().into()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Default::default),
            };
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` stored under `pattern`, pruning emptied nodes.
    /// Returns whether it was there.
    pub fn remove(&mut self, pattern: &Pattern, value: &V) -> bool {
        let removed = remove(&mut self.root, pattern.segments(), value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with every value whose pattern matches `channel`.
    pub fn for_each_match(&self, channel: &Channel, mut f: impl FnMut(&V)) {
        let elements: Vec<&str> = channel.elements().collect();
        visit(&self.root, &elements, &mut f);
    }
}

fn visit<V>(node: &Node<V>, rest: &[&str], f: &mut impl FnMut(&V)) {
    node.here.iter().for_each(&mut *f);
    let Some((first, rest)) = rest.split_first() else { return };
    if let Some(child) = node.literal.get(*first) {
        visit(child, rest, f);
    }
    if let Some(child) = &node.any {
        visit(child, rest, f);
    }
}

fn remove<V: PartialEq>(node: &mut Node<V>, segments: &[Segment], value: &V) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return match node.here.iter().position(|v| v == value) {
            Some(i) => {
                node.here.swap_remove(i);
                true
            }
            None => false,
        };
    };
    match first {
        Segment::Literal(l) => {
            let Some(child) = node.literal.get_mut(l.as_str()) else { return false };
            let removed = remove(child, rest, value);
            if child.is_empty() {
                node.literal.remove(l.as_str());
            }
            removed
        }
        Segment::Any => {
            let Some(child) = node.any.as_mut() else { return false };
            let removed = remove(child, rest, value);
            if child.is_empty() {
                node.any = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn matches(t: &Trie<u32>, c: &str) -> Vec<u32> {
        let mut out = Vec::new();
        t.for_each_match(&Channel::parse(c).unwrap_or_else(|e| panic!("{c}: {e}")), |v| out.push(*v));
        out.sort_unstable();
        out
    }

    #[test]
    fn subtree_wildcard_and_root_patterns() {
        let mut t = Trie::new();
        t.insert(&p("/a/"), 1);
        t.insert(&p("/a/b/"), 2);
        t.insert(&p("/a/*/"), 3);
        t.insert(&p("/a/*/c/"), 4);
        t.insert(&p("/"), 5);
        t.insert(&p("/a/b/"), 6);
        assert_eq!(matches(&t, "/a/"), [1, 5]);
        assert_eq!(matches(&t, "/a/b/"), [1, 2, 3, 5, 6]);
        assert_eq!(matches(&t, "/a/x/c/d/"), [1, 3, 4, 5]);
        assert_eq!(matches(&t, "/z/"), [5]);
        assert_eq!(t.len(), 6);
        assert!(t.remove(&p("/a/b/"), &2));
        assert!(!t.remove(&p("/a/b/"), &2));
        assert!(!t.remove(&p("/q/"), &1));
        assert_eq!(matches(&t, "/a/b/"), [1, 3, 5, 6]);
        for (pat, v) in [("/a/", 1), ("/a/*/", 3), ("/a/*/c/", 4), ("/", 5), ("/a/b/", 6)] {
            assert!(t.remove(&p(pat), &v));
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "emptied nodes are pruned");
    }
}
