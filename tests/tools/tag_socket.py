#!/usr/bin/python3
"""TagSocket as today's shill or Chrome calls it (dbus-python), for tests.

First waits, as the client library of shill and dns-proxy does since 2024-06,
until both org.chromium.PatchPanel and org.chromium.SocketService have an
owner (--wait seconds). Then opens a UDP socket (or, with --not-a-socket, a
pipe), optionally sets a starting mark on it (--preset-mark: needs
CAP_NET_ADMIN, i.e. root), calls TagSocket on the chosen service with the
request encoded here by hand (field numbers: docs/dbus-api.md), and prints
one JSON line:

  {"ok": true, "before": N, "after": N, "waited_ms": N}
  {"ok": false, "error": "org...Error.X", "message": "...", "before": N, "after": N}

`before`/`after` are the socket's SO_MARK (null for a pipe). With --tcp the
socket is a TCP one, and with --connect HOST:PORT it then connects and
reads the server's greeting: "connect" in the JSON is the greeting,
"refused" or "timeout" (run it in the namespace to connect from, e.g.
with nsenter). Exit status: 0 when the call was answered either way, 1
when the names never appeared.
"""

import argparse
import json
import os
import socket
import sys
import time

import dbus

SO_MARK = 36
TARGETS = {
    "patchpanel": ("org.chromium.PatchPanel", "/org/chromium/PatchPanel",
                   "org.chromium.PatchPanel"),
    "socket": ("org.chromium.SocketService", "/org/chromium/SocketService",
               "org.chromium.SocketService"),
}
POLICIES = {"default": 0, "route_on_vpn": 1, "bypass_vpn": 2}


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(network_id, policy, annotation):
    out = bytearray()
    if network_id is not None:  # optional: present even when 0
        out += varint(1 << 3) + varint(network_id)
    if policy:
        out += varint(2 << 3) + varint(policy)
    if annotation is not None:
        inner = varint(1 << 3) + varint(annotation) if annotation else b""
        out += varint((3 << 3) | 2) + varint(len(inner)) + inner
    return bytes(out)


def mark_of(sock):
    if sock is None:
        return None
    return sock.getsockopt(socket.SOL_SOCKET, SO_MARK)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--service", choices=sorted(TARGETS), default="socket")
    p.add_argument("--network-id", type=int)
    p.add_argument("--policy", default="default",
                   help="default, route_on_vpn, bypass_vpn or a number")
    p.add_argument("--annotation", type=int,
                   help="a TrafficAnnotation host_id (1 = portal detector)")
    p.add_argument("--preset-mark", type=lambda s: int(s, 0))
    p.add_argument("--not-a-socket", action="store_true")
    p.add_argument("--wait", type=float, default=10.0)
    p.add_argument("--tcp", action="store_true")
    p.add_argument("--connect", help="HOST:PORT to connect to after tagging")
    p.add_argument("--timeout", type=float, default=2.0)
    a = p.parse_args()

    bus = dbus.SystemBus()
    names = ("org.chromium.PatchPanel", "org.chromium.SocketService")
    start = time.monotonic()
    while not all(bus.name_has_owner(n) for n in names):
        if time.monotonic() - start > a.wait:
            missing = [n for n in names if not bus.name_has_owner(n)]
            print(json.dumps({"ok": False, "error": "not-ready",
                              "message": "no owner: " + ", ".join(missing)}))
            return 1
        time.sleep(0.05)
    waited_ms = int((time.monotonic() - start) * 1000)

    sock = None
    if a.not_a_socket:
        r, w = os.pipe()
        fd = w
    else:
        kind = socket.SOCK_STREAM if a.tcp else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        if a.preset_mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, a.preset_mark)
        fd = sock.fileno()
    policy = POLICIES.get(a.policy)
    if policy is None:
        policy = int(a.policy)
    request = encode(a.network_id, policy, a.annotation)

    service, path, interface = TARGETS[a.service]
    proxy = bus.get_object(service, path)
    before = mark_of(sock)
    try:
        reply = proxy.TagSocket(dbus.ByteArray(request), dbus.types.UnixFd(fd),
                                dbus_interface=interface, byte_arrays=True)
    except dbus.exceptions.DBusException as e:
        print(json.dumps({"ok": False, "error": e.get_dbus_name(),
                          "message": e.get_dbus_message(), "before": before,
                          "after": mark_of(sock)}))
        return 0
    success = bytes(reply) == b"\x08\x01"
    result = {"ok": success, "reply": bytes(reply).hex(), "before": before,
              "after": mark_of(sock), "waited_ms": waited_ms}
    if a.connect:
        host, port = a.connect.rsplit(":", 1)
        sock.settimeout(a.timeout)
        try:
            sock.connect((host, int(port)))
            result["connect"] = sock.recv(64).decode()
        except ConnectionRefusedError:
            result["connect"] = "refused"
        except (socket.timeout, TimeoutError):
            result["connect"] = "timeout"
        except OSError as e:
            result["connect"] = "error: " + os.strerror(e.errno or 0)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
