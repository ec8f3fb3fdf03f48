//! pepper's adapters: everything that owns a socket, a timer or a task on
//! behalf of the logic crates below, and the wire formats they speak.
//!
//! - `http`: the axum server, its routes, limits and shared state.
//! - `edge`: what every request passes first (Host, CORS, content type,
//!   body limit and timeout) and the JSON shape of every error on the way out.
//! - `server`: the connection loop (connection limit, header timeout).
//! - `lease`: granting, renewing, releasing and expiring leases.
//! - `pldb`: tuples (latest values and history), their expiry, and `pldbget`.
//! - `expiry`: the in-memory expiry index behind lease and tuple expiry.
//! - `models`: the CIM model repository's HTTP API over `pepper-query`.
//! - `dispatch`: the one task that routes each committed event to the live
//!   streams it matches.
//! - `sse`: lease streams and watches (SSE and long-poll), from catch-up on
//!   their own cursor to the live stream.
//! - `envelope`: the JSON event envelope and its mapping to log records.
//! - `xml`: the PsEPR XML envelope, read defensively from untrusted clients.
//! - `federation`: peers, heartbeats, interests, and the per-peer
//!   forwarders that carry events between sites.
//! - `fanout`: federated queries (`scope=`), merged, with a manifest.
//! - `supervisor`: recording policies, monitor announcements, and the
//!   supervisors that keep R replicas of each subtree, with backfill.
//! - `metrics`: `GET /metrics`.
//! - `error`: the one API error type and its JSON shape.
//!
//! `docs/api.md` describes every endpoint; `docs/architecture.md` follows an
//! event from the publish to a subscriber.

mod dispatch;
mod edge;
pub mod envelope;
mod error;
pub mod expiry;
mod fanout;
pub mod federation;
mod http;
pub mod lease;
mod metrics;
pub mod models;
mod params;
pub mod pldb;
mod server;
mod sse;
pub mod supervisor;
pub mod xml;

pub use dispatch::{DISPATCH_COMMANDS_MAX, HANDOFF_LAG_MAX, SUBSCRIBER_BUFFER_BYTES_MAX, SUBSCRIBER_BUFFER_EVENTS};
pub use edge::{EdgeConfig, BODY_READERS_MAX, BODY_READ_TIMEOUT, DISCARD_BYTES_MAX, EDGE_NAMES_MAX};
pub use error::ApiError;
pub use http::{router, ApiConfig, AppState, BODY_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX};
pub use server::{serve, ServerLimits, CONNECTIONS_MAX, CONNECTIONS_PER_IP_MAX, HEADER_BYTES_MAX, HEADER_READ_TIMEOUT};
pub use sse::SUBSCRIBERS_MAX;
