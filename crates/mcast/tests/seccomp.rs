//! The forwarder's batched socket calls under the
//! `patchpanel-mcast-forwarder` helper's own seccomp filter
//! (`seccomp/mcast-forwarder.json`, enforcing: a call outside it kills the
//! process with SIGSYS, which fails this test). The end-to-end tests
//! forward through the helper too, but not every call here is on their
//! path (the drop counters are read only when a pair stops and at exit).
//!
//! The filter is installed on one thread only (seccomp filters are per
//! thread unless synchronised), which then makes the calls on two UDP
//! sockets on the loopback address.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use patchpanel_mcast::socket::{self, RecvBatch, BATCH};
use patchpanel_sandbox::{install_filter, Process, SeccompMode};

#[test]
fn batched_receive_and_send_buffer_sizing_and_drop_counts_pass_the_helper_filter() {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    rx.set_nonblocking(true).expect("non-blocking");
    let to: SocketAddr = rx.local_addr().expect("address");
    let mut batch = RecvBatch::new(2048);

    let (sent, received, drops, got) = std::thread::scope(|s| {
        s.spawn(|| {
            install_filter(Process::McastForwarder, SeccompMode::Enforce).expect("filter");
            let got = socket::set_receive_buffer(rx.as_raw_fd(), 1 << 20).expect("SO_RCVBUF");
            let payloads: Vec<Vec<u8>> = (0..BATCH as u8).map(|i| vec![i; 40]).collect();
            let sent =
                socket::send_many(tx.as_raw_fd(), payloads.iter().map(|p| (&to, p.as_slice())))
                    .expect("sendmmsg");
            let received = socket::recv_batch(rx.as_raw_fd(), &mut batch).expect("recvmmsg");
            let drops = socket::drops(rx.as_raw_fd()).expect("SO_MEMINFO");
            (sent, received, drops, got)
        })
        .join()
        .expect("thread")
    });

    assert_eq!((sent, received, drops), (BATCH, BATCH, 0));
    assert!(got > 0);
    for i in 0..BATCH {
        let (meta, bytes) = batch.get(i).expect("datagram");
        assert_eq!(bytes, vec![i as u8; 40].as_slice());
        assert_eq!(meta.from, tx.local_addr().expect("address"));
        assert!(!meta.truncated);
    }
}
