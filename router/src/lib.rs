//! pepper's router: the PsEPR half of pepper.
//!
//! Today this crate holds channel names and lease patterns ([`Channel`],
//! [`Pattern`]) and the [`Trie`] that maps a channel to the leases whose
//! patterns cover it. Leases (grant, renew, release, server-side expiry),
//! distribution `one`, per-lease delivery and inter-site forwarders build on
//! these in the issues that follow. The router reads the log through
//! `pepper-storage`'s change feed and writes lease records through its group
//! commit; it owns no storage of its own.

mod channel;
mod error;
mod trie;

pub use channel::{subtrees, Channel, Pattern, Segment, CHANNEL_BYTES_MAX, CHANNEL_DEPTH_MAX, RESERVED_AUTHORITY};
pub use error::{Error, Result};
pub use trie::Trie;

mod placement;
pub use placement::{
    by_preference, cut_poll, start_delay, victim, Announce, AnnounceDetail, AnnounceKind, BackfillReport, Candidate,
    Copied, Cut, CutProgress, CutReply, Heard, LocalMonitor, MonitorStatus, PeerView, Placement, PlacementAction,
    PlacementConfig, PlacementInput, Reach, SeenMonitor, StopResult, CUT_WAIT_MAX, DEAD_AFTER_INTERVALS,
    INTERVAL_DEFAULT, LOST_AFTER_INTERVALS, POLICIES_MAX, REPLICAS_MAX, SEEN_MAX, SURPLUS_EVALUATIONS,
};
