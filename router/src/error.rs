//! The router crate's one error type.

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
}

impl Error {
    pub(crate) fn channel(input: &str, reason: impl Into<String>) -> Error {
        // Echo at most 80 characters of hostile input back.
        let channel: String = input.chars().take(80).collect();
        Error::InvalidChannel { channel, reason: reason.into() }
    }
}

/// Result alias for the router crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
