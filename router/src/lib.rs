//! pepper's router: the PsEPR half of pepper, as decisions without I/O.
//!
//! - [`Channel`] and [`Pattern`]: channel names and lease patterns, and the
//!   [`Trie`] that maps a channel to the leases whose patterns cover it.
//! - [`Grant`] and [`allows`]: the permission rule, an [`Action`] on a
//!   [`Resource`], deny by default.
//! - [`Dispatch`]: which live subscribers (lease streams, watches) each
//!   committed record goes to, and when one is detached or its lease ends.
//! - [`ExpiryIndex`]: which leases and tuples are due at a given `now`;
//!   [`ExpiryPass`]: one pass ending them, in batches, settling races with
//!   renewals.
//! - [`Registry`]: the peer registry. Which sites this site knows, what
//!   they announced, whether each is up, suspect or down at a given `now`,
//!   and this site's own announcement and interests.
//! - [`Forwarder`]: one peer's forwarder. A cursor over the local log, the
//!   records the peer wants, batches, backoff, stalls and gap markers.
//! - [`Placement`]: the supervisor. Monitor announcements heard,
//!   evaluations, placement delays, the surplus stop rule, and each new
//!   monitor's backfill protocol, with its [`Cut`].
//!
//! The dispatch, the registry, the forwarder and the placement are state machines: `step(now, input)`
//! and `tick(now)` return the actions to carry out, and they read no
//! clock, spawn nothing and touch no socket. `pepper-adapters` carries the
//! actions out (HTTP, the store, timers); a simulator can carry them out
//! with a manual clock and a simulated network instead. The router owns no
//! storage: records reach it as the driver reads them.

mod access;
mod channel;
mod control;
mod dispatch;
mod error;
mod expiry;
mod forwarder;
mod interest;
mod peers;
mod site_key;
mod trie;

pub use access::{allows, covers, Action, Grant, Resource, ResourceKind, GRANT_NAMESPACE_BYTES_MAX};
pub use channel::{subtrees, Channel, Pattern, Segment, CHANNEL_BYTES_MAX, CHANNEL_DEPTH_MAX, RESERVED_AUTHORITY};
pub use control::{
    sign, ControlRefusal, ControlRequest, Scope, SignedControl, Verifier, CLOCK_SKEW_MAX, CONTROL_BYTES_MAX,
    CONTROL_TTL_MAX, NONCES_MAX, NONCE_BYTES_MAX, NONCE_BYTES_MIN,
};
pub use dispatch::{
    should_join, Action as DispatchAction, Detach, Dispatch, EndReason, EventHead, Holder, Input as DispatchInput,
    Meaning, Routed, Subscriber, SubscriberId, GAP_EVENT_TYPE, HANDOFF_LAG_MAX,
};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{Error, Result};
pub use expiry::{ExpiryAction, ExpiryIndex, ExpiryOutcome, ExpiryPass};
pub use forwarder::{
    Action as ForwarderAction, Filter, Forwarder, Input as ForwarderInput, Outgoing, BACKOFF_MAX, BACKOFF_MIN,
    CURSOR_SAVE_INTERVAL, FORWARD_BATCH_BYTES, FORWARD_BATCH_RECORDS, FORWARD_SCAN_MAX,
};
pub use interest::{Interest, PeerWants, Wants};
pub use peers::{
    aggregate, check_site, Action as RegistryAction, Announcement, Input as RegistryInput, KnownPeer, PeerInfo,
    PeerState, Registry, RegistryConfig, Target, ANNOUNCE_TIMEOUT_MIN, DOWN_AFTER_HEARTBEATS, HEARTBEAT_DEFAULT,
    INTERESTS_MAX, INTEREST_PUSH_WAIT, NAME_BYTES_MAX, PEERS_MAX, SITE_BYTES_MAX, SUSPECT_AFTER_HEARTBEATS,
};
pub use site_key::{batch_signature, parse_public_key, verify_batch};
pub use trie::Trie;

mod placement;
pub use placement::{
    by_preference, cut_poll, start_delay, victim, Announce, AnnounceDetail, AnnounceKind, BackfillReport, Candidate,
    Copied, Cut, CutProgress, CutReply, Heard, LocalMonitor, MonitorStatus, PeerView, Placement, PlacementAction,
    PlacementConfig, PlacementInput, Reach, SeenMonitor, StopResult, CUT_WAIT_MAX, DEAD_AFTER_INTERVALS,
    INTERVAL_DEFAULT, LOST_AFTER_INTERVALS, POLICIES_MAX, REPLICAS_MAX, SEEN_MAX, SURPLUS_EVALUATIONS,
};
