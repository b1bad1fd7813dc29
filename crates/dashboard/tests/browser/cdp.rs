//! Headless Chromium driven over the DevTools protocol: one page, JavaScript evaluated in it.
//! The test waits on what the page shows (a condition evaluated in it) instead of guessing how
//! long its scripts take.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// One browser with one page open; the browser is killed when this is dropped.
pub(crate) struct Page {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    browser: Child,
    profile: PathBuf,
}

impl Page {
    /// Starts `chromium` with a profile of its own and opens `url` in it.
    pub(crate) async fn open(chromium: &Path, url: &str) -> Page {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let browser = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        // Chromium writes the port it listens on, and the browser's path, to this file.
        let active = profile.join("DevToolsActivePort");
        let endpoint = eventually("Chromium's DevTools port", || async {
            let text = tokio::fs::read_to_string(&active).await.ok()?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?, lines.next()?);
            Some(format!("ws://127.0.0.1:{port}{path}"))
        })
        .await;
        let (socket, _) = tokio_tungstenite::connect_async(endpoint)
            .await
            .expect("the DevTools endpoint accepts");
        let mut page = Page {
            socket,
            session: String::new(),
            next_id: 0,
            browser,
            profile,
        };
        let target = page
            .call("Target.createTarget", json!({ "url": url }))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page
    }

    /// Sends one command (to the page once attached) and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        let exchange = async {
            self.socket
                .send(Message::text(command.to_string()))
                .await
                .expect("DevTools takes the command");
            // Events the page sends meanwhile are skipped: only the answer is wanted.
            loop {
                let message = self.socket.next().await.expect("DevTools answers").unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let mut answer: Value = serde_json::from_str(&text).unwrap();
                if answer["id"] == id {
                    assert!(answer["error"].is_null(), "{method}: {}", answer["error"]);
                    return answer["result"].take();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer from DevTools within 30 s"))
    }

    /// The value of a JavaScript expression evaluated in the page.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let mut result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        let exception = &result["exceptionDetails"];
        assert!(exception.is_null(), "`{expression}` threw: {exception}");
        result["result"]["value"].take()
    }

    /// Waits until `expression` is truthy in the page; returns its value.
    pub(crate) async fn until(&mut self, expression: &str) -> Value {
        for _ in 0..400 {
            let value = self.eval(expression).await;
            if !(value.is_null() || value == false || value == 0 || value == "") {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the page never showed `{expression}` within 20 s");
    }

    /// Writes a PNG of the page to `path`.
    pub(crate) async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap().as_bytes())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Page {
    /// Closes the browser and waits for it to exit (its helper processes go with it; a `Page`
    /// dropped instead kills the browser).
    pub(crate) async fn close(mut self) {
        let _ = self.call_browser("Browser.close").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.browser.wait()).await;
    }

    /// Sends a command to the browser itself, without waiting for an answer.
    async fn call_browser(&mut self, method: &str) -> Result<(), impl std::error::Error> {
        self.next_id += 1;
        let command = json!({ "id": self.next_id, "method": method });
        self.socket.send(Message::text(command.to_string())).await
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // The browser, if still running, is killed by its `Child` (kill_on_drop).
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Polls `probe` until it gives a value (20 s at most).
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, probe: impl Fn() -> F) -> T {
    for _ in 0..400 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: nothing within 20 s");
}
