//! One forwarder per peer: it reads this site's log from the peer's cursor,
//! keeps the local records the peer's interests cover, sends them in
//! batches (`wire::frames`), and advances the cursor once the peer has
//! them; failures back off between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
//! A cursor below retention sends a gap marker instead of skipping.

use std::time::{Duration, Instant};

use pepper_storage::{Body, Record};
use serde_json::Value;

use crate::federation::read;
use crate::federation::write;
use crate::federation::Federation;
use crate::federation::BACKOFF_MAX;
use crate::federation::BACKOFF_MIN;
use crate::federation::FORWARD_BATCH_BYTES;
use crate::federation::FORWARD_BATCH_RECORDS;
use crate::federation::FORWARD_SCAN_MAX;
use crate::state::AppState;

/// Whether `record` goes to a peer with `interests`: an event that
/// originated here, on a channel and of a type the peer wants.
pub(crate) fn wanted(site: &str, record: &Record, interests: &pepper_router::Trie<Vec<String>>) -> bool {
    let Body::Event(e) = &record.body else { return false };
    if record.origin != site {
        return false;
    }
    // Channels in the log were validated when they were written.
    let Ok(channel) = pepper_router::Channel::parse(&e.channel) else { return false };
    let mut hit = false;
    interests.for_each_match(&channel, |types| {
        hit = hit || types.is_empty() || types.contains(&e.event_type);
    });
    hit
}

/// What the forwarder reads next.
enum Next {
    /// The peer's cursor fell below retention: records `from..to` are gone.
    Gap { from: u64, to: u64 },
    /// Matching frames, and where to continue after them.
    Frames(Vec<pepper_storage::Frame>, u64),
}

/// The forwarder of one peer; runs until shutdown.
pub(crate) async fn forward(state: AppState, peer: String) {
    let fed = state.federation.clone();
    let mut stopping = state.stopping();
    let mut backoff = BACKOFF_MIN;
    let mut persisted_at = Instant::now();
    loop {
        if *stopping.borrow() {
            return;
        }
        let (interests, changes, url) = match read(&fed.peers).get(&peer) {
            Some(p) => (p.interests.clone(), p.interests_changes, p.url.clone()),
            None => return,
        };
        // Until the peer has said what it wants this run, send nothing and
        // skip nothing.
        let Some(interests) = interests else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            continue;
        };
        let cursor = match cursor_of(&state, &peer).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(peer = %peer, error = %e, "cannot read the forwarding cursor");
                tokio::time::sleep(BACKOFF_MAX).await;
                continue;
            }
        };
        if cursor > state.store.last_seq() {
            tokio::select! {
                _ = state.store.wait_for_seq(cursor, Duration::from_secs(1)) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            continue;
        }
        let site = fed.site.clone();
        let next = state
            .store
            .read(move |v| {
                if cursor < v.earliest_seq() {
                    return Ok(Next::Gap { from: cursor, to: v.earliest_seq() });
                }
                let (frames, next) =
                    v.frames(cursor, FORWARD_BATCH_RECORDS, FORWARD_BATCH_BYTES, FORWARD_SCAN_MAX, |r| {
                        wanted(&site, r, &interests)
                    })?;
                Ok(Next::Frames(frames, next))
            })
            .await;
        // Interests that changed while the log was read may have arrived
        // before a record this read filtered with the old ones: read again.
        if read(&fed.peers).get(&peer).is_some_and(|p| p.interests_changes != changes) {
            continue;
        }
        let (sent, next_cursor) = match next {
            Err(e) => (Err(SendError { message: format!("cannot read the log: {e}"), refused: false }), cursor),
            Ok(Next::Gap { from, to }) => (send(&fed, &url, Some((from, to - 1)), &[]).await.map(|_| 0), to),
            Ok(Next::Frames(frames, next)) if frames.is_empty() => {
                // Nothing for this peer in what was scanned: move on, and
                // keep the cursor now and then (losing it only rescans).
                let durable = persisted_at.elapsed() >= Duration::from_secs(1);
                set_cursor(&state, &peer, next, durable).await;
                if durable {
                    persisted_at = Instant::now();
                }
                continue;
            }
            Ok(Next::Frames(frames, next)) => {
                let n = frames.len() as u64;
                (send(&fed, &url, None, &frames).await.map(|_| n), next)
            }
        };
        match sent {
            Ok(n) => {
                set_cursor(&state, &peer, next_cursor, true).await;
                persisted_at = Instant::now();
                backoff = BACKOFF_MIN;
                if let Some(p) = write(&fed.peers).get_mut(&peer) {
                    p.forwarded += n;
                    p.last_error = None;
                    p.stalled = false;
                }
            }
            Err(e) => {
                // A refusal (4xx) will not pass by itself: say so loudly, once,
                // and keep trying slowly. Skipping the batch would lose it.
                let first_refusal = e.refused
                    && write(&fed.peers).get_mut(&peer).is_some_and(|p| !std::mem::replace(&mut p.stalled, true));
                if first_refusal {
                    tracing::error!(peer = %peer, error = %e.message, "the peer refuses what this site forwards; forwarding to it is stalled");
                } else {
                    tracing::debug!(peer = %peer, error = %e.message, "forwarding failed; retrying");
                }
                if let Some(p) = write(&fed.peers).get_mut(&peer) {
                    p.last_error = Some(format!("forwarding: {}", e.message));
                }
                if e.refused {
                    backoff = BACKOFF_MAX;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// The next sequence number to forward to `peer`: the cached one, the
/// durable one, or (first contact) where its interests first arrived, kept
/// at once.
async fn cursor_of(state: &AppState, peer: &str) -> Result<u64, pepper_storage::Error> {
    let (cached, first) = match read(&state.federation.peers).get(peer) {
        Some(p) => (p.cursor, p.first_cursor),
        None => (None, None),
    };
    if let Some(c) = cached {
        return Ok(c);
    }
    // RocksDB calls run off the async executor.
    let (store, name) = (state.store.clone(), peer.to_string());
    let c = tokio::task::spawn_blocking(move || match store.peer_cursor(&name)? {
        Some(c) => Ok::<u64, pepper_storage::Error>(c),
        None => {
            let c = first.unwrap_or_else(|| store.last_seq() + 1);
            store.set_peer_cursor(&name, c)?;
            Ok(c)
        }
    })
    .await
    .map_err(|e| pepper_storage::Error::Io(std::io::Error::other(format!("cursor task failed: {e}"))))??;
    if let Some(p) = write(&state.federation.peers).get_mut(peer) {
        p.cursor = Some(c);
    }
    Ok(c)
}

async fn set_cursor(state: &AppState, peer: &str, next: u64, durable: bool) {
    if durable {
        let (store, name) = (state.store.clone(), peer.to_string());
        let kept = tokio::task::spawn_blocking(move || store.set_peer_cursor(&name, next)).await;
        if let Err(e) = kept.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
            // The cached cursor still moves; a restart resends from the
            // durable one and the peer drops the repeats.
            tracing::error!(peer = %peer, error = %e, "cannot keep the forwarding cursor");
        }
    }
    if let Some(p) = write(&state.federation.peers).get_mut(peer) {
        p.cursor = Some(next);
    }
}

/// Why a batch did not get through.
struct SendError {
    message: String,
    /// The peer answered 4xx: it will refuse the same batch again.
    refused: bool,
}

impl From<String> for SendError {
    fn from(message: String) -> SendError {
        SendError { message, refused: false }
    }
}

/// Sends one batch (or a gap marker) and waits for the peer's answer.
async fn send(
    fed: &Federation,
    url: &str,
    gap: Option<(u64, u64)>,
    frames: &[pepper_storage::Frame],
) -> Result<Value, SendError> {
    let mut body = Vec::with_capacity(frames.iter().map(|(_, f)| f.len() + 4).sum());
    for (_, f) in frames {
        let len = u32::try_from(f.len()).map_err(|_| SendError::from("frame over 4 GiB".to_string()))?;
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(f);
    }
    let mut req = fed
        .client
        .post(format!("{url}/v1/peer/records"))
        .header(axum::http::header::AUTHORIZATION, fed.bearer())
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header("x-pepper-origin", fed.site.as_str())
        .timeout(Duration::from_secs(10))
        .body(body);
    if let Some((from, to)) = gap {
        req = req.header("x-pepper-gap", format!("{from}-{to}"));
    }
    let res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let answer: Value = res.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        // 409 passes by itself (a gap taken after the next heartbeat).
        let refused = status.is_client_error() && status != axum::http::StatusCode::CONFLICT;
        return Err(SendError { message: format!("answered {status}: {answer}"), refused });
    }
    Ok(answer)
}
