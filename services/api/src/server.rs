//! The raw hyper 1.x server: accept loop, per-connection settings, graceful shutdown.
//!
//! Header reads are bounded by a timer (hyper panics on `header_read_timeout` without
//! one), keep-alive is on, and on shutdown the listener is dropped first, then
//! in-flight requests get a bounded grace period. No routing or handler logic here.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::ApiArgs;
use crate::router;
use crate::state::AppState;

/// Serves the API on `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    args: &ApiArgs,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(args.header_timeout())
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(router::dispatch(state, req).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    tracing::info!("Draining in-flight requests.");
    if tokio::time::timeout(args.shutdown_grace(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Grace period over; dropping the remaining connections.");
    }
}
