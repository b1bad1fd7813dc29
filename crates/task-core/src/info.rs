//! [`TaskInfo`]: what identifies a task, without the work itself.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{NodeId, RequestId, Text};

/// A name that is cheap to clone whether it was static or computed: stored as ids are; with the
/// `inline-ids` feature a static name is borrowed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Name(Text);

impl Name {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Cow<'static, str>> for Name {
    fn from(name: Cow<'static, str>) -> Self {
        match name {
            #[cfg(feature = "inline-ids")]
            Cow::Borrowed(s) => Name(Text::new_static(s)),
            #[cfg(not(feature = "inline-ids"))]
            Cow::Borrowed(s) => Name(Text::from(s)),
            Cow::Owned(s) => Name(Text::from(s)),
        }
    }
}

/// What identifies a task: its request, the node it runs, the node that submitted it, and a name.
///
/// Everything the job table and the messages need, without the work itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TaskInfo {
    pub(crate) request_id: RequestId,
    pub(crate) node_id: NodeId,
    pub(crate) parent_id: Option<NodeId>,
    pub(crate) name: Name,
}

impl TaskInfo {
    /// Describes a task; `name` is the node's human-readable name.
    pub fn new(
        request_id: RequestId,
        node_id: NodeId,
        parent_id: Option<NodeId>,
        name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            request_id,
            node_id,
            parent_id,
            name: Name::from(name.into()),
        }
    }

    /// The request this task answers.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The node this task runs (the job's child node).
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The node that submitted this task, or `None` for a top-level request.
    pub fn parent_id(&self) -> Option<&NodeId> {
        self.parent_id.as_ref()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl AsRef<TaskInfo> for TaskInfo {
    fn as_ref(&self) -> &TaskInfo {
        self
    }
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("request_id", &self.request_id)
            .field("node_id", &self.node_id)
            .field("parent_id", &self.parent_id)
            .field("name", &self.name())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct TaskInfoWire {
    request_id: RequestId,
    node_id: NodeId,
    parent_id: Option<NodeId>,
    name: String,
}

impl Serialize for TaskInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskInfoWire {
            request_id: self.request_id.clone(),
            node_id: self.node_id.clone(),
            parent_id: self.parent_id.clone(),
            name: self.name().to_owned(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = TaskInfoWire::deserialize(deserializer)?;
        Ok(Self::new(w.request_id, w.node_id, w.parent_id, w.name))
    }
}
