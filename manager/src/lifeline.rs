//! Lifeline file descriptors (DESIGN.md §4): a client keeps the read end of
//! a pipe and sends the write end with its request; when the client closes
//! its end or dies, our copy reports an error/hang-up and the resource tied
//! to it is torn down.
//!
//! The watcher owns the descriptors and their mio registrations; the
//! manager maps a fired token back to what it protects.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// What a lifeline protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guarded {
    Namespace(u32),
}

#[derive(Debug)]
pub struct LifelineWatcher {
    base: usize,
    next: usize,
    by_token: HashMap<Token, (Guarded, OwnedFd)>,
}

impl LifelineWatcher {
    /// Tokens handed out are `base` and above.
    pub fn new(base: usize) -> LifelineWatcher {
        LifelineWatcher {
            base,
            next: base,
            by_token: HashMap::new(),
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.base
    }

    /// Starts watching `fd` for `what`. A descriptor whose peer is already
    /// gone fires at once (epoll reports the pending error on registration).
    pub fn watch(
        &mut self,
        registry: &Registry,
        fd: OwnedFd,
        what: Guarded,
    ) -> std::io::Result<Token> {
        let token = Token(self.next);
        self.next += 1;
        // Pipes report EPOLLERR (write end, reader gone) or EPOLLHUP (read
        // end, writer gone) whatever the interest; READABLE is the
        // cheapest interest that never busy-fires on a write end.
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        self.by_token.insert(token, (what, fd));
        Ok(token)
    }

    /// The event for `token` fired: stop watching and say what died. `None`
    /// for a token already forgotten (a late event).
    pub fn fired(&mut self, registry: &Registry, token: Token) -> Option<Guarded> {
        let (what, fd) = self.by_token.remove(&token)?;
        let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        Some(what)
    }

    /// Stops watching without reporting (the resource went away first).
    pub fn forget(&mut self, registry: &Registry, what: Guarded) {
        let tokens: Vec<Token> = self
            .by_token
            .iter()
            .filter(|(_, (w, _))| *w == what)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some((_, fd)) = self.by_token.remove(&t) {
                let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
        }
    }

    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.by_token.len()
    }
}

/// Whether a lifeline descriptor's peer is gone (poll reports ERR or HUP).
#[cfg(test)]
fn is_dead(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && (p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds on success.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are fresh and owned by us.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn closing_the_client_end_fires_the_watch() {
        let mut poll = mio::Poll::new().unwrap();
        let mut w = LifelineWatcher::new(100);
        let (read_end, write_end) = pipe();
        let token = w
            .watch(poll.registry(), write_end, Guarded::Namespace(3))
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(events.is_empty(), "fired while the client held its end");
        drop(read_end);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let fired: Vec<Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(fired, vec![token]);
        assert_eq!(w.fired(poll.registry(), token), Some(Guarded::Namespace(3)));
        assert_eq!(w.fired(poll.registry(), token), None);
        assert_eq!(w.watched(), 0);
    }

    #[test]
    fn a_lifeline_already_dead_fires_at_once() {
        let mut poll = mio::Poll::new().unwrap();
        let mut w = LifelineWatcher::new(100);
        let (read_end, write_end) = pipe();
        drop(read_end);
        assert!(is_dead(&write_end));
        let token = w
            .watch(poll.registry(), write_end, Guarded::Namespace(1))
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            vec![token]
        );
    }
}
