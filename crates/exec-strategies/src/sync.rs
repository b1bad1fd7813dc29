//! The synchronisation primitives of the threaded strategy's signal (its one piece of
//! hand-written concurrent code), swapped for loom's when the crate is built with
//! `--cfg exec_loom` so loom can check every interleaving:
//! `RUSTFLAGS="--cfg exec_loom" cargo test -p exec-strategies --all-features --lib loom`.

#[cfg(exec_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(exec_loom)]
pub(crate) use loom::sync::{Condvar, Mutex};

#[cfg(not(exec_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(exec_loom))]
pub(crate) use std::sync::{Condvar, Mutex};
