//! Request and node identifiers: cheap to clone, user-provided or generated.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A per-process random prefix plus a counter: unique within the process, and unique across
/// processes with overwhelming probability, without a system call per id.
fn generate(kind: char) -> Arc<str> {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        // `RandomState` is seeded from the operating system's randomness once per process.
        RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Formatted on the stack, so the id costs one allocation (the Arc), not two.
    let mut buf = [0_u8; 40];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written =
        std::io::Write::write_fmt(&mut cursor, format_args!("{kind}-{prefix:016x}-{n:x}"));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    match (written, std::str::from_utf8(&buf[..len])) {
        (Ok(()), Ok(id)) => Arc::from(id),
        // Unreachable in practice (at most 36 ASCII bytes); fall back to the allocating path.
        _ => format!("{kind}-{prefix:016x}-{n:x}").into(),
    }
}

macro_rules! id_impls {
    ($name:ident, $kind:literal) => {
        impl $name {
            /// Creates an id from any string; the caller is responsible for its uniqueness.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// Generates an id unique within this process (and, with overwhelming probability,
            /// across processes).
            pub fn generate() -> Self {
                Self(generate($kind))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.into())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id.into())
            }
        }

        impl From<Arc<str>> for $name {
            fn from(id: Arc<str>) -> Self {
                Self(id)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

/// Identifies one request: one submission of a task, and the job that tracks it.
///
/// Bring your own (`RequestId::from("123")`) or generate one with [`RequestId::generate`].
/// Cloning is a reference-count increment.
///
/// # Examples
///
/// ```
/// use task_core::RequestId;
///
/// let mine = RequestId::from("123");
/// assert_eq!(mine.as_str(), "123");
/// assert_ne!(RequestId::generate(), RequestId::generate());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

id_impls!(RequestId, 'r');

/// Identifies one node instance: the unit of work a task runs.
///
/// A job records the node it ran (its child node) and the node that submitted it (its parent).
/// Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

id_impls!(NodeId, 'n');

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_have_the_documented_shape() {
        let id = RequestId::generate();
        let parts: Vec<&str> = id.as_str().split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "r");
        assert_eq!(parts[1].len(), 16);
        assert!(u64::from_str_radix(parts[2], 16).is_ok());
        // The largest possible id still fits the stack buffer.
        let widest = format!("n-{:016x}-{:x}", u64::MAX, u64::MAX);
        assert!(widest.len() <= 40);
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids: HashSet<RequestId> = (0..10_000).map(|_| RequestId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn user_ids_compare_by_value_and_borrow_as_str() {
        let a = RequestId::from("123");
        let b = RequestId::from(String::from("123"));
        assert_eq!(a, b);
        let set: HashSet<RequestId> = [a].into_iter().collect();
        assert!(set.contains("123"));
        assert_eq!(b.to_string(), "123");
        assert_eq!(format!("{b:?}"), "\"123\"");
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = NodeId::from("node-7");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"node-7\"");
        let back: NodeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }
}
