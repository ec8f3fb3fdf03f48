//! Turning one append request into log records and their effects in the
//! group's batch.
//!
//! For each request, in order:
//!
//! 1. Received records ([`crate::Store::receive`]) at or below their
//!    origin's mark are dropped: a retried batch is never appended twice.
//! 2. The request's checks run ([`crate::writer::checks`]); a refused request
//!    touches nothing.
//! 3. Local events whose ids were logged within the dedupe window make the
//!    request a replay, answered with the original sequence numbers.
//! 4. Each record gets the next sequence number and the group's time. A
//!    distribution-`one` event gets its anycast lease ids and an attribute
//!    event its recording decision, both decided here, by the single writer,
//!    and written into the record itself (re-encoded if they changed it).
//!    The framed record goes into the log and its effects into the batch
//!    ([`crate::writer::effects`], [`crate::models`]).
//! 5. A received request moves its origin's mark in the same batch.

use crate::error::{Error, Result};
use crate::keys;
use crate::record::{Body, Distribution};
use crate::recording::{Decision, PendingUpdate};
use crate::shared::Shared;
use crate::writer::checks::{self, Dedupe};
use crate::writer::effects::{materialize, materialize_tuple};
use crate::writer::request::{Appended, Origin, Prepared};
use crate::writer::state::{Draft, WriterState};

/// What one append request came to.
pub(crate) enum Outcome {
    /// Its records are in the batch: answer once the batch is durable.
    Written(Appended),
    /// Nothing new to write (a replay, or received records all appended
    /// before); the original may be earlier in this very group, so the
    /// answer still waits for the group's write, and fails with it.
    Nothing(Appended),
    /// Refused before anything of it entered the batch: answer now.
    Refused(Error),
    /// Failed with part of it in the batch: the group cannot be written.
    Abort(Error),
}

/// Adds one append request to the group being built.
pub(crate) fn request(
    shared: &Shared,
    state: &mut WriterState,
    draft: &mut Draft,
    mut records: Vec<Prepared>,
    origin: Option<Origin>,
) -> Outcome {
    let engine = &*shared.engine;
    // 1. Received records: drop those at or below their origin's mark (a
    // retried batch), then move the mark.
    let mut dropped = 0u64;
    let mut kept_seqs = Vec::new();
    if let Some(o) = &origin {
        let mark = match draft.ov.origins.get(&o.site) {
            Some(m) => *m,
            None => match shared.origin_mark(&o.site) {
                Ok(m) => m,
                Err(e) => return Outcome::Refused(e),
            },
        };
        // A gap's markers all carry the gap's end: all or none are kept.
        let mut high = mark;
        let fresh: Vec<bool> = o
            .seqs
            .iter()
            .map(|&seq| {
                let fresh = seq > high;
                if !o.gap {
                    high = high.max(seq);
                }
                fresh
            })
            .collect();
        kept_seqs = o.seqs.iter().zip(&fresh).filter(|(_, f)| **f).map(|(s, _)| *s).collect();
        let mut flags = fresh.iter();
        let before = records.len();
        records.retain(|_| flags.next().copied().unwrap_or(false));
        dropped = (before - records.len()) as u64;
        if records.is_empty() {
            let at = state.tail.next_seq;
            return Outcome::Nothing(Appended { first: at, last: at - 1, replayed: true, dropped });
        }
    }
    // 2. A refused request touches nothing: it is checked before any of its
    // effects enter the batch.
    let time_us = draft.time_us;
    if let Err(e) = checks::preconditions(engine, &state.anycast, &state.recording, &draft.ov, &records, time_us) {
        return Outcome::Refused(e);
    }
    // 3. Received records are deduplicated by their origin's mark, not by
    // event id.
    if origin.is_none() {
        let window_us = shared.dedupe_window.as_micros().min(u128::from(u64::MAX)) as u64;
        match checks::dedupe(engine, window_us, &draft.ov.ids, &records, time_us) {
            Ok(Dedupe::New) => {}
            Ok(Dedupe::Replay { first, last }) => {
                return Outcome::Nothing(Appended { first, last, replayed: true, dropped: 0 })
            }
            Err(e) => return Outcome::Refused(e),
        }
    }
    // 4 and 5.
    let from = origin.as_ref().map(|o| (o.site.as_str(), kept_seqs.as_slice()));
    let appended = match records_into_batch(shared, state, draft, records, from) {
        Ok(appended) => appended,
        Err(e) => return Outcome::Abort(e),
    };
    if let Some(o) = &origin {
        let high = o.seqs.iter().copied().max().unwrap_or(0).max(draft.ov.origins.get(&o.site).copied().unwrap_or(0));
        draft.batch.put(keys::CF_ORIGINS, o.site.as_bytes(), high.to_be_bytes());
        draft.ov.origins.insert(o.site.clone(), high);
    }
    Outcome::Written(Appended { dropped, ..appended })
}

/// Puts `records` into the batch with their effects: local ones, or (with
/// `from`: the origin site and each record's seq there) received ones.
fn records_into_batch(
    shared: &Shared,
    state: &mut WriterState,
    draft: &mut Draft,
    records: Vec<Prepared>,
    from: Option<(&str, &[u64])>,
) -> Result<Appended> {
    let engine = &*shared.engine;
    let time_us = draft.time_us;
    let first = state.tail.next_seq;
    let origin = from.map_or(shared.site.as_str(), |(site, _)| site);
    for (i, mut rec) in records.into_iter().enumerate() {
        let seq = state.tail.next_seq;
        let mut reencode = false;
        if let Body::Event(e) = &mut rec.body {
            if e.distribution == Distribution::One {
                e.assigned = state.anycast.choose(&draft.ov.leases, e, time_us)?;
                reencode = !e.assigned.is_empty();
            }
            if let Some(t) = &mut e.tuple {
                let (site, origin_seq) = match from {
                    Some((site, seqs)) => (site, seqs.get(i).copied().unwrap_or(0)),
                    None => (shared.site.as_str(), seq),
                };
                let decision = state.recording.decide(&draft.policy, &e.channel, site, origin_seq, from.is_none());
                let recorded = decision == Decision::Record;
                reencode |= t.recorded != recorded;
                t.recorded = recorded;
                if let Decision::Pend(pattern) = decision {
                    let update = PendingUpdate {
                        origin: site.to_string(),
                        origin_seq,
                        time_us,
                        channel: e.channel.clone(),
                        field: t.field.clone(),
                        value: t.value.clone(),
                        expires_at_us: t.expires_at_us,
                        source: e.from.clone(),
                    };
                    draft.ov.pending.push((pattern, update));
                }
            }
        }
        if reencode {
            rec.encoded_body.clear();
            rec.body.encode_into(&mut rec.encoded_body)?;
        }
        state.tail.put_record(&mut draft.batch, origin, &rec.body, &rec.encoded_body, time_us)?;
        // A received record is an event: it touches the event-id index,
        // and the tuples only when this site records its channel.
        materialize(engine, &mut draft.batch, &mut draft.ov.leases, seq, time_us, &rec.body)?;
        materialize_tuple(engine, &mut draft.batch, &mut draft.ov.tuples, seq, time_us, &rec.body)?;
        draft.ov.models.materialize(engine, &mut draft.batch, seq, time_us, &rec.body)?;
        match &rec.body {
            Body::Event(e) if !e.id.is_empty() => {
                draft.ov.ids.insert(e.id.clone(), (seq, time_us));
            }
            Body::DocPut(d) => draft.ov.docs.push((d.key.clone(), Some((seq, d.value.clone())))),
            Body::DocDelete(d) => draft.ov.docs.push((d.key.clone(), None)),
            _ => {}
        }
    }
    state.tail.last_time_us = time_us;
    Ok(Appended { first, last: state.tail.next_seq - 1, replayed: false, dropped: 0 })
}
