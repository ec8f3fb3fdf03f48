//! The connection loop: accepts TCP connections and serves HTTP/1.1 on
//! each, with the limits a server facing untrusted clients needs.
//!
//! - At most [`CONNECTIONS_MAX`] connections are open at once. At the limit
//!   the loop stops accepting until one closes: new clients wait in the
//!   kernel's backlog instead of exhausting file descriptors. At most
//!   [`CONNECTIONS_PER_IP_MAX`] of them come from one address; more are
//!   closed at once.
//! - A connection must send a request's whole header within
//!   [`HEADER_READ_TIMEOUT`] of being ready for one: of being accepted, or
//!   of its previous response being sent. So the same bound closes an idle
//!   keep-alive connection and one that trickles its header (slowloris).
//! - The body's own bound is the edge's (`edge::BODY_READ_TIMEOUT`); a
//!   response streams for as long as the handler wants (SSE), and the
//!   stream limits live there.
//!
//! `axum::serve` was the alternative: it sets neither a header timeout (its
//! hyper builder has no timer, so hyper's default of 30 s never applies)
//! nor a connection limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most connections open at once; at the limit, accepting waits. Room for
/// every live stream (`SUBSCRIBERS_MAX`) and every request slot
/// (`REQUESTS_IN_FLIGHT_MAX`) at once.
pub const CONNECTIONS_MAX: usize = 16_384;

const _: () = assert!(CONNECTIONS_MAX >= crate::limits::SUBSCRIBERS_MAX + crate::limits::REQUESTS_IN_FLIGHT_MAX);

/// Most connections open at once from one IP address. One more is closed
/// as soon as it is accepted, so one client cannot take every connection
/// slot from the rest (peers included).
pub const CONNECTIONS_PER_IP_MAX: usize = 4096;

const _: () = assert!(CONNECTIONS_PER_IP_MAX < CONNECTIONS_MAX);

/// How long a connection may take to send a request header, counted from
/// when it is ready for one; also how long an idle keep-alive connection
/// is kept. Past it the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest request header, in bytes (hyper's read buffer). A longer one is
/// answered 431 and the connection closed.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Pause after a failed accept (out of file descriptors, say) before the
/// next try, so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The connection loop's settings.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Most connections open at once ([`CONNECTIONS_MAX`]).
    pub connections_max: usize,
    /// Most connections from one IP address ([`CONNECTIONS_PER_IP_MAX`]).
    pub connections_per_ip_max: usize,
    /// Header read and keep-alive idle bound ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            connections_max: CONNECTIONS_MAX,
            connections_per_ip_max: CONNECTIONS_PER_IP_MAX,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its address; uncounted when dropped.
struct Counted {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip`, unless it has `max` open already.
    fn admit(table: &Arc<PerIp>, ip: IpAddr, max: usize) -> Option<Counted> {
        let mut open = table.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted { table: table.clone(), ip })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests
/// (the caller bounds that wait). With `tls`, every connection is TLS: its
/// handshake must finish within the header timeout, and a client
/// certificate it verified reaches each request as a
/// [`PeerCertificate`](crate::tls::PeerCertificate) extension.
///
/// # Errors
/// None so far: accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(HEADER_BYTES_MAX);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(counted) = PerIp::admit(&per_ip, peer.ip(), limits.connections_per_ip_max) else {
            tracing::debug!(%peer, "too many connections from one address; closing");
            continue;
        };
        // No Nagle: an SSE event or a small answer written after one that
        // is not yet acknowledged would otherwise wait for the peer's
        // delayed ACK (up to 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Some(tls) = &tls else {
            let service = TowerToHyperService::new(app.clone());
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop((permit, counted));
            });
            continue;
        };
        let (tls, app, builder, watcher) = (tls.clone(), app.clone(), builder.clone(), graceful.watcher());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| crate::tls::PeerCertificate(Arc::new(leaf.clone().into_owned())));
            let app = tower::ServiceExt::map_request(app, move |mut request: axum::extract::Request<_>| {
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                request
            });
            let service = TowerToHyperService::new(app);
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop((permit, counted));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_share_of_connections() {
        let table = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let held: Vec<Counted> = (0..3).filter_map(|_| PerIp::admit(&table, a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(PerIp::admit(&table, a, 3).is_none(), "a fourth from the same address");
        assert!(PerIp::admit(&table, b, 3).is_some(), "another address is not held back");
        drop(held);
        assert!(PerIp::admit(&table, a, 3).is_some(), "closing frees the address's share");
        assert!(table.0.lock().map(|t| t.get(&b).is_none()).unwrap_or(false), "no entry is left behind");
    }
}
