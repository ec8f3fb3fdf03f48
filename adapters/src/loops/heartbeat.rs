//! The heartbeat loop: it carries out what the peer registry
//! (`pepper_router::Registry`, in `federation`) decides. Each tick may
//! start a round: refresh this site's interests from its leases, announce
//! itself to every peer (and learn theirs); when the round is done it
//! starts a forwarder for each peer heard of, and publishes this site's
//! state on `/pepper/sites/`. Then it sleeps until the registry's next
//! wake, an early wake (interests changed) or shutdown.

use pepper_router::RegistryAction as Action;
use pepper_router::RegistryInput as Input;
use pepper_storage::{Body, Distribution, Event, Party, Target};
use serde_json::json;

use crate::federation::loopback_of;
use crate::federation::write;
use crate::federation::SITES_CHANNEL_PREFIX;
use crate::loops::forward::forward;
use crate::state::AppState;

/// Runs the site's federation until shutdown: the heartbeat loop, and a
/// forwarder for every peer it learns of. `listening` is the address the
/// server is bound to, the default url to announce.
pub async fn run(state: AppState, listening: std::net::SocketAddr) {
    let fed = state.federation.clone();
    // For this site's own part of a federated query, and the url to
    // announce when none is configured.
    let loopback = loopback_of(listening);
    let local = format!("{}://{loopback}", fed.scheme());
    *write(&fed.local_url) = local.clone();
    if fed.url().is_empty() {
        if loopback != listening {
            tracing::warn!(%listening, "listening on every address: announcing loopback; set --url for peers elsewhere");
        }
        fed.set_url(local);
    }
    if !fed.enabled() {
        return;
    }
    let mut stopping = state.stopping();
    loop {
        let mut wake_at = None;
        let mut round = false;
        for action in fed.tick() {
            match action {
                Action::RefreshInterests => {
                    if let Err(e) = fed.refresh_interests(&state.store).await {
                        tracing::warn!(error = %e, "cannot read leases for interests");
                    }
                }
                Action::Announce { to, timeout } => {
                    round = true;
                    fed.announce_to(&state.store, to, timeout).await;
                }
                Action::WakeAt(t) => wake_at = Some(t),
                // State changes are logged by the federation; the rest
                // come only from a round's end.
                _ => {}
            }
        }
        if round {
            for action in fed.step(Input::RoundDone).unwrap_or_default() {
                match action {
                    Action::StartForwarder { peer, .. } => {
                        tokio::spawn(forward(state.clone(), peer));
                    }
                    Action::PublishHeartbeat => publish_heartbeat(&state).await,
                    Action::WakeAt(t) => wake_at = Some(t),
                    _ => {}
                }
            }
        }
        let at = wake_at.unwrap_or_else(|| fed.now() + fed.heartbeat());
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(fed.epoch + at)) => {}
            _ = fed.wake.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Publishes this site's announcement on `/pepper/sites/<site>/`.
async fn publish_heartbeat(state: &AppState) {
    let fed = &state.federation;
    let me = fed.announce(state.store.last_seq(), state.store.earliest_seq());
    let payload = json!({ "name": me.name, "url": me.url, "region": me.region, "seq": me.seq,
                          "time": crate::wire::envelope::rfc3339_us(me.time_us), "peers": me.peers.len(),
                          "interests": me.interests.len() });
    let event = Event {
        id: crate::wire::envelope::new_event_id(),
        channel: format!("{SITES_CHANNEL_PREFIX}{}/", fed.site),
        event_type: "pepper.heartbeat".into(),
        from: Party { service: "pepper".into(), instance: fed.site.clone() },
        to: Target::default(),
        distribution: Distribution::All,
        payload: payload.to_string().into_bytes(),
        assigned: Vec::new(),
        principal: None,
        tuple: None,
    };
    if let Err(e) = state.store.append(vec![Body::Event(event)]).await {
        tracing::warn!(error = %e, "cannot publish the heartbeat");
    }
}
