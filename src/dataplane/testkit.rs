//! Test support for the dataplane's unit tests: a dual-stack world of nodes
//! (node `n` holds `10.244.n.0/24` and `fc00:0:0:n::/64`, its public
//! addresses `192.0.2.n` and `2001:db8::n`), IP packets of each kind with
//! valid checksums, TUN reads with their virtio-net headers, and what a
//! receiver checks of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::core::{Core, RxAction};
use super::counters::DropReason;
use super::table::{Peer, Peer6, SharedTable, Table};
use super::{ENCAP_LEN, HEADROOM, SLOT};
use crate::types::{Vni, VtepMac};
use crate::wire::tcp::{self, PROTO_TCP, PROTO_UDP};
use crate::wire::{checksum_finish, checksum_fold, checksum_sum, ipv4, ipv6, virtio};

pub const PORT: u16 = 8472;

fn vni() -> Vni {
    Vni::new(1).unwrap()
}

pub fn public(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

pub fn public6(n: u8) -> Ipv6Addr {
    format!("2001:db8::{n}").parse().unwrap()
}

/// Node `n`'s public addresses, `[IPv4, IPv6]`.
pub fn publics(n: u8) -> [IpAddr; 2] {
    [public(n).into(), public6(n).into()]
}

/// Host `h` of node `n`'s IPv4 subnet.
pub fn pod(n: u8, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, h)
}

/// Host `h` of node `n`'s IPv6 subnet.
pub fn pod6(n: u8, h: u8) -> Ipv6Addr {
    format!("fc00:0:0:{n}::{h}").parse().unwrap()
}

/// Node `n`'s core, dual-stack.
pub fn node(n: u8) -> Core {
    Core::new(
        vni(),
        VtepMac::derive(&public(n).octets()),
        format!("10.244.{n}.0/24").parse().unwrap(),
    )
    .with_ipv6(
        format!("fc00:0:0:{n}::/64").parse().unwrap(),
        VtepMac::derive(&public6(n).octets()),
    )
}

/// Node `own`'s table, with a route to each of `nodes` (its own left
/// out), in both families.
pub fn table(own: u8, nodes: &[u8]) -> Table {
    let peers = nodes.iter().filter(|&&n| n != own);
    let v4 = peers.clone().map(|&n| Peer {
        subnet: format!("10.244.{n}.0/24").parse().unwrap(),
        public_ip: public(n),
        vtep_mac: VtepMac::derive(&public(n).octets()),
        endpoint: SocketAddrV4::new(public(n), PORT),
        slot: 0,
    });
    let v6 = peers.map(|&n| Peer6 {
        subnet: format!("fc00:0:0:{n}::/64").parse().unwrap(),
        v4: format!("10.244.{n}.0/24").parse().ok(),
        public_ip: public6(n),
        vtep_mac: VtepMac::derive(&public6(n).octets()),
        endpoint: SocketAddrV6::new(public6(n), PORT, 0, 0),
        slot: 0,
    });
    Table::from_routes(v4, v6)
}

pub fn shared(t: Table) -> SharedTable {
    let s = super::table::shared();
    s.store(std::sync::Arc::new(t));
    s
}

/// Writes the TCP or UDP checksum of the IP packet `p`: complete, or (with
/// `partial`) only the folded pseudo-header sum, as a sender with checksum
/// offload leaves it. Returns where the L4 header starts and the field's
/// offset in it.
pub fn fill_l4_checksum(p: &mut [u8], partial: bool) -> (usize, usize) {
    let (l4, proto, pseudo) = l4_of(p);
    let off = if proto == PROTO_TCP {
        tcp::CHECKSUM_OFFSET
    } else {
        6
    };
    p[l4 + off..l4 + off + 2].fill(0);
    let c = if partial {
        checksum_fold(pseudo)
    } else {
        let c = checksum_finish(checksum_sum(&p[l4..], pseudo));
        if c == 0 && proto == PROTO_UDP {
            0xffff
        } else {
            c
        }
    };
    p[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
    (l4, off)
}

/// Where the L4 header of `p` starts, its protocol, and its pseudo-header sum.
fn l4_of(p: &[u8]) -> (usize, u8, u32) {
    if p[0] >> 4 == 6 {
        let ip = ipv6::Packet::new_checked(p).unwrap();
        let len = ip.payload_len();
        let sum = ipv6::pseudo_header_sum(ip.src(), ip.dst(), ip.next_header(), len.into(), 0);
        (ipv6::HEADER_LEN, ip.next_header(), sum)
    } else {
        let ip = ipv4::Packet::new_checked(p).unwrap();
        let hl = ip.header_len();
        let len = ip.total_len() - hl as u16;
        let sum = tcp::pseudo_header_sum(ip.src(), ip.dst(), ip.protocol(), len, 0);
        (hl, ip.protocol(), sum)
    }
}

/// Whether the TCP or UDP checksum of the IP packet `p` verifies.
pub fn l4_checksum_ok(p: &[u8]) -> bool {
    let (l4, _, pseudo) = l4_of(p);
    checksum_finish(checksum_sum(&p[l4..], pseudo)) == 0
}

/// An IPv4 packet of `proto` from `src` to `dst` around the L4 bytes `l4`
/// (ports first), both checksums valid for TCP and UDP.
fn ip4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20 + l4.len()];
    ipv4::emit_header(&mut p, (20 + l4.len()) as u16, 64, proto, src, dst);
    p[20..].copy_from_slice(l4);
    if proto == PROTO_TCP || proto == PROTO_UDP {
        fill_l4_checksum(&mut p, false);
    }
    p
}

fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + l4.len()];
    ipv6::emit_header(&mut p, l4.len() as u16, next, 64, src, dst);
    p[40..].copy_from_slice(l4);
    fill_l4_checksum(&mut p, false);
    p
}

/// A UDP header from port `sport` to 5201 and `payload` bytes of a pattern.
fn udp_l4(sport: u16, payload: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&5201u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    for (i, b) in u[8..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(sport as u8);
    }
    u
}

/// A TCP header (20 bytes, ACK) from port `sport` to 5201 at sequence
/// number `seq`, then `payload` bytes of a pattern that runs on with `seq`.
fn tcp_l4(sport: u16, seq: u32, payload: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + payload];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = tcp::FLAG_ACK;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    for (i, b) in t[20..].iter_mut().enumerate() {
        *b = (seq as usize + i).wrapping_mul(13) as u8;
    }
    t
}

/// A UDP datagram over IPv4, checksums valid.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, payload: usize) -> Vec<u8> {
    ip4(src, dst, PROTO_UDP, &udp_l4(sport, payload))
}

/// A UDP datagram over IPv6, checksum valid.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, payload: usize) -> Vec<u8> {
    ip6(src, dst, PROTO_UDP, &udp_l4(sport, payload))
}

/// A TCP segment over IPv4 (DF set, as Linux sends TCP), checksums valid.
pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, seq: u32, payload: usize) -> Vec<u8> {
    let mut p = ip4(src, dst, PROTO_TCP, &tcp_l4(sport, seq, payload));
    p[6] = 0x40;
    ipv4::Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// A TCP segment over IPv6, checksum valid.
pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, seq: u32, payload: usize) -> Vec<u8> {
    ip6(src, dst, PROTO_TCP, &tcp_l4(sport, seq, payload))
}

/// An ICMP echo request over IPv4.
pub fn ping4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4];
    let c = checksum_finish(checksum_sum(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    ip4(src, dst, ipv4::PROTO_ICMP, &m)
}

/// A TUN read on a device with offloads: header `h`, then `pkt`.
pub fn read(h: virtio::Header, pkt: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; virtio::HEADER_LEN];
    h.emit(&mut v);
    v.extend_from_slice(pkt);
    v
}

/// A TUN read of `pkt` whose L4 checksum its sender left for the device to
/// complete (`FLAG_NEEDS_CSUM`, the pseudo-header sum in the field).
pub fn partial_read(mut pkt: Vec<u8>) -> Vec<u8> {
    let (l4, off) = fill_l4_checksum(&mut pkt, true);
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: off as u16,
        ..Default::default()
    };
    read(h, &pkt)
}

/// A TSO super-packet as a TUN device with offloads hands it over: the
/// segment `seg` (from [`tcp4`] or [`tcp6`], as long as the whole) under a
/// header asking for `mss`-byte segments, its checksum left partial.
pub fn tso_read(mut seg: Vec<u8>, mss: u16) -> Vec<u8> {
    let (l4, off) = fill_l4_checksum(&mut seg, true);
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type: if seg[0] >> 4 == 6 {
            virtio::GSO_TCPV6
        } else {
            virtio::GSO_TCPV4
        },
        hdr_len: (l4 + 20) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: off as u16,
    };
    read(h, &seg)
}

/// What node `core` (with table `t`) makes of the datagram `d` from `src`:
/// the inner packet it delivers, or why it drops it.
pub fn decap(core: &Core, t: &Table, src: IpAddr, d: &[u8]) -> Result<Vec<u8>, DropReason> {
    let (from, _) = core.identify(t, src)?;
    let mut slot = vec![0u8; SLOT];
    let start = HEADROOM - ENCAP_LEN;
    slot[start..start + d.len()].copy_from_slice(d);
    match core.decap(from, &slot, start, d.len()) {
        RxAction::Deliver(r) => Ok(slot[r].to_vec()),
        RxAction::Drop(r) => Err(r),
    }
}
