//! Request and node identifiers: cheap to clone, user-provided or generated.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How ids and names are stored. With the `inline-ids` feature, which the coordinator turns on
/// for its job table, up to 23 bytes (every generated id) inline: no heap block per id, and a
/// clone copies 24 bytes. Without it, shared: a clone counts a reference.
#[cfg(feature = "inline-ids")]
pub(crate) type Text = smol_str::SmolStr;
#[cfg(not(feature = "inline-ids"))]
pub(crate) type Text = Arc<str>;

/// Digits of the generated ids: base 32, lower case, so an id is short and URL- and
/// subject-safe.
const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// Width of the counter part: 7 base-32 digits (34 billion ids) before it grows. A fixed width
/// keeps every id 23 bytes long, the most an id stores inline.
const COUNTER_WIDTH: usize = 7;

/// Writes `value` in base 32 into the end of `out`, at least `min_width` digits; returns the
/// number of digits written.
fn base32(mut value: u64, min_width: usize, out: &mut [u8; 13]) -> usize {
    let mut len = 0;
    while len < out.len() && (value != 0 || len < min_width) {
        len += 1;
        out[out.len() - len] = DIGITS[(value & 31) as usize];
        value >>= 5;
    }
    len
}

/// A per-process random prefix plus a counter: unique within the process, and unique across
/// processes with overwhelming probability, without a system call per id. The shape is
/// `{kind}-{13 digits}-{7 or more digits}`, 23 bytes (stored inline, no allocation) for the first
/// 34 billion ids.
fn generate(kind: char) -> Text {
    /// `-{13 digits}-`: the part every id of this process shares, written once.
    static PREFIX: OnceLock<[u8; 15]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        // `RandomState` is seeded from the operating system's randomness once per process.
        let seed = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
        let mut digits = [0_u8; 13];
        base32(seed, 13, &mut digits);
        let mut prefix = [b'-'; 15];
        prefix[1..14].copy_from_slice(&digits);
        prefix
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut counter = [0_u8; 13];
    let counter_len = base32(n, COUNTER_WIDTH, &mut counter);
    // Built on the stack: kind, prefix, counter.
    let mut buf = [0_u8; 1 + 15 + 13];
    buf[0] = if kind.is_ascii() { kind as u8 } else { b'x' };
    buf[1..16].copy_from_slice(prefix);
    let len = 16 + counter_len;
    buf[16..len].copy_from_slice(&counter[13 - counter_len..]);
    match std::str::from_utf8(&buf[..len]) {
        Ok(id) => Text::from(id),
        // Unreachable: every byte above is ASCII.
        Err(_) => Text::from(format!("{kind}{}{n:x}", String::from_utf8_lossy(prefix))),
    }
}

macro_rules! id_impls {
    ($name:ident, $kind:literal) => {
        impl $name {
            /// Creates an id from any string; the caller is responsible for its uniqueness.
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Text::from(id.as_ref()))
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
                Self(Text::from(id))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(IdVisitor).map(Self)
            }
        }
    };
}

/// Reads an id from any string form without an intermediate `String` for short ids.
struct IdVisitor;

impl serde::de::Visitor<'_> for IdVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id string")
    }

    fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<Text, E> {
        Ok(Text::from(id))
    }

    fn visit_string<E: serde::de::Error>(self, id: String) -> Result<Text, E> {
        Ok(Text::from(id))
    }
}

/// Identifies one request: one submission of a task, and the job that tracks it.
///
/// Bring your own (`RequestId::from("123")`) or generate one with [`RequestId::generate`].
/// With the `inline-ids` feature (the coordinator turns it on), ids up to 23 bytes (every
/// generated id) are stored inline and cloned by copying 24 bytes; longer ones, and every one
/// without the feature, are shared, and cloned with a reference-count increment.
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
pub struct RequestId(Text);

id_impls!(RequestId, 'r');

/// Identifies one node instance: the unit of work a task runs.
///
/// A job records the node it ran (its child node) and the node that submitted it (its parent).
/// Stored and cloned as a [`RequestId`] is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Text);

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
        assert_eq!(parts[1].len(), 13);
        assert_eq!(parts[2].len(), COUNTER_WIDTH);
        assert_eq!(id.len(), 23);
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.bytes().all(|b| DIGITS.contains(&b)))
        );
        // Every generated node id has the same length, whatever the counter.
        let lengths: HashSet<usize> = (0..1_000).map(|_| NodeId::generate().len()).collect();
        assert_eq!(lengths.len(), 1);
    }

    #[test]
    fn base32_pads_grows_and_fits_the_largest_value() {
        let mut out = [0_u8; 13];
        let len = base32(33, 7, &mut out);
        assert_eq!(&out[13 - len..], b"0000011");
        let len = base32(u64::MAX, 7, &mut out);
        assert_eq!(len, 13);
        assert_eq!(out[0], b'f', "the top digit holds the last 4 bits");
        assert_eq!(base32(0, 0, &mut out), 0);
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
    fn ids_of_any_length_round_trip_and_stay_small() {
        for text in [
            "",
            "7",
            "exactly-twenty-three-by",
            "a longer id than fits in line, shared",
        ] {
            let id = RequestId::from(text);
            assert_eq!(id.as_str(), text);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<RequestId>(&json).unwrap(), id);
            #[cfg(feature = "portable")]
            {
                let bytes = postcard::to_allocvec(&id).unwrap();
                assert_eq!(postcard::from_bytes::<RequestId>(&bytes).unwrap(), id);
            }
            assert_eq!(RequestId::from(Arc::<str>::from(text)), id);
        }
        // The job table holds three ids per job: inline, no heap block each.
        #[cfg(feature = "inline-ids")]
        assert_eq!(
            (size_of::<RequestId>(), size_of::<Option<NodeId>>()),
            (24, 24)
        );
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
