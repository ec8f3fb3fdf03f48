//! Federated queries: one query, asked of several sites at once, answered
//! with the merged results and a manifest of who answered.
//!
//! The tuple queries (`GET /v1/tuples`, `GET /v1/tuples/history`) and the
//! model queries (`GET /v1/namespaces/{ns}/instances`, `POST
//! /v1/namespaces/{ns}/query`) take four more parameters:
//!
//! - `scope`: `local` (the default: this site only, no manifest), `all`
//!   (this site and every peer it knows), `sites:a,b`, `region:r` (the
//!   sites announcing that region), `sample:k` (k sites: those up before
//!   suspect before down, then the lowest heartbeat latency, this site
//!   counting as up with a latency of zero), or `recorders` (the live
//!   complete monitors of the recording pattern covering `channel`, in
//!   order of preference; the answer is the first of them that answered);
//! - `deadline_ms` (default [`DEADLINE_DEFAULT_MS`], at most
//!   [`DEADLINE_MAX_MS`]): no site makes the query wait longer;
//! - `partial`: `allow` (default) answers with whatever came back; `deny`
//!   refuses, with the manifest, when fewer than `min_sites` answered;
//! - `min_sites` (default: every site asked; one for `recorders`).
//!
//! **Design.** Everything here is a pure function of its inputs: the query
//! string ([`parse_params`]), the peers as the federation knows them
//! ([`sites_in_scope`], [`recorders_in_scope`]), and the sites' answers with
//! the time ([`conclude`]: the manifest, the refusals and the [`merge`]). The
//! adapter only sends the same query with `scope=local` to each site (itself
//! included, over loopback, so every answer is made the same way) within
//! the deadline, and reports each outcome. Each item of the merged answer
//! carries the `site` that gave it. Tuples with the same (channel, field)
//! from several sites keep the newest; histories are in time order;
//! instances in path order. Every answer is a snapshot of its own site at
//! its own sequence number; there is no snapshot across sites.
//!
//! **Rejected alternative.** A cross-site snapshot (asking each site for
//! the state at one agreed time): sites have no common clock or sequence,
//! and the manifest's per-site `seq` and `data_age_ms` say what each answer
//! is instead.

mod manifest;
mod refusal;
mod scope;

pub use manifest::{conclude, merge, Outcome, SiteAnswer};
pub use refusal::{Refusal, RefusalCode};
pub use scope::{
    decode_query, encode_query, parse_params, parse_scope, recorders_in_scope, sites_in_scope, Ask, Params, Scope,
    DEADLINE_DEFAULT_MS, DEADLINE_MAX_MS, SCOPE_SITES_MAX,
};
