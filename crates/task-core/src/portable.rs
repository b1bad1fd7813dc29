//! Process-capable nodes: serde types registered under a stable name, so they can cross a process
//! (or machine) boundary, and the [`NodeRegistry`] a worker uses to run them.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{BoxFuture, Node, TaskError, Value};

/// A node that can run in another process: a serde type with a stable name, whose output is a
/// serde type too.
///
/// Register it in the [`NodeRegistry`] of every worker that should run it; submit it with
/// [`Task::portable`](crate::Task::portable). It still runs in-process under the async and
/// threaded modes.
///
/// The node and its output cross in postcard ([`encode`]), which does not describe its own
/// fields: a type that needs a self-describing format never decodes on the other side
/// (`serde_json::Value`, `#[serde(untagged)]`, `#[serde(flatten)]`), and
/// `#[serde(skip_serializing_if)]` leaves out a field the reader still expects. The failure
/// shows only when the task runs, as [`TaskError::is_encoding_error`]: a test that decodes what
/// [`encode`] made of a node and of its output catches it first.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use task_core::{BoxError, Node, NodeRegistry, PortableNode};
///
/// #[derive(Serialize, Deserialize)]
/// struct WordCount { text: String }
///
/// impl Node for WordCount {
///     type Output = usize;
///     async fn invoke(self) -> Result<usize, BoxError> {
///         Ok(self.text.split_whitespace().count())
///     }
/// }
///
/// impl PortableNode for WordCount {
///     const NAME: &'static str = "word-count";
/// }
///
/// let mut registry = NodeRegistry::new();
/// registry.register::<WordCount>()?;
/// assert!(registry.contains("word-count"));
/// # Ok::<(), task_core::RegistryError>(())
/// ```
pub trait PortableNode:
    Node<Output: Serialize + DeserializeOwned> + Serialize + DeserializeOwned
{
    /// The stable name the node is registered and sent under. Keep it unchanged across versions
    /// of your program that must talk to each other. The name jobs, messages and traces show is
    /// [`Node::name`] (the type's name unless overridden): return `Self::NAME` there to show
    /// this one.
    const NAME: &'static str;
}

/// Encodes a value in the wire format shared by every process-crossing strategy (postcard: a
/// compact, stable, documented serde format).
///
/// # Errors
///
/// [`TaskError::is_encoding_error`] when the value cannot be serialized.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TaskError> {
    postcard::to_allocvec(value).map_err(|e| TaskError::encoding(format!("encoding failed: {e}")))
}

/// Decodes a value encoded with [`encode`] from the start of `bytes`; bytes after the value are
/// ignored (so a message that a later version extends at its end still reads, and can be
/// answered). Nodes and their outputs are read whole: bytes left over after one are an error.
///
/// # Errors
///
/// [`TaskError::is_encoding_error`] when the bytes do not start with a valid `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    postcard::from_bytes(bytes).map_err(|e| TaskError::encoding(format!("decoding failed: {e}")))
}

/// Decodes the whole of `bytes` as a `T`: how a node and its output are read, so that a peer
/// sending another type (or another version of it) that starts like a `T` is an error, not a
/// `T` read from the front with the rest ignored.
pub(crate) fn decode_whole<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(TaskError::encoding(format!(
            "decoding failed: {} trailing bytes after the value",
            rest.len()
        ))),
        Err(e) => Err(TaskError::encoding(format!("decoding failed: {e}"))),
    }
}

/// The process-crossing form of a task: the node's registered name, its encoded bytes, and how
/// to turn the worker's encoded output back into the caller's [`Value`].
#[derive(Clone)]
pub struct PortableTask {
    name: &'static str,
    payload: Result<Vec<u8>, TaskError>,
    decode_output: fn(&[u8]) -> Result<Value, TaskError>,
}

fn decode_value<T: DeserializeOwned + fmt::Debug + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<Value, TaskError> {
    decode_whole::<T>(bytes).map(Value::new)
}

impl PortableTask {
    pub(crate) fn of<N: PortableNode>(node: &N) -> Self {
        Self {
            name: N::NAME,
            payload: encode(node),
            decode_output: decode_value::<N::Output>,
        }
    }

    /// The node's registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The encoded node.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_encoding_error`] when the node could not be encoded.
    pub fn payload(&self) -> Result<&[u8], TaskError> {
        self.payload.as_deref().map_err(Clone::clone)
    }

    /// Decodes the worker's encoded output into the value the caller expects.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_encoding_error`] when the bytes are not exactly one value of the node's
    /// output type (bytes left over after it included).
    pub fn decode_output(&self, bytes: &[u8]) -> Result<Value, TaskError> {
        (self.decode_output)(bytes)
    }
}

impl fmt::Debug for PortableTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortableTask")
            .field("name", &self.name)
            .field("payload_len", &self.payload.as_ref().map(Vec::len).ok())
            .finish()
    }
}

/// What a worker does with an encoded node: decode it, run it, encode its output.
type Runner = fn(&[u8]) -> Result<BoxFuture<'static, Result<Vec<u8>, TaskError>>, TaskError>;

fn run_encoded<N: PortableNode>(
    bytes: &[u8],
) -> Result<BoxFuture<'static, Result<Vec<u8>, TaskError>>, TaskError> {
    let node: N = decode_whole(bytes)?;
    Ok(Box::pin(async move {
        let output = node.invoke().await.map_err(TaskError::node)?;
        encode(&output)
    }))
}

/// Why a node could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the name `{name}` is already registered for another type")]
pub struct RegistryError {
    name: &'static str,
}

impl RegistryError {
    /// The name that was taken.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The process-capable nodes a worker can run, by name.
///
/// The same registry is built in the parent and in every worker (usually by one function both
/// call), so the names a worker announces in its handshake match what the parent sends.
#[derive(Default, Clone)]
pub struct NodeRegistry {
    entries: HashMap<&'static str, (TypeId, Runner)>,
}

impl NodeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `N` under [`N::NAME`](PortableNode::NAME). Registering the same type again does
    /// nothing.
    ///
    /// # Errors
    ///
    /// When another type is registered under the same name; the registry is unchanged.
    pub fn register<N: PortableNode>(&mut self) -> Result<&mut Self, RegistryError> {
        let id = TypeId::of::<N>();
        match self.entries.get(N::NAME) {
            Some((existing, _)) if *existing != id => Err(RegistryError { name: N::NAME }),
            _ => {
                self.entries.insert(N::NAME, (id, run_encoded::<N>));
                Ok(self)
            }
        }
    }

    /// Whether a node is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Decodes the node registered under `name` from `payload` and returns the future that runs
    /// it and encodes its output. A panic in the node is not caught here.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_not_registered`] for an unknown name, [`TaskError::is_encoding_error`] for
    /// a payload that is not exactly that node (bytes left over after it included).
    pub fn run(
        &self,
        name: &str,
        payload: &[u8],
    ) -> Result<BoxFuture<'static, Result<Vec<u8>, TaskError>>, TaskError> {
        let (_, runner) = self
            .entries
            .get(name)
            .ok_or_else(|| TaskError::not_registered(name))?;
        // Decoding runs user `Deserialize` impls: keep a panic there from escaping.
        std::panic::catch_unwind(AssertUnwindSafe(|| runner(payload)))
            .unwrap_or_else(|payload| Err(TaskError::panic(payload)))
    }
}

impl fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRegistry")
            .field("names", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoxError, Task};
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct Double(u32);

    impl Node for Double {
        type Output = u64;
        async fn invoke(self) -> Result<u64, BoxError> {
            Ok(u64::from(self.0) * 2)
        }
    }

    impl PortableNode for Double {
        const NAME: &'static str = "double";
    }

    #[derive(Serialize, Deserialize)]
    struct Impostor;

    impl Node for Impostor {
        type Output = ();
        async fn invoke(self) -> Result<(), BoxError> {
            Ok(())
        }
    }

    impl PortableNode for Impostor {
        const NAME: &'static str = "double";
    }

    #[test]
    fn a_registered_node_round_trips_through_bytes() {
        let mut registry = NodeRegistry::new();
        registry.register::<Double>().unwrap();
        let task = Task::portable("r", Double(21));
        let portable = task.into_erased().portable().cloned().unwrap();
        assert_eq!(portable.name(), "double");
        let run = registry.run("double", portable.payload().unwrap()).unwrap();
        let out = futures::executor::block_on(run).unwrap();
        let value = portable.decode_output(&out).unwrap();
        assert_eq!(value.downcast_ref::<u64>(), Some(&42));
    }

    #[test]
    fn unknown_names_and_bad_payloads_are_typed_errors() {
        let mut registry = NodeRegistry::new();
        registry.register::<Double>().unwrap();
        assert!(
            registry
                .run("triple", &[])
                .err()
                .unwrap()
                .is_not_registered()
        );
        assert!(
            registry
                .run("double", &[])
                .err()
                .unwrap()
                .is_encoding_error()
        );
    }

    /// A node or an output is the whole of its bytes: bytes left over mean the peer sent
    /// something else (another type, or another version of it), not this value and some noise.
    #[test]
    fn bytes_past_the_value_are_an_encoding_error() {
        let mut registry = NodeRegistry::new();
        registry.register::<Double>().unwrap();
        let mut node = encode(&Double(21)).unwrap();
        node.push(0x07);
        let error = registry.run("double", &node).err().unwrap();
        assert!(error.is_encoding_error(), "{error}");
        assert!(error.message().contains("1 trailing byte"), "{error}");

        let portable = Task::portable("r", Double(21))
            .into_erased()
            .portable()
            .cloned()
            .unwrap();
        // A worker whose node returns `(u64, u8)` where this side expects a `u64`.
        let other_type = encode(&(42_u64, 7_u8)).unwrap();
        let error = portable.decode_output(&other_type).unwrap_err();
        assert!(error.is_encoding_error(), "{error}");
        let exact = portable.decode_output(&encode(&42_u64).unwrap()).unwrap();
        assert_eq!(exact.downcast_ref::<u64>(), Some(&42));
    }

    #[test]
    fn a_name_cannot_be_taken_by_two_types() {
        let mut registry = NodeRegistry::new();
        registry.register::<Double>().unwrap();
        registry.register::<Double>().unwrap();
        let err = registry.register::<Impostor>().err().unwrap();
        assert_eq!(err.name(), "double");
        assert_eq!(registry.names(), vec!["double"]);
    }

    #[test]
    fn portable_tasks_still_run_in_process() {
        let task = Task::portable("r", Double(5));
        assert_eq!(futures::executor::block_on(task.invoke()).unwrap(), 10);
    }
}
