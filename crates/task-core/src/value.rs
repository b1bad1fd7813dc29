//! [`Value`]: a node's output with its type erased, shared between the caller and subscribers.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// What a node's output must be to travel through strategies and the message bus.
///
/// Implemented for every `Debug + Send + Sync + 'static` type; `Debug` gives the one-line log form
/// (`<node> DONE with result <r>`).
trait Output: Any + fmt::Debug + Send + Sync {}

impl<T: Any + fmt::Debug + Send + Sync> Output for T {}

/// A node's output with its type erased, so one bus carries the results of every node type.
///
/// Cloning is a reference-count increment: every subscriber sees the same value. Recover the
/// concrete type with [`Value::downcast_ref`] or [`Value::downcast`].
///
/// # Examples
///
/// ```
/// use task_core::Value;
///
/// let value = Value::new(42_u32);
/// assert_eq!(value.downcast_ref::<u32>(), Some(&42));
/// assert!(value.downcast_ref::<String>().is_none());
/// assert_eq!(format!("{value:?}"), "42");
/// ```
#[derive(Clone)]
pub struct Value(Arc<dyn Output>);

impl Value {
    /// Wraps a value.
    pub fn new<T: Any + fmt::Debug + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }

    /// A reference to the value if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref()
    }

    /// Whether the value is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.downcast_ref::<T>().is_some()
    }

    /// The shared value as an `Arc<T>`, or `self` back if it is not a `T`.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` when the value is not a `T`.
    pub fn downcast<T: Any + Send + Sync>(self) -> Result<Arc<T>, Self> {
        if self.is::<T>() {
            let any: Arc<dyn Any + Send + Sync> = self.0;
            Ok(any
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("type checked above")))
        } else {
            Err(self)
        }
    }

    /// Whether anyone else holds this value (a clone of it). A value nobody else holds can be
    /// moved out with [`into_inner`](Self::into_inner), and stays unshared until cloned.
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// The value as a `T`, moved out: only when nobody else holds it.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` when the value is not a `T`, or is still shared.
    ///
    /// ```
    /// use task_core::Value;
    ///
    /// let value = Value::new(String::from("mine"));
    /// let shared = value.clone();
    /// let value = value.into_inner::<String>().unwrap_err();
    /// drop(shared);
    /// assert_eq!(value.into_inner::<String>().unwrap(), "mine");
    /// ```
    pub fn into_inner<T: Any + fmt::Debug + Send + Sync>(self) -> Result<T, Self> {
        let arc = self.downcast::<T>()?;
        Arc::try_unwrap(arc).map_err(|shared| Self(shared))
    }

    /// The value as a `T`: moved out when no one else holds it, cloned otherwise.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` when the value is not a `T`.
    pub fn take<T: Any + Clone + Send + Sync>(self) -> Result<T, Self> {
        self.downcast::<T>()
            .map(|arc| Arc::try_unwrap(arc).unwrap_or_else(|shared| (*shared).clone()))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_moves_when_unique_and_clones_when_shared() {
        let v = Value::new(String::from("hello"));
        let shared = v.clone();
        assert_eq!(v.take::<String>().unwrap(), "hello");
        // `shared` is now the only holder.
        assert_eq!(shared.take::<String>().unwrap(), "hello");
    }

    #[test]
    fn wrong_type_hands_the_value_back() {
        let v = Value::new(1_i64);
        let back = v.downcast::<i32>().unwrap_err();
        assert_eq!(back.downcast_ref::<i64>(), Some(&1));
    }
}
