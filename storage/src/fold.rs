//! Derived state kept outside the store, folded from each durable group.
//!
//! A site keeps a few things in memory that follow from the log: the
//! expiries of live leases and of tuples, for the tasks that end them, the
//! model repository's schemas, built from the classes defined, and what
//! the site keeps in documents (principals and their tokens). They
//! must change exactly when the log does, and in one place: updating them
//! by hand after each append left every write site (publish, grant, renew,
//! release, delete, receive, import, expire) to remember it.
//!
//! So the writer tells a registered [`Fold`] what each durable group
//! changed, once the group is durable and before any caller of the group
//! hears its answer: a caller that sees its write acknowledged also sees
//! its effect on the derived state. What is reported is the group's end
//! state of every lease and latest tuple it touched, the class rows and the
//! documents it wrote ([`Committed`]), not the records, so the fold needs no knowledge
//! of record kinds. A fold runs
//! on the writer thread: it must be quick and must not block or call the
//! store. The rejected alternative, a consumer of the change feed, would
//! have let a caller's next request see the derived state lag its own
//! acknowledged write.

use std::collections::HashMap;

use crate::keys::split_tuple_key;
use crate::rows::{Lease, ModelClassRow, TupleRow};

/// Receives what each durable group changed. Registered with
/// [`crate::Store::set_fold`].
pub trait Fold: Send + Sync {
    /// Called on the writer thread after a group is durable and before its
    /// callers are answered.
    fn committed(&self, group: &Committed<'_>);
}

/// A document a group put (`Some((seq, value))`) or deleted (`None`), by key.
pub(crate) type DocChange = (String, Option<(u64, Vec<u8>)>);

/// A latest tuple as a group left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleState {
    /// The sequence number of the record that set it.
    pub seq: u64,
    /// When it expires, if it does.
    pub expires_at_us: Option<u64>,
}

/// What one durable group changed.
pub struct Committed<'a> {
    pub(crate) last_seq: u64,
    /// The writer's overlays: lease id, and tuple key, to end state.
    pub(crate) leases: &'a HashMap<String, Option<Lease>>,
    pub(crate) tuples: &'a HashMap<Vec<u8>, Option<TupleRow>>,
    /// The model classes the group defined, in log order.
    pub(crate) classes: &'a [(String, ModelClassRow)],
    /// The documents the group put or deleted, in log order.
    pub(crate) docs: &'a [DocChange],
}

impl<'a> Committed<'a> {
    /// The group's last sequence number: the version of anything it ended.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Every lease the group touched, with its state after the group
    /// (`None`: released or expired).
    pub fn leases(&self) -> impl Iterator<Item = (&'a str, Option<&'a Lease>)> {
        self.leases.iter().map(|(id, lease)| (id.as_str(), lease.as_ref()))
    }

    /// Every model class the group defined or replaced, as (namespace,
    /// class row), in log order.
    pub fn classes(&self) -> impl Iterator<Item = (&'a str, &'a ModelClassRow)> {
        self.classes.iter().map(|(ns, row)| (ns.as_str(), row))
    }

    /// Every document the group put or deleted, in log order, as (key,
    /// `Some((seq, value))` put at seq, or `None` deleted).
    pub fn docs(&self) -> impl Iterator<Item = (&'a str, Option<(u64, &'a [u8])>)> {
        self.docs.iter().map(|(key, doc)| (key.as_str(), doc.as_ref().map(|(seq, v)| (*seq, v.as_slice()))))
    }

    /// Every latest tuple the group touched, as (channel, field, state
    /// after the group; `None`: expired or deleted).
    pub fn tuples(&self) -> impl Iterator<Item = (&'a str, &'a str, Option<TupleState>)> {
        self.tuples.iter().filter_map(|(key, row)| {
            let (channel, field) = split_tuple_key(key)?;
            let state = row.as_ref().map(|r: &TupleRow| TupleState { seq: r.seq, expires_at_us: r.expires_at_us });
            Some((channel, field, state))
        })
    }
}
