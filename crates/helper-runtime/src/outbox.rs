//! What a helper sends to the manager, without ever blocking its loop or
//! dying because the manager is slow to read.
//!
//! The channel is non-blocking. When its buffer is full (the manager is
//! busy, for instance waiting for the writer):
//! * an [`Event`] is dropped and counted. Events are hints the helper
//!   repeats while they stay true (the ND proxy reports an address in use
//!   again every 30 s), so losing one under pressure costs a delay, never
//!   a wrong state; the drops are logged once per [`DROP_LOG_INTERVAL`]
//!   with their count;
//! * a `Response` is queued and sent, in order, as soon as the channel
//!   takes it: the manager is waiting for it. Events are not sent while
//!   responses wait, so they never overtake them. A queue longer than
//!   [`MAX_QUEUED_RESPONSES`] means the manager stopped reading while still
//!   sending requests, and ends the helper.
//!
//! A closed channel or a socket error is the end, as before.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::warn;
use patchpanel_ipc::{Channel, ChannelError, Event, HelperMessage};

/// At most one log line about dropped events per this interval.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Responses that may wait for the channel.
pub const MAX_QUEUED_RESPONSES: usize = 1024;

/// See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    queued: VecDeque<HelperMessage>,
    dropped: u64,
    /// When drops were last logged, and the count then.
    logged: (Instant, u64),
}

impl Outbox {
    pub fn new(now: Instant) -> Outbox {
        Outbox {
            queued: VecDeque::new(),
            dropped: 0,
            logged: (now, 0),
        }
    }

    /// Events dropped so far because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Responses waiting for the channel.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Sends an event now, or drops it (counted) if the channel is full or
    /// responses are waiting.
    pub fn event(&mut self, channel: &Channel, event: Event) -> Result<(), String> {
        if !self.queued.is_empty() {
            self.dropped += 1;
            return Ok(());
        }
        match channel.send(&HelperMessage::Event(event), &[]) {
            Ok(()) => Ok(()),
            Err(ChannelError::WouldBlock) => {
                self.dropped += 1;
                Ok(())
            }
            Err(e) if e.is_fatal() => Err(fatal(e)),
            // Cannot be encoded (too large): this event is lost, the
            // channel is fine.
            Err(e) => {
                warn!("dropped an event the channel refused: {e}");
                Ok(())
            }
        }
    }

    /// Sends a response, or queues it behind earlier ones until the
    /// channel takes it.
    pub fn response(&mut self, channel: &Channel, response: HelperMessage) -> Result<(), String> {
        self.queued.push_back(response);
        if self.queued.len() > MAX_QUEUED_RESPONSES {
            return Err(format!(
                "the manager has not read its channel while {} responses waited",
                self.queued.len()
            ));
        }
        self.flush(channel)
    }

    /// Sends what waits, in order, until the channel is full again.
    pub fn flush(&mut self, channel: &Channel) -> Result<(), String> {
        while let Some(front) = self.queued.front() {
            match channel.send(front, &[]) {
                Ok(()) => {}
                Err(ChannelError::WouldBlock) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(fatal(e)),
                Err(e) => warn!("dropped a response the channel refused: {e}"),
            }
            self.queued.pop_front();
        }
        Ok(())
    }

    /// When the drop summary is due, if events were dropped since the last.
    pub fn next_deadline(&self) -> Option<Instant> {
        (self.dropped != self.logged.1).then_some(self.logged.0 + DROP_LOG_INTERVAL)
    }

    /// Logs the drops since the last summary, at most once per interval.
    pub fn log_drops(&mut self, now: Instant) {
        if self.dropped == self.logged.1 || now < self.logged.0 + DROP_LOG_INTERVAL {
            return;
        }
        warn!(
            "dropped {} event(s) in the last {:.0?}: the manager's channel was full ({} since start)",
            self.dropped - self.logged.1,
            now.saturating_duration_since(self.logged.0),
            self.dropped
        );
        self.logged = (now, self.dropped);
    }
}

fn fatal(e: ChannelError) -> String {
    match e {
        ChannelError::Closed => "manager closed the channel".into(),
        e => format!("ipc send: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use patchpanel_ipc::Reply;

    use super::*;

    fn event(i: u8) -> Event {
        Event::NeighborDetected {
            ifindex: 3,
            addr: [i; 16],
        }
    }

    fn response(id: u64) -> HelperMessage {
        HelperMessage::Response {
            id,
            result: Ok(Reply::Done),
        }
    }

    /// A non-blocking pair whose helper end is full.
    fn full_pair() -> (Channel, Channel) {
        let (helper, manager) = Channel::pair().expect("socketpair");
        helper.set_nonblocking(true).expect("nonblocking");
        manager.set_nonblocking(true).expect("nonblocking");
        let mut i = 0u8;
        loop {
            match helper.send(&HelperMessage::Event(event(i)), &[]) {
                Ok(()) => i = i.wrapping_add(1),
                Err(ChannelError::WouldBlock) => return (helper, manager),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn drain(manager: &Channel) -> Vec<HelperMessage> {
        let mut out = Vec::new();
        loop {
            match manager.recv::<HelperMessage>() {
                Ok(r) => out.push(r.msg),
                Err(ChannelError::WouldBlock) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn events_are_dropped_and_counted_when_the_channel_is_full() {
        let (helper, _manager) = full_pair();
        let mut outbox = Outbox::new(Instant::now());
        for i in 0..100 {
            assert_eq!(outbox.event(&helper, event(i)), Ok(()));
        }
        assert_eq!(outbox.dropped(), 100);
        assert!(outbox.next_deadline().is_some(), "a summary is due");
    }

    #[test]
    fn a_response_waits_for_the_channel_and_is_delivered_in_order() {
        let (helper, manager) = full_pair();
        let mut outbox = Outbox::new(Instant::now());
        outbox.response(&helper, response(1)).expect("queued");
        outbox.response(&helper, response(2)).expect("queued");
        assert_eq!(outbox.queued(), 2);
        outbox.event(&helper, event(0)).expect("event");
        assert_eq!(outbox.dropped(), 1, "events never overtake responses");

        let backlog = drain(&manager);
        outbox.flush(&helper).expect("flush");

        assert!(!backlog.is_empty());
        assert_eq!(outbox.queued(), 0);
        assert_eq!(drain(&manager), vec![response(1), response(2)]);
    }

    #[test]
    fn a_manager_that_never_reads_ends_the_helper_after_the_bound() {
        let (helper, _manager) = full_pair();
        let mut outbox = Outbox::new(Instant::now());
        for id in 0..MAX_QUEUED_RESPONSES as u64 {
            outbox.response(&helper, response(id)).expect("queued");
        }
        assert!(outbox.response(&helper, response(9999)).is_err());
    }

    #[test]
    fn a_closed_channel_is_fatal() {
        let (helper, manager) = Channel::pair().expect("socketpair");
        drop(manager);
        let mut outbox = Outbox::new(Instant::now());
        assert!(outbox.event(&helper, event(0)).is_err());
        assert!(outbox.response(&helper, response(1)).is_err());
    }

    #[test]
    fn drops_are_summarised_at_most_once_per_interval() {
        let (helper, _manager) = full_pair();
        let t0 = Instant::now();
        let mut outbox = Outbox::new(t0);
        outbox.event(&helper, event(0)).expect("event");
        assert_eq!(outbox.next_deadline(), Some(t0 + DROP_LOG_INTERVAL));
        outbox.log_drops(t0 + DROP_LOG_INTERVAL / 2);
        assert_eq!(outbox.next_deadline(), Some(t0 + DROP_LOG_INTERVAL));
        outbox.log_drops(t0 + DROP_LOG_INTERVAL);
        assert_eq!(outbox.next_deadline(), None, "nothing new to say");
    }
}
