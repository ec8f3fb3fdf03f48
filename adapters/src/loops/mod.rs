//! The site's long-running tasks, each the adapter of one decision: they
//! own the timers, the feed readers and the outgoing HTTP calls, and carry
//! out what the logic decides.
//!
//! - `dispatch`: routes each committed event to the live streams it matches.
//! - `expiry`: ends leases and tuples when their time is up.
//! - `pldbget`: answers PLDB queries published on `/pldb/`.
//! - `heartbeat`: announces this site to its peers and starts forwarders.
//! - `forward`: one forwarder per peer, carrying the records it wants.
//! - `supervise`: recording policies, monitors, placement and backfill.

pub mod dispatch;
pub mod expiry;
pub mod forward;
pub mod heartbeat;
pub mod pldbget;
pub mod supervise;
