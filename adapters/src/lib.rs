//! pepper's adapters: everything that owns a socket, a timer or a thread on
//! behalf of the logic crates below, and the wire formats they speak.
//!
//! - `http`: the axum server; today `GET /v1/health`.
//! - `envelope`: the JSON event envelope and its mapping to log records.
//! - `xml`: the PsEPR XML envelope, read defensively from untrusted clients.
//! - `error`: the one API error type and its JSON shape.
//!
//! The event, lease and watch endpoints that use the envelopes arrive with
//! the rest of the router.

pub mod envelope;
mod error;
mod http;
pub mod lease;
mod metrics;
mod sse;
pub mod xml;

pub use error::ApiError;
pub use http::{router, ApiConfig, AppState};
