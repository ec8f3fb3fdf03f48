//! pepper's router: the PsEPR half of pepper.
//!
//! This crate will hold channel-name parsing and validation, leases (grant,
//! renew, release, server-side expiry), the trie of channel segments that
//! maps each log record to the leases it matches, distribution `one` over
//! anycast groups, and the per-peer forwarders that carry records between
//! sites. It reads the log through `pepper-storage`'s change feed and writes
//! lease records through its group commit; it owns no storage of its own.
//!
//! The logic is to be written as state machines driven by `step(input)` and
//! `tick(now)`, so multi-site scenarios run in one test with a fake clock; the
//! adapters own sockets, timers and threads.
//!
//! Nothing is implemented here yet: the router arrives with the issue that
//! builds channels, events and leases on one site.
