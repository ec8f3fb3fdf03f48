//! The limits every part of the API shares, in one place so the edge, the
//! connection loop and the handlers agree (each says what happens at it).
//! Limits that belong to one resource stay with it.

/// Largest request body, in bytes. Larger bodies get 413 before they are
/// parsed.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most requests handled at once. One more is answered 503 with
/// `Retry-After` at once rather than queued.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4096;

const _: () = assert!(BODY_BYTES_MAX <= pepper_storage::limits::BATCH_BYTES_MAX);

/// Default cap on a granted time to live, in seconds (PsEPR's clients asked
/// for 1800 to 3600).
pub const LEASE_TTL_MAX_S_DEFAULT: u64 = 3600;

/// Most live leases one site holds. A grant past it gets 429.
pub const LEASES_MAX: usize = 100_000;

/// Most SSE streams (lease streams and watches) open at once on a site.
/// One more is refused with 503 and `Retry-After`.
pub const SUBSCRIBERS_MAX: usize = 10_000;

/// Replica streams (`GET /v1/peer/replica`) served at once; one more gets
/// 503. Each holds a snapshot and a blocking-pool thread.
pub const REPLICA_STREAMS_MAX: usize = 4;

/// Most snapshots being read at once. Each holds a blocking-pool thread and
/// a RocksDB snapshot while its client drains it; one more is refused with
/// 503 and `Retry-After`.
pub const SNAPSHOTS_MAX: usize = 16;
