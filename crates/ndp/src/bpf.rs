//! The classic BPF program attached to the proxy's packet socket, so the
//! kernel hands over only the packets the proxy relays instead of every
//! IPv6 packet crossing the host.
//!
//! The socket is `SOCK_DGRAM`, so offsets are relative to the IPv6 header.
//! The program passes a packet when its Next Header is ICMPv6 (58) — an ND
//! packet behind an extension header is never seen —, its hop limit is 255
//! (RFC 4861 receivers drop anything else) and its ICMPv6 type is RS, RA,
//! NS or NA (133–136). A packet too short to hold the ICMPv6 type makes
//! the load fail, which drops it. Userspace checks everything again
//! ([`crate::packet::NdPacket::parse`]); the filter only saves work.

use crate::packet::{IPPROTO_ICMPV6, IPV6_HEADER_LEN, ND_HOP_LIMIT};

// linux/bpf_common.h
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;

/// Offsets in the IPv6 header.
const NEXT_HEADER: u32 = 6;
const HOP_LIMIT: u32 = 7;

/// What an accepting filter returns: the number of bytes to keep, here
/// all of them.
pub const ACCEPT: u32 = u32::MAX;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The program. Jump offsets count instructions after the jump.
pub const ND_FILTER: [Insn; 9] = [
    // 0: A = next header
    stmt(BPF_LD | BPF_B | BPF_ABS, NEXT_HEADER),
    // 1: not ICMPv6 -> drop (8)
    jump(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_ICMPV6 as u32, 0, 6),
    // 2: A = hop limit
    stmt(BPF_LD | BPF_B | BPF_ABS, HOP_LIMIT),
    // 3: not 255 -> drop (8)
    jump(BPF_JMP | BPF_JEQ | BPF_K, ND_HOP_LIMIT as u32, 0, 4),
    // 4: A = ICMPv6 type
    stmt(BPF_LD | BPF_B | BPF_ABS, IPV6_HEADER_LEN as u32),
    // 5: below RS (133) -> drop (8)
    jump(BPF_JMP | BPF_JGE | BPF_K, 133, 0, 2),
    // 6: above NA (136) -> drop (8)
    jump(BPF_JMP | BPF_JGT | BPF_K, 136, 1, 0),
    // 7: accept the whole packet
    stmt(BPF_RET | BPF_K, ACCEPT),
    // 8: drop
    stmt(BPF_RET | BPF_K, 0),
];

#[cfg(test)]
mod tests {
    //! The program is run by a small interpreter of the instructions it
    //! uses, over packets built from the golden captures.
    use super::*;

    /// Runs `prog` on `packet` as the kernel would; a load past the end
    /// returns 0 (drop), as in the kernel.
    fn run(prog: &[Insn], packet: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        loop {
            let insn = prog[pc];
            pc += 1;
            match insn.code {
                c if c == BPF_LD | BPF_B | BPF_ABS => match packet.get(insn.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == insn.k { insn.jt } else { insn.jf })
                }
                c if c == BPF_JMP | BPF_JGE | BPF_K => {
                    pc += usize::from(if a >= insn.k { insn.jt } else { insn.jf })
                }
                c if c == BPF_JMP | BPF_JGT | BPF_K => {
                    pc += usize::from(if a > insn.k { insn.jt } else { insn.jf })
                }
                c if c == BPF_RET | BPF_K => return insn.k,
                c => panic!("instruction {c:#x} not interpreted"),
            }
        }
    }

    /// An IPv6 header with next header `nh` and hop limit `hl`, then an
    /// 8-byte ICMPv6-ish body starting with `ty`.
    fn packet(nh: u8, hl: u8, ty: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, nh, hl];
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn passes_rs_ra_ns_and_na() {
        for ty in 133..=136 {
            assert_eq!(run(&ND_FILTER, &packet(58, 255, ty)), ACCEPT, "type {ty}");
        }
    }

    #[test]
    fn drops_other_icmpv6_types() {
        for ty in [1, 128, 129, 130, 132, 137, 143, 255] {
            assert_eq!(run(&ND_FILTER, &packet(58, 255, ty)), 0, "type {ty}");
        }
    }

    #[test]
    fn drops_nd_behind_an_extension_header() {
        assert_eq!(run(&ND_FILTER, &packet(0, 255, 135)), 0);
        assert_eq!(run(&ND_FILTER, &packet(44, 255, 135)), 0);
    }

    #[test]
    fn drops_nd_with_a_hop_limit_below_255() {
        assert_eq!(run(&ND_FILTER, &packet(58, 254, 135)), 0);
    }

    #[test]
    fn drops_a_packet_too_short_for_the_icmpv6_type() {
        assert_eq!(run(&ND_FILTER, &packet(58, 255, 135)[..40]), 0);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        for (pc, insn) in ND_FILTER.iter().enumerate() {
            if insn.code & 0x07 == BPF_JMP {
                let far = pc + 1 + usize::from(insn.jt.max(insn.jf));
                assert!(far < ND_FILTER.len(), "jump at {pc} leaves the program");
            }
        }
        assert_eq!(ND_FILTER[ND_FILTER.len() - 1].code, BPF_RET | BPF_K);
    }
}
