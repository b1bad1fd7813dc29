//! The nodes the `exec-nats-worker` binary registers, shared with the tests and the benchmark.

use serde::{Deserialize, Serialize};
use task_core::{BoxError, Node, NodeRegistry, PortableNode};

/// Returns its input; the trivial task of the benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Echo(pub u64);

impl Node for Echo {
    type Output = u64;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "echo".into()
    }
    async fn invoke(self) -> Result<u64, BoxError> {
        Ok(self.0)
    }
}

impl PortableNode for Echo {
    const NAME: &'static str = "echo";
}

/// Sleeps for the given milliseconds, then says which worker process ran it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Nap(pub u64);

impl Node for Nap {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "nap".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        tokio::time::sleep(std::time::Duration::from_millis(self.0)).await;
        Ok(std::process::id())
    }
}

impl PortableNode for Nap {
    const NAME: &'static str = "nap";
}

/// Fails with its message; panics when it starts with `panic:`; ends its worker process when it
/// starts with `exit:` (a crash in the middle of a task).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail(pub String);

impl Node for Fail {
    type Output = ();
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "fail".into()
    }
    async fn invoke(self) -> Result<(), BoxError> {
        if let Some(message) = self.0.strip_prefix("panic:") {
            panic!("{message}");
        }
        if self.0.starts_with("exit:") {
            std::process::exit(17);
        }
        Err(self.0.into())
    }
}

impl PortableNode for Fail {
    const NAME: &'static str = "fail";
}

/// Broadcasts `1` .. `n` as it counts, pausing a millisecond every 100, then returns `n`: a
/// node that streams.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Count(pub u32);

impl Node for Count {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "count".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        for i in 1..=self.0 {
            task_core::context::broadcast(i.to_string())?;
            if i % 100 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        Ok(self.0)
    }
}

impl PortableNode for Count {
    const NAME: &'static str = "count";
}

/// Broadcasts `1` .. `n` all at once, never pausing, then returns `n`: a node that sends events
/// faster than any worker can publish them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Burst(pub u32);

impl Node for Burst {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "burst".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        for i in 1..=self.0 {
            task_core::context::broadcast(i.to_string())?;
        }
        Ok(self.0)
    }
}

impl PortableNode for Burst {
    const NAME: &'static str = "burst";
}

/// Returns a text of `n` bytes: a node whose output is as large as asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pad(pub usize);

impl Node for Pad {
    type Output = String;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "pad".into()
    }
    async fn invoke(self) -> Result<String, BoxError> {
        Ok("x".repeat(self.0))
    }
}

impl PortableNode for Pad {
    const NAME: &'static str = "pad";
}

/// Waits until a file exists at its path, looking every 10 ms, then says which worker process
/// ran it: a node a test holds running, in whichever worker process takes it, until the test
/// makes the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitFor(pub std::path::PathBuf);

impl Node for WaitFor {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "wait-for".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        while !self.0.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(std::process::id())
    }
}

impl PortableNode for WaitFor {
    const NAME: &'static str = "wait-for";
}

/// The registry of the worker binary.
pub fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry
        .register::<Echo>()
        .and_then(|r| r.register::<Nap>())
        .and_then(|r| r.register::<Fail>())
        .and_then(|r| r.register::<Count>())
        .and_then(|r| r.register::<Burst>())
        .and_then(|r| r.register::<Pad>())
        .and_then(|r| r.register::<WaitFor>())
        .expect("distinct names");
    registry
}
