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
use tokio::time::{Instant, Sleep};

/// The most connections open at once; more wait to be accepted. Each holds the server's buffers.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// The client must take this many bytes within the stall time spent waiting for it, not a
/// trickle.
const PROGRESS: usize = 16 * 1024;

/// Serves `app` on `listener` until the dashboard stops, then waits for its connections to close.
pub(crate) async fn serve(listener: GuardedListener, app: axum::Router) {
    let mut stopped = listener.stopping.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    if let Err(error) = serve.await {
        tracing::warn!(%error, "the dashboard's server stopped");
    }
}

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
            stall: Stall::new(self.stall),
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

/// A connection whose writes fail once they have spent `stall` waiting for the client without
/// it taking [`PROGRESS`] bytes, and whose reads and writes fail once the dashboard stops while
/// they wait.
pub(crate) struct Guarded<T> {
    io: T,
    stall: Stall,
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
            self.stall.went_through(*written.as_ref().unwrap_or(&0));
            return polled;
        }
        if self.stopped(cx) {
            return Poll::Ready(Err(io::Error::other("the dashboard stopped")));
        }
        if self.stall.waits(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for too long",
            )));
        }
        Poll::Pending
    }
}

/// How long the writes of a connection have waited for its client, counted only while one
/// waits (a spell with nothing to send does not count), since the client last took
/// [`PROGRESS`] bytes.
struct Stall {
    stall: Duration,
    /// Time spent waiting, over the waits that ended since the client last took [`PROGRESS`].
    waited: Duration,
    /// Bytes taken since then.
    taken: usize,
    /// When the wait under way began.
    waiting: Option<Instant>,
    /// Wakes the waiting write when the stall time is up (kept to be reset, not made anew).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            waited: Duration::ZERO,
            taken: 0,
            waiting: None,
            timer: None,
        }
    }

    /// A write went through with `n` bytes: the wait under way, if any, ends.
    fn went_through(&mut self, n: usize) {
        if let Some(since) = self.waiting.take() {
            self.waited += since.elapsed();
        }
        self.taken += n;
        if self.taken >= PROGRESS {
            (self.waited, self.taken) = (Duration::ZERO, 0);
        }
    }

    /// A write must wait: whether the stall time is up (if not, wakes the task when it is).
    fn waits(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waiting.is_none() {
            let now = Instant::now();
            self.waiting = Some(now);
            let deadline = now + self.stall.saturating_sub(self.waited);
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
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
            stall: Stall::new(stall),
            stopped: Box::pin(std::future::pending()),
            is_stopped: false,
            _permit: None,
        };
        (guarded, client)
    }

    /// Fails the test instead of hanging it.
    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
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

    #[tokio::test]
    async fn a_client_that_reads_everything_is_not_cut_off_after_a_quiet_spell() {
        let stall = Duration::from_millis(300);
        let (mut server, mut client) = guarded(stall);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.map(|_| all.len())
        });
        // 2 KiB through the 1 KiB pipe: a write waits a moment for the client, which takes it.
        let burst = server.write_all(&[b'x'; 2048]);
        within("the first burst", burst).await.unwrap();
        // Nothing to send for longer than the stall time: the client is not waited for.
        tokio::time::sleep(stall * 2).await;
        // Another burst that waits a moment is taken as quickly.
        let burst = server.write_all(&[b'y'; 2048]);
        within("the second burst", burst).await.unwrap();
        drop(server);
        let read = within("the reader", reader).await;
        assert_eq!(read.unwrap().unwrap(), 4096);
    }
}
