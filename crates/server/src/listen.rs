//! The accept loop: the router on hyper's HTTP/1 connections, with the timeouts a slow or idle client cannot get
//! around (axum's own `serve` sets none, so a client that never finished its headers held a connection and a
//! task forever). Headers must arrive within [`HEADER_TIMEOUT`]; bodies are bounded in `guard.rs`. On shutdown
//! the listener closes, idle connections close, and the loop waits for open requests to finish (the caller
//! bounds that wait).

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// How long a client has to send a request's headers, on a new connection or between keep-alive requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `app` on `listener` until `shutdown` resolves, then until every open connection has closed.
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    // Connections hold a clone of `open`; `open_tx.closed()` resolves once all are gone. Dropping `stop_tx` asks
    // every connection to finish its request in flight and close.
    let (open_tx, open) = tokio::sync::watch::channel(());
    let (stop_tx, stop) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(open);
    open_tx.closed().await;
}
