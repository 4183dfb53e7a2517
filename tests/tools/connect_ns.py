#!/usr/bin/python3
"""ConnectNamespace through a stock D-Bus client (dbus-python), for tests.

Calls org.chromium.PatchPanel.ConnectNamespace on the system bus
(DBUS_SYSTEM_BUS_ADDRESS is honoured) with a request protobuf encoded here by
hand and the write end of a pipe as the lifeline, prints the decoded response
as one JSON line (the same keys as `patchpanel connect-ns --json`), then holds
the read end until stdin reaches end-of-file or SIGTERM/SIGINT arrives. The
namespace is released when this process exits.

No protobuf library: the request has six scalar fields and the response one
nested message, so the few varint and length-delimited fields are written and
read by hand (field numbers: docs/dbus-api.md, crates/proto).

  --encode-only      print the encoded request as hex and exit (no bus).
  --decode-only HEX  print HEX decoded as a response and exit (no bus).
Exit status: 0 after release, 1 if the call failed, 2 on a usage error.
"""

import argparse
import ipaddress
import json
import os
import signal
import struct
import sys

SERVICE = "org.chromium.PatchPanel"
PATH = "/org/chromium/PatchPanel"
INTERFACE = "org.chromium.PatchPanel"

# TrafficCounter.Source numbers, by the names `patchpanel connect-ns --source`
# accepts (both VPN kinds are VPN = 5 on the wire).
SOURCES = {
    "unknown": 0, "chrome": 1, "user": 2, "update_engine": 3, "system": 4,
    "host_vpn": 5, "arc_vpn": 5, "vpn": 5, "arc": 6, "borealis_vm": 7,
    "bruschetta_vm": 8, "crostini_vm": 9, "parallels_vm": 10,
    "tether_downstream": 11, "tethering": 11, "wifi_direct": 12, "wifi_lohs": 13,
}

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


# --- encoding -----------------------------------------------------------------

def varint(value):
    """Base-128 varint; negative values as their 64-bit two's complement
    (10 bytes), as protobuf encodes a negative int32."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field, wire_type):
    return varint((field << 3) | wire_type)


def encode_request(pid, outbound, allow_user_traffic, route_on_vpn, source, static_ipv6):
    """ConnectNamespaceRequest; proto3 leaves fields at their default out."""
    out = bytearray()
    if pid:
        out += key(1, WIRE_VARINT) + varint(pid)
    if outbound:
        data = outbound.encode("utf-8")
        out += key(2, WIRE_LEN) + varint(len(data)) + data
    if allow_user_traffic:
        out += key(3, WIRE_VARINT) + varint(1)
    if route_on_vpn:
        out += key(4, WIRE_VARINT) + varint(1)
    if source:
        out += key(5, WIRE_VARINT) + varint(source)
    if static_ipv6:
        out += key(6, WIRE_VARINT) + varint(1)
    return bytes(out)


# --- decoding -----------------------------------------------------------------

class DecodeError(Exception):
    pass


def read_varint(data, pos):
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def fields(data):
    """Yields (field number, wire type, value): an int for varints and fixed
    fields, bytes for length-delimited ones."""
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("field number 0")
        if wire_type == WIRE_VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise DecodeError("field %d runs past the end" % field)
            value, pos = bytes(data[pos:pos + length]), pos + length
        elif wire_type in (WIRE_I64, WIRE_I32):
            size = 8 if wire_type == WIRE_I64 else 4
            if pos + size > len(data):
                raise DecodeError("field %d runs past the end" % field)
            value = int.from_bytes(data[pos:pos + size], "little")
            pos += size
        else:
            raise DecodeError("unsupported wire type %d" % wire_type)
        yield field, wire_type, value


def net_u32(value):
    """A `u32 net-order` address: the integer's little-endian bytes are the
    octets in order. 0 (unset) is None."""
    if not value:
        return None
    return str(ipaddress.IPv4Address(struct.pack("<I", value & 0xFFFFFFFF)))


def decode_subnet(data):
    """IPv4Subnet as "base/prefix": field 3 (addr4) or else the deprecated
    field 1 (u32 net-order)."""
    base_u32, prefix, addr = 0, 0, b""
    for field, wire_type, value in fields(data):
        if field == 1 and wire_type == WIRE_VARINT:
            base_u32 = value
        elif field == 2 and wire_type == WIRE_VARINT:
            prefix = value
        elif field == 3 and wire_type == WIRE_LEN:
            addr = value
    if addr:
        if len(addr) != 4:
            raise DecodeError("IPv4Subnet.addr has %d bytes" % len(addr))
        base = str(ipaddress.IPv4Address(addr))
    else:
        base = net_u32(base_u32) or "0.0.0.0"
    if base == "0.0.0.0" and prefix == 0:
        return None
    return "%s/%d" % (base, prefix)


def decode_response(data):
    """ConnectNamespaceResponse, with the keys of `patchpanel connect-ns --json`."""
    out = {
        "netns_name": "", "host_ifname": "", "host_ipv4_address": None,
        "peer_ifname": "", "peer_ipv4_address": None, "ipv4_subnet": None,
    }
    for field, wire_type, value in fields(data):
        if field == 1 and wire_type == WIRE_LEN:
            out["ipv4_subnet"] = decode_subnet(value)
        elif field == 2 and wire_type == WIRE_LEN:
            out["peer_ifname"] = value.decode("utf-8")
        elif field == 3 and wire_type == WIRE_VARINT:
            out["peer_ipv4_address"] = net_u32(value)
        elif field == 4 and wire_type == WIRE_LEN:
            out["host_ifname"] = value.decode("utf-8")
        elif field == 5 and wire_type == WIRE_VARINT:
            out["host_ipv4_address"] = net_u32(value)
        elif field == 6 and wire_type == WIRE_LEN:
            out["netns_name"] = value.decode("utf-8")
    return out


# --- command line -------------------------------------------------------------

def source_number(text):
    name = text.strip().lower().replace("-", "_")
    if name in SOURCES:
        return SOURCES[name]
    try:
        return int(name)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "unknown traffic source %r; one of: %s" % (text, ", ".join(sorted(SOURCES))))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="connect_ns.py",
        description="Call ConnectNamespace with dbus-python and hold the lifeline.")
    parser.add_argument("--pid", type=int, default=-1,
                        help="process whose namespace to connect (default -1: a new named netns)")
    parser.add_argument("--outbound", default="", help="uplink interface (outbound_physical_device)")
    parser.add_argument("--allow-user-traffic", action="store_true")
    parser.add_argument("--route-on-vpn", action="store_true")
    parser.add_argument("--source", type=source_number, default=0,
                        help="traffic source name (as `patchpanel connect-ns`) or number")
    parser.add_argument("--static-ipv6", action="store_true")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.add_argument("--encode-only", action="store_true",
                        help="print the encoded request as hex and exit")
    parser.add_argument("--decode-only", metavar="HEX",
                        help="decode HEX as a ConnectNamespaceResponse, print its JSON and exit")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    request = encode_request(args.pid, args.outbound, args.allow_user_traffic,
                             args.route_on_vpn, args.source, args.static_ipv6)
    if args.encode_only:
        print(request.hex())
        return 0
    if args.decode_only is not None:
        try:
            print(json.dumps(decode_response(bytes.fromhex(args.decode_only)), sort_keys=True))
        except (DecodeError, UnicodeDecodeError, ValueError) as err:
            print("connect_ns.py: cannot decode ConnectNamespaceResponse: %s" % err, file=sys.stderr)
            return 1
        return 0

    import dbus  # only needed past this point; --encode-only works without it

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        bus = dbus.SystemBus()
        proxy = bus.get_object(SERVICE, PATH, introspect=False)
        reply = proxy.get_dbus_method("ConnectNamespace", INTERFACE)(
            dbus.ByteArray(request), dbus.types.UnixFd(write_end),
            signature="ayh", byte_arrays=True, timeout=args.timeout)
    except dbus.exceptions.DBusException as err:
        print("connect_ns.py: ConnectNamespace failed: %s: %s"
              % (err.get_dbus_name(), err.get_dbus_message()), file=sys.stderr)
        return 1
    finally:
        # UnixFd sent a duplicate; the server holds the write end from now on.
        os.close(write_end)

    try:
        response = decode_response(bytes(reply))
    except (DecodeError, UnicodeDecodeError) as err:
        print("connect_ns.py: cannot decode ConnectNamespaceResponse: %s" % err, file=sys.stderr)
        return 1
    def release(signum, _frame):
        raise SystemExit(0)

    # Handlers first: a caller may signal as soon as it reads the JSON line.
    signal.signal(signal.SIGTERM, release)
    signal.signal(signal.SIGINT, release)
    try:
        print(json.dumps(response, sort_keys=True), flush=True)
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os.close(read_end)
        print("connect_ns.py: released", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
