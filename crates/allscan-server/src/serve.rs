//! Running the [`app`](crate::app) on a listener: an HTTP/1 accept loop with a header-read
//! timeout and a graceful shutdown.

use std::future::Future;
use std::time::Duration;

use crate::{app, AppState};

/// Runs [`app`] on `listener` until Ctrl-C (see [`serve_with_shutdown`]).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_with_shutdown(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// Runs [`app`] on `listener` until `shutdown` completes, then lets open connections finish.
///
/// `axum::serve` (0.8.9) builds hyper connections without a timer, so hyper's header-read
/// timeout never fires and a client that never finishes its headers holds its connection
/// forever. This accept loop is axum's, with hyper-util's auto builder restricted to HTTP/1
/// (as the crate's axum features; no upgrades, no HTTP/2 preface sniffing, which has no
/// timeout of its own) and given a tokio timer and `header_read_timeout`, which then runs from
/// the moment the connection is accepted, and again while a kept-alive connection waits for
/// its next request.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let header_timeout = state.inner.config.header_read_timeout;
    let router = app(state);
    // Dropped (closed) on shutdown: each connection then shuts down gracefully.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    eprintln!("allscan-server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut signal_rx = signal_rx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            // `http1_only` + `serve_connection`: hyper's HTTP/1 connection from the first
            // byte. The auto builder otherwise first sniffs for the HTTP/2 preface (and
            // `serve_connection_with_upgrades` always does), a read with no timeout, so a
            // client that connects and sends nothing was never cut off.
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let mut signalled = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = signal_rx.changed(), if !signalled => {
                        signalled = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(signal_rx);
    drop(listener);
    let _ = signal_tx.send(());
    drop(close_rx);
    close_tx.closed().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}
