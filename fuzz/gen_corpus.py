#!/usr/bin/env python3
"""Writes the seed corpus for the `ip_packet` fuzz target into corpus/ip_packet/.

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

os.makedirs(OUT, exist_ok=True)
for name, packet in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(packet)
print(f"wrote {len(seeds)} seeds to {OUT}")
