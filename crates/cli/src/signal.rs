//! Waiting for the end: Ctrl-C (SIGINT) from a terminal, or SIGTERM from systemd, a container
//! runtime or the kubelet, so long-running commands shut down cleanly either way.

/// Resolve on SIGINT or SIGTERM; returns the signal's name.
pub async fn terminated() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
