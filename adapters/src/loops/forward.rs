//! One forwarder per peer: it carries out what `pepper_router::Forwarder`
//! decides. The machine says which range of this site's log to read, which
//! records go to the peer, when to send a batch or a gap marker, when to
//! keep the cursor and how long to back off; this loop reads the log and
//! the cursor from the store, sends the batches (`wire::frames`), waits
//! for the log, the clock and the peer's interests, and steps the results
//! back in.

use std::time::{Duration, Instant};

use pepper_router::{Forwarder, ForwarderAction as Action, ForwarderInput as Input, Outgoing};
use pepper_storage::{Body, Frame, Record};
use serde_json::Value;

use crate::federation::Federation;
use crate::state::AppState;

/// What the forwarder waits for once its actions are carried out.
enum Park {
    /// Only new interests (or shutdown).
    Interests,
    /// The log to reach this sequence number.
    Seq(u64),
    /// Its clock to reach this time.
    At(Duration),
}

/// The forwarder of one peer; runs until shutdown.
pub(crate) async fn forward(state: AppState, peer: String) {
    let fed = state.federation.clone();
    let Some(mut interests) = fed.interests_of(&peer) else { return };
    let mut stopping = state.stopping();
    let epoch = Instant::now();
    let mut f = Forwarder::<Frame>::new(&fed.site, epoch.elapsed());
    let mut park = Park::Interests;
    // Interests already known when the forwarder starts.
    let mut actions: Vec<Action<Frame>> = match interests.borrow_and_update().clone() {
        Some(w) => f.step(epoch.elapsed(), Input::Interests(w)),
        None => Vec::new(),
    };
    loop {
        for action in std::mem::take(&mut actions) {
            if *stopping.borrow() {
                return;
            }
            let input = match carry_out(&state, &peer, &mut park, action).await {
                Some(Done::Step(input)) => input,
                Some(Done::Read(input)) => {
                    // Interests that changed while the log was read may have
                    // arrived before a record this read filtered with the old
                    // ones: the machine then reads again.
                    if interests.has_changed().unwrap_or(false) {
                        if let Some(w) = interests.borrow_and_update().clone() {
                            let more = f.step(epoch.elapsed(), Input::Interests(w));
                            actions.extend(more);
                        }
                    }
                    input
                }
                None => continue,
            };
            let outcome = outcome_of(&input);
            let more = f.step(epoch.elapsed(), input);
            mirror(&fed, &peer, &f, outcome.filter(|_| !more.is_empty()), &more);
            actions.extend(more);
        }
        if !actions.is_empty() {
            continue;
        }
        let wait_seq = match park {
            Park::Seq(s) => Some(s),
            _ => None,
        };
        let wake_at = match park {
            Park::At(t) => Some(tokio::time::Instant::from_std(epoch + t)),
            _ => None,
        };
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            changed = interests.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Some(w) = interests.borrow_and_update().clone() {
                    actions = f.step(epoch.elapsed(), Input::Interests(w));
                }
            }
            _ = state.store.wait_for_seq(wait_seq.unwrap_or(0), Duration::from_secs(1)), if wait_seq.is_some() => {
                actions = f.step(epoch.elapsed(), Input::Appended { last_seq: state.store.last_seq() });
            }
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(tokio::time::Instant::now)), if wake_at.is_some() => {
                park = Park::Interests;
                actions = f.tick(epoch.elapsed());
            }
        }
    }
}

/// What carrying out an action produced for the machine.
enum Done {
    /// A result to step.
    Step(Input<Frame>),
    /// The result of a log read, to step after any new interests.
    Read(Input<Frame>),
}

/// Whether a stepped result was a send's success or a failure of a read or
/// send: those set (or clear) the peer's last error.
#[derive(Clone, Copy)]
enum Outcome {
    Succeeded,
    MaybeFailed,
}

fn outcome_of(input: &Input<Frame>) -> Option<Outcome> {
    match input {
        Input::Sent { .. } => Some(Outcome::Succeeded),
        Input::Scanned { .. } | Input::Compacted { .. } | Input::ScanFailed { .. } | Input::SendFailed { .. } => {
            Some(Outcome::MaybeFailed)
        }
        _ => None,
    }
}

/// Copies the machine's status into the federation, where `/v1/sites` and
/// the supervisor read it. The peer's one last error is shared with the
/// heartbeat: a send that passes clears it, a failure sets it.
fn mirror(fed: &Federation, peer: &str, f: &Forwarder<Frame>, outcome: Option<Outcome>, more: &[Action<Frame>]) {
    let failed = matches!(outcome, Some(Outcome::MaybeFailed)) && more.iter().any(|a| matches!(a, Action::WakeAt(_)));
    let succeeded = matches!(outcome, Some(Outcome::Succeeded));
    if failed && !more.iter().any(|a| matches!(a, Action::Stalled { .. })) {
        tracing::debug!(peer = %peer, error = %f.last_error().unwrap_or(""), "forwarding failed; retrying");
    }
    fed.forwarding(|all| {
        let p = all.entry(peer.to_string()).or_default();
        p.cursor = f.cursor();
        p.forwarded = f.forwarded();
        p.stalled = f.stalled();
        if failed || succeeded {
            p.last_error = f.last_error().map(str::to_string);
        }
    });
}

/// Carries out one action; returns what to step, if anything.
async fn carry_out(state: &AppState, peer: &str, park: &mut Park, action: Action<Frame>) -> Option<Done> {
    let fed = &state.federation;
    match action {
        Action::LoadCursor { or_else } => Some(Done::Step(match load_cursor(state, peer, or_else).await {
            Ok(next) => Input::CursorLoaded { next },
            Err(e) => {
                tracing::error!(peer = %peer, error = %e, "cannot read the forwarding cursor");
                Input::CursorLoadFailed { error: e.to_string() }
            }
        })),
        Action::WaitForSeq(s) => {
            *park = Park::Seq(s);
            None
        }
        Action::WakeAt(t) => {
            *park = Park::At(t);
            None
        }
        Action::Scan { id, from, filter, records_max, bytes_max, scan_max } => {
            let read = state
                .store
                .read(move |v| {
                    if from < v.earliest_seq() {
                        return Ok(Input::Compacted { id, earliest: v.earliest_seq() });
                    }
                    let (frames, next) =
                        v.frames(from, records_max, bytes_max, scan_max, |r| filter.keep(&r.origin, event(r)))?;
                    let records = frames
                        .into_iter()
                        .map(|(record, raw)| Outgoing { seq: record.seq, bytes: raw.len(), record: (record, raw) })
                        .collect();
                    Ok(Input::Scanned { id, records, next })
                })
                .await;
            Some(Done::Read(read.unwrap_or_else(|e| Input::ScanFailed { id, error: e.to_string() })))
        }
        Action::Send { id, records, .. } => {
            let frames: Vec<Frame> = records.into_iter().map(|o| o.record).collect();
            Some(Done::Step(sent(id, send(fed, peer, None, &frames).await)))
        }
        Action::SendGap { id, from, to } => Some(Done::Step(sent(id, send(fed, peer, Some((from, to)), &[]).await))),
        Action::SaveCursor { next, durable } => {
            if durable {
                set_cursor(state, peer, next).await;
            }
            None
        }
        Action::Stalled { error } => {
            tracing::error!(peer = %peer, error = %error, "the peer refuses what this site forwards; forwarding to it is stalled");
            None
        }
    }
}

/// A record's channel and type, if it is an event.
fn event(r: &Record) -> Option<(&str, &str)> {
    match &r.body {
        Body::Event(e) => Some((e.channel.as_str(), e.event_type.as_str())),
        _ => None,
    }
}

fn sent(id: u64, result: Result<Value, SendError>) -> Input<Frame> {
    match result {
        Ok(_) => Input::Sent { id },
        Err(e) => Input::SendFailed { id, status: e.status, error: e.message },
    }
}

/// The durable cursor of `peer`, or (first contact) `or_else`, kept at once.
async fn load_cursor(state: &AppState, peer: &str, or_else: u64) -> Result<u64, pepper_storage::Error> {
    // RocksDB calls run off the async executor.
    let (store, name) = (state.store.clone(), peer.to_string());
    tokio::task::spawn_blocking(move || match store.peer_cursor(&name)? {
        Some(c) => Ok::<u64, pepper_storage::Error>(c),
        None => {
            store.set_peer_cursor(&name, or_else)?;
            Ok(or_else)
        }
    })
    .await
    .map_err(|e| pepper_storage::Error::Io(std::io::Error::other(format!("cursor task failed: {e}"))))?
}

async fn set_cursor(state: &AppState, peer: &str, next: u64) {
    let (store, name) = (state.store.clone(), peer.to_string());
    let kept = tokio::task::spawn_blocking(move || store.set_peer_cursor(&name, next)).await;
    if let Err(e) = kept.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        // The cached cursor still moves; a restart resends from the
        // durable one and the peer drops the repeats.
        tracing::error!(peer = %peer, error = %e, "cannot keep the forwarding cursor");
    }
}

/// Why a batch did not get through.
struct SendError {
    message: String,
    /// The peer's HTTP status, when it answered with a JSON body.
    status: Option<u16>,
}

impl From<String> for SendError {
    fn from(message: String) -> SendError {
        SendError { message, status: None }
    }
}

/// Sends one batch (or a gap marker) to `peer` and waits for its answer.
async fn send(
    fed: &Federation,
    peer: &str,
    gap: Option<(u64, u64)>,
    frames: &[pepper_storage::Frame],
) -> Result<Value, SendError> {
    let url = fed.url_of(peer).ok_or_else(|| SendError::from(format!("{peer} is not a known peer")))?;
    let mut body = Vec::with_capacity(frames.iter().map(|(_, f)| f.len() + 4).sum());
    for (_, f) in frames {
        let len = u32::try_from(f.len()).map_err(|_| SendError::from("frame over 4 GiB".to_string()))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(f);
    }
    let gap_header = gap.map(|(from, to)| format!("{from}-{to}"));
    let signature = fed.sign_batch(peer, gap_header.as_deref().unwrap_or(""), &body);
    let mut req = fed
        .client_for(peer)?
        .post(format!("{url}/v1/peer/records"))
        .header(axum::http::header::AUTHORIZATION, fed.bearer())
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header("x-pepper-origin", fed.site.as_str())
        .timeout(Duration::from_secs(10))
        .body(body);
    if let Some(gap) = gap_header {
        req = req.header("x-pepper-gap", gap);
    }
    if let Some(signature) = signature {
        req = req.header("x-pepper-signature", signature);
    }
    let res = req.send().await.map_err(|e| crate::federation::error_chain(&e))?;
    let status = res.status();
    let answer: Value = res.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(SendError { message: format!("answered {status}: {answer}"), status: Some(status.as_u16()) });
    }
    Ok(answer)
}
