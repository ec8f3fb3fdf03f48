//! The connection loop: accepts TCP connections and serves HTTP/1.1 on
//! each, with the limits a server facing untrusted clients needs.
//!
//! - At most [`CONNECTIONS_MAX`] connections are open at once. At the limit
//!   the loop stops accepting until one closes: new clients wait in the
//!   kernel's backlog instead of exhausting file descriptors.
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

use std::future::Future;
use std::sync::Arc;
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

const _: () = assert!(CONNECTIONS_MAX >= crate::sse::SUBSCRIBERS_MAX + crate::http::REQUESTS_IN_FLIGHT_MAX);

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
    /// Header read and keep-alive idle bound ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits { connections_max: CONNECTIONS_MAX, header_read_timeout: HEADER_READ_TIMEOUT }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the open connections to finish their requests
/// (the caller bounds that wait).
///
/// # Errors
/// None so far: accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
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
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: an SSE event or a small answer written after one that
        // is not yet acknowledged would otherwise wait for the peer's
        // delayed ACK (up to 40 ms on Linux).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
