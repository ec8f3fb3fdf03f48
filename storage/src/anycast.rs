//! Distribution `one`: the writer picks, at commit, the one lease of each
//! anycast group that receives an event.
//!
//! The choice is made once, by the single writer, and stored in the event
//! record itself (`Event::assigned`). Live delivery and any later catch-up
//! from the log read the same answer, so a reconnecting lease never receives
//! an event another member already got, and no event is handed to two
//! members because two readers decided differently. Deciding at dispatch
//! instead would need the lease table as of every past sequence number.
//!
//! **Who is a candidate.** A lease of the group that, at the event's commit
//! time, exists (granted earlier in the log, including earlier in the same
//! write group), has not lapsed (`expires_at_us` is after the commit time,
//! even if its expire record is not yet written), and matches the event: its
//! pattern covers the channel, its type filter admits the event's type, and
//! the event's `to` admits its holder.
//!
//! **The policy.** Round robin per group over the candidates ordered by lease
//! id: the writer keeps one counter per group and takes candidate
//! `counter % n`. Members share a group's load evenly whatever the traffic
//! on other channels, and a lapsed, released or expired member simply stops
//! being a candidate, so the following events go to the others. The counters
//! live in memory and restart at zero with the process; nothing depends on
//! them but fairness.
//!
//! A group with no candidate gets nothing for that event (it stays in the
//! log, readable by `GET /v1/events`). A lease without a group is not part of
//! any choice: it receives distribution-`one` events like any other.
//!
//! Cost: one pass over the groups' members per distribution-`one` event, none
//! for `all` events. Groups are expected to be few and small; a trie per
//! group is the next step if they are not.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pepper_router::Pattern;

use crate::engine::{Direction, KeyRange, Reader};
use crate::error::{Error, Result};
use crate::keys::CF_LEASES;
use crate::record::{Event, Party};
use crate::rows::Lease;

/// A live lease that belongs to an anycast group, as the writer sees it.
#[derive(Debug)]
struct Member {
    pattern: Pattern,
    types: Vec<String>,
    holder: Party,
    expires_at_us: u64,
}

impl Member {
    fn from_lease(lease: &Lease) -> Result<Member> {
        let pattern = Pattern::parse(&lease.pattern)
            .map_err(|e| Error::corruption(format!("lease {}", lease.id), format!("stored pattern: {e}")))?;
        Ok(Member {
            pattern,
            types: lease.types.clone(),
            holder: lease.holder.clone(),
            expires_at_us: lease.expires_at_us,
        })
    }

    fn takes(&self, event: &Event, time_us: u64) -> bool {
        self.expires_at_us > time_us
            && self.pattern.matches_name(&event.channel)
            && (self.types.is_empty() || self.types.contains(&event.event_type))
            && event.to.admits(&self.holder)
    }
}

#[derive(Debug, Default)]
struct Group {
    /// Members by lease id: the order the round robin walks.
    members: BTreeMap<String, Member>,
    /// How many events this group was assigned since the process started.
    turn: u64,
}

/// The committed anycast groups, and the round-robin counters.
#[derive(Debug, Default)]
pub(crate) struct Anycast {
    groups: BTreeMap<String, Group>,
    /// Lease id to group name, for leases that end.
    group_of: HashMap<String, String>,
}

impl Anycast {
    /// Loads the groups from the lease table.
    pub(crate) fn load(reader: &dyn Reader) -> Result<Anycast> {
        let mut anycast = Anycast::default();
        reader.scan(CF_LEASES, KeyRange::ALL, Direction::Forward, &mut |key, value| {
            let lease = crate::rows::decode_lease_row(key, value)?;
            anycast.apply(&lease.id.clone(), Some(&lease))?;
            Ok(true)
        })?;
        Ok(anycast)
    }

    /// Applies a committed change to lease `id`: its new state, or `None`
    /// once it ended.
    pub(crate) fn apply(&mut self, id: &str, lease: Option<&Lease>) -> Result<()> {
        if let Some(old) = self.group_of.remove(id) {
            if let Some(group) = self.groups.get_mut(&old) {
                group.members.remove(id);
                if group.members.is_empty() {
                    self.groups.remove(&old);
                }
            }
        }
        if let Some(lease) = lease {
            if let Some(name) = &lease.group {
                let member = Member::from_lease(lease)?;
                self.groups.entry(name.clone()).or_default().members.insert(id.to_string(), member);
                self.group_of.insert(id.to_string(), name.clone());
            }
        }
        Ok(())
    }

    /// How many groups there would be if a lease joined group `name`, given
    /// the lease changes `pending` earlier in the write group and the groups
    /// `also` started earlier in the same request; `None` if the group
    /// already exists. Ended leases still count until committed: the limit
    /// is approximate in the safe direction.
    pub(crate) fn groups_after_join(
        &self,
        pending: &HashMap<String, Option<Lease>>,
        also: &BTreeSet<&str>,
        name: &str,
    ) -> Option<usize> {
        let mut new: BTreeSet<&str> = pending
            .values()
            .filter_map(|l| l.as_ref()?.group.as_deref())
            .chain(also.iter().copied())
            .filter(|g| !self.groups.contains_key(*g))
            .collect();
        if self.groups.contains_key(name) || new.contains(name) {
            return None;
        }
        new.insert(name);
        Some(self.groups.len() + new.len())
    }

    /// Drops groups left without a committed member: those emptied by ended
    /// leases, and those `choose` created for members of a write group that
    /// then failed or ended them again. Called after every write group.
    pub(crate) fn prune(&mut self) {
        self.groups.retain(|_, g| !g.members.is_empty());
    }

    /// Chooses the receiving lease of each group for `event`, committed at
    /// `time_us`. `pending` holds lease changes earlier in the same write
    /// group, not yet applied: `None` for a lease that ended.
    pub(crate) fn choose(
        &mut self,
        pending: &HashMap<String, Option<Lease>>,
        event: &Event,
        time_us: u64,
    ) -> Result<Vec<String>> {
        // Pending leases, parsed once, by group.
        let mut added: BTreeMap<&str, Vec<(&str, Member)>> = BTreeMap::new();
        for (id, lease) in pending {
            if let Some(lease @ Lease { group: Some(name), .. }) = lease {
                added.entry(name.as_str()).or_default().push((id.as_str(), Member::from_lease(lease)?));
            }
        }
        let mut names: Vec<String> = self.groups.keys().cloned().collect();
        names.extend(added.keys().filter(|n| !self.groups.contains_key(**n)).map(|n| n.to_string()));
        names.sort_unstable();
        let mut assigned = Vec::new();
        for name in names {
            let mut candidates: BTreeSet<&str> = BTreeSet::new();
            if let Some(group) = self.groups.get(&name) {
                for (id, member) in &group.members {
                    if !pending.contains_key(id) && member.takes(event, time_us) {
                        candidates.insert(id);
                    }
                }
            }
            for (id, member) in added.get(name.as_str()).into_iter().flatten() {
                if member.takes(event, time_us) {
                    candidates.insert(id);
                }
            }
            if candidates.is_empty() {
                continue;
            }
            let turn = self.groups.get(&name).map_or(0, |g| g.turn);
            let index = usize::try_from(turn % candidates.len() as u64).unwrap_or(0);
            if let Some(id) = candidates.into_iter().nth(index) {
                assigned.push(id.to_string());
            }
            self.groups.entry(name).or_default().turn = turn.wrapping_add(1);
        }
        Ok(assigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Distribution, Target};

    fn lease(id: &str, group: &str, pattern: &str, expires_at_us: u64) -> Lease {
        Lease {
            id: id.into(),
            pattern: pattern.into(),
            types: Vec::new(),
            ttl_ms: 1000,
            expires_at_us,
            group: Some(group.into()),
            from_seq: None,
            granted_seq: 1,
            renewed_seq: 1,
            holder: Party { service: format!("svc-{id}"), instance: "i".into() },
            owner: None,
        }
    }

    fn event(channel: &str) -> Event {
        Event {
            id: String::new(),
            channel: channel.into(),
            event_type: "t".into(),
            from: Party::default(),
            to: Target::default(),
            distribution: Distribution::One,
            payload: Vec::new(),
            assigned: Vec::new(),
            principal: None,
            tuple: None,
        }
    }

    #[test]
    fn round_robin_over_live_matching_members() {
        let mut a = Anycast::default();
        for id in ["b", "a", "c"] {
            a.apply(id, Some(&lease(id, "g", "/x/", 100))).expect("apply");
        }
        let none = HashMap::new();
        let picks: Vec<String> =
            (0..6).map(|_| a.choose(&none, &event("/x/y/"), 10).expect("choose").concat()).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        // A lapsed member is skipped at once, before its expire record.
        a.apply("b", Some(&lease("b", "g", "/x/", 5))).expect("apply");
        let picks: Vec<String> = (0..4).map(|_| a.choose(&none, &event("/x/"), 10).expect("choose").concat()).collect();
        assert!(picks.iter().all(|p| p == "a" || p == "c"), "{picks:?}");
        // Non-matching channels and ended leases get nothing.
        assert!(a.choose(&none, &event("/other/"), 10).expect("choose").is_empty());
        for id in ["a", "b", "c"] {
            a.apply(id, None).expect("apply");
        }
        assert!(a.choose(&none, &event("/x/"), 10).expect("choose").is_empty());
        assert!(a.groups.is_empty() || a.groups.values().all(|g| g.members.is_empty()));
    }

    #[test]
    fn one_pick_per_group_and_pending_changes_count() {
        let mut a = Anycast::default();
        a.apply("a1", Some(&lease("a1", "ga", "/x/", 100))).expect("apply");
        a.apply("b1", Some(&lease("b1", "gb", "/x/", 100))).expect("apply");
        let mut pending = HashMap::new();
        // a1 ended earlier in this write group; a2 and c1 were granted in it.
        pending.insert("a1".to_string(), None);
        pending.insert("a2".to_string(), Some(lease("a2", "ga", "/x/", 100)));
        pending.insert("c1".to_string(), Some(lease("c1", "gc", "/", 100)));
        assert_eq!(a.choose(&pending, &event("/x/"), 10).expect("choose"), ["a2", "b1", "c1"]);
    }

    #[test]
    fn to_and_types_narrow_the_candidates() {
        let mut a = Anycast::default();
        let mut typed = lease("a", "g", "/x/", 100);
        typed.types = vec!["other".into()];
        a.apply("a", Some(&typed)).expect("apply");
        a.apply("b", Some(&lease("b", "g", "/x/", 100))).expect("apply");
        a.apply("c", Some(&lease("c", "g", "/x/", 100))).expect("apply");
        let mut e = event("/x/");
        e.to.service = Some("svc-c".into());
        for _ in 0..3 {
            assert_eq!(a.choose(&HashMap::new(), &e, 10).expect("choose"), ["c"]);
        }
    }
}
