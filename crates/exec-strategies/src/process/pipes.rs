//! The two pipes a worker speaks the protocol on, named in its environment by the pool.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The protocol's two descriptors and the pipes they must be, `<read>:<inode>,<write>:<inode>`
/// ([`worker_pipes`]).
pub(crate) const PIPES_ENV: &str = "EXEC_STRATEGIES_PIPES";
/// The pid of the process that started the worker: the pool, or a launcher that `exec`s.
pub(crate) const PARENT_ENV: &str = "EXEC_STRATEGIES_PARENT";

/// Set once [`worker_pipes`] has taken the descriptors, so they are never owned twice.
static PIPES_TAKEN: AtomicBool = AtomicBool::new(false);

/// The two pipes a worker speaks the protocol on ([`wire`](super::wire)): frames from the parent
/// are read from the first, frames to it written to the second. They are descriptors of their own
/// that the parent names in the environment, never stdin or stdout: a worker's stdin is `/dev/null`
/// and its stdout goes to the parent's stderr, so nothing a node reads or prints can touch a
/// frame.
///
/// [`run_worker_if_requested`](super::run_worker_if_requested) calls this; a worker written
/// another way (in tests, say) may call it instead, once.
///
/// The environment names each descriptor with the pipe it must be (its inode): a process that
/// inherited the environment without the pipes (one a node started, say) finds other
/// descriptors or none under those numbers, and takes nothing.
///
/// # Errors
///
/// When the environment names no pipes, or names descriptors that are not those pipes, or the
/// pipes were taken already.
pub fn worker_pipes() -> io::Result<(File, File)> {
    let (input, output) = named_pipes()?;
    for fd in [input, output] {
        // SAFETY: F_SETFD sets close-on-exec on an open descriptor, so processes a node starts
        // do not inherit the protocol (they would keep the parent from seeing this worker end).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if PIPES_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("the protocol's pipes are taken already"));
    }
    // SAFETY: both are open, and are the pipes the parent made for this worker's protocol alone
    // (checked by `named_pipes`); the flag lets them be owned only once.
    Ok(unsafe { (File::from_raw_fd(input), File::from_raw_fd(output)) })
}

/// Whether this process was started as a worker, with its pipes, and has not taken them: a
/// worker program that never called
/// [`run_worker_if_requested`](super::run_worker_if_requested), and would start workers of its
/// own, each of which would do the same.
pub(crate) fn is_unserving_worker() -> bool {
    !PIPES_TAKEN.load(Ordering::SeqCst) && named_pipes().is_ok()
}

/// The two descriptors the environment names, once each is checked to be the pipe it names.
pub(crate) fn named_pipes() -> io::Result<(RawFd, RawFd)> {
    let named = std::env::var(PIPES_ENV).map_err(|_| {
        io::Error::other(format!(
            "{PIPES_ENV} is not set: this process was not started by a ProcessExecutionStrategy"
        ))
    })?;
    let fd = |part: Option<&str>| -> io::Result<RawFd> {
        let parsed = part
            .and_then(|p| p.split_once(':'))
            .and_then(|(fd, inode)| Some((fd.parse::<RawFd>().ok()?, inode.parse::<u64>().ok()?)));
        let no_pipes = || io::Error::other(format!("{PIPES_ENV}={named} names no pipes"));
        let (fd, inode) = parsed.filter(|&(fd, _)| fd > 2).ok_or_else(no_pipes)?;
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes the status of an open descriptor into `stat` (it fails on any
        // other number, writing nothing).
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
            return Err(io::Error::other(format!(
                "{PIPES_ENV}={named}: descriptor {fd} is not open ({}): this process was not \
                 started by a ProcessExecutionStrategy, or inherited a worker's environment",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: fstat succeeded, so it wrote the whole structure.
        let stat = unsafe { stat.assume_init() };
        #[allow(
            clippy::useless_conversion,
            reason = "st_ino is narrower on some platforms"
        )]
        let held = u64::from(stat.st_ino);
        if stat.st_mode & libc::S_IFMT != libc::S_IFIFO || held != inode {
            return Err(io::Error::other(format!(
                "{PIPES_ENV}={named}: descriptor {fd} is not the pipe named: this process was \
                 not started by a ProcessExecutionStrategy, or inherited a worker's environment"
            )));
        }
        Ok(fd)
    };
    let mut parts = named.split(',');
    let (input, output) = (fd(parts.next())?, fd(parts.next())?);
    if input == output {
        return Err(io::Error::other(format!(
            "{PIPES_ENV}={named} names one pipe twice"
        )));
    }
    Ok((input, output))
}
