//! Placement: where the recording monitors of each channel subtree run, and
//! how a new one takes the subtree's history (the paper's PLDB supervisors
//! and its Figure 11: a recorder killed, R restored with the complete
//! history).
//!
//! **Concept.** A recording policy names subtree patterns, each with a
//! replication factor R. Every site runs the same rules on what it hears:
//! each site announces its monitors every interval, and each site's
//! supervisor counts the live monitors of every pattern. Too few: a site
//! without one starts one after a delay that favours other regions and idle
//! sites. Too many complete ones, twice in a row: the one site that every
//! site's rule picks stops its monitor, once it has heard (after deciding)
//! enough other complete replicas to leave R, so a replica that has just
//! died never makes it stop. A new monitor backfills: it holds
//! its interest in the subtree, picks a live complete replica, waits for the
//! cut (every update the replica will not have now reaches the new monitor
//! directly), copies the replica's rows and completes. The whole argument
//! that nothing is lost or recorded twice is in `docs/supervisors.md`.
//!
//! **Design.** [`Placement`] is a plain state machine with no I/O. The
//! driver gives it [`PlacementInput`]s through [`Placement::step`] (an
//! announcement heard, a policy change, the result of an action) and calls
//! [`Placement::tick`] when [`Placement::next_tick`] is due, with the rows
//! of the monitors running here and a source of uniform draws; both return
//! the [`PlacementAction`]s to carry out (announce, start, hold an interest,
//! wait for the cut, copy, complete, stop, drop an interest). Time is a
//! [`Duration`] since any origin the driver picks: the adapter's is an
//! `Instant` taken at startup, a simulation's its manual clock. The machine
//! reads no clock, draws no random number, spawns nothing and touches no
//! socket, so a multi-site scenario runs deterministically in one test. The
//! [`Cut`] tracker decides the cut from the answers the driver collects.
//!
//! **Rejected alternative.** Deciding inside the async tasks that carry the
//! decisions out (timers spawned per planned start, mutexes shared by the
//! announcement reader, the evaluation loop and every backfill): the rules
//! could then only be tested by starting sites and sleeping, and two runs
//! of one scenario never took the same path.
//!
//! Complexity: an evaluation is O(patterns x monitors seen of a pattern),
//! bounded by [`POLICIES_MAX`] and [`SEEN_MAX`].

mod cut;
mod heard;
mod machine;
mod rules;
mod seen;

use std::time::Duration;

pub use cut::{cut_poll, Cut, CutProgress, CutReply};
pub use heard::{AnnounceKind, Heard, MonitorStatus};
pub use machine::{
    Announce, AnnounceDetail, BackfillReport, Copied, LocalMonitor, Placement, PlacementAction, PlacementConfig,
    PlacementInput, SeenMonitor, StopResult,
};
pub use rules::{by_preference, start_delay, victim, Candidate, PeerView, Reach};

/// Time between evaluations and announcements when none is configured.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// A monitor not announced for this many intervals no longer counts.
pub const DEAD_AFTER_INTERVALS: u32 = 3;
/// A complete monitor heard from within this many intervals, though no
/// longer live, keeps a new monitor from starting empty: its history may
/// still be reachable.
pub const LOST_AFTER_INTERVALS: u32 = 30;
/// Evaluations in a row that must see too many replicas before one stops.
pub const SURPLUS_EVALUATIONS: u32 = 2;
/// Patterns one policy may hold; the adapter refuses more (413).
pub const POLICIES_MAX: usize = 256;
/// The highest replication factor a pattern may ask for; the adapter
/// refuses more (400).
pub const REPLICAS_MAX: usize = 16;
/// Monitors (pattern, site) the supervisor keeps track of; past it the
/// longest silent is forgotten to make room.
pub const SEEN_MAX: usize = 16_384;
/// The longest a backfill waits for the cut before it fails (and is
/// retried by a later evaluation).
pub const CUT_WAIT_MAX: Duration = Duration::from_secs(10);

// A monitor heard of lately outlives a live one: a silent complete replica
// keeps a new monitor from starting empty after it stops counting.
const _: () = assert!(LOST_AFTER_INTERVALS > DEAD_AFTER_INTERVALS);
const _: () = assert!(SURPLUS_EVALUATIONS >= 1 && REPLICAS_MAX >= 1);
