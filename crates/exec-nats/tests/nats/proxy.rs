//! A TCP proxy in front of the NATS server whose connections can be cut: the side of a test
//! that connects through it loses the server while every other side keeps it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub(crate) struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port, passing each connection on to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: &str) -> Self {
        Self::with_delay(upstream, Duration::ZERO).await
    }

    /// As [`start`](Self::start), holding back what the server sends for `delay` at every read:
    /// a server as far away, to requests made one at a time.
    pub(crate) async fn with_delay(upstream: &str, delay: Duration) -> Self {
        let upstream = upstream.trim_start_matches("nats://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accepting = tokio::spawn({
            let (cut, connections) = (Arc::clone(&cut), Arc::clone(&connections));
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    // Cut off: the connection is closed as soon as it is made.
                    if cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let relay = tokio::spawn(async move {
                        if delay.is_zero() {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                        let (mut from_client, mut to_client) = client.into_split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let down = async {
                            let mut chunk = vec![0; 64 * 1024];
                            while let Ok(n @ 1..) = from_server.read(&mut chunk).await {
                                tokio::time::sleep(delay).await;
                                if to_client.write_all(&chunk[..n]).await.is_err() {
                                    break;
                                }
                            }
                        };
                        let up = tokio::io::copy(&mut from_client, &mut to_server);
                        tokio::select! {
                            () = down => {}
                            _ = up => {}
                        }
                    });
                    connections.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        Self {
            port,
            cut,
            connections,
            accepting,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy, and every new one until [`restore`].
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// Passes connections on again.
    pub(crate) fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}
