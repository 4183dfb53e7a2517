#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets that read kernel or D-Bus bytes.

    sudo fuzz/make-seeds.py        # rewrites fuzz/seeds/{dbus_requests,
                                   # counters_dump,nft_netlink,uplink_netlink}

The netlink seeds are real kernel replies: the script creates a throwaway
network namespace, builds links, addresses, routes, rules, neighbours and
patchpanel-like nf_tables tables in it with `ip`, `nft` and `iptables`,
records the dumps and the notifications the kernel sends, and removes the
namespace again. The D-Bus seeds are protobuf bodies encoded here, one per
method, valid and invalid. Needs root, iproute2, nftables and iptables.
"""

import os
import socket
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

# The protobuf encoder the tests' ConnectNamespace client already has.
sys.dont_write_bytecode = True  # keep the checkout clean
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tools"))
from connect_ns import key, varint  # noqa: E402


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- protobuf ----------------------------------------------------------


def pb_int(field, n):
    return key(field, 0) + varint(n)


def pb_str(field, s):
    b = s.encode() if isinstance(s, str) else s
    return key(field, 2) + varint(len(b)) + b


def cidr(addr, prefix_len):
    return pb_str(1, bytes(addr)) + pb_int(2, prefix_len)


def configure_network(ifindex, ifname, area, technology):
    """ConfigureNetworkRequest: 192.0.2.10/24 via .1, an IPv6 address, an
    excluded prefix, an RFC 3442 route, MTU 1400, primary."""
    v6 = [0x20, 0x01, 0x0D, 0xB8] + [0] * 11 + [0x10]
    config = (
        pb_str(1, cidr([192, 0, 2, 10], 24))
        + pb_str(3, bytes([192, 0, 2, 1]))
        + pb_str(4, cidr(v6, 64))
        + pb_int(6, 1)
        + pb_str(8, cidr([203, 0, 113, 0], 24))
        + pb_str(10, pb_str(1, cidr([198, 51, 100, 0], 24)) + pb_str(2, bytes([192, 0, 2, 254])))
        + pb_int(13, 1400)
    )
    priority = pb_int(1, 1) + pb_int(2, 1) + pb_int(3, 1)
    return (
        pb_int(1, ifindex) + pb_str(2, ifname) + pb_int(3, area) + pb_str(4, config)
        + pb_int(5, technology) + pb_str(6, priority) + pb_int(7, 1)
    )


def dbus_seeds():
    # (method byte as in fuzz_targets/dbus_requests.rs, name, body)
    seeds = [
        (0, "devices", b""),
        (1, "connect-ns", pb_int(1, 1234) + pb_str(2, "eth0") + pb_int(3, 1) + pb_int(5, 2)),
        (1, "connect-ns-named", pb_int(1, -1) + pb_int(4, 1) + pb_int(6, 1)),
        (1, "connect-ns-inject", pb_int(1, 1) + pb_str(2, "eth0 -j ACCEPT")),
        (2, "port-access", pb_int(1, 1) + pb_int(2, 1) + pb_int(3, 1) + pb_str(4, "eth0") + pb_int(6, 9292)),
        (2, "port-lockdown", pb_int(1, 1) + pb_int(2, 2) + pb_int(3, 2) + pb_int(6, 5353)),
        (
            2,
            "port-forward",
            pb_int(1, 1) + pb_int(2, 3) + pb_int(3, 1) + pb_str(4, "eth0")
            + pb_str(5, "192.168.1.2") + pb_int(6, 8080) + pb_str(7, "100.115.92.6") + pb_int(8, 80),
        ),
        (2, "port-delete-port0", pb_int(1, 2) + pb_int(2, 1) + pb_int(3, 1) + pb_int(6, 0)),
        (3, "counters-all", b""),
        (3, "counters-two", pb_str(1, "eth0") + pb_str(1, "wlan0")),
        (4, "arc-start", pb_int(1, 4242)),
        (5, "arc-stop", pb_int(1, 4242)),
        (6, "arcvm-start", pb_int(1, 33)),
        (7, "arcvm-stop", pb_int(1, 33)),
        (8, "termina-start", pb_int(1, 34)),
        (9, "termina-stop", pb_int(1, 34)),
        (10, "plugin-start", pb_int(1, 77) + pb_int(2, 1)),
        (10, "plugin-start-bad-index", pb_int(1, 77) + pb_int(2, -3)),
        (11, "plugin-stop", pb_int(1, 77)),
        (12, "vpn-intent", pb_int(1, 1)),
        (13, "vpn-lockdown", pb_int(1, 1)),
        (14, "dns-redirect", pb_int(1, 1) + pb_str(2, "arc_ns0") + pb_str(3, "100.115.92.130")),
        (15, "tag-socket-bypass", pb_int(2, 2)),
        (15, "tag-socket-network", pb_int(1, 2) + pb_int(2, 0)),
        (15, "tag-socket-vpn-and-network", pb_int(1, 2) + pb_int(2, 1)),
        (15, "tag-socket-annotated", pb_int(2, 2) + pb_str(3, pb_int(1, 1))),
        (1, "truncated", pb_int(1, 1)[:1] + b"\x12\x40eth"),
        (16, "configure-network", configure_network(2, "eth0", 0x80070707, 2)),
        (16, "configure-network-vpn", configure_network(9, "tun0", 0x70707, 3)),
        (16, "configure-network-inject", pb_int(1, 2) + pb_str(2, "eth0 -j ACCEPT") + pb_int(3, 1)),
        (16, "configure-network-clear", pb_int(1, 2) + pb_str(2, "eth0") + pb_int(3, 0x80000000)),
        (14, "dns-user-v6", pb_int(1, 3) + pb_str(3, "fd64:ffff::2") + pb_str(4, "2001:4860:4860::8888")),
        (14, "dns-exclude", pb_int(1, 4) + pb_str(3, "100.115.92.134") + pb_str(5, "arc_ns1")),
        (14, "dns-default-inject", pb_int(1, 1) + pb_str(2, "vmtap0 -j ACCEPT") + pb_str(3, "100.115.92.130")),
        (17, "bruschetta-start", pb_int(1, 5)),
        (18, "borealis-start", pb_int(1, 21)),
        (19, "bruschetta-borealis-stop", pb_int(1, 5)),
        (
            20,
            "socket-event",
            pb_str(1, pb_str(1, bytes([100, 115, 92, 6])) + pb_int(2, 40000) + pb_str(3, bytes([8, 8, 8, 8]))
                   + pb_int(4, 443) + pb_int(5, 1) + pb_int(6, 1) + pb_int(7, 2)),
        ),
        (21, "feature-flag", pb_int(1, 1) + pb_int(2, 1)),
        (22, "multicast-lock", pb_int(1, 1)),
    ]
    for method, name, body in seeds:
        write("dbus_requests", name, bytes([method]) + body)


# ---- netlink -----------------------------------------------------------

NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLMSG_ERROR = 2


def sh(*cmd, stdin=None):
    subprocess.run(cmd, check=True, input=stdin, text=True)


def dump(proto, msg_type, body, family_payload):
    """Sends one dump request and returns every reply datagram's bytes."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    s.bind((0, 0))
    payload = family_payload + body
    s.send(struct.pack("=IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + payload)
    out = b""
    while True:
        data = s.recv(1 << 16)
        out += data
        off = 0
        done = False
        while off + 16 <= len(data):
            length, ty = struct.unpack_from("=IH", data, off)
            if ty in (NLMSG_DONE, NLMSG_ERROR):
                done = True
            off += (length + 3) & ~3
            if length == 0:
                break
        if done:
            s.close()
            return out


def nla(ty, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, ty) + data + b"\0" * ((-n) % 4)


def rtnl_seeds():
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    sh("ip", "link", "add", "wlan0", "type", "veth", "peer", "name", "peer1")
    sh("ip", "link", "add", "br0", "type", "bridge")
    for dev in ("eth0", "peer0", "wlan0", "peer1", "br0"):
        sh("ip", "link", "set", dev, "up")
    sh("ip", "addr", "add", "192.168.1.2/24", "dev", "eth0")
    sh("ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")
    sh("ip", "route", "add", "default", "via", "192.168.1.1", "dev", "eth0")
    sh("ip", "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "eth0")
    sh("ip", "rule", "add", "fwmark", "0x10000/0xffff0000", "table", "1002", "pref", "1010")
    sh("ip", "neigh", "add", "192.168.1.1", "lladdr", "02:00:00:00:00:01", "dev", "eth0")

    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    dumps = {
        "dump-links": (18, ifinfo),
        "dump-addrs": (22, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)),
        "dump-routes4": (26, struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)),
        "dump-routes6": (26, struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)),
        "dump-rules": (34, struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)),
        "dump-neigh": (30, struct.pack("=BxxxiHBB", socket.AF_INET, 0, 0, 0, 0)),
    }
    for name, (ty, hdr) in dumps.items():
        # 0x01 picks the dump parsers in fuzz_targets/uplink_netlink.rs.
        write("uplink_netlink", name, b"\x01" + dump(socket.NETLINK_ROUTE, ty, b"", hdr))

    # Notifications, as the uplink monitor receives them.
    mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    groups = 0x1 | 0x10 | 0x40 | 0x100 | 0x400  # LINK, IPV4_IFADDR, IPV4_ROUTE, IPV6_IFADDR, IPV6_ROUTE
    mon.bind((0, groups))
    mon.settimeout(0.5)
    sh("ip", "addr", "add", "10.1.0.2/16", "dev", "wlan0")
    sh("ip", "route", "add", "10.2.0.0/16", "via", "10.1.0.1", "dev", "wlan0")
    sh("ip", "link", "set", "wlan0", "down")
    sh("ip", "link", "del", "wlan0")
    n = 0
    try:
        while True:
            data = mon.recv(1 << 16)
            write("uplink_netlink", "event-%02d" % n, b"\x00" + data)
            n += 1
    except socket.timeout:
        pass
    mon.close()
    return n


NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE = 7
NFT_MSG_GETSETELEM = 13

NFT_RULESET = """
table ip patchpanel_mangle {
    chain rx_eth0 {
        meta mark & 0x00003f00 == 0x00000100 counter packets 12 bytes 3456 return comment "-m mark --mark 0x100/0x3f00 -j RETURN"
        meta mark & 0x00003f00 == 0x00002000 counter packets 1 bytes 60 return comment "-m mark --mark 0x2000/0x3f00 -j RETURN"
        counter packets 2 bytes 120 comment ""
    }
    chain tx_eth0 {
        meta mark & 0x00003f00 == 0x00000100 counter packets 7 bytes 700 return comment "-m mark --mark 0x100/0x3f00 -j RETURN"
    }
}
table ip6 patchpanel_mangle {
    chain rx_eth0 {
        meta mark & 0x00003f00 == 0x00000200 counter packets 3 bytes 300 return comment "-m mark --mark 0x200/0x3f00 -j RETURN"
    }
}
table ip patchpanel_filter {
    set port_access {
        type inet_proto . inet_service . ifname
        elements = { tcp . 9292 . "eth0", udp . 5353 . "wlan0" }
    }
    chain ingress_port_firewall {
        meta l4proto . th dport . iifname @port_access accept comment "-m set port_access -j ACCEPT"
    }
}
"""


def nft_seeds():
    sh("nft", "-f", "-", stdin=NFT_RULESET)
    sh("iptables", "-w", "-A", "FORWARD", "-i", "arc_ns0", "-j", "ACCEPT", "-m", "comment", "--comment", "patchpanel")
    nfgen = lambda fam: struct.pack("=BBH", fam, 0, 0)
    ty = NFNL_SUBSYS_NFTABLES << 8
    write("nft_netlink", "dump-rules-all", dump(NETLINK_NETFILTER, ty | NFT_MSG_GETRULE, b"", nfgen(0)))
    write("nft_netlink", "dump-rules-ip", dump(NETLINK_NETFILTER, ty | NFT_MSG_GETRULE, b"", nfgen(2)))
    elems = nla(1, b"patchpanel_filter\0") + nla(2, b"port_access\0")
    write("nft_netlink", "dump-set-elems", dump(NETLINK_NETFILTER, ty | NFT_MSG_GETSETELEM, elems, nfgen(2)))


def counters_seeds():
    for fam, tool in ((0, "iptables"), (1, "ip6tables")):
        sh(tool, "-w", "-t", "mangle", "-N", "rx_eth0")
        sh(tool, "-w", "-t", "mangle", "-N", "tx_eth0")
        for mark in ("0x100", "0x200", "0x2000"):
            sh(tool, "-w", "-t", "mangle", "-A", "rx_eth0", "-m", "mark", "--mark", mark + "/0x3f00", "-j", "RETURN")
            sh(tool, "-w", "-t", "mangle", "-A", "tx_eth0", "-m", "mark", "--mark", mark + "/0x3f00", "-j", "RETURN")
        sh(tool, "-w", "-t", "mangle", "-A", "FORWARD", "-i", "eth0", "-j", "rx_eth0")
        out = subprocess.run([tool + "-save", "-c", "-t", "mangle"], check=True, capture_output=True).stdout
        write("counters_dump", "iptables-save-" + ("v4" if fam == 0 else "v6"), bytes([fam]) + out)


def in_namespace():
    dbus_seeds()
    events = rtnl_seeds()
    nft_seeds()
    counters_seeds()
    print("make-seeds: wrote the seeds (%d notification datagrams)" % events)


def main():
    if os.environ.get("PP_MAKE_SEEDS_NS"):
        in_namespace()
        return
    if os.geteuid() != 0:
        sys.exit("make-seeds: run as root (it builds a throwaway network namespace)")
    ns = "pp-make-seeds-%d" % os.getpid()
    sh("ip", "netns", "add", ns)
    try:
        env = dict(os.environ, PP_MAKE_SEEDS_NS="1")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__)], check=True, env=env)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
