//! Connections that cannot hold the dashboard: one whose client stops taking data (or takes it
//! a trickle at a time) is closed after a while, so is one whose client sends no whole request
//! head in time (none at all, half of one, or none after its last answer), every one is closed
//! when the dashboard stops, even halfway through reading a request, and there are at most
//! [`MAX_CONNECTIONS`].
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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

/// The most connections open at once; more wait to be accepted. Each holds the server's buffers
/// (and its place: one that sends no request in time is closed).
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// The largest request head read: a larger one is answered 431 and its connection closed, so a
/// connection holds at most this much of a client's head (hyper's own bound is about 400 KiB,
/// which [`MAX_CONNECTIONS`] clients sending no body could hold at once).
const MAX_HEAD: usize = 64 * 1024;
/// The client must take this many bytes within the stall time spent waiting for it, not a
/// trickle.
const PROGRESS: usize = 16 * 1024;

/// Serves `app` on `listener` until the dashboard stops, then waits for its connections to close.
///
/// Each connection is served by hyper with a timer (axum's server sets none), so one whose
/// client sends no whole request head within [`head`](GuardedListener::head), from connecting
/// or from its last answer, is closed and lets go of its place; an answer being written (an
/// event stream) is not timed.
pub(crate) async fn serve(mut listener: GuardedListener, app: axum::Router) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper adds the timeout to the time of each connection: a longer one than a timer takes (it
    // could panic there) never runs out.
    let head = Some(listener.head).filter(|&head| head <= task_core::LONGEST_TIMER);
    http.timer(TokioTimer::new())
        .header_read_timeout(head)
        .max_buf_size(MAX_HEAD);
    let connections = TaskTracker::new();
    let mut stopping = listener.stopping.clone();
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = stopped(&mut stopping) => break,
        };
        let connection =
            http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app.clone()));
        let mut stopping = listener.stopping.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopped(&mut stopping) => {
                    // Ends once the answer being written is whole, or its write fails waiting
                    // for the client (the dashboard's stopping ends event streams, and fails
                    // writes that wait). A read that waits fails
                    // unless the server wrote last: a request read whole but not answered yet
                    // is cut, as is a client halfway through one.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "a dashboard connection ended");
            }
        });
    }
    // No more connections are taken.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Waits for the dashboard to stop (an error says it is gone: stopped too).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Accepts connections as [`Guarded`] ones.
pub(crate) struct GuardedListener {
    pub(crate) inner: TcpListener,
    /// How long writes may wait for the client without it taking [`PROGRESS`] bytes before the
    /// connection is closed.
    pub(crate) stall: Duration,
    /// How long a client may take to send a whole request head, from connecting or from the
    /// end of its last answer, before its connection is closed.
    pub(crate) head: Duration,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) open: Arc<Semaphore>,
}

impl GuardedListener {
    /// The next connection, once fewer than the most are open.
    async fn accept(&mut self) -> (Guarded<TcpStream>, std::net::SocketAddr) {
        // Never closed: the listener holds it.
        let permit = Arc::clone(&self.open).acquire_owned().await;
        let (io, addr) = Listener::accept(&mut self.inner).await;
        let mut stopping = self.stopping.clone();
        let stopped = Box::pin(async move { stopped(&mut stopping).await });
        let guarded = Guarded {
            io,
            stall: Stall::new(self.stall),
            stopped,
            is_stopped: false,
            answering: false,
            _permit: permit.ok(),
        };
        (guarded, addr)
    }
}

/// A connection whose writes fail once they have spent `stall` waiting for the client without
/// it taking [`PROGRESS`] bytes, and whose writes, and reads while no answer is under way, fail
/// once the dashboard stops while they wait.
pub(crate) struct Guarded<T> {
    io: T,
    stall: Stall,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// `stopped` finished (it must not be polled again).
    is_stopped: bool,
    /// Whether the server wrote since the client last sent anything: an answer is under way (an
    /// event stream, which the dashboard's stopping ends), or the connection idles after one.
    answering: bool,
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
            let written = *written.as_ref().unwrap_or(&0);
            self.answering |= written > 0;
            self.stall.went_through(written);
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
            // A stall time too long for a timer never runs out.
            let stall = self.stall.saturating_sub(self.waited);
            let Some(deadline) = task_core::deadline_after(now.into_std(), stall) else {
                return false;
            };
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline.into()),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline.into()))),
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
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > filled {
            this.answering = false;
        }
        // A client halfway through a request (or connected and silent) holds nothing up. While
        // an answer is under way the server reads only to notice the client leaving: the
        // answer ends first (whole, unless its write waits for the client), and the server then
        // closes the connection (idle after an answer, at once).
        if polled.is_pending() && !this.answering && this.stopped(cx) {
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
    use tokio::net::TcpStream;

    /// A connection to a client that reads (an in-memory pipe holding 1 KiB): `stopped` never.
    fn guarded(stall: Duration) -> (Guarded<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1024);
        let guarded = Guarded {
            io: server,
            stall: Stall::new(stall),
            stopped: Box::pin(std::future::pending()),
            is_stopped: false,
            answering: false,
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

    /// hyper adds the head timeout to the time of each connection: one that could be added to
    /// the time the dashboard started, but not to a moment later, must not panic there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_timeout_near_the_end_of_time_answers_later_connections() {
        let started = std::time::Instant::now();
        let (mut secs, mut step) = (0_u64, 1 << 63);
        while step > 0 {
            if started
                .checked_add(Duration::from_secs(secs + step))
                .is_some()
            {
                secs += step;
            }
            step /= 2;
        }
        let publisher = coordinator::RequestCompletionPublisher::new();
        publisher.start().unwrap();
        let coordinator = coordinator::Coordinator::builder().with_async().build();
        coordinator.start(&publisher).unwrap();
        // Less than a second from the last instant a clock holds.
        let dashboard = crate::Dashboard::builder(&coordinator, &publisher)
            .bind(([127, 0, 0, 1], 0).into())
            .request_head_timeout(Duration::from_secs(secs))
            .start();
        let dashboard = dashboard.await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut client = tokio::net::TcpStream::connect(dashboard.local_addr())
            .await
            .unwrap();
        let asked = "GET /api/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        client.write_all(asked.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within("the answer", client.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        dashboard.shutdown().await;
        coordinator.shutdown().await;
        publisher.shutdown().await;
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

    /// A stall time too long to add to now (`Duration::MAX`) never runs out: a write that waits
    /// for the client goes on waiting, and goes through once the client reads.
    #[tokio::test]
    async fn a_stall_time_too_long_to_add_to_now_never_runs_out() {
        let (server, mut client) = guarded(Duration::MAX);
        let writing = tokio::spawn(write_on(server));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!writing.is_finished(), "the write waits for the client");
        let mut all = Vec::new();
        within("the reader", client.read_to_end(&mut all))
            .await
            .unwrap();
        within("the writer", writing).await.unwrap().unwrap();
        assert_eq!(all.len(), 1024 * 1024);
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

    /// A server of `/` on a free loopback port, holding at most `open` connections and closing
    /// those that send no whole request head within `head`; with its stopping switch.
    async fn server(
        open: usize,
        head: Duration,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let inner = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = inner.local_addr().unwrap();
        let (stop, stopping) = watch::channel(false);
        let listener = GuardedListener {
            inner,
            stall: Duration::from_secs(10),
            head,
            stopping,
            open: Arc::new(Semaphore::new(open)),
        };
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        (addr, stop, tokio::spawn(serve(listener, app)))
    }

    /// Reads from `client` until it has read a whole answer to `GET /`.
    async fn answer(client: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn clients_that_send_no_whole_request_head_are_closed_and_lock_nobody_out() {
        let head = Duration::from_millis(300);
        let (addr, stop, served) = server(3, head).await;
        // As many connections as the server holds: one that sends nothing, one that sends half
        // a request line, and one kept alive, idle after its answer.
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        within("half a request", half.write_all(b"GET / HT"))
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
        within("a request", idle.write_all(request)).await.unwrap();
        let first = within("the first answer", answer(&mut idle)).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        // A client with a whole request is answered all the same, once they are closed.
        let mut client = TcpStream::connect(addr).await.unwrap();
        within("a request", client.write_all(request))
            .await
            .unwrap();
        let second = within("an answer beside them", answer(&mut client)).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        // Each of them finds its connection closed.
        for (what, mut held) in [("silent", silent), ("half", half), ("idle", idle)] {
            let mut rest = Vec::new();
            let _ = within(what, held.read_to_end(&mut rest)).await;
        }
        stop.send(true).unwrap();
        within("the server's stopping", served).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_head_over_the_bound_is_refused() {
        let (addr, stop, served) = server(4, Duration::from_secs(10)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
            "x".repeat(2 * MAX_HEAD)
        );
        // The server may close before it has read it all.
        let _ = within("a big request", client.write_all(big.as_bytes())).await;
        let mut refusal = Vec::new();
        let _ = within("the refusal", client.read_to_end(&mut refusal)).await;
        let refusal = String::from_utf8_lossy(&refusal);
        assert!(refusal.starts_with("HTTP/1.1 431"), "{refusal}");
        // A request of a usual size is answered as before.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
        within("a request", client.write_all(request))
            .await
            .unwrap();
        let answer = within("an answer", answer(&mut client)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.send(true).unwrap();
        within("the server's stopping", served).await.unwrap();
    }
}
