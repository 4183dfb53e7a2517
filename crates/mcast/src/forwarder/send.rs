//! The send path: copies queued per batch ([`SendQueue`]) and sent per
//! socket with `sendmmsg`, the raw broadcast sends, and the per-link send
//! error accounting.

use super::*;

/// A copy waiting in the [`SendQueue`].
#[derive(Debug)]
pub(super) struct Queued {
    fd: RawFd,
    /// Its place in the queue: copies on one socket leave in this order.
    seq: usize,
    to: SocketAddr,
    /// Its bytes in [`SendQueue::bytes`].
    start: usize,
    len: usize,
    link: Arc<str>,
    ifindex: u32,
    kind: Kind,
}

/// The copies a batch makes, sent per socket with `sendmmsg` when the
/// batch is handled (or when the queue is full). Their bytes are copied
/// into one buffer allocated once. Only group and raw sockets are queued,
/// never a session socket, and the queue is empty whenever
/// [`Forwarder::ready`] returns, so no socket it names is closed while a
/// copy waits for it.
#[derive(Default)]
pub(super) struct SendQueue {
    bytes: Vec<u8>,
    entries: Vec<Queued>,
}

impl std::fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendQueue")
            .field("bytes", &self.bytes.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl SendQueue {
    pub(super) fn with_capacity() -> SendQueue {
        SendQueue {
            bytes: Vec::with_capacity(QUEUE_BYTES),
            entries: Vec::with_capacity(QUEUE_LEN),
        }
    }

    pub(super) fn has_room(&self, len: usize) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < QUEUE_LEN && self.bytes.len() + len <= QUEUE_BYTES)
    }
}

impl Forwarder {
    /// Queues a copy; sends the queue first if it is full.
    pub(super) fn enqueue(
        &mut self,
        fd: RawFd,
        to: SocketAddr,
        payload: &[u8],
        link: Arc<str>,
        ifindex: u32,
        kind: Kind,
    ) {
        if !self.queue.has_room(payload.len()) {
            self.flush();
        }
        let q = &mut self.queue;
        let start = q.bytes.len();
        q.bytes.extend_from_slice(payload);
        q.entries.push(Queued {
            fd,
            seq: q.entries.len(),
            to,
            start,
            len: payload.len(),
            link,
            ifindex,
            kind,
        });
    }

    /// Sends what is queued: per socket, in the order queued,
    /// [`socket::BATCH`] copies per `sendmmsg`.
    pub(super) fn flush(&mut self) {
        if self.queue.entries.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.queue);
        queue.entries.sort_unstable_by_key(|e| (e.fd, e.seq));
        let n = queue.entries.len();
        let mut i = 0;
        while i < n {
            let fd = queue.entries[i].fd;
            let mut end = i + 1;
            while end < n && end - i < BATCH && queue.entries[end].fd == fd {
                end += 1;
            }
            let bytes = &queue.bytes;
            let run = queue.entries[i..end]
                .iter()
                .map(|e| (&e.to, &bytes[e.start..e.start + e.len]));
            match socket::send_many(fd, run) {
                Ok(k) => {
                    let k = k.clamp(1, end - i);
                    for e in &queue.entries[i..i + k] {
                        self.sent(e);
                    }
                    i += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.send_failed(&queue.entries[i].link, &e);
                    i += 1;
                }
            }
        }
        queue.entries.clear();
        queue.bytes.clear();
        self.queue = queue;
    }

    pub(super) fn sent(&mut self, e: &Queued) {
        match e.kind {
            Kind::Relayed { digest } => self.echo.remember(e.ifindex, digest, self.now),
            Kind::Reply => self.stats.unicast_replies += 1,
        }
        self.send_worked(&e.link);
    }

    pub(super) fn send_worked(&mut self, link: &str) {
        self.stats.sent += 1;
        if !self.last_error.is_empty() && self.last_error.remove(link).is_some() {
            info!("{link}: sending works again");
        }
    }

    pub(super) fn send_failed(&mut self, link: &str, e: &io::Error) {
        self.stats.send_errors += 1;
        let errno = e.raw_os_error().unwrap_or(0);
        // One line per new error on a link, not one per packet.
        if self.last_error.get(link) != Some(&errno) {
            self.last_error.insert(link.to_string(), errno);
            warn!("{link}: send failed: {e}");
        }
    }

    /// Sends one copy to `egress`'s group: queued for its group socket,
    /// or, for a query expecting a unicast answer, at once from a new
    /// session socket whose answers go back through `ingress` to
    /// `querier`.
    pub(super) fn send_copy(
        &mut self,
        egress: &Arc<str>,
        protocol: Protocol,
        family: Family,
        payload: &[u8],
        digest: u64,
        session: Option<(&Arc<str>, SocketAddr, Option<ToLan>)>,
    ) {
        let Some(link) = self.links.get(&**egress) else {
            return;
        };
        let ifindex = link.ifindex;
        let to = group_addr(protocol, family, ifindex);
        let Some((ingress, querier, rewrite)) = session else {
            let Some(fd) = link
                .group
                .get(&(protocol, family))
                .map(|(_, fd)| fd.as_raw_fd())
            else {
                return;
            };
            let name = link.name.clone();
            self.enqueue(fd, to, payload, name, ifindex, Kind::Relayed { digest });
            return;
        };
        let result = match socket::udp(family, egress, ifindex, 0, None, protocol.ttl()) {
            Ok(fd) => {
                let sent = socket::send_to(fd.as_raw_fd(), payload, &to);
                match self.register(&fd, Some(Source::Session)) {
                    Ok(token) => {
                        self.stats.sessions += 1;
                        self.sessions.insert(
                            token,
                            Session {
                                fd,
                                protocol,
                                family,
                                ingress: ingress.clone(),
                                querier,
                                rewrite,
                                expires: self.now + SESSION_LIFETIME,
                            },
                        );
                        self.session_order.push_back(token);
                        self.expire(self.now);
                    }
                    Err(e) => warn!("{egress}: session socket: {e}"),
                }
                sent
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.echo.remember(ifindex, digest, self.now);
                self.send_worked(egress);
            }
            Err(e) => self.send_failed(egress, &e),
        }
    }

    /// Queues a built broadcast packet for `link`'s raw socket; `digest`
    /// is its payload's, remembered once sent.
    pub(super) fn send_raw(&mut self, link: &str, packet: &[u8], to: Ipv4Addr, digest: u64) {
        let Some((ifindex, fd, name)) = self.links.get(link).and_then(|l| {
            l.raw
                .as_ref()
                .map(|(_, _, tx)| (l.ifindex, tx.as_raw_fd(), l.name.clone()))
        }) else {
            return;
        };
        let to = SocketAddr::new(to.into(), 0);
        self.enqueue(fd, to, packet, name, ifindex, Kind::Relayed { digest });
    }
}
