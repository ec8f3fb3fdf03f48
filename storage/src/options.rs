//! How a store is opened: its site, its durability, its retention policy and
//! its dedupe window.
//!
//! [`Options`] holds what a deployment chooses; it is plain data, cloned into
//! the store at open. What the store runs on, the [`crate::Engine`] that
//! keeps the bytes and the [`crate::Clock`] that gives the time, is passed
//! beside it to [`crate::Store::open_with`], so a test can swap either while
//! the options stay what the binary reads from its configuration.

use std::time::Duration;

use crate::retention::Retention;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the WAL is fsynced: an acknowledged record survives power loss.
    #[default]
    Sync,
    /// After the WAL is written to the operating system: an acknowledged
    /// record survives a crash of pepper, but not of the machine.
    Buffered,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct Options {
    /// This site's name, stamped as the origin of every local record.
    pub site: String,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// What the background retention task trims.
    pub retention: Retention,
    /// How long an event id is remembered for idempotent retries. The log's
    /// retention bounds it too: a trimmed event's id is forgotten.
    pub dedupe_window: Duration,
}

/// Default of [`Options::dedupe_window`].
pub const DEDUPE_WINDOW_DEFAULT: Duration = Duration::from_secs(600);

impl Options {
    /// Options for a site with the default durability (`sync`) and no
    /// retention.
    pub fn new(site: impl Into<String>) -> Options {
        Options {
            site: site.into(),
            durability: Durability::Sync,
            retention: Retention::default(),
            dedupe_window: DEDUPE_WINDOW_DEFAULT,
        }
    }
}
