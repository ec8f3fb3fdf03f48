//! Records: the unit of pepper's one ordered log.
//!
//! Every state change in pepper is a [`Record`] appended to the log. A record
//! has a sequence number, a time, the site it originated on, a kind and a
//! body. On disk it is framed by hand and its body is encoded with postcard:
//!
//! ```text
//! offset  size  field
//! 0       1     format version (RECORD_VERSION = 1)
//! 1       1     kind (Kind as u8)
//! 2       8     seq, u64 little-endian
//! 10      8     time, microseconds since the Unix epoch, u64 little-endian
//! 18      1     origin length n (<= 255)
//! 19      n     origin site name, UTF-8
//! 19+n    m     body, postcard encoding of the kind's struct
//! 19+n+m  4     crc32 (crc32fast) over bytes [0, 19+n+m), little-endian
//! ```
//!
//! The crc covers the sequence number, so a record that ends up under the
//! wrong key is caught as well as flipped bits. It is checked on every decode:
//! a mismatch is [`Error::Corruption`], never data.
//!
//! Versioning: the version byte says how the frame and the body of this kind
//! are laid out. A new kind takes a new kind byte and leaves old records
//! untouched. A changed body layout for an existing kind takes a new version
//! byte; decoders keep reading every older version, so old data is never
//! rewritten. An unknown version or kind is reported, not guessed at.
//!
//! Rejected alternative: a self-describing format (JSON, or serde with field
//! names) would let fields be added without versions, but it costs two to
//! five times the bytes and the decode time on the feed's hot path.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The record frame version of every kind whose body never changed.
pub const RECORD_VERSION: u8 = 1;

/// Bytes before the origin name: version, kind, seq, time, origin length.
pub(crate) const HEADER_BYTES: usize = 19;
/// Bytes of the trailing crc.
pub(crate) const CRC_BYTES: usize = 4;

/// A service and instance that sent an event or set a tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Party {
    /// The sender's service name (its authenticated identity).
    pub service: String,
    /// Which replica of the service sent it.
    pub instance: String,
}

/// The receivers an event is narrowed to. `None` means any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Only leases held by this service receive the event.
    pub service: Option<String>,
    /// Only leases held by this instance receive the event.
    pub instance: Option<String>,
}

impl Target {
    /// Whether a lease held by `holder` may receive the event: each part of
    /// the target that is given must equal the holder's.
    pub fn admits(&self, holder: &Party) -> bool {
        self.service.as_ref().is_none_or(|s| *s == holder.service)
            && self.instance.as_ref().is_none_or(|i| *i == holder.instance)
    }
}

/// How many matching receivers get an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Every matching lease.
    #[default]
    All,
    /// Exactly one live lease of each anycast group.
    One,
}

/// A published event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event id: client-chosen for idempotent retries, or server-assigned.
    /// A retry of an id logged within the dedupe window is answered with the
    /// original sequence number instead of being logged again. Empty means
    /// no id: the event is never deduplicated.
    pub id: String,
    /// The channel it was published on.
    pub channel: String,
    /// The payload type: a short name or a namespace URI.
    pub event_type: String,
    /// Who sent it.
    pub from: Party,
    /// Who it is for.
    pub to: Target,
    /// All matching receivers, or one.
    pub distribution: Distribution,
    /// The payload, opaque to the store.
    pub payload: Vec<u8>,
    /// For distribution `one`: the leases the writer chose at commit, one
    /// per anycast group with a live member that matches the event, in
    /// group order. Callers leave it empty; the writer fills it in. Stored
    /// so that live delivery and every later catch-up agree on the receiver.
    /// Added in record version 2 of events; version 1 events have none.
    pub assigned: Vec<String>,
    /// The tuple this event also sets, for a PsEPR attribute event: the
    /// tuple (channel, field) takes `value`, with `from` as its source.
    /// Added in record version 3 of events; older events set none.
    pub tuple: Option<TupleUpdate>,
    /// The principal that published it, stamped by its origin site when
    /// auth is on there (`None` with auth off). Clients cannot set it; a
    /// site takes it from another only over the authenticated peer
    /// endpoint. Added in record version 5 of events; older events have none.
    pub principal: Option<String>,
}

/// The tuple an attribute event sets on its own channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleUpdate {
    /// The field name.
    pub field: String,
    /// The new value.
    pub value: String,
    /// When the value expires, in microseconds since the Unix epoch.
    pub expires_at_us: Option<u64>,
    /// Whether the site that logged this record materialized the tuple.
    /// The writer decides it at commit: a site records a channel under a
    /// recording policy only while it runs a complete monitor for it (see
    /// `docs/supervisors.md`), and a replica that takes an update from a
    /// backfill instead leaves the event unrecorded. The sidecar itself
    /// stays, so an origin that does not record still forwards the update
    /// to the sites that do. Callers leave it `true`; the writer overwrites it.
    /// Added in record version 4 of events; older events were all recorded.
    pub recorded: bool,
}

/// A tuple sidecar as record version 3 of events laid it out.
#[derive(Deserialize)]
struct TupleUpdateV1 {
    field: String,
    value: String,
    expires_at_us: Option<u64>,
}

/// The fields every version of an event starts with (all of version 1).
/// Later versions only append: `assigned` in version 2, the tuple sidecar
/// in 3 (`recorded` added to it in 4), `principal` in 5. Postcard lays a
/// struct out as its fields in order, so an older event decodes as this
/// followed by what its version appended.
#[derive(Deserialize)]
struct EventV1 {
    id: String,
    channel: String,
    event_type: String,
    from: Party,
    to: Target,
    distribution: Distribution,
    payload: Vec<u8>,
}

impl EventV1 {
    /// The event, with what later versions added.
    fn with(self, assigned: Vec<String>, tuple: Option<TupleUpdate>, principal: Option<String>) -> Event {
        let EventV1 { id, channel, event_type, from, to, distribution, payload } = self;
        Event { id, channel, event_type, from, to, distribution, payload, assigned, tuple, principal }
    }
}

impl From<TupleUpdateV1> for TupleUpdate {
    /// Events before version 4 were all recorded.
    fn from(t: TupleUpdateV1) -> TupleUpdate {
        TupleUpdate { field: t.field, value: t.value, expires_at_us: t.expires_at_us, recorded: true }
    }
}

/// Sets the latest value of the tuple (channel, field) and appends a history row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleSet {
    /// The channel the tuple lives on.
    pub channel: String,
    /// The field name.
    pub field: String,
    /// The new value.
    pub value: String,
    /// When the value expires, in microseconds since the Unix epoch.
    pub expires_at_us: Option<u64>,
    /// Who set it.
    pub source: Party,
}

/// A tuple row copied from another replica by a monitor's backfill, or an
/// update a monitor took in while it backfilled: it carries the time the
/// value was set, not the time it was copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleImport {
    /// The channel the tuple lives on.
    pub channel: String,
    /// The field name.
    pub field: String,
    /// The value.
    pub value: String,
    /// When the value was set, in microseconds since the Unix epoch.
    pub time_us: u64,
    /// When the value expires, in microseconds since the Unix epoch.
    pub expires_at_us: Option<u64>,
    /// Who set it.
    pub source: Party,
    /// Writes a history row (keyed by this record's seq).
    pub history: bool,
    /// Sets the tuple's latest value.
    pub latest: bool,
}

/// The state of a monitor: a site recording one channel subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MonitorState {
    /// Started: copying the subtree from a live replica. Its rows are not
    /// complete yet, and live updates wait in memory until it completes.
    Importing,
    /// Recording every update of the subtree.
    Complete,
    /// Stopped: the subtree's rows are gone from this site.
    Stopped,
}

impl MonitorState {
    /// The state's name in the API and in announcements.
    pub fn name(self) -> &'static str {
        match self {
            MonitorState::Importing => "importing",
            MonitorState::Complete => "complete",
            MonitorState::Stopped => "stopped",
        }
    }
}

/// A monitor of a channel subtree changed state on this site. `Importing`
/// and `Stopped` both remove every tuple, history row and tombstone under
/// the pattern, so a replica never mixes rows of two recording spans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorChange {
    /// The recording policy's pattern: a channel prefix ending in `/`.
    pub pattern: String,
    /// The new state.
    pub state: MonitorState,
    /// For `Complete`: the replica the backfill copied from (empty: none).
    pub source: String,
    /// For `Complete`: per origin site, the highest origin sequence number
    /// the copied rows include. A received update at or below its origin's
    /// mark is already in them and is not recorded again.
    pub marks: Vec<(String, u64)>,
    /// Why the state changed, for people.
    pub reason: String,
}

/// Grants a new lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Lease id, unique among live leases.
    pub id: String,
    /// The channel pattern the lease covers (with its subtree).
    pub pattern: String,
    /// Payload types the lease wants; empty means all.
    pub types: Vec<String>,
    /// The granted time to live, in milliseconds.
    pub ttl_ms: u64,
    /// When the lease lapses unless renewed, in microseconds since the epoch.
    pub expires_at_us: u64,
    /// Anycast group for distribution `one`.
    pub group: Option<String>,
    /// The sequence number the lease's stream starts from.
    pub from_seq: Option<u64>,
    /// Who holds the lease, matched against an event's `to` (added in
    /// record version 2 of this kind; version 1 grants have an empty holder).
    pub holder: Party,
    /// The principal that was granted it, when auth is on: only it (or the
    /// admin) may read, renew or release the lease. Added in record
    /// version 3 of this kind; older grants have none.
    pub owner: Option<String>,
}

/// The fields every version of a lease grant starts with (all of version
/// one). Later versions only append, `holder` in version 2 and `owner` in
/// version 3, and postcard lays a struct out as its fields in order, so an
/// older grant decodes as this followed by what its version appended.
#[derive(Deserialize)]
struct LeaseGrantV1 {
    id: String,
    pattern: String,
    types: Vec<String>,
    ttl_ms: u64,
    expires_at_us: u64,
    group: Option<String>,
    from_seq: Option<u64>,
}

impl LeaseGrantV1 {
    /// The grant, with what later versions added.
    fn with(self, holder: Party, owner: Option<String>) -> LeaseGrant {
        let LeaseGrantV1 { id, pattern, types, ttl_ms, expires_at_us, group, from_seq } = self;
        LeaseGrant { id, pattern, types, ttl_ms, expires_at_us, group, from_seq, holder, owner }
    }
}

/// Extends a live lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenew {
    /// The lease.
    pub id: String,
    /// The newly granted time to live, in milliseconds.
    pub ttl_ms: u64,
    /// The new expiry, in microseconds since the epoch.
    pub expires_at_us: u64,
}

/// Ends a lease, by release or by expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnd {
    /// The lease.
    pub id: String,
}

/// Puts a keyed document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocPut {
    /// The document key.
    pub key: String,
    /// The document, opaque to the store.
    pub value: Vec<u8>,
}

/// Ends a tuple: it leaves the latest values (its history stays). Used for
/// `tuple.expire`, written by the site when the tuple's expiry passed, and
/// `tuple.delete`, asked for by a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleEnd {
    /// The channel the tuple lives on.
    pub channel: String,
    /// The field name.
    pub field: String,
}

/// Defines or replaces a model class (its definition is opaque JSON to the
/// store; the query layer checks it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelClass {
    /// The namespace, such as `root/cimv2`.
    pub namespace: String,
    /// The class name as declared.
    pub name: String,
    /// The class definition, JSON.
    pub definition: Vec<u8>,
}

/// Creates or changes a model instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPut {
    /// The namespace.
    pub namespace: String,
    /// The instance's class as declared.
    pub class: String,
    /// Its canonical object path.
    pub path: String,
    /// Its path identity (the case-insensitive form), the storage key.
    pub identity: String,
    /// Its properties, JSON.
    pub properties: Vec<u8>,
    /// The identities its reference properties point at: each must exist.
    pub refs: Vec<String>,
    /// True to create (the instance must not exist), false to change (it
    /// must).
    pub create: bool,
}

/// Deletes a model instance; no association may refer to it by then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDelete {
    /// The namespace.
    pub namespace: String,
    /// The instance's path identity.
    pub identity: String,
}

/// Deletes a keyed document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocDelete {
    /// The document key.
    pub key: String,
}

/// What a record says happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// An event was published.
    Event(Event),
    /// A tuple was set.
    TupleSet(TupleSet),
    /// A lease was granted.
    LeaseGrant(LeaseGrant),
    /// A lease was renewed.
    LeaseRenew(LeaseRenew),
    /// A lease was released by its holder.
    LeaseRelease(LeaseEnd),
    /// A lease lapsed and the server expired it.
    LeaseExpire(LeaseEnd),
    /// A document was put.
    DocPut(DocPut),
    /// A document was deleted.
    DocDelete(DocDelete),
    /// A tuple's expiry passed and the site ended it.
    TupleExpire(TupleEnd),
    /// A client deleted a tuple.
    TupleDelete(TupleEnd),
    /// A model class was defined.
    ModelClass(ModelClass),
    /// A model instance was created or changed.
    ModelPut(ModelPut),
    /// A model instance was deleted.
    ModelDelete(ModelDelete),
    /// A tuple row was copied in by a monitor's backfill.
    TupleImport(TupleImport),
    /// A monitor changed state.
    Monitor(MonitorChange),
}

/// A write of a tuple's latest value, from a tuple-set record or an
/// attribute event.
#[derive(Clone, Copy, Debug)]
pub struct TupleWrite<'a> {
    /// The tuple's channel.
    pub channel: &'a str,
    /// The tuple's field.
    pub field: &'a str,
    /// The new value.
    pub value: &'a str,
    /// When it expires.
    pub expires_at_us: Option<u64>,
    /// Who set it.
    pub source: &'a Party,
}

/// The kind of a record, as stored in its second byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// [`Body::Event`].
    Event = 1,
    /// [`Body::TupleSet`].
    TupleSet = 2,
    /// [`Body::LeaseGrant`].
    LeaseGrant = 3,
    /// [`Body::LeaseRenew`].
    LeaseRenew = 4,
    /// [`Body::LeaseRelease`].
    LeaseRelease = 5,
    /// [`Body::LeaseExpire`].
    LeaseExpire = 6,
    /// [`Body::DocPut`].
    DocPut = 7,
    /// [`Body::DocDelete`].
    DocDelete = 8,
    /// [`Body::TupleExpire`].
    TupleExpire = 9,
    /// [`Body::TupleDelete`].
    TupleDelete = 10,
    /// [`Body::ModelClass`].
    ModelClass = 11,
    /// [`Body::ModelPut`].
    ModelPut = 12,
    /// [`Body::ModelDelete`].
    ModelDelete = 13,
    /// [`Body::TupleImport`].
    TupleImport = 14,
    /// [`Body::Monitor`].
    Monitor = 15,
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 15] = [
        Kind::Event,
        Kind::TupleSet,
        Kind::LeaseGrant,
        Kind::LeaseRenew,
        Kind::LeaseRelease,
        Kind::LeaseExpire,
        Kind::DocPut,
        Kind::DocDelete,
        Kind::TupleExpire,
        Kind::TupleDelete,
        Kind::ModelClass,
        Kind::ModelPut,
        Kind::ModelDelete,
        Kind::TupleImport,
        Kind::Monitor,
    ];

    /// The stable name of the kind, as used in feed type filters.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::TupleSet => "tuple.set",
            Kind::LeaseGrant => "lease.grant",
            Kind::LeaseRenew => "lease.renew",
            Kind::LeaseRelease => "lease.release",
            Kind::LeaseExpire => "lease.expire",
            Kind::DocPut => "doc.put",
            Kind::DocDelete => "doc.delete",
            Kind::TupleExpire => "tuple.expire",
            Kind::TupleDelete => "tuple.delete",
            Kind::ModelClass => "model.class",
            Kind::ModelPut => "model.put",
            Kind::ModelDelete => "model.delete",
            Kind::TupleImport => "tuple.import",
            Kind::Monitor => "monitor",
        }
    }

    /// The record version this build writes for the kind: the newest layout
    /// of its body. Decoders read every version up to it.
    pub fn version(self) -> u8 {
        match self {
            Kind::Event => 5,
            Kind::LeaseGrant => 3,
            _ => RECORD_VERSION,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

impl Body {
    /// The record kind of this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Event(_) => Kind::Event,
            Body::TupleSet(_) => Kind::TupleSet,
            Body::LeaseGrant(_) => Kind::LeaseGrant,
            Body::LeaseRenew(_) => Kind::LeaseRenew,
            Body::LeaseRelease(_) => Kind::LeaseRelease,
            Body::LeaseExpire(_) => Kind::LeaseExpire,
            Body::DocPut(_) => Kind::DocPut,
            Body::DocDelete(_) => Kind::DocDelete,
            Body::TupleExpire(_) => Kind::TupleExpire,
            Body::TupleDelete(_) => Kind::TupleDelete,
            Body::ModelClass(_) => Kind::ModelClass,
            Body::ModelPut(_) => Kind::ModelPut,
            Body::ModelDelete(_) => Kind::ModelDelete,
            Body::TupleImport(_) => Kind::TupleImport,
            Body::Monitor(_) => Kind::Monitor,
        }
    }

    /// The tuple this record sets, if any: a tuple-set record, or an
    /// attribute event the site recorded. (A [`Body::TupleImport`] is not a
    /// write in this sense: it carries its own time and says which rows it
    /// sets.)
    pub fn tuple_write(&self) -> Option<TupleWrite<'_>> {
        match self {
            Body::TupleSet(t) => Some(TupleWrite {
                channel: &t.channel,
                field: &t.field,
                value: &t.value,
                expires_at_us: t.expires_at_us,
                source: &t.source,
            }),
            Body::Event(Event { channel, from, tuple: Some(t), .. }) if t.recorded => Some(TupleWrite {
                channel,
                field: &t.field,
                value: &t.value,
                expires_at_us: t.expires_at_us,
                source: from,
            }),
            _ => None,
        }
    }

    /// The channel the record is about, if it has one. A lease's channel is
    /// its pattern.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Body::Event(e) => Some(&e.channel),
            Body::TupleSet(t) => Some(&t.channel),
            Body::LeaseGrant(g) => Some(&g.pattern),
            Body::TupleExpire(t) | Body::TupleDelete(t) => Some(&t.channel),
            Body::TupleImport(t) => Some(&t.channel),
            Body::Monitor(m) => Some(&m.pattern),
            _ => None,
        }
    }

    /// The type a feed filter matches: an event's payload type, or the kind
    /// name (see [`Kind::name`]) for every other record.
    pub fn type_name(&self) -> &str {
        match self {
            Body::Event(e) => &e.event_type,
            other => other.kind().name(),
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let res = match self {
            Body::Event(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::TupleSet(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::LeaseGrant(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::LeaseRenew(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::LeaseRelease(b) | Body::LeaseExpire(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::DocPut(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::DocDelete(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::TupleExpire(b) | Body::TupleDelete(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::ModelClass(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::ModelPut(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::ModelDelete(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::TupleImport(b) => postcard::to_io(b, &mut *out).map(|_| ()),
            Body::Monitor(b) => postcard::to_io(b, &mut *out).map(|_| ()),
        };
        res.map_err(|e| Error::invalid("record body", e.to_string()))
    }

    fn decode(version: u8, kind: Kind, bytes: &[u8]) -> std::result::Result<Body, postcard::Error> {
        fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> std::result::Result<T, postcard::Error> {
            let (value, rest) = postcard::take_from_bytes(bytes)?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(postcard::Error::DeserializeBadEncoding)
            }
        }
        Ok(match kind {
            Kind::Event if version == 1 => Body::Event(whole::<EventV1>(bytes)?.with(Vec::new(), None, None)),
            Kind::Event if version == 2 => {
                let (event, assigned) = whole::<(EventV1, Vec<String>)>(bytes)?;
                Body::Event(event.with(assigned, None, None))
            }
            Kind::Event if version == 3 => {
                let (event, assigned, tuple) = whole::<(EventV1, Vec<String>, Option<TupleUpdateV1>)>(bytes)?;
                Body::Event(event.with(assigned, tuple.map(TupleUpdate::from), None))
            }
            Kind::Event if version == 4 => {
                let (event, assigned, tuple) = whole::<(EventV1, Vec<String>, Option<TupleUpdate>)>(bytes)?;
                Body::Event(event.with(assigned, tuple, None))
            }
            Kind::Event => Body::Event(whole(bytes)?),
            Kind::TupleSet => Body::TupleSet(whole(bytes)?),
            Kind::LeaseGrant if version == 1 => {
                Body::LeaseGrant(whole::<LeaseGrantV1>(bytes)?.with(Party::default(), None))
            }
            Kind::LeaseGrant if version == 2 => {
                let (grant, holder) = whole::<(LeaseGrantV1, Party)>(bytes)?;
                Body::LeaseGrant(grant.with(holder, None))
            }
            Kind::LeaseGrant => Body::LeaseGrant(whole(bytes)?),
            Kind::LeaseRenew => Body::LeaseRenew(whole(bytes)?),
            Kind::LeaseRelease => Body::LeaseRelease(whole(bytes)?),
            Kind::LeaseExpire => Body::LeaseExpire(whole(bytes)?),
            Kind::DocPut => Body::DocPut(whole(bytes)?),
            Kind::DocDelete => Body::DocDelete(whole(bytes)?),
            Kind::TupleExpire => Body::TupleExpire(whole(bytes)?),
            Kind::TupleDelete => Body::TupleDelete(whole(bytes)?),
            Kind::ModelClass => Body::ModelClass(whole(bytes)?),
            Kind::ModelPut => Body::ModelPut(whole(bytes)?),
            Kind::ModelDelete => Body::ModelDelete(whole(bytes)?),
            Kind::TupleImport => Body::TupleImport(whole(bytes)?),
            Kind::Monitor => Body::Monitor(whole(bytes)?),
        })
    }
}

/// One entry of the log, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the log: strictly increasing, never reused.
    pub seq: u64,
    /// When the origin site committed it, in microseconds since the Unix
    /// epoch. Non-decreasing along the log of the site that wrote it.
    pub time_us: u64,
    /// The site the record originated on.
    pub origin: String,
    /// What happened.
    pub body: Body,
}

impl Record {
    /// The record's kind.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Encodes the record with its crc.
    ///
    /// # Errors
    /// `InvalidInput` if the origin is too long, `TooLarge` if the encoding
    /// exceeds [`crate::limits::RECORD_BYTES_MAX`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        self.body.encode_into(&mut body)?;
        frame(self.seq, self.time_us, &self.origin, self.kind(), &body)
    }

    /// Decodes a record and checks its crc, version and kind.
    ///
    /// # Errors
    /// `Corruption` on any mismatch; the bytes are never returned as data.
    pub fn decode(bytes: &[u8]) -> Result<Record> {
        let at = || peek_seq(bytes).map_or_else(|| "record".to_string(), |s| format!("seq {s}"));
        if bytes.len() < HEADER_BYTES + CRC_BYTES {
            return Err(Error::corruption(at(), format!("record is {} bytes, shorter than its header", bytes.len())));
        }
        let (data, crc_bytes) = bytes.split_at(bytes.len() - CRC_BYTES);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32fast::hash(data);
        if stored != computed {
            return Err(Error::corruption(
                at(),
                format!("crc mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let version = data[0];
        let kind = Kind::from_byte(data[1])
            .ok_or_else(|| Error::corruption(at(), format!("unknown record kind {}", data[1])))?;
        if version == 0 || version > kind.version() {
            return Err(Error::corruption(at(), format!("unknown record version {version} for {}", kind.name())));
        }
        let seq = read_u64(&data[2..10]);
        let time_us = read_u64(&data[10..18]);
        let origin_len = data[18] as usize;
        let Some(origin) = data.get(HEADER_BYTES..HEADER_BYTES + origin_len) else {
            return Err(Error::corruption(at(), "origin runs past the end of the record"));
        };
        let origin =
            std::str::from_utf8(origin).map_err(|_| Error::corruption(at(), "origin is not UTF-8"))?.to_string();
        let body = Body::decode(version, kind, &data[HEADER_BYTES + origin_len..])
            .map_err(|e| Error::corruption(at(), format!("{} body does not decode: {e}", kind.name())))?;
        Ok(Record { seq, time_us, origin, body })
    }
}

/// Frames an already encoded body into a record with its crc.
pub(crate) fn frame(seq: u64, time_us: u64, origin: &str, kind: Kind, body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    frame_into(&mut out, seq, time_us, origin, kind, body)?;
    Ok(out)
}

/// Appends the framed record to `out` (the writer's batch buffer) and
/// returns its length. On error nothing is appended.
pub(crate) fn frame_into(
    out: &mut Vec<u8>,
    seq: u64,
    time_us: u64,
    origin: &str,
    kind: Kind,
    body: &[u8],
) -> Result<usize> {
    if origin.len() > crate::limits::SITE_BYTES_MAX {
        return Err(Error::invalid(
            "origin",
            format!("site name is longer than {} bytes", crate::limits::SITE_BYTES_MAX),
        ));
    }
    let len = HEADER_BYTES + origin.len() + body.len() + CRC_BYTES;
    if len > crate::limits::RECORD_BYTES_MAX {
        return Err(Error::TooLarge { what: "record", size: len, max: crate::limits::RECORD_BYTES_MAX });
    }
    let start = out.len();
    out.reserve(len);
    out.push(kind.version());
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_us.to_le_bytes());
    // Cast is exact: checked against SITE_BYTES_MAX (<= 255) above.
    out.push(origin.len() as u8);
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// The time field of an encoded record, without checking its crc. Used by
/// retention to find the age cut without decoding every body.
pub(crate) fn peek_time_us(bytes: &[u8]) -> Option<u64> {
    bytes.get(10..18).map(read_u64)
}

fn peek_seq(bytes: &[u8]) -> Option<u64> {
    bytes.get(2..10).map(read_u64)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Body> {
        vec![
            Body::Event(Event {
                id: "e1".into(),
                channel: "/example.com/a/".into(),
                event_type: "http://psepr.org/xs/payload/attribute".into(),
                from: Party { service: "svc".into(), instance: "i1".into() },
                to: Target { service: Some("s".into()), instance: None },
                distribution: Distribution::One,
                payload: b"<x>1</x>".to_vec(),
                assigned: vec!["l1".into()],
                principal: None,
                tuple: Some(TupleUpdate {
                    field: "load".into(),
                    value: "0.5".into(),
                    expires_at_us: Some(9),
                    recorded: true,
                }),
            }),
            Body::TupleSet(TupleSet {
                channel: "/example.com/node/h1/".into(),
                field: "load".into(),
                value: "0.5".into(),
                expires_at_us: Some(123),
                source: Party::default(),
            }),
            Body::LeaseGrant(LeaseGrant {
                id: "l1".into(),
                pattern: "/example.com/*/".into(),
                types: vec!["a".into(), "b".into()],
                ttl_ms: 30_000,
                expires_at_us: 99,
                group: Some("g".into()),
                from_seq: Some(5),
                holder: Party { service: "svc".into(), instance: "i".into() },
                owner: None,
            }),
            Body::LeaseRenew(LeaseRenew { id: "l1".into(), ttl_ms: 10, expires_at_us: 100 }),
            Body::LeaseRelease(LeaseEnd { id: "l1".into() }),
            Body::LeaseExpire(LeaseEnd { id: "l2".into() }),
            Body::DocPut(DocPut { key: "root/cimv2:X.Name=\"a\"".into(), value: vec![0, 1, 2, 255] }),
            Body::DocDelete(DocDelete { key: "k".into() }),
            Body::TupleExpire(TupleEnd { channel: "/example.com/node/h1/".into(), field: "load".into() }),
            Body::TupleDelete(TupleEnd { channel: "/example.com/node/h1/".into(), field: "mem".into() }),
            Body::ModelClass(ModelClass {
                namespace: "root/cimv2".into(),
                name: "X".into(),
                definition: b"{}".to_vec(),
            }),
            Body::ModelPut(ModelPut {
                namespace: "root/cimv2".into(),
                class: "X".into(),
                path: "root/cimv2:X.K=1".into(),
                identity: "root/cimv2:x.k=1".into(),
                properties: b"{\"K\":1}".to_vec(),
                refs: vec!["root/cimv2:y.k=2".into()],
                create: true,
            }),
            Body::ModelDelete(ModelDelete { namespace: "root/cimv2".into(), identity: "root/cimv2:x.k=1".into() }),
            Body::TupleImport(TupleImport {
                channel: "/example.com/node/h1/".into(),
                field: "load".into(),
                value: "0.7".into(),
                time_us: 1_699_000_000_000_000,
                expires_at_us: None,
                source: Party { service: "agent".into(), instance: "h1".into() },
                history: true,
                latest: false,
            }),
            Body::Monitor(MonitorChange {
                pattern: "/example.com/node/".into(),
                state: MonitorState::Complete,
                source: "site-b".into(),
                marks: vec![("site-a".into(), 17), ("site-b".into(), 40)],
                reason: "backfilled".into(),
            }),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for (i, body) in samples().into_iter().enumerate() {
            let rec = Record { seq: 1 + i as u64, time_us: 1_700_000_000_000_000, origin: "site-a".into(), body };
            let bytes = rec.encode().expect("encode");
            assert_eq!(bytes[0], rec.kind().version());
            assert_eq!(bytes[1], rec.kind() as u8);
            assert_eq!(Record::decode(&bytes).expect("decode"), rec);
        }
    }

    /// The example in docs/storage-format.md. If this changes, old data no
    /// longer reads: bump RECORD_VERSION instead.
    #[test]
    fn encoding_is_stable() {
        let rec = Record {
            seq: 1,
            time_us: 1_700_000_000_000_000,
            origin: "s1".into(),
            body: Body::TupleSet(TupleSet {
                channel: "/a/".into(),
                field: "f".into(),
                value: "1".into(),
                expires_at_us: None,
                source: Party::default(),
            }),
        };
        let hex: Vec<String> = rec.encode().expect("encode").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "01 02 01 00 00 00 00 00 00 00 00 40 1e 18 24 0a 06 00 02 73 31 03 2f 61 2f 01 66 01 31 00 00 00 50 14 1b c1"
        );
    }

    /// `bytes` relabelled as record version `version`, with a valid crc.
    fn with_version(mut bytes: Vec<u8>, version: u8) -> Vec<u8> {
        bytes[0] = version;
        let n = bytes.len() - CRC_BYTES;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// A lease grant logged before `holder` existed still reads, with an
    /// empty holder.
    #[test]
    fn version_1_lease_grants_still_decode() {
        #[derive(Serialize)]
        struct V1<'a> {
            id: &'a str,
            pattern: &'a str,
            types: Vec<&'a str>,
            ttl_ms: u64,
            expires_at_us: u64,
            group: Option<&'a str>,
            from_seq: Option<u64>,
        }
        let v1 = V1 {
            id: "l",
            pattern: "/a/",
            types: vec!["t"],
            ttl_ms: 5,
            expires_at_us: 6,
            group: None,
            from_seq: Some(2),
        };
        let mut body = Vec::new();
        postcard::to_io(&v1, &mut body).expect("encode");
        let bytes = with_version(frame(9, 1, "s", Kind::LeaseGrant, &body).expect("frame"), 1);
        let Body::LeaseGrant(g) = Record::decode(&bytes).expect("v1 decodes").body else { panic!("kind") };
        assert_eq!((g.id.as_str(), g.ttl_ms, g.from_seq, g.holder), ("l", 5, Some(2), Party::default()));
        // Version 2 (a holder, no owner) reads with no owner.
        #[derive(Serialize)]
        struct V2<'a> {
            id: &'a str,
            pattern: &'a str,
            types: Vec<&'a str>,
            ttl_ms: u64,
            expires_at_us: u64,
            group: Option<&'a str>,
            from_seq: Option<u64>,
            holder: Party,
        }
        let holder = Party { service: "svc".into(), instance: "i".into() };
        let v2 = V2 {
            id: "l",
            pattern: "/a/",
            types: vec![],
            ttl_ms: 5,
            expires_at_us: 6,
            group: Some("g"),
            from_seq: None,
            holder: holder.clone(),
        };
        let mut body = Vec::new();
        postcard::to_io(&v2, &mut body).expect("encode");
        let bytes = with_version(frame(9, 1, "s", Kind::LeaseGrant, &body).expect("frame"), 2);
        let Body::LeaseGrant(g) = Record::decode(&bytes).expect("v2 decodes").body else { panic!("kind") };
        assert_eq!((g.group.as_deref(), g.holder, g.owner), (Some("g"), holder, None));
        // Version 2 of a kind that never had one is refused.
        let tuple = Record { seq: 1, time_us: 1, origin: "s".into(), body: samples().remove(1) };
        let bytes = with_version(tuple.encode().expect("encode"), 2);
        assert!(Record::decode(&bytes).expect_err("v2 tuple").to_string().contains("unknown record version 2"));
    }

    /// An event logged before `assigned` existed still reads, with no
    /// assignment.
    #[test]
    fn version_1_events_still_decode() {
        #[derive(Serialize)]
        struct V1<'a> {
            id: &'a str,
            channel: &'a str,
            event_type: &'a str,
            from: Party,
            to: Target,
            distribution: Distribution,
            payload: &'a [u8],
        }
        let v1 = V1 {
            id: "e",
            channel: "/a/",
            event_type: "t",
            from: Party::default(),
            to: Target::default(),
            distribution: Distribution::One,
            payload: b"p",
        };
        let mut body = Vec::new();
        postcard::to_io(&v1, &mut body).expect("encode");
        let bytes = with_version(frame(3, 1, "s", Kind::Event, &body).expect("frame"), 1);
        let Body::Event(e) = Record::decode(&bytes).expect("v1 decodes").body else { panic!("kind") };
        assert_eq!((e.id.as_str(), e.distribution, e.payload.as_slice()), ("e", Distribution::One, &b"p"[..]));
        assert!(e.assigned.is_empty() && e.tuple.is_none());

        // Version 2 appended the lease ids assigned to a distribution-one event.
        let mut body = Vec::new();
        postcard::to_io(&(&v1, vec!["l1", "l2"]), &mut body).expect("encode");
        let bytes = with_version(frame(4, 1, "s", Kind::Event, &body).expect("frame"), 2);
        let Body::Event(e) = Record::decode(&bytes).expect("v2 decodes").body else { panic!("kind") };
        assert_eq!((e.id.as_str(), e.assigned), ("e", vec!["l1".to_string(), "l2".to_string()]));
        assert!(e.tuple.is_none() && e.principal.is_none());
    }

    /// An event logged before `principal` existed still reads, with none;
    /// and a stamped one round-trips.
    #[test]
    fn version_4_events_still_decode_without_a_principal() {
        let Body::Event(mut e) = samples().remove(0) else { panic!("sample 0 is an event") };
        #[derive(Serialize)]
        struct V4<'a> {
            id: &'a str,
            channel: &'a str,
            event_type: &'a str,
            from: &'a Party,
            to: &'a Target,
            distribution: Distribution,
            payload: &'a [u8],
            assigned: &'a [String],
            tuple: &'a Option<TupleUpdate>,
        }
        let v4 = V4 {
            id: &e.id,
            channel: &e.channel,
            event_type: &e.event_type,
            from: &e.from,
            to: &e.to,
            distribution: e.distribution,
            payload: &e.payload,
            assigned: &e.assigned,
            tuple: &e.tuple,
        };
        let mut body = Vec::new();
        postcard::to_io(&v4, &mut body).expect("encode");
        let bytes = with_version(frame(4, 1, "s", Kind::Event, &body).expect("frame"), 4);
        let Body::Event(read) = Record::decode(&bytes).expect("v4 decodes").body else { panic!("kind") };
        e.principal = None;
        assert_eq!(read, e);
        e.principal = Some("ops".into());
        let stamped = Record { seq: 4, time_us: 1, origin: "s".into(), body: Body::Event(e.clone()) };
        let Body::Event(back) = Record::decode(&stamped.encode().expect("encode")).expect("v5").body else {
            panic!("kind")
        };
        assert_eq!(back.principal.as_deref(), Some("ops"));
    }

    /// An attribute event logged before `recorded` existed still reads, as
    /// recorded: every site recorded every tuple then.
    #[test]
    fn version_3_events_still_decode_as_recorded() {
        let Body::Event(mut e) = samples().remove(0) else { panic!("sample 0 is an event") };
        #[derive(Serialize)]
        struct TupleV1<'a> {
            field: &'a str,
            value: &'a str,
            expires_at_us: Option<u64>,
        }
        #[derive(Serialize)]
        struct V3<'a> {
            id: &'a str,
            channel: &'a str,
            event_type: &'a str,
            from: &'a Party,
            to: &'a Target,
            distribution: Distribution,
            payload: &'a [u8],
            assigned: &'a [String],
            tuple: Option<TupleV1<'a>>,
        }
        let v3 = V3 {
            id: &e.id,
            channel: &e.channel,
            event_type: &e.event_type,
            from: &e.from,
            to: &e.to,
            distribution: e.distribution,
            payload: &e.payload,
            assigned: &e.assigned,
            tuple: Some(TupleV1 { field: "load", value: "0.5", expires_at_us: Some(9) }),
        };
        let mut body = Vec::new();
        postcard::to_io(&v3, &mut body).expect("encode");
        let bytes = with_version(frame(4, 1, "s", Kind::Event, &body).expect("frame"), 3);
        let Body::Event(read) = Record::decode(&bytes).expect("v3 decodes").body else { panic!("kind") };
        if let Some(t) = e.tuple.as_mut() {
            t.recorded = true;
        }
        assert_eq!(read, e);
        assert!(Body::Event(read).tuple_write().is_some());
        // An unrecorded sidecar is no tuple write.
        if let Some(t) = e.tuple.as_mut() {
            t.recorded = false;
        }
        assert!(Body::Event(e).tuple_write().is_none());
    }

    #[test]
    fn targets_admit_matching_holders() {
        let holder = Party { service: "s".into(), instance: "i".into() };
        let t = |service: Option<&str>, instance: Option<&str>| Target {
            service: service.map(Into::into),
            instance: instance.map(Into::into),
        };
        assert!(t(None, None).admits(&holder));
        assert!(t(Some("s"), None).admits(&holder));
        assert!(t(Some("s"), Some("i")).admits(&holder));
        assert!(!t(Some("x"), None).admits(&holder));
        assert!(!t(Some("s"), Some("j")).admits(&holder));
        assert!(!t(None, Some("j")).admits(&holder));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let rec = Record { seq: 42, time_us: 7, origin: "s".into(), body: samples().remove(0) };
        let bytes = rec.encode().expect("encode");
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let err = Record::decode(&bad).expect_err("corrupt record must not decode");
                assert!(matches!(err, Error::Corruption { .. }), "byte {i} bit {bit}: {err}");
            }
        }
    }

    #[test]
    fn truncated_and_empty_records_are_corruption() {
        let rec = Record { seq: 1, time_us: 1, origin: "s".into(), body: samples().remove(1) };
        let bytes = rec.encode().expect("encode");
        for len in 0..bytes.len() {
            assert!(matches!(Record::decode(&bytes[..len]), Err(Error::Corruption { .. })), "len {len}");
        }
    }

    #[test]
    fn unknown_version_and_kind_are_reported_not_guessed() {
        for (offset, value, expect) in [(0usize, 9u8, "version"), (1, 200, "kind")] {
            let rec = Record { seq: 1, time_us: 1, origin: "s".into(), body: samples().remove(1) };
            let mut bytes = rec.encode().expect("encode");
            bytes[offset] = value;
            let n = bytes.len() - CRC_BYTES;
            let crc = crc32fast::hash(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            let err = Record::decode(&bytes).expect_err("must fail");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn oversized_record_is_rejected() {
        let body = Body::DocPut(DocPut { key: "k".into(), value: vec![0; crate::limits::RECORD_BYTES_MAX] });
        let rec = Record { seq: 1, time_us: 1, origin: "s".into(), body };
        assert!(matches!(rec.encode(), Err(Error::TooLarge { .. })));
    }
}
