//! pepper's adapters: everything that owns a socket, a timer or a task on
//! behalf of the logic crates below, and the wire formats they speak.
//!
//! Read it bottom-up; no file uses a file listed after it (checked by
//! `tests/architecture.rs`):
//!
//! - `error`, `limits`, `params`: the API's one error type, its shared
//!   limits, and query-string helpers.
//! - `wire`: the formats on the wire (JSON envelope, PsEPR XML, peer
//!   frames, tuple JSON), pure readers and writers.
//! - `auth`: principals, tokens and who the caller of a request is (the
//!   permission rule itself is `pepper_router::allows`); `quota`: each
//!   principal's publish rate and open streams.
//! - `expiry`, `metrics`, `models`, `federation`, `supervisor`: the state
//!   the site keeps in memory (expiry indexes, counters, model classes, the
//!   peer registry, recording policies and monitors).
//! - `loops::dispatch`: the task that steps the router's `Dispatch` with
//!   each committed record and pushes what it returns into the live
//!   streams' buffers.
//! - `edge`: what every request passes first (Host, CORS, content type,
//!   body limit and timeout) and the JSON shape of every error on the way
//!   out.
//! - `state`: [`AppState`], what every handler and loop can reach.
//! - `loops`: the other long-running tasks (expiry, `pldbget`, heartbeats,
//!   forwarders, the supervisor).
//! - `api`: the HTTP handlers, one module per resource, and the router.
//! - `server`: the connection loop (connection limit, header timeout).
//! - `site`: [`Site`], which opens, runs and stops all of the above.
//!
//! The decisions the tasks carry out are state machines in
//! `pepper-router` (dispatch, expiry passes, the peer registry, forwarders,
//! placement) and pure functions in `pepper-query`; the state kept in
//! memory follows the log through one fold (`state.rs`).
//!
//! `docs/api.md` describes every endpoint; `docs/architecture.md` follows an
//! event from the publish to a subscriber.

mod api;
pub mod auth;
mod edge;
mod error;
pub mod expiry;
pub mod federation;
pub mod keys;
mod limits;
pub mod loops;
mod metrics;
pub mod models;
mod params;
pub mod quota;
mod server;
mod site;
mod state;
pub mod supervisor;
pub mod tls;
pub mod wire;

pub use api::events::{EVENTS_PAGE_MAX, EVENTS_SCAN_MAX};
pub use api::router;
pub use edge::{EdgeConfig, BODY_READERS_MAX, BODY_READ_TIMEOUT, DISCARD_BYTES_MAX, EDGE_NAMES_MAX};
pub use error::ApiError;
pub use limits::{
    BODY_BYTES_MAX, LEASES_MAX, LEASE_TTL_MAX_S_DEFAULT, REQUESTS_IN_FLIGHT_MAX, SNAPSHOTS_MAX, SUBSCRIBERS_MAX,
};
pub use loops::dispatch::{
    DISPATCH_COMMANDS_MAX, HANDOFF_LAG_MAX, SUBSCRIBER_BUFFER_BYTES_MAX, SUBSCRIBER_BUFFER_EVENTS,
};
pub use server::{serve, ServerLimits, CONNECTIONS_MAX, CONNECTIONS_PER_IP_MAX, HEADER_BYTES_MAX, HEADER_READ_TIMEOUT};
pub use site::{Site, SiteConfig, Stopper, SHUTDOWN_GRACE};
pub use state::{ApiConfig, AppState};
pub use tls::{Tls, TlsFiles};
pub use wire::{envelope, xml};
