//! pepper's adapters: everything that owns a socket, a timer or a thread on
//! behalf of the logic crates below.
//!
//! Today this is the HTTP server (`http`), which serves `GET /v1/health`
//! over the store. The event, lease, tuple and model endpoints, the XML codec
//! and metrics arrive with the issues that build them.

mod error;
mod http;

pub use error::ApiError;
pub use http::{router, AppState};
