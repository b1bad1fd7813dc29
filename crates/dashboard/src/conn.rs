//! Connections that cannot hold the dashboard: one whose client stops taking data is closed
//! after a while, and every one is closed when the dashboard stops.
//!
//! The server stops asking an event stream for more once a connection's buffers are full, so
//! nothing on the stream's side can notice a client that stopped reading; its connection can.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;

/// Accepts connections as [`Guarded`] ones.
pub(crate) struct GuardedListener {
    pub(crate) inner: TcpListener,
    /// How long a write may wait for the client before the connection is closed.
    pub(crate) stall: Duration,
    pub(crate) stopping: watch::Receiver<bool>,
}

impl Listener for GuardedListener {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
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
        };
        (guarded, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection whose writes fail once they have waited `stall` for the client, or once the
/// dashboard stops while they wait.
pub(crate) struct Guarded {
    io: TcpStream,
    stall: Duration,
    /// Armed when a write first waits; dropped when one goes through.
    stalled: Option<Pin<Box<Sleep>>>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Guarded {
    /// A write went through, or must wait: fails it when it has waited too long.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        if self.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::other("the dashboard stopped")));
        }
        let stall = self.stall;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for too long",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
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
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
