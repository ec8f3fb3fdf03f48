//! The heartbeat loop: every heartbeat interval it refreshes this site's
//! interests from its leases, announces itself to every peer (and learns
//! theirs), starts a forwarder for each peer it has heard from, and
//! publishes this site's state on `/pepper/sites/`. The registry it updates
//! is in `federation`.

use std::time::{Duration, Instant};

use pepper_storage::{Body, Distribution, Event, Party, Target};
use serde_json::json;

use crate::federation::loopback_of;
use crate::federation::read;
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
    let local = format!("http://{loopback}");
    *write(&fed.local_url) = local.clone();
    if fed.url().is_empty() {
        if loopback != listening {
            tracing::warn!(%listening, "listening on every address: announcing loopback; set --url for peers elsewhere");
        }
        *write(&fed.url) = local;
    }
    if !fed.enabled() {
        return;
    }
    let mut stopping = state.stopping();
    let mut last_published = Instant::now() - fed.heartbeat;
    loop {
        if let Err(e) = fed.refresh_interests(&state.store).await {
            tracing::warn!(error = %e, "cannot read leases for interests");
        }
        fed.announce_to_peers(&state.store, fed.heartbeat.max(Duration::from_millis(500)), false).await;
        let names: Vec<String> = read(&fed.peers).keys().cloned().collect();
        for name in names {
            let started = fed.forwarders.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
            if started {
                tokio::spawn(forward(state.clone(), name));
            }
        }
        if last_published.elapsed() >= fed.heartbeat && !read(&fed.peers).is_empty() {
            last_published = Instant::now();
            publish_heartbeat(&state).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(fed.heartbeat) => {}
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
        tuple: None,
    };
    if let Err(e) = state.store.append(vec![Body::Event(event)]).await {
        tracing::warn!(error = %e, "cannot publish the heartbeat");
    }
}
