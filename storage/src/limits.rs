//! Named limits of the store.
//!
//! Every size, count and queue in the storage crate has a constant here with
//! a line that says what happens at the limit. Input over a limit is rejected
//! with [`crate::Error::TooLarge`] or [`crate::Error::InvalidInput`] before
//! anything is written; queues block the caller (backpressure) rather than
//! grow.

/// Largest encoded record (header, body and crc), in bytes. Larger records are
/// rejected with `TooLarge`.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// Longest channel name, in bytes. Longer names are rejected. The router's
/// limit, so a channel the store takes is one the router can parse.
pub const CHANNEL_BYTES_MAX: usize = pepper_router::CHANNEL_BYTES_MAX;

/// Longest tuple field name, in bytes. Longer names are rejected.
pub const FIELD_BYTES_MAX: usize = 256;

/// Longest event type or lease type filter entry, in bytes.
pub const TYPE_BYTES_MAX: usize = 256;

/// Longest service or instance name in an event's `from`/`to` or a tuple's
/// source, in bytes.
pub const PARTY_BYTES_MAX: usize = 256;

/// Longest event id, lease id or anycast group name, in bytes.
pub const ID_BYTES_MAX: usize = 128;

/// Longest origin site name, in bytes (it is length-prefixed by one byte).
pub const SITE_BYTES_MAX: usize = 255;

/// Most payload types one lease may filter on.
pub const LEASE_TYPES_MAX: usize = 64;

/// Longest document key, in bytes.
pub const DOC_KEY_BYTES_MAX: usize = 1024;

/// Most records in one `append` call. Larger batches are rejected with
/// `TooLarge`; callers split them.
pub const BATCH_RECORDS_MAX: usize = 1024;

/// Most encoded bytes in one `append` call. Larger batches are rejected.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most records the writer packs into one group commit (one batch, one
/// WAL sync). Further requests wait for the next group.
pub const GROUP_RECORDS_MAX: usize = 8192;

/// Most encoded record bytes the writer packs into one group commit.
pub const GROUP_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest batch buffer the writer keeps from one group for the next, in
/// bytes. It is a cache: a group that grew the buffer past it frees it, and
/// the next group allocates again.
pub const BATCH_BUFFER_KEPT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most anycast groups live at once on a site. A lease grant that would
/// start one more is refused with `TooLarge`; joining an existing group is
/// always possible.
pub const ANYCAST_GROUPS_MAX: usize = 64;

/// Room kept free in every distribution-`one` event for the lease ids the
/// writer adds at commit (one per group, each at most [`ID_BYTES_MAX`]
/// bytes plus its length prefix, and the list's own prefix). Such an event's
/// encoding may be at most `RECORD_BYTES_MAX - ASSIGNED_BYTES_RESERVE`.
pub const ASSIGNED_BYTES_RESERVE: usize = ANYCAST_GROUPS_MAX * (ID_BYTES_MAX + 2) + 3;

/// Most append requests queued for the writer. At the limit, `append` waits
/// (backpressure); it never drops or grows.
pub const WRITE_QUEUE_REQUESTS_MAX: usize = 4096;

/// Most log records one feed disk read scans before it yields what matched.
pub const FEED_CHUNK_RECORDS_MAX: u64 = 4096;

/// About the most bytes of encoded records one log scan (a feed chunk, a
/// page of events) returns; it stops after the record that crosses it, so
/// a scan always makes progress.
pub const SCAN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most rows one read (`latest`, `history`, `docs`) returns; callers page
/// with a cursor.
pub const READ_ROWS_MAX: usize = 10_000;

/// Default for the most history iterator steps one retention pass takes; the
/// pass then stops at a tuple boundary and the next one resumes there.
pub const HISTORY_TRIM_STEPS_MAX: u64 = 1_000_000;

/// Most tombstones one retention pass removes; the rest wait a pass.
pub const TOMBSTONE_TRIMS_MAX: usize = 10_000;

/// Most tombstones one retention pass looks at.
pub const TOMBSTONE_SCAN_MAX: u64 = 1_000_000;

/// Most log records one retention pass scans to decide a new floor.
pub const LOG_TRIM_SCAN_MAX: u64 = 1_000_000;

const _: () = assert!(BATCH_RECORDS_MAX <= GROUP_RECORDS_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= GROUP_BYTES_MAX);
const _: () = assert!(RECORD_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(ASSIGNED_BYTES_RESERVE < RECORD_BYTES_MAX / 8);
const _: () = assert!(SITE_BYTES_MAX <= u8::MAX as usize);

/// Origin marks one monitor record may carry: one per site this site ever
/// received from (the federation knows at most 256 peers at once).
pub const MONITOR_MARKS_MAX: usize = 16_384;

/// Bytes of a monitor record's reason.
pub const MONITOR_REASON_BYTES_MAX: usize = 1024;

/// Updates an importing monitor holds in memory until its backfill
/// completes. Past it the backfill fails (and is retried): the updates
/// cannot be dropped without a hole in the replica.
pub const MONITOR_PENDING_MAX: usize = 200_000;

/// Bytes (about) of the updates an importing monitor holds; they are
/// written in its completion's batch, so this also bounds that batch.
pub const MONITOR_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Monitors one site runs at once (recording patterns in its policy).
pub const MONITORS_MAX: usize = 1024;
