//! Accepting connections without letting idle or greedy peers lock everyone else out.
//!
//! - **Per-peer cap**: at most [`ConnLimits::per_peer`] open connections from one IP address;
//!   one more is closed at once (with a warning naming the peer, at most once a minute each).
//! - **Silent connections**: a connection that sends nothing within
//!   [`ConnLimits::first_byte`] of being accepted is closed. An HTTP/2 client sends its preface
//!   at once, so only a peer holding a socket open for nothing is cut.
//! - The server's binary raises its open-file soft limit to the hard limit at start
//!   ([`raise_nofile`]): systemd's default soft limit of 1,024 is what ~1,000 idle connections
//!   exhausted.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits on accepted connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections one IP address may hold.
    pub per_peer: usize,
    /// How long a new connection may stay silent before it is closed.
    pub first_byte: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            per_peer: 256,
            first_byte: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Peers {
    open: HashMap<IpAddr, usize>,
    warned: HashMap<IpAddr, Instant>,
}

/// One peer's claim on a connection slot, given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    peers: Arc<Mutex<Peers>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut p) = self.peers.lock() {
            if let Some(n) = p.open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    p.open.remove(&self.ip);
                }
            }
        }
    }
}

/// An accepted connection under [`ConnLimits`].
#[derive(Debug)]
pub struct Guarded {
    inner: TcpStream,
    _slot: Slot,
    /// Until the first byte arrives.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.silent_until = None;
            return r;
        }
        if r.is_pending() {
            if let Some(t) = self.silent_until.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer sent nothing",
                    )));
                }
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accept from `listener` under `limits`: a stream for tonic's `serve_with_incoming*`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
) -> impl futures::Stream<Item = std::io::Result<Guarded>> {
    let peers: Arc<Mutex<Peers>> = Arc::default();
    futures::stream::unfold(listener, move |listener| {
        let peers = peers.clone();
        async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: say so, breathe, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ip = addr.ip();
                let admitted = {
                    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                    let n = p.open.entry(ip).or_default();
                    if *n >= limits.per_peer {
                        let warn = p
                            .warned
                            .get(&ip)
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
                        if warn {
                            p.warned.insert(ip, Instant::now());
                            tracing::warn!(
                                peer = %ip,
                                limit = limits.per_peer,
                                "too many connections from one peer: closing new ones"
                            );
                        }
                        false
                    } else {
                        *n += 1;
                        true
                    }
                };
                if !admitted {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let g = Guarded {
                    inner: stream,
                    _slot: Slot {
                        peers: peers.clone(),
                        ip,
                    },
                    silent_until: Some(Box::pin(tokio::time::sleep(limits.first_byte))),
                };
                return Some((Ok(g), listener));
            }
        }
    })
}

/// Raise this process's open-file soft limit to its hard limit; returns (before, after).
///
/// # Errors
/// The limit cannot be read or set.
pub fn raise_nofile() -> Result<(u64, u64), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| e.to_string())?;
    }
    Ok((soft, hard.max(soft)))
}
