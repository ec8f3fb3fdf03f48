//! The query crate's one error type.

use thiserror::Error;

/// What can go wrong in a query, an object path or a model.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// A query does not parse. `at` is the byte offset of the problem in the
    /// query text.
    #[error("query syntax error at byte {at}: {message}")]
    Syntax {
        /// Byte offset into the query text.
        at: usize,
        /// What was wrong, and what was expected.
        message: String,
    },
    /// An object path does not parse or is not canonical input.
    #[error("invalid object path {path:?}: {message}")]
    Path {
        /// The path as given.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A value does not fit its declared type.
    #[error("property {property}: {message}")]
    Value {
        /// The property the value is for.
        property: String,
        /// What was wrong.
        message: String,
    },
    /// A schema change or lookup was refused.
    #[error("{0}")]
    Schema(String),
    /// A federation parameter (`scope`, `deadline_ms`, `min_sites`,
    /// `partial`) is not valid.
    #[error("{0}")]
    Param(String),
}

/// The query crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
