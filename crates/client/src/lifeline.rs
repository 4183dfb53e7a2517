//! The caller's end of a lifeline.
//!
//! `ConnectNamespace` (and later `SetDnsRedirectionRule`) take a file
//! descriptor whose closing tells the server to undo the call. The client
//! makes a pipe, sends the write end and keeps the read end: when the read
//! end closes — the owner dropped it, or the process died — the server's copy
//! of the write end reports an error (`EPOLLERR`) and the server tears the
//! resource down. Both ends are close-on-exec so that a child process cannot
//! keep the resource alive by accident.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Holds a resource on the server for as long as it lives; dropping it (or
/// [`Lifeline::release`]) releases the resource.
#[derive(Debug)]
pub struct Lifeline {
    read_end: OwnedFd,
}

impl Lifeline {
    /// Makes a new close-on-exec pipe: the lifeline (read end) and the write
    /// end to send to the server.
    pub fn pair() -> io::Result<(Lifeline, OwnedFd)> {
        let (read_end, write_end) = pipe_cloexec()?;
        Ok((Lifeline { read_end }, write_end))
    }

    /// Releases the resource now (the same as dropping the lifeline).
    pub fn release(self) {
        drop(self);
    }

    /// The read end, for a caller that wants to keep the resource alive some
    /// other way (e.g. hand it to a child process, clearing `FD_CLOEXEC`).
    pub fn into_fd(self) -> OwnedFd {
        self.read_end
    }
}

impl AsFd for Lifeline {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }
}

impl AsRawFd for Lifeline {
    fn as_raw_fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: pipe2 writes two descriptors into the 2-element array it is
    // given and nothing else.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing
    // else owns.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_flags(fd: BorrowedFd<'_>) -> libc::c_int {
        // SAFETY: F_GETFD on a descriptor we hold; no memory is passed.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) }
    }

    /// `poll` revents of `fd` for `events`, without waiting.
    fn revents(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::c_short {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1, no wait.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert!(rc >= 0, "poll: {}", io::Error::last_os_error());
        pfd.revents
    }

    #[test]
    fn both_ends_of_a_lifeline_are_close_on_exec() {
        let (lifeline, write_end) = Lifeline::pair().unwrap();

        assert_ne!(fd_flags(lifeline.as_fd()) & libc::FD_CLOEXEC, 0);
        assert_ne!(fd_flags(write_end.as_fd()) & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn write_end_reports_no_error_while_the_lifeline_lives() {
        let (lifeline, write_end) = Lifeline::pair().unwrap();

        assert_eq!(revents(write_end.as_fd(), 0) & libc::POLLERR, 0);
        drop(lifeline);
    }

    #[test]
    fn dropping_the_lifeline_makes_the_write_end_report_an_error() {
        let (lifeline, write_end) = Lifeline::pair().unwrap();

        drop(lifeline);

        assert_ne!(revents(write_end.as_fd(), 0) & libc::POLLERR, 0);
    }

    #[test]
    fn into_fd_keeps_the_resource_alive() {
        let (lifeline, write_end) = Lifeline::pair().unwrap();

        let read_end = lifeline.into_fd();

        assert_eq!(revents(write_end.as_fd(), 0) & libc::POLLERR, 0);
        drop(read_end);
        assert_ne!(revents(write_end.as_fd(), 0) & libc::POLLERR, 0);
    }
}
