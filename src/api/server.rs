//! Running the app on a listener until a shutdown signal, then finishing cleanly.

use std::future::Future;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use super::app::SHUTDOWN_HOOK_TIMEOUT;
use super::shutdown::ShutdownHooks;

/// Serves `router` until `shutdown` resolves: then stops accepting connections, waits for
/// in-flight requests (streams included) to finish, and runs the shutdown hooks (e.g. the turn
/// store's flush) so nothing captured is lost.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    hooks: ShutdownHooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address (`ConnectInfo`) keys the sign-in limiter.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(without_nagle(listener), service)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("all requests finished; running shutdown hooks");
    hooks.run(SHUTDOWN_HOOK_TIMEOUT).await;
    Ok(())
}

/// Token-sized SSE writes must leave at once: with Nagle's algorithm on, each small write
/// waits for the client's delayed ACK (~40 ms) and time to first token suffers.
pub fn without_nagle(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, impl FnMut(&mut tokio::net::TcpStream) + Send + 'static> {
    listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
