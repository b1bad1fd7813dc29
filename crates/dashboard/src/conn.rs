//! Connections that cannot hold the dashboard: one whose client stops taking data (or takes it
//! a trickle at a time) is closed after a while, every one is closed when the dashboard stops,
//! even halfway through reading a request, and there are at most [`MAX_CONNECTIONS`].
//!
//! The server stops asking an event stream for more once a connection's buffers are full, so
//! nothing on the stream's side can notice a client that stopped reading; its connection can.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;

/// The most connections open at once; more wait to be accepted. Each holds the server's buffers.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// A write that waited must see this many bytes taken within the stall time, not a trickle.
const PROGRESS: usize = 16 * 1024;

/// Accepts connections as [`Guarded`] ones.
pub(crate) struct GuardedListener {
    pub(crate) inner: TcpListener,
    /// How long a write may wait for the client before the connection is closed.
    pub(crate) stall: Duration,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) open: Arc<Semaphore>,
}

impl Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Never closed: the listener holds it.
        let permit = Arc::clone(&self.open).acquire_owned().await;
        let (io, addr) = Listener::accept(&mut self.inner).await;
        let mut stopping = self.stopping.clone();
        let stopped = Box::pin(async move {
            // An error says the dashboard is gone: stopped too.
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let guarded = Guarded {
            io,
            stall: self.stall,
            stalled: None,
            stopped,
            is_stopped: false,
            _permit: permit.ok(),
        };
        (guarded, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes fail once they have waited `stall` for the client to take
/// [`PROGRESS`] bytes, and whose reads and writes fail once the dashboard stops while they wait.
pub(crate) struct Guarded<T> {
    io: T,
    stall: Duration,
    /// Armed when a write first waits, with the bytes written since; dropped once the client
    /// took [`PROGRESS`] bytes.
    stalled: Option<(Pin<Box<Sleep>>, usize)>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `stopped` finished (it must not be polled again).
    is_stopped: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> Guarded<T> {
    /// Whether the dashboard stopped; if not, wakes the task when it does.
    fn stopped(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_stopped && self.stopped.as_mut().poll(cx).is_ready() {
            self.is_stopped = true;
        }
        self.is_stopped
    }

    /// A write went through, or must wait: fails it when it has waited too long.
    fn check(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(written) = &polled {
            if let (Ok(n), Some((_, since))) = (written, self.stalled.as_mut()) {
                *since += n;
                if *since >= PROGRESS {
                    self.stalled = None;
                }
            }
            return polled;
        }
        if self.stopped(cx) {
            return Poll::Ready(Err(io::Error::other("the dashboard stopped")));
        }
        let stall = self.stall;
        let (stalled, _) = self
            .stalled
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep(stall)), 0));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for too long",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if polled.is_pending() && this.stopped(cx) {
            // A client halfway through a request (or idle between two) holds nothing up.
            return Poll::Ready(Err(io::Error::other("the dashboard stopped")));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.check(cx, polled.map_ok(|()| 0)).map_ok(|_| ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection to a client that reads (an in-memory pipe holding 1 KiB): `stopped` never.
    fn guarded(stall: Duration) -> (Guarded<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1024);
        let guarded = Guarded {
            io: server,
            stall,
            stalled: None,
            stopped: Box::pin(std::future::pending()),
            is_stopped: false,
            _permit: None,
        };
        (guarded, client)
    }

    /// Writes 1 MiB, a KiB at a time, until the connection fails.
    async fn write_on(mut server: Guarded<tokio::io::DuplexStream>) -> io::Result<()> {
        for _ in 0..1024 {
            server.write_all(&[b'x'; 1024]).await?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_client_that_takes_a_trickle_is_cut_off_and_one_that_reads_is_not() {
        let stall = Duration::from_millis(300);
        // 256 bytes each 50 ms: progress every time, 1.5 KiB per stall, far under 16 KiB.
        let (server, mut client) = guarded(stall);
        let trickle = tokio::spawn(async move {
            let mut buffer = [0u8; 256];
            while matches!(client.read(&mut buffer).await, Ok(1..)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let error = write_on(server).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        trickle.await.unwrap();
        // A client that reads as fast as it can takes the whole MiB.
        let (server, mut client) = guarded(stall);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.map(|_| all.len())
        });
        write_on(server).await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), 1024 * 1024);
    }
}
