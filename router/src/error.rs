//! The router crate's one error type.
//!
//! Variants are grouped by what the caller does about them: fix the input
//! ([`Error::InvalidChannel`], [`Error::InvalidAnnouncement`],
//! [`Error::InvalidConfig`], [`Error::InvalidGrant`]), wait for room ([`Error::PeersFull`]), or try
//! again later ([`Error::GapRefused`]). None of them leaves a state machine
//! half-changed: an input that is refused changes nothing.

/// Everything the router refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A channel name or lease pattern breaks PsEPR's grammar or a limit.
    #[error("invalid channel {channel:?}: {reason}")]
    InvalidChannel {
        /// The input, cut to a printable length.
        channel: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A peer's announcement breaks a rule or a limit. It is refused whole
    /// (HTTP 400) and the registry is unchanged.
    #[error("{reason}")]
    InvalidAnnouncement {
        /// Which rule it breaks.
        reason: String,
    },
    /// An announcement from a site the registry does not know arrived while
    /// it holds [`crate::PEERS_MAX`] peers. Refused (HTTP 400); known peers
    /// are still heard.
    #[error("this site already knows {limit} peers, its limit")]
    PeersFull {
        /// The limit reached.
        limit: usize,
    },
    /// A peer announced another key than the one pinned for it, or none
    /// (HTTP 403): someone else may be speaking under its name. The
    /// registry is unchanged.
    #[error("site {site:?} announced key {given}, but key {pinned} is pinned for it (docs/security.md)")]
    KeyMismatch {
        /// The site named.
        site: String,
        /// Its pinned key.
        pinned: String,
        /// The key announced (`none`).
        given: String,
    },
    /// The federation settings break a rule: the site does not start.
    #[error("{reason}")]
    InvalidConfig {
        /// Which rule they break.
        reason: String,
    },
    /// A grant names an unknown action or a resource its action does not
    /// take (HTTP 400).
    #[error("{0}")]
    InvalidGrant(String),
    /// A gap marker covers records its origin has not announced it trimmed
    /// (HTTP 409). An honest origin whose retention moved after its last
    /// heartbeat passes after the next one.
    #[error("{reason}")]
    GapRefused {
        /// Why the gap is refused.
        reason: String,
    },
}

impl Error {
    pub(crate) fn channel(input: &str, reason: impl Into<String>) -> Error {
        // Echo at most 80 characters of hostile input back.
        let channel: String = input.chars().take(80).collect();
        Error::InvalidChannel { channel, reason: reason.into() }
    }

    pub(crate) fn announcement(reason: impl Into<String>) -> Error {
        Error::InvalidAnnouncement { reason: reason.into() }
    }

    /// Whether the same request may succeed later unchanged: a refused gap
    /// passes once its origin has announced what it trimmed. Bad input never
    /// passes, and a full registry forgets no peer to make room.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::GapRefused { .. })
    }
}

/// Result alias for the router crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
