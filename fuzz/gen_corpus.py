#!/usr/bin/env python3
"""Writes the seed corpora for the `ip_packet`, `node_datagram` and `sim` fuzz targets into
corpus/<target>/. (`relay_ops` takes `arbitrary`-encoded operation lists: its seeds are a
minimised corpus of a fuzzing run, see the README.)

Packets are built here, not with the crate's own builders, so the seeds also cover shapes the
builders never produce (IPv4 options, IPv6 extension headers, fragments) and their checksums
come from an independent implementation. Run from anywhere: python3 fuzz/gen_corpus.py
"""

import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "ip_packet")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto, src, dst, payload, options=b"", frag=0, ident=0x1234):
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, frag, 64, proto, 0,
                      bytes(src), bytes(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(next_header, src, dst, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                       bytes(src), bytes(dst)) + payload


def pseudo4(src, dst, proto, length):
    return struct.pack("!4s4sBBH", bytes(src), bytes(dst), 0, proto, length)


def pseudo6(src, dst, proto, length):
    return struct.pack("!16s16sI3xB", bytes(src), bytes(dst), length, proto)


def with_checksum(segment, at, pseudo, zero_is_none=False):
    segment = segment[:at] + b"\0\0" + segment[at + 2:]
    c = csum(pseudo + segment)
    if zero_is_none and c == 0:
        c = 0xFFFF
    return segment[:at] + struct.pack("!H", c) + segment[at + 2:]


def udp(src, dst, sport, dport, data, v6):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    pseudo = (pseudo6 if v6 else pseudo4)(src, dst, 17, len(seg))
    return with_checksum(seg, 6, pseudo, zero_is_none=True)


def tcp(src, dst, sport, dport, seq, ack, flags, data, v6, options=b""):
    off = 5 + len(options) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0)
    seg += options + data
    pseudo = (pseudo6 if v6 else pseudo4)(src, dst, 6, len(seg))
    return with_checksum(seg, 16, pseudo)


def icmp4(typ, code, rest, data):
    seg = struct.pack("!BBH", typ, code, 0) + rest + data
    return with_checksum(seg, 2, b"")


def icmp6(src, dst, typ, code, rest, data):
    seg = struct.pack("!BBH", typ, code, 0) + rest + data
    return with_checksum(seg, 2, pseudo6(src, dst, 58, len(seg)))


def ext(next_header, body):
    assert (len(body) + 2) % 8 == 0
    return bytes([next_header, (len(body) + 2) // 8 - 1]) + body


A4, B4 = [10, 0, 0, 1], [10, 0, 0, 2]
A6 = [0xFD, 0] + [0] * 13 + [1]
B6 = [0xFD, 0] + [0] * 13 + [2]
DNS = bytes.fromhex("1234010000010000000000000378797a0000010001")

seeds = {
    "v4_udp_dns": ipv4(17, A4, B4, udp(A4, B4, 5353, 53, DNS, False)),
    "v4_udp_no_checksum": ipv4(17, A4, B4, struct.pack("!HHHH", 68, 67, 12, 0) + b"dhcp"),
    "v4_tcp_syn_mss": ipv4(6, A4, B4, tcp(A4, B4, 40000, 443, 1000, 0, 0x02, b"", False,
                                          options=bytes([2, 4, 0x05, 0xB4]))),
    "v4_tcp_data": ipv4(6, A4, B4, tcp(A4, B4, 40000, 443, 1001, 77, 0x18, b"GET / HTTP/1.1\r\n",
                                       False)),
    "v4_icmp_echo_request": ipv4(1, A4, B4, icmp4(8, 0, struct.pack("!HH", 7, 1), b"abcdefgh")),
    "v4_icmp_echo_reply": ipv4(1, B4, A4, icmp4(0, 0, struct.pack("!HH", 7, 1), b"abcdefgh")),
    "v4_icmp_unreachable": ipv4(1, B4, A4, icmp4(3, 3, b"\0\0\0\0",
                                                 ipv4(17, A4, B4, udp(A4, B4, 1, 2, b"", False)))),
    "v4_options_udp": ipv4(17, A4, B4, udp(A4, B4, 1000, 2000, b"opt", False),
                           options=bytes([0x94, 4, 0, 0])),  # router alert
    "v4_first_fragment": ipv4(17, A4, B4, udp(A4, B4, 1, 2, b"x" * 24, False)[:16], frag=0x2000),
    "v4_later_fragment": ipv4(17, A4, B4, b"y" * 8, frag=0x0002),
    "v4_gre": ipv4(47, A4, B4, b"\0\0\x08\0" + b"inner"),
    "v6_udp": ipv6(17, A6, B6, udp(A6, B6, 5353, 53, DNS, True)),
    "v6_tcp_syn_ack": ipv6(6, A6, B6, tcp(A6, B6, 443, 40000, 5, 1001, 0x12, b"", True)),
    "v6_icmp_echo_request": ipv6(58, A6, B6, icmp6(A6, B6, 128, 0, struct.pack("!HH", 9, 3),
                                                   b"ping")),
    "v6_icmp_echo_reply": ipv6(58, B6, A6, icmp6(B6, A6, 129, 0, struct.pack("!HH", 9, 3),
                                                 b"ping")),
    "v6_neighbor_solicitation": ipv6(58, A6, B6, icmp6(A6, B6, 135, 0, b"\0" * 4, bytes(B6))),
    "v6_hop_by_hop_udp": ipv6(0, A6, B6, ext(17, bytes([5, 2, 0, 0, 1, 0]))
                              + udp(A6, B6, 1, 2, b"hbh", True)),
    "v6_dest_opts_routing_tcp": ipv6(60, A6, B6, ext(43, bytes([1, 4, 0, 0, 0, 0]))
                                     + ext(6, bytes([0, 0, 0, 0, 0, 0]))
                                     + tcp(A6, B6, 1, 2, 3, 4, 0x10, b"x", True)),
    "v6_later_fragment": ipv6(44, A6, B6, ext(17, bytes([0, 9, 0, 0, 0, 1])) + b"z" * 16),
    "v6_no_next_header": ipv6(59, A6, B6, b""),
}


def write(target, named):
    out = os.path.join(os.path.dirname(OUT), target)
    os.makedirs(out, exist_ok=True)
    for name, data in named.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(named)} seeds to {out}")


write("ip_packet", seeds)

# node_datagram: [node] then ([source] [kind] [len] [payload])*; see the target's docs for the
# meaning of each selector. One seed per kind, from the sources where it matters most.
SOURCES = {"unknown": 0, "v6": 1, "peer": 2, "relay": 3, "relay_port": 4, "other_relay": 5,
           "self": 6}
KINDS = {"raw": 0, "stun": 1, "binding": 2, "channel": 3, "wg_init": 4, "wg_resp": 5,
         "wg_cookie": 6, "wg_data": 7, "channel_wg": 8, "data_indication": 9}


def chunk(source, kind, payload, length=None):
    """`length` is the len byte when it is not the payload's length: for `binding` it counts
    only the raw attribute bytes between the tie-breaker and MESSAGE-INTEGRITY."""
    if length is None:
        length = len(payload)
    return bytes([SOURCES[source], KINDS[kind], length]) + payload


# flags (bit 0 controlled, 1 USE-CANDIDATE, 2 FINGERPRINT), transaction id, PRIORITY,
# tie-breaker, forged MESSAGE-INTEGRITY: a check that reaches the integrity verification.
def binding(flags):
    return bytes([flags]) + bytes(range(12)) + struct.pack("!I", 0x6E7F00FF) + bytes(8) + bytes(20)


node_seeds = {}
for node in (0, 1):
    who = "gateway" if node else "client"
    node_seeds[f"{who}_raw_unknown"] = bytes([node]) + chunk("unknown", "raw", b"hello")
    node_seeds[f"{who}_stun_peer"] = bytes([node]) + chunk(
        "peer", "stun", b"\x01\x01" + bytes(12) + b"\x00\x20\x00\x08\x00\x01\x12\x34" + bytes(4))
    node_seeds[f"{who}_binding_unknown"] = bytes([node]) + chunk(
        "unknown", "binding", binding(6), length=0)
    node_seeds[f"{who}_binding_fingerprint_v6"] = bytes([node]) + chunk(
        "v6", "binding", binding(7), length=0)
    node_seeds[f"{who}_channel_relay"] = bytes([node]) + chunk("relay", "channel", bytes(8))
    node_seeds[f"{who}_wg_init_peer"] = bytes([node]) + chunk("peer", "wg_init", bytes(148))
    node_seeds[f"{who}_wg_resp_unknown"] = bytes([node]) + chunk("unknown", "wg_resp", bytes(92))
    node_seeds[f"{who}_wg_cookie_self"] = bytes([node]) + chunk("self", "wg_cookie", bytes(64))
    node_seeds[f"{who}_wg_data_peer"] = bytes([node]) + chunk("peer", "wg_data", bytes(40))
    node_seeds[f"{who}_channel_wg_relay"] = bytes([node]) + chunk("relay", "channel_wg", bytes(40))
    node_seeds[f"{who}_data_indication_relay"] = bytes([node]) + chunk(
        "relay", "data_indication", bytes(56))
    node_seeds[f"{who}_turn_other_relay"] = bytes([node]) + chunk(
        "other_relay", "stun", b"\x01\x03" + bytes(12))
    node_seeds[f"{who}_mixed"] = (bytes([node]) + chunk("relay_port", "raw", b"\x00\x01")
                                  + chunk("peer", "wg_data", bytes(32))
                                  + chunk("relay", "channel_wg", bytes(32)))
write("node_datagram", node_seeds)

# sim: 8 bytes of seed (little endian), then (kind, argument) pairs; kinds 0-3 and 23 send, 4
# and 15 advance time, 5 portal restart, 6 NAT expiry, 7/8 relay crash/restart, 9/10
# block/unblock direct, 11/12 revoke/authorize, 13 gateway restart, 14 client restart, 16 TCP,
# 17 ping, 18 loss burst, 19 portal partition, 20 roam, 21 relay replace, 22 expiring
# authorization (see `transition` in fuzz_targets/sim.rs). A send's argument picks client
# arg % 2 and resource (arg / 2) % 3: 0 is (c1, r1) and 3 is (c2, r2), both authorized from the
# start; 4 is (c1, r3), which is not. Every transition kind appears, and each seed takes a
# few seconds under the sanitizer at most, except the one that waits out RECOVERY.
SEND_C1_R1, SEND_C2_R2, SEND_C1_R3 = 0, 3, 4
sim_seeds = {
    "send_both_clients": struct.pack("<Q", 2) + bytes([0, SEND_C1_R1, 1, SEND_C2_R2]),
    "unauthorized_send": struct.pack("<Q", 3) + bytes([0, SEND_C1_R3]),
    "idle_then_send": struct.pack("<Q", 4) + bytes([15, 25, 0, SEND_C1_R1]),
    "portal_restart": struct.pack("<Q", 5) + bytes([5, 0, 0, SEND_C1_R1]),
    "relays_and_blocking": struct.pack("<Q", 7) + bytes(
        [9, 0, 7, 0, 0, SEND_C1_R1, 8, 0, 10, 0, 0, SEND_C2_R2]),
    "revoke_authorize": struct.pack("<Q", 9) + bytes([11, 0, 0, SEND_C1_R1, 12, 0, 0, SEND_C1_R1]),
    # TCP and ping, then a loss burst on every place (arg 30: sites 0b11111, 3 s) under traffic.
    "tcp_ping_loss": struct.pack("<Q", 11) + bytes(
        [16, SEND_C1_R1, 17, SEND_C2_R2, 18, 30, 0, SEND_C1_R1]),
    # A roaming client, a portal partition of client 1 (5 s), a relay replaced, and an expiring
    # authorization for (c1, r3) that is used right away.
    "roam_partition_replace": struct.pack("<Q", 12) + bytes(
        [20, 0, 19, 0, 21, 0, 22, SEND_C1_R3, 16, SEND_C1_R3, 0, SEND_C2_R2]),
    # Restarts and a NAT flush, then past RECOVERY: both clients must be served again.
    "restarts_then_recovery": struct.pack("<Q", 6) + bytes(
        [6, 0, 13, 0, 14, 1, 4, 160, 0, SEND_C1_R1, 0, SEND_C2_R2]),
}
write("sim", sim_seeds)
