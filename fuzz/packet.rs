//! The packet path's entry points: decapsulation, encapsulation and routing,
//! segmentation of super-packets and checksum completion (virtio-net headers
//! at their extremes), coalescing, and the wire views themselves. Seeds are
//! real packets and datagrams built with the crate's own code.

use std::cell::RefCell;
use std::net::Ipv4Addr;

use rand::Rng as _;

use weft::dataplane::core::{Core, Route, RxAction, Sender, TxAction, flow_hash};
use weft::dataplane::offload::{self, Arena, Coalescer, SegmentError};
use weft::dataplane::table::Table;
use weft::dataplane::{ENCAP_LEN, HEADROOM, Part, SLOT};
use weft::lease::{Lease, LeaseAttrs};
use weft::node::Admission;
use weft::types::{Vni, VtepMac};
use weft::wire::{
    checksum_finish, checksum_fold, checksum_sum, ethernet, icmp, ipv4, ipv6, tcp, virtio, vxlan,
};

use crate::{Entry, Outcome, Rng, accepted, mutate, refused};

pub fn entries() -> Vec<Entry> {
    vec![
        Entry {
            name: "decap",
            about: "Core::decap: a received VXLAN datagram, at any start and length in the slot",
            seeds: decap_seeds,
            mutate: decap_mutate,
            run: decap_run,
        },
        Entry {
            name: "encap",
            about: "Core::encap and Core::route: a packet read from TUN, any length, dense and hashed tables",
            seeds: encap_seeds,
            mutate: encap_mutate,
            run: encap_run,
        },
        Entry {
            name: "segment",
            about: "offload::segment: a TSO/USO super-packet under any virtio-net header, at any offset",
            seeds: segment_seeds,
            mutate: segment_mutate,
            run: segment_run,
        },
        Entry {
            name: "checksum",
            about: "offload::complete_checksum: csum_start/csum_offset anywhere",
            seeds: checksum_seeds,
            mutate: checksum_mutate,
            run: checksum_run,
        },
        Entry {
            name: "coalesce",
            about: "Coalescer::push/close/writes: runs of TCP segments, any ranges",
            seeds: coalesce_seeds,
            mutate: coalesce_mutate,
            run: coalesce_run,
        },
        Entry {
            name: "wire",
            about: "every wire view's new_checked and accessors, virtio parse/emit, ICMP errors, flow_hash",
            seeds: wire_seeds,
            mutate: wire_mutate,
            run: wire_run,
        },
    ]
}

const VNI: u32 = 1;
/// Addresses worth writing into a header: each node's subnet, the edges.
pub(crate) const ADDRS: &[[u8; 4]] = &[
    [10, 244, 1, 5],
    [10, 244, 2, 7],
    [10, 244, 2, 0],
    [10, 244, 2, 255],
    [10, 244, 3, 9],
    [10, 244, 4, 200],
    [10, 244, 9, 9],
    [0, 0, 0, 0],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [127, 0, 0, 1],
];

/// Node `n`: dual-stack, `10.244.n.0/24` and `fc00:0:0:n::/64`, its IPv6
/// VTEP at `2001:db8::n`.
pub(crate) fn node(n: u8) -> Core {
    let ip = [192, 0, 2, n];
    Core::new(
        Vni::new(VNI).expect("fits"),
        VtepMac::derive(&ip),
        format!("10.244.{n}.0/24").parse().expect("a CIDR"),
    )
    .with_ipv6(
        format!("fc00:0:0:{n}::/64").parse().expect("a CIDR"),
        VtepMac::derive(&public6(n).octets()),
    )
}

fn public6(n: u8) -> std::net::Ipv6Addr {
    format!("2001:db8::{n}").parse().expect("an address")
}

/// The IPv6Network of the fuzzed world.
fn network6() -> Option<ipnet::Ipv6Net> {
    "fc00::/48".parse().ok()
}

fn lease(subnet: &str, n: u8) -> Lease {
    let ip = [192, 0, 2, n];
    let vni = Vni::new(VNI).expect("fits");
    Lease {
        subnet: Some(subnet.parse().expect("a CIDR")),
        ipv6_subnet: format!("fc00:0:0:{n}::/64").parse().ok(),
        attrs: LeaseAttrs::vxlan(ip.into(), vni, VtepMac::derive(&ip)).with_ipv6(
            public6(n),
            vni,
            VtepMac::derive(&public6(n).octets()),
        ),
        expiration: None,
    }
}

/// Node 1's tables: hashed with mixed prefix lengths, and dense (/24s only).
pub(crate) struct Tables {
    pub(crate) hashed: Table,
    pub(crate) dense: Table,
}

pub(crate) fn tables() -> &'static Tables {
    static T: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let own = Some("10.244.1.0/24".parse().expect("a CIDR"));
        let vni = Vni::new(VNI).expect("fits");
        let ls = [
            lease("10.244.1.0/24", 1),
            lease("10.244.2.0/24", 2),
            lease("10.244.3.0/24", 3),
            lease("10.244.4.128/25", 4),
        ];
        let (hashed, _) = Admission::vxlan(network6(), vni, 8472).table(&ls, own);
        let (mut dense, _) = Admission::vxlan(network6(), vni, 8472).table(&ls[..3], own);
        assert!(dense.index_dense("10.244.0.0/16".parse().expect("a CIDR")));
        Tables { hashed, dense }
    })
}

/// An IPv4 packet: `proto` with an 8-byte L4 header and `payload` bytes,
/// `opts` bytes of IP options, checksums filled in.
pub(crate) fn ip_packet(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    payload: usize,
    opts: usize,
) -> Vec<u8> {
    let ihl = 20 + opts;
    let l4 = if proto == tcp::PROTO_TCP { 20 } else { 8 };
    let total = ihl + l4 + payload;
    let mut p = vec![0u8; total];
    ipv4::emit_header(
        &mut p,
        u16::try_from(total).expect("small"),
        64,
        proto,
        src.into(),
        dst.into(),
    );
    p[0] = 0x40 | u8::try_from(ihl / 4).expect("small");
    for (i, b) in p[ihl..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    p[ihl..ihl + 4].copy_from_slice(&[0x30, 0x39, 0x1f, 0x90]);
    if proto == tcp::PROTO_TCP {
        p[ihl + 12] = 5 << 4;
        p[ihl + 13] = tcp::FLAG_ACK;
    }
    if proto == icmp_proto() {
        p[ihl] = 8;
    }
    mutate::fix_checksums(&mut p);
    p
}

fn icmp_proto() -> u8 {
    ipv4::PROTO_ICMP
}

/// An IPv6 packet: `next` with an 8-byte (20 for TCP) L4 header and
/// `payload` bytes, checksums filled in.
fn ip6_packet(src: &str, dst: &str, next: u8, payload: usize) -> Vec<u8> {
    let l4 = if next == tcp::PROTO_TCP { 20 } else { 8 };
    let mut p = vec![0u8; 40 + l4 + payload];
    ipv6::emit_header(
        &mut p,
        u16::try_from(l4 + payload).expect("small"),
        next,
        64,
        src.parse().expect("an address"),
        dst.parse().expect("an address"),
    );
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    p[40..44].copy_from_slice(&[0x30, 0x39, 0x1f, 0x90]);
    if next == tcp::PROTO_TCP {
        p[52] = 5 << 4;
        p[53] = tcp::FLAG_ACK;
    }
    if next == ipv6::PROTO_ICMPV6 {
        p[40] = 128;
    }
    mutate::fix_checksums(&mut p);
    p
}

/// Inner packets from node 1 to node 2, of every kind the core sees.
pub(crate) fn inner_packets() -> Vec<Vec<u8>> {
    let (a, b) = ([10, 244, 1, 5], [10, 244, 2, 7]);
    let mut v = vec![];
    for size in [0usize, 1, 8, 100, 1372, 1422] {
        v.push(ip_packet(a, b, tcp::PROTO_UDP, size, 0));
    }
    v.push(ip_packet(a, b, tcp::PROTO_TCP, 1000, 0));
    v.push(ip_packet(a, b, icmp_proto(), 56, 0));
    v.push(ip_packet(a, b, tcp::PROTO_UDP, 20, 4));
    v.push(ip_packet(a, b, tcp::PROTO_UDP, 20, 40));
    let mut frag = ip_packet(a, b, tcp::PROTO_UDP, 64, 0);
    frag[6] = 0x20;
    mutate::fix_checksums(&mut frag);
    v.push(frag);
    let (a6, b6) = ("fc00:0:0:1::5", "fc00:0:0:2::7");
    for size in [0usize, 1, 100, 1352, 1402] {
        v.push(ip6_packet(a6, b6, tcp::PROTO_UDP, size));
    }
    v.push(ip6_packet(a6, b6, tcp::PROTO_TCP, 1000));
    v.push(ip6_packet(a6, b6, ipv6::PROTO_ICMPV6, 56));
    v
}

/// Encapsulates `pkt` at node 1 with the crate's own encap: the datagram.
fn encapsulate(pkt: &[u8]) -> Vec<u8> {
    let mut slot = vec![0u8; SLOT];
    let mut scratch = [0u8; 128];
    slot[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    match node(1).encap(&tables().hashed, &mut slot, pkt.len(), &mut scratch) {
        TxAction::Send { range, .. } => slot[range].to_vec(),
        other => panic!("a seed did not encapsulate: {other:?}"),
    }
}

/// `[placement][8 bytes of a start or length][body]`: how a packet entry
/// places its body in the slot.
pub(crate) const PARAMS: usize = 9;

fn with_params(p: u8, x: u64, body: &[u8]) -> Vec<u8> {
    let mut v = vec![p];
    v.extend_from_slice(&x.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn split_params(input: &[u8]) -> (u8, usize, &[u8]) {
    let p = input.first().copied().unwrap_or(0);
    let mut x = [0u8; 8];
    let rest = input.get(1..).unwrap_or(&[]);
    let n = rest.len().min(8);
    x[..n].copy_from_slice(&rest[..n]);
    let x = usize::try_from(u64::from_le_bytes(x)).unwrap_or(usize::MAX);
    (p, x, input.get(PARAMS..).unwrap_or(&[]))
}

/// Mutates a packet entry's input: its placement, or its body's header
/// fields (the IPv4 header lies `ip_at` bytes into the body), or its bytes.
fn body_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], ip_at: usize) {
    match rng.random_range(0..10) {
        0 => {
            if let Some(p) = v.first_mut() {
                *p = rng.random();
            }
        }
        1..=4 => mutate::ip_fields(rng, v, PARAMS + ip_at, ADDRS),
        _ => mutate::bytes(rng, v, seeds, PARAMS + SLOT - HEADROOM),
    }
}

thread_local! {
    /// A zeroed slot, zeroed again after each input.
    static SLOT_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SLOT]);
    static SLOT_BUF2: RefCell<Vec<u8>> = RefCell::new(vec![0; SLOT]);
}

/// Who sent a fuzzed datagram, as the receive path finds it: node 1 (a
/// lease of the table), a stranger (unknown peers accepted), or anyone
/// (source checks off), by `who`.
fn sender(core: &Core, who: u8) -> Sender<'static> {
    static RECEIVER: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    // Node 2's table: the receiver of the decap entry point.
    let table = RECEIVER.get_or_init(|| {
        let ls = [
            lease("10.244.1.0/24", 1),
            lease("10.244.2.0/24", 2),
            lease("10.244.4.128/25", 4),
        ];
        let own = Some("10.244.2.0/24".parse().expect("a CIDR"));
        Admission::vxlan(network6(), Vni::new(VNI).expect("fits"), 8472)
            .table(&ls, own)
            .0
    });
    match who % 3 {
        0 => core
            .sender(table, [192, 0, 2, 1].into())
            .unwrap_or(Sender::Anyone),
        1 => Sender::Unknown(table),
        _ => Sender::Anyone,
    }
}

/// The one call of [`Core::decap`].
fn decap(core: &Core, from: Sender<'_>, slot: &[u8], start: usize, len: usize) -> RxAction {
    core.decap(from, slot, start, len)
}

fn decap_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![];
    for pkt in inner_packets() {
        let d = encapsulate(&pkt);
        v.push(with_params(0, 0, &d));
        if pkt.len() < 100 {
            // Ethernet padding after the IP packet.
            let mut padded = d.clone();
            padded.extend_from_slice(&[0; 18]);
            v.push(with_params(0, 0, &padded));
            v.push(with_params(5, 0, &d));
            v.push(with_params(7, u64::MAX, &d));
            v.push(with_params(6, u64::MAX - 3, &d));
        }
    }
    v
}

fn decap_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    body_mutate(rng, v, seeds, ENCAP_LEN);
}

/// Where the datagram goes, from the placement byte: the receive offset
/// (most often), the end of the slot, or a start or length from the input.
fn decap_run(input: &[u8]) -> Outcome {
    let (p, x, d) = split_params(input);
    let normal = HEADROOM - ENCAP_LEN;
    let (start, len) = match p % 8 {
        5 => (SLOT.saturating_sub(d.len()), d.len()),
        6 => (x, d.len()),
        7 => (normal, x),
        _ => (normal, d.len()),
    };
    let core = node(2);
    SLOT_BUF.with(|s| {
        let mut slot = s.borrow_mut();
        // The datagram where it fits; zeros elsewhere.
        let at = start
            .checked_add(d.len())
            .filter(|e| *e <= SLOT)
            .map_or(normal, |_| start);
        let n = d.len().min(SLOT - at);
        slot[at..at + n].copy_from_slice(&d[..n]);
        let from = sender(&core, p >> 3);
        let r = decap(&core, from, &slot, start, len);
        let out = check_decap(&core, from, &slot, start, len, &r);
        slot[at..at + n].fill(0);
        out?;
        match r {
            RxAction::Deliver(_) => accepted("deliver"),
            RxAction::Drop(why) => refused(why.name()),
        }
    })
}

fn check_decap(
    core: &Core,
    from: Sender<'_>,
    slot: &[u8],
    start: usize,
    len: usize,
    r: &RxAction,
) -> Result<(), crate::Violation> {
    let RxAction::Deliver(r) = r else {
        return Ok(());
    };
    ensure!(
        r.start == start + ENCAP_LEN,
        "Deliver({r:?}) does not start ENCAP_LEN after the datagram's start {start}"
    );
    ensure!(
        start != HEADROOM - ENCAP_LEN || r.start == HEADROOM,
        "Deliver({r:?}) does not start at HEADROOM"
    );
    let end = start.checked_add(len);
    ensure!(
        end.is_some_and(|e| r.end <= e && e <= slot.len()),
        "Deliver({r:?}) reaches past the datagram {start}+{len} or the slot"
    );
    let inner = &slot[r.clone()];
    if inner.first().is_some_and(|b| b >> 4 == 6) {
        return check_delivered6(core, from, inner, r);
    }
    let ip = ipv4::Packet::new_checked(inner);
    ensure!(ip.is_ok(), "Deliver({r:?}) is not an IPv4 packet");
    let ip = ip.expect("checked");
    ensure!(
        usize::from(ip.total_len()) == inner.len(),
        "Deliver({r:?}) is not the IP total length {}",
        ip.total_len()
    );
    ensure!(
        core.subnet.is_some_and(|s| s.contains(&ip.dst())),
        "Deliver of a packet to {} outside {:?}",
        ip.dst(),
        core.subnet
    );
    match from {
        Sender::Leased(e) => ensure!(
            e.nets.iter().any(|n| n.contains(&ip.src())),
            "Deliver of a packet from {} outside the sender's {:?}",
            ip.src(),
            e.nets
        ),
        Sender::Unknown(t) => ensure!(
            t.lookup(ip.src()).is_some(),
            "Deliver from an unknown sender of a packet from {}, in no peer's subnet",
            ip.src()
        ),
        Sender::Anyone => {}
    }
    Ok(())
}

/// [`check_decap`]'s oracle for a delivered IPv6 packet.
fn check_delivered6(
    core: &Core,
    from: Sender<'_>,
    inner: &[u8],
    r: &std::ops::Range<usize>,
) -> Result<(), crate::Violation> {
    let ip = ipv6::Packet::new_checked(inner);
    ensure!(ip.is_ok(), "Deliver({r:?}) is not an IPv6 packet");
    let ip = ip.expect("checked");
    ensure!(
        ip.total_len() == inner.len(),
        "Deliver({r:?}) is not the IPv6 length {}",
        ip.total_len()
    );
    ensure!(
        core.subnet6.is_some_and(|s| s.contains(&ip.dst())),
        "Deliver of a packet to {} outside {:?}",
        ip.dst(),
        core.subnet6
    );
    match from {
        Sender::Leased(e) => ensure!(
            e.nets6.iter().any(|n| n.contains(&ip.src())),
            "Deliver of a packet from {} outside the sender's {:?}",
            ip.src(),
            e.nets6
        ),
        Sender::Unknown(t) => ensure!(
            t.lookup6(ip.src()).is_some(),
            "Deliver from an unknown sender of a packet from {}, in no peer's IPv6 subnet",
            ip.src()
        ),
        Sender::Anyone => {}
    }
    Ok(())
}

pub(crate) fn encap_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![];
    let (a, c) = ([10, 244, 1, 5], [10, 244, 3, 9]);
    for pkt in inner_packets() {
        v.push(with_params(0, 0, &pkt));
    }
    for dst in [
        [10, 244, 4, 200],
        [10, 244, 4, 5],
        [10, 244, 9, 9],
        [10, 244, 1, 9],
    ] {
        v.push(with_params(
            0x80,
            0,
            &ip_packet(a, dst, tcp::PROTO_UDP, 30, 0),
        ));
        v.push(with_params(0, 0, &ip_packet(a, dst, icmp_proto(), 30, 0)));
    }
    v.push(with_params(
        0x80,
        0,
        &ip_packet(a, c, tcp::PROTO_TCP, 200, 0),
    ));
    for dst in ["fc00:0:0:3::9", "fc00:0:0:9::9", "fc00:0:0:1::9", "ff02::1"] {
        for next in [tcp::PROTO_UDP, ipv6::PROTO_ICMPV6, tcp::PROTO_TCP] {
            v.push(with_params(
                0,
                0,
                &ip6_packet("fc00:0:0:1::5", dst, next, 30),
            ));
        }
    }
    v.push(with_params(
        6,
        u64::MAX,
        &ip_packet(a, c, tcp::PROTO_UDP, 10, 0),
    ));
    v.push(with_params(7, 12, &ip_packet(a, c, tcp::PROTO_UDP, 10, 0)));
    v
}

fn encap_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    body_mutate(rng, v, seeds, 0);
}

/// Encapsulates the body at `slot[HEADROOM..]`; the placement byte picks
/// the length (the body's, one from the input, or a few bytes more) and the
/// table (bit 7: dense).
fn encap_run(input: &[u8]) -> Outcome {
    let (p, x, body) = split_params(input);
    let body = &body[..body.len().min(SLOT - HEADROOM)];
    let len = match p % 8 {
        6 => x,
        7 => body.len().saturating_add(x % 64),
        _ => body.len(),
    };
    let t = if p & 0x80 != 0 {
        &tables().dense
    } else {
        &tables().hashed
    };
    let core = node(1);
    SLOT_BUF.with(|s| {
        let mut slot = s.borrow_mut();
        slot[HEADROOM..HEADROOM + body.len()].copy_from_slice(body);
        let mut scratch = [0u8; 128];
        let r = core.encap(t, &mut slot, len, &mut scratch);
        let out = check_encap(&core, t, &slot, len, &scratch, &r);
        slot[HEADROOM - ENCAP_LEN..HEADROOM + body.len()].fill(0);
        out?;
        Ok(match r {
            TxAction::Send { .. } => crate::Verdict::Accepted("send".into()),
            TxAction::Unreachable { .. } => crate::Verdict::Accepted("icmp unreachable".into()),
            TxAction::Drop(why) => crate::Verdict::Refused(why.name().into()),
        })
    })
}

fn check_encap(
    core: &Core,
    t: &Table,
    slot: &[u8],
    len: usize,
    scratch: &[u8],
    r: &TxAction,
) -> Result<(), crate::Violation> {
    let pkt = HEADROOM
        .checked_add(len)
        .and_then(|e| slot.get(HEADROOM..e));
    let Some(pkt) = pkt else {
        ensure!(
            matches!(r, TxAction::Drop(_)),
            "{r:?} for a length {len} past the slot"
        );
        return Ok(());
    };
    // route() answers as encap() did.
    let mut scratch2 = [0u8; 128];
    let routed = core.route(t, pkt, &mut scratch2);
    match (r, &routed) {
        (TxAction::Send { to, .. }, Route::Peer { to: to2, .. }) => {
            ensure!(to == to2, "encap sends to {to}, route says {to2}");
        }
        (TxAction::Unreachable { len: a }, Route::Unreachable { len: b }) => {
            ensure!(
                a == b && scratch[..*a] == scratch2[..*b],
                "encap and route built different ICMP errors"
            );
        }
        (TxAction::Drop(a), Route::Drop(b)) => ensure!(a == b, "encap drops {a:?}, route {b:?}"),
        _ => ensure!(false, "encap answered {r:?}, route {routed:?}"),
    }
    if pkt.first().is_some_and(|b| b >> 4 == 6) {
        return check_encap6(core, t, pkt, slot, len, r, scratch);
    }
    match r {
        TxAction::Send { to, range, .. } => {
            ensure!(
                *range == (HEADROOM - ENCAP_LEN..HEADROOM + len),
                "Send range {range:?} for a packet of {len} bytes"
            );
            let dst = ipv4::peek_dst(pkt);
            ensure!(dst.is_some(), "Send of a packet that is not IPv4");
            let dst = dst.expect("checked");
            let peer = t.lookup(dst);
            ensure!(
                peer.is_some_and(
                    |p| p.subnet.contains(&dst) && std::net::SocketAddr::V4(p.endpoint) == *to
                ),
                "Send to {to} of a packet to {dst}: the table says {peer:?}"
            );
            let peer = peer.expect("checked");
            // The peer decapsulates it back to the packet (when it is one).
            let them = Core::new(core.vni, peer.vtep_mac, peer.subnet);
            let dgram = &slot[range.clone()];
            SLOT_BUF2.with(|s| -> Result<(), crate::Violation> {
                let mut rx = s.borrow_mut();
                let start = HEADROOM - ENCAP_LEN;
                rx[start..start + dgram.len()].copy_from_slice(dgram);
                let got = decap(&them, Sender::Anyone, &rx, start, dgram.len());
                let out = match (ipv4::Packet::new_checked(pkt), &got) {
                    (Ok(ip), RxAction::Deliver(d)) => {
                        let want = &pkt[..usize::from(ip.total_len())];
                        if rx[d.clone()] == *want {
                            Ok(())
                        } else {
                            Err(crate::Violation(
                                "the peer decapsulated other bytes than were sent".into(),
                            ))
                        }
                    }
                    (Ok(_), RxAction::Drop(why)) => Err(crate::Violation(format!(
                        "the peer drops what was sent to it: {why:?}"
                    ))),
                    (Err(_), RxAction::Deliver(_)) => Err(crate::Violation(
                        "the peer delivers a packet that is not IPv4".into(),
                    )),
                    (Err(_), RxAction::Drop(_)) => Ok(()),
                };
                rx[start..start + dgram.len()].fill(0);
                out
            })?;
        }
        TxAction::Unreachable { len: n } => {
            let icmp_pkt = &scratch[..*n];
            let ip = ipv4::Packet::new_checked(icmp_pkt);
            ensure!(ip.is_ok(), "the ICMP error is not an IPv4 packet");
            let ip = ip.expect("checked");
            let orig = ipv4::Packet::new_checked(pkt);
            ensure!(orig.is_ok(), "an ICMP error for a packet that is not IPv4");
            let orig = orig.expect("checked");
            ensure!(
                ip.checksum_ok() && Some(ip.src()) == core.router && ip.dst() == orig.src(),
                "ICMP error {} -> {} (checksum ok: {}) for a packet from {}",
                ip.src(),
                ip.dst(),
                ip.checksum_ok(),
                orig.src()
            );
            ensure!(
                checksum_finish(checksum_sum(&icmp_pkt[ip.header_len()..], 0)) == 0,
                "the ICMP checksum does not verify"
            );
            ensure!(
                t.lookup(orig.dst()).is_none(),
                "ICMP unreachable for {}, which the table routes",
                orig.dst()
            );
        }
        TxAction::Drop(_) => {}
    }
    Ok(())
}

/// The encap oracle for an IPv6 packet: sent to the IPv6 VTEP of the peer
/// whose IPv6 subnet holds its destination, and decapsulated there back to
/// it; or an ICMPv6 error for a destination no lease holds.
fn check_encap6(
    core: &Core,
    t: &Table,
    pkt: &[u8],
    slot: &[u8],
    len: usize,
    r: &TxAction,
    scratch: &[u8],
) -> Result<(), crate::Violation> {
    match r {
        TxAction::Send { to, range, .. } => {
            ensure!(
                *range == (HEADROOM - ENCAP_LEN..HEADROOM + len),
                "Send range {range:?} for a packet of {len} bytes"
            );
            let dst = ipv6::peek_dst(pkt);
            ensure!(dst.is_some(), "Send of a packet that is not IPv6");
            let dst = dst.expect("checked");
            let peer = t.lookup6(dst);
            ensure!(
                peer.is_some_and(
                    |p| p.subnet.contains(&dst) && std::net::SocketAddr::V6(p.endpoint) == *to
                ),
                "Send to {to} of a packet to {dst}: the table says {peer:?}"
            );
            let peer = peer.expect("checked");
            let them = match peer.v4 {
                Some(s) => Core::new(core.vni, VtepMac::derive(&[0; 4]), s)
                    .with_ipv6(peer.subnet, peer.vtep_mac),
                None => Core::ipv6_only(core.vni, peer.vtep_mac, peer.subnet),
            };
            let dgram = &slot[range.clone()];
            SLOT_BUF2.with(|s| -> Result<(), crate::Violation> {
                let mut rx = s.borrow_mut();
                let start = HEADROOM - ENCAP_LEN;
                rx[start..start + dgram.len()].copy_from_slice(dgram);
                let got = decap(&them, Sender::Anyone, &rx, start, dgram.len());
                let out = match (ipv6::Packet::new_checked(pkt), &got) {
                    (Ok(ip), RxAction::Deliver(d)) if rx[d.clone()] == pkt[..ip.total_len()] => {
                        Ok(())
                    }
                    (Ok(_), RxAction::Deliver(_)) => Err(crate::Violation(
                        "the peer decapsulated other bytes than were sent".into(),
                    )),
                    (Ok(_), RxAction::Drop(why)) => Err(crate::Violation(format!(
                        "the peer drops what was sent to it: {why:?}"
                    ))),
                    (Err(_), RxAction::Deliver(_)) => Err(crate::Violation(
                        "the peer delivers a packet that is not IPv6".into(),
                    )),
                    (Err(_), RxAction::Drop(_)) => Ok(()),
                };
                rx[start..start + dgram.len()].fill(0);
                out
            })
        }
        TxAction::Unreachable { len: n } => {
            let answer = &scratch[..*n];
            let ip = ipv6::Packet::new_checked(answer);
            ensure!(ip.is_ok(), "the ICMPv6 error is not an IPv6 packet");
            let ip = ip.expect("checked");
            let orig = ipv6::Packet::new_checked(pkt);
            ensure!(
                orig.is_ok(),
                "an ICMPv6 error for a packet that is not IPv6"
            );
            let orig = orig.expect("checked");
            let own6 = core.subnet6.map(|s| s.network());
            ensure!(
                Some(ip.src()) == own6 && ip.dst() == orig.src() && answer.len() <= 1280,
                "ICMPv6 error {} -> {} ({} bytes) for a packet from {}",
                ip.src(),
                ip.dst(),
                answer.len(),
                orig.src()
            );
            let sum = ipv6::pseudo_header_sum(
                ip.src(),
                ip.dst(),
                ipv6::PROTO_ICMPV6,
                (answer.len() - 40) as u32,
                0,
            );
            ensure!(
                checksum_finish(checksum_sum(&answer[40..], sum)) == 0,
                "the ICMPv6 checksum does not verify"
            );
            ensure!(
                t.lookup6(orig.dst()).is_none(),
                "ICMPv6 unreachable for {}, which the table routes",
                orig.dst()
            );
            Ok(())
        }
        TxAction::Drop(_) => Ok(()),
    }
}

/// `[virtio header][placement][8 bytes: an offset `at`][super-packet]`.
pub(crate) const SEG_AT: usize = virtio::HEADER_LEN;

pub(crate) fn super_packet(
    proto: u8,
    payload: usize,
    mss: u16,
    opts: usize,
    tcp_opts: usize,
) -> Vec<u8> {
    let mut p = ip_packet(
        [10, 244, 1, 5],
        [10, 244, 2, 7],
        proto,
        payload + tcp_opts,
        opts,
    );
    let ihl = 20 + opts;
    if proto == tcp::PROTO_TCP {
        p[ihl + 12] = u8::try_from((20 + tcp_opts) / 4).expect("small") << 4;
        p[ihl + 13] = tcp::FLAG_ACK | tcp::FLAG_PSH | tcp::FLAG_CWR;
        p[ihl + 4..ihl + 8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    }
    let l4 = if proto == tcp::PROTO_TCP {
        20 + tcp_opts
    } else {
        8
    };
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type: if proto == tcp::PROTO_TCP {
            virtio::GSO_TCPV4
        } else {
            virtio::GSO_UDP_L4
        },
        hdr_len: u16::try_from(ihl + l4).expect("small"),
        gso_size: mss,
        csum_start: u16::try_from(ihl).expect("small"),
        csum_offset: if proto == tcp::PROTO_TCP { 16 } else { 6 },
    };
    let mut v = vec![0u8; virtio::HEADER_LEN];
    h.emit(&mut v);
    v.extend_from_slice(&with_params(0, 0, &p));
    v
}

/// An IPv6 super-packet seed: `[virtio header][placement][packet]`, TCP
/// (GSO_TCPV6, ACK|PSH|CWR from sequence 0xfffffff0) or UDP (GSO_UDP_L4).
fn super_packet6(proto: u8, payload: usize, mss: u16) -> Vec<u8> {
    let mut p = ip6_packet("fc00:0:0:1::5", "fc00:0:0:2::7", proto, payload);
    let l4 = if proto == tcp::PROTO_TCP {
        p[53] = tcp::FLAG_ACK | tcp::FLAG_PSH | tcp::FLAG_CWR;
        p[44..48].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        20
    } else {
        8
    };
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type: if proto == tcp::PROTO_TCP {
            virtio::GSO_TCPV6
        } else {
            virtio::GSO_UDP_L4
        },
        hdr_len: u16::try_from(40 + l4).expect("small"),
        gso_size: mss,
        csum_start: 40,
        csum_offset: if proto == tcp::PROTO_TCP { 16 } else { 6 },
    };
    let mut v = vec![0u8; virtio::HEADER_LEN];
    h.emit(&mut v);
    v.extend_from_slice(&with_params(0, 0, &p));
    v
}

pub(crate) fn segment_seeds() -> Vec<Vec<u8>> {
    let t = tcp::PROTO_TCP;
    let u = tcp::PROTO_UDP;
    // Placed at an offset near usize::MAX (placement 3: `at` from the input).
    let mut far = super_packet(t, 2800, 1400, 0, 0);
    far[SEG_AT] = 3;
    far[SEG_AT + 1..SEG_AT + PARAMS].copy_from_slice(&(u64::MAX - 1000).to_le_bytes());
    vec![
        far,
        super_packet(t, 2800, 1400, 0, 0),
        super_packet(t, 65_535 - 40, 1448, 0, 0),
        super_packet(t, 5000, 1388, 0, 12),
        super_packet(t, 3000, 1000, 8, 40),
        super_packet(t, 100, 1400, 0, 0),
        super_packet(u, 4000, 1400, 0, 0),
        super_packet(u, 65_535 - 28, 1472, 0, 0),
        super_packet(u, 1401, 1400, 4, 0),
        super_packet6(t, 2800, 1370),
        super_packet6(t, 65_535 - 60, 1370),
        super_packet6(t, 100, 1370),
        super_packet6(u, 4000, 1382),
        super_packet6(u, 1383, 1382),
    ]
}

/// The facts the offload oracles check of an inner IP header `h` (header
/// bytes only, the payload may lie elsewhere): IPv6 or not, its length,
/// the packet length it declares, its L4 protocol, and whether an IPv4
/// header checksum verifies (IPv6 has none).
struct Facts {
    v6: bool,
    hl: usize,
    total: usize,
    proto: u8,
    header_ok: bool,
}

fn facts(h: &[u8]) -> Option<Facts> {
    match h.first()? >> 4 {
        6 if h.len() >= 40 => Some(Facts {
            v6: true,
            hl: 40,
            total: 40 + usize::from(u16::from_be_bytes([h[4], h[5]])),
            proto: h[6],
            header_ok: true,
        }),
        4 if h.len() >= 20 => {
            let hl = usize::from(h[0] & 0x0f) * 4;
            Some(Facts {
                v6: false,
                hl,
                total: usize::from(u16::from_be_bytes([h[2], h[3]])),
                proto: h[9],
                header_ok: hl >= 20
                    && h.len() >= hl
                    && checksum_finish(checksum_sum(&h[..hl], 0)) == 0,
            })
        }
        _ => None,
    }
}

/// The pseudo-header sum of header `h`'s family for `len` L4 bytes of `proto`.
fn pseudo_of(h: &[u8], proto: u8, len: usize) -> u32 {
    if h.first().is_some_and(|b| b >> 4 == 6) {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[8..24]);
        let src = std::net::Ipv6Addr::from(a);
        a.copy_from_slice(&h[24..40]);
        ipv6::pseudo_header_sum(src, std::net::Ipv6Addr::from(a), proto, len as u32, 0)
    } else {
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        tcp::pseudo_header_sum(src, dst, proto, u16::try_from(len).unwrap_or(0), 0)
    }
}

fn segment_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let body = SEG_AT + PARAMS;
    match rng.random_range(0..10) {
        0..=3 => {
            let n = v.len().saturating_sub(body);
            mutate::virtio(rng, v, 0, n);
        }
        4..=6 => mutate::ip_fields(rng, v, body, ADDRS),
        7 => {
            if let Some(p) = v.get_mut(SEG_AT) {
                *p = rng.random();
            }
        }
        _ => mutate::bytes(rng, v, seeds, body + 65_600),
    }
}

thread_local! {
    static SEG_STATE: RefCell<(Arena, Vec<Part>, Vec<offload::Datagram>)> =
        RefCell::new((Arena::default(), Vec::new(), Vec::new()));
}

/// Segments the body, placed at `at` (bit 0..1 of the placement byte at 3:
/// an offset from the input, else HEADROOM), into an arena that is empty or
/// (bit 6) nearly full.
fn segment_run(input: &[u8]) -> Outcome {
    let h = virtio::Header::parse(input).unwrap_or_default();
    let (p, x, pkt) = split_params(input.get(SEG_AT..).unwrap_or(&[]));
    let at = if p % 4 == 3 { x } else { HEADROOM };
    let prefix = route_prefix();
    let to = std::net::SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 8472));
    SEG_STATE.with(|s| {
        let (arena, parts, dgrams) = &mut *s.borrow_mut();
        arena.clear();
        parts.clear();
        dgrams.clear();
        if p & 0x40 != 0 {
            let _ = arena.alloc(offload::ARENA_LEN - (x % 8192));
        }
        let used = arena.bytes().len();
        let r = offload::segment(&h, pkt, 0, at, &prefix, to, arena, parts, dgrams);
        match r {
            Ok(n) => {
                check_segments(&h, pkt, at, used, n, arena, parts, dgrams)?;
                accepted("segments")
            }
            Err(e) => {
                ensure!(
                    parts.is_empty() && dgrams.is_empty() && arena.bytes().len() == used,
                    "{e:?} yet something was pushed"
                );
                refused(match e {
                    SegmentError::NoRoom => "no room",
                    SegmentError::Bad(why) => why.name(),
                })
            }
        }
    })
}

/// Node 1's VXLAN + Ethernet prefix for node 2.
fn route_prefix() -> [u8; ENCAP_LEN] {
    let pkt = ip_packet([10, 244, 1, 5], [10, 244, 2, 7], tcp::PROTO_UDP, 0, 0);
    match node(1).route(&tables().hashed, &pkt, &mut [0u8; 128]) {
        Route::Peer { prefix, .. } => prefix,
        _ => [0; ENCAP_LEN],
    }
}

#[allow(clippy::too_many_arguments)]
fn check_segments(
    h: &virtio::Header,
    pkt: &[u8],
    at: usize,
    used: usize,
    n: usize,
    arena: &Arena,
    parts: &[Part],
    dgrams: &[offload::Datagram],
) -> Result<(), crate::Violation> {
    ensure!(
        n >= 1 && dgrams.len() == n && parts.len() == 2 * n,
        "{n} segments, {} datagrams, {} parts",
        dgrams.len(),
        parts.len()
    );
    let ok = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        ipv6::Packet::new_checked(pkt).is_ok()
    } else {
        ipv4::Packet::new_checked(pkt).is_ok()
    };
    ensure!(ok, "segmented a packet that is not IP");
    let total = facts(pkt).map_or(0, |f| f.total);
    let mut payload = Vec::with_capacity(total);
    let mut hl = None;
    let end = at.checked_add(total);
    ensure!(
        end.is_some(),
        "segmented a packet whose end at {at}+{total} overflows"
    );
    let arena_bytes = arena.bytes();
    for (k, d) in dgrams.iter().enumerate() {
        ensure!(
            d.parts == (2 * k..2 * k + 2),
            "datagram {k} has parts {:?}",
            d.parts
        );
        let (Part::Arena(hr), Part::Buf(0, br)) = (&parts[2 * k], &parts[2 * k + 1]) else {
            return Err(crate::Violation(format!(
                "datagram {k}'s parts are {:?}",
                &parts[2 * k..2 * k + 2]
            )));
        };
        ensure!(
            hr.start >= used && hr.end <= arena_bytes.len(),
            "header {hr:?} outside the arena's new bytes {used}..{}",
            arena_bytes.len()
        );
        ensure!(
            br.start >= at && br.end <= end.unwrap_or(0) && br.start <= br.end,
            "payload {br:?} outside the packet at {at}..{end:?}"
        );
        let hdr = &arena_bytes[hr.clone()];
        ensure!(
            hl.is_none_or(|l| l == hdr.len()) && hdr.len() > ENCAP_LEN + 20,
            "header lengths differ or are short"
        );
        hl = Some(hdr.len());
        ensure!(
            d.len == hdr.len() + br.len() && d.len - ENCAP_LEN <= 65_535,
            "datagram {k} of {} bytes from parts of {} + {}",
            d.len,
            hdr.len(),
            br.len()
        );
        let chunk = &pkt[br.start - at..br.end - at];
        let inner = &hdr[ENCAP_LEN..];
        let f = facts(inner);
        ensure!(
            f.as_ref().is_some_and(|f| f.header_ok
                && f.total == inner.len() + chunk.len()
                && f.v6 == pkt.first().is_some_and(|b| b >> 4 == 6)),
            "segment {k}: header checksum or length wrong for {} bytes",
            inner.len() + chunk.len()
        );
        let f = f.expect("checked");
        let l4 = &inner[f.hl..];
        let sum = pseudo_of(inner, f.proto, l4.len() + chunk.len());
        let sum = checksum_sum(chunk, checksum_sum(l4, sum));
        ensure!(
            checksum_finish(sum) == 0,
            "segment {k}: the L4 checksum does not verify (gso {:?})",
            h
        );
        payload.extend_from_slice(chunk);
    }
    let hl = hl.unwrap_or(0) - ENCAP_LEN;
    ensure!(
        pkt.get(hl..total) == Some(&payload[..]),
        "the segments' payloads are not the packet's"
    );
    Ok(())
}

fn checksum_seeds() -> Vec<Vec<u8>> {
    segment_seeds()
        .into_iter()
        .map(|mut s| {
            // [virtio][packet], no placement.
            s.drain(SEG_AT..SEG_AT + PARAMS);
            s.truncate(SEG_AT + 3000);
            s
        })
        .collect()
}

fn checksum_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.random_range(0..3) {
        0 | 1 => {
            let n = v.len().saturating_sub(SEG_AT);
            mutate::virtio(rng, v, 0, n);
        }
        _ => mutate::bytes(rng, v, seeds, SEG_AT + 4000),
    }
}

fn checksum_run(input: &[u8]) -> Outcome {
    let h = virtio::Header::parse(input).unwrap_or_default();
    let mut pkt = input.get(SEG_AT..).unwrap_or(&[]).to_vec();
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    let partial = pkt
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    // The start lies after the IP header (IPv4's IHL, at least 20 bytes;
    // IPv6's 40; nothing else has one), the field inside the packet.
    let header = match pkt.first().map(|b| b >> 4) {
        Some(4) => (usize::from(pkt[0] & 0x0f) * 4).max(20),
        Some(6) => 40,
        _ => usize::MAX,
    };
    let r = offload::complete_checksum(&h, &mut pkt);
    let fits = at + 2 <= pkt.len() && start <= pkt.len() && start >= header;
    ensure!(
        r.is_ok() == fits,
        "complete_checksum {r:?} for csum_start {start} + csum_offset {} in {} bytes",
        h.csum_offset,
        pkt.len()
    );
    match r {
        Ok(()) => {
            if (at - start) % 2 == 0 {
                let partial = u32::from(partial.unwrap_or(0));
                ensure!(
                    checksum_finish(checksum_sum(&pkt[start..], partial)) == 0,
                    "the completed checksum does not verify"
                );
            }
            accepted("completed")
        }
        Err(why) => refused(why.name()),
    }
}

/// A run of TCP segments as TUN writes of a receiver get them: each record
/// `[range selector][length u16][packet]`.
pub(crate) fn records(input: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = vec![];
    let mut i = 0;
    while i + 3 <= input.len() {
        let sel = input[i];
        let n = usize::from(u16::from_be_bytes([input[i + 1], input[i + 2]]));
        let body = &input[i + 3..(i + 3 + n).min(input.len())];
        out.push((sel, body));
        i += 3 + n;
    }
    out
}

pub(crate) fn unrecords(rs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![];
    for (sel, p) in rs {
        v.push(*sel);
        let n = u16::try_from(p.len()).unwrap_or(u16::MAX);
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&p[..usize::from(n)]);
    }
    v
}

/// The inner packets `segment` cuts from a super-packet.
fn cut(seed: &[u8]) -> Vec<Vec<u8>> {
    let h = virtio::Header::parse(seed).expect("a seed");
    let (_, _, pkt) = split_params(&seed[SEG_AT..]);
    let mut arena = Arena::default();
    let (mut parts, mut dgrams) = (vec![], vec![]);
    let to = std::net::SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 8472));
    offload::segment(
        &h,
        pkt,
        0,
        0,
        &route_prefix(),
        to,
        &mut arena,
        &mut parts,
        &mut dgrams,
    )
    .expect("a seed segments");
    let bufs = [pkt];
    dgrams
        .iter()
        .map(|d| {
            let mut v = vec![];
            for p in &parts[d.parts.clone()] {
                v.extend_from_slice(p.resolve(arena.bytes(), &bufs));
            }
            v.split_off(ENCAP_LEN)
        })
        .collect()
}

fn coalesce_seeds() -> Vec<Vec<u8>> {
    let t = tcp::PROTO_TCP;
    let plain = |mut v: Vec<u8>| {
        // No PSH/CWR: segments that may all join.
        v[SEG_AT + PARAMS + 33] = tcp::FLAG_ACK;
        v
    };
    let run = cut(&plain(super_packet(t, 14_000, 1400, 0, 0)));
    let run6 = cut(&{
        let mut v = super_packet6(t, 14_000, 1370);
        v[SEG_AT + PARAMS + 53] = tcp::FLAG_ACK;
        v
    });
    let other = cut(&plain(super_packet(t, 4000, 1000, 0, 12)));
    let psh = cut(&super_packet(t, 4200, 1400, 0, 0));
    let udp = cut(&super_packet(tcp::PROTO_UDP, 3000, 1400, 0, 0));
    let big = cut(&plain(super_packet(t, 65_535 - 40, 1448, 0, 0)));
    let rec =
        |ps: &[Vec<u8>]| -> Vec<(u8, Vec<u8>)> { ps.iter().map(|p| (0, p.clone())).collect() };
    let mut seeds = vec![
        unrecords(&rec(&run)),
        unrecords(&rec(&run6)),
        unrecords(&rec(&psh)),
        unrecords(&rec(&big)),
    ];
    // Two flows interleaved, UDP in between, the same segment twice.
    let mut mixed = vec![];
    for (i, p) in run.iter().enumerate() {
        mixed.push((0, p.clone()));
        if let Some(o) = other.get(i) {
            mixed.push((0, o.clone()));
        }
        if i == 3 {
            mixed.extend(rec(&udp));
        }
    }
    seeds.push(unrecords(&mixed));
    let mut dup = rec(&run[..4]);
    dup.insert(2, dup[1].clone());
    seeds.push(unrecords(&dup));
    let mut far = rec(&run[..3]);
    far[1].0 = 0x0f;
    seeds.push(unrecords(&far));
    seeds
}

fn coalesce_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let mut rs: Vec<(u8, Vec<u8>)> = records(v)
        .into_iter()
        .map(|(s, p)| (s, p.to_vec()))
        .collect();
    if rs.is_empty() {
        mutate::bytes(rng, v, seeds, 140_000);
        return;
    }
    let i = rng.random_range(0..rs.len());
    match rng.random_range(0..12) {
        0..=4 => mutate::ip_fields(rng, &mut rs[i].1, 0, ADDRS),
        5..=7 => mutate::reorder(rng, &mut rs, i),
        8 => rs[i].0 = rng.random(),
        9 => {
            let p = &mut rs[i].1;
            let n = rng.random_range(0..=p.len());
            p.truncate(n);
            if rng.random() {
                mutate::fix_checksums(p);
            }
        }
        10 => {
            let p = &mut rs[i].1;
            mutate::bytes(rng, p, &[], 65_535);
            if rng.random() {
                mutate::fix_checksums(p);
            }
        }
        _ => {
            *v = unrecords(&rs);
            mutate::bytes(rng, v, seeds, 140_000);
            return;
        }
    }
    *v = unrecords(&rs);
}

thread_local! {
    static COALESCER: RefCell<Coalescer> = RefCell::new(Coalescer::new());
}

/// Where record `sel` says its packet lies in its buffer: at 0 mostly, or
/// at an offset near `usize::MAX` or past `u32::MAX`.
fn range_of(sel: u8, len: usize) -> std::ops::Range<usize> {
    let start = match sel % 16 {
        15 => usize::MAX - usize::from(sel >> 4),
        14 => 1 << 32,
        _ => 0,
    };
    start..start.saturating_add(len)
}

fn coalesce_run(input: &[u8]) -> Outcome {
    let rs = records(input);
    COALESCER.with(|c| {
        let mut co = c.borrow_mut();
        co.clear();
        let mut next = 0;
        let mut joined = 0;
        for (i, (sel, pkt)) in rs.iter().enumerate() {
            if !co.has_room() {
                co.close();
                joined += check_writes(&co, &rs, &mut next)?;
                co.clear();
            }
            co.push(pkt, i, range_of(*sel, pkt.len()));
        }
        co.close();
        joined += check_writes(&co, &rs, &mut next)?;
        ensure!(next == rs.len(), "{next} of {} packets written", rs.len());
        if joined > 0 {
            accepted("coalesced")
        } else {
            refused("all single")
        }
    })
}

/// Checks the writes: every packet once, in order; each coalesced write a
/// valid TCP/IPv4 packet whose checksum, once completed, verifies. Returns
/// how many writes joined segments.
fn check_writes(
    co: &Coalescer,
    rs: &[(u8, &[u8])],
    next: &mut usize,
) -> Result<usize, crate::Violation> {
    let (writes, parts, arena) = co.writes();
    let mut joined = 0;
    for w in writes {
        ensure!(
            w.parts.start < w.parts.end && w.parts.end <= parts.len(),
            "write parts {:?} of {}",
            w.parts,
            parts.len()
        );
        let ps = &parts[w.parts.clone()];
        let Part::Arena(hr) = &ps[0] else {
            return Err(crate::Violation(
                "a write does not start with its header".into(),
            ));
        };
        ensure!(
            hr.end <= arena.len() && hr.len() >= virtio::HEADER_LEN,
            "header {hr:?} outside the arena"
        );
        let h = virtio::Header::parse(&arena[hr.clone()]).unwrap_or_default();
        let mut pkt = arena[hr.start + virtio::HEADER_LEN..hr.end].to_vec();
        let mut n = 0;
        for p in &ps[1..] {
            let Part::Buf(b, r) = p else {
                return Err(crate::Violation("an arena part after the header".into()));
            };
            ensure!(*b == *next, "packet {b} written where {} was due", *next);
            let (sel, body) = rs[*b];
            let whole = range_of(sel, body.len());
            ensure!(
                r.start >= whole.start && r.end <= whole.end && r.start <= r.end,
                "part {r:?} outside packet {b}'s range {whole:?}"
            );
            pkt.extend_from_slice(&body[r.start - whole.start..r.end - whole.start]);
            *next += 1;
            n += 1;
        }
        ensure!(
            n == w.segments,
            "a write of {} segments has {n} packets",
            w.segments
        );
        if w.segments == 1 {
            if h.flags == virtio::FLAG_NEEDS_CSUM {
                check_partial_single(&h, &mut pkt)?;
            }
            continue;
        }
        joined += 1;
        let f = facts(&pkt);
        let want_type = if f.as_ref().is_some_and(|f| f.v6) {
            virtio::GSO_TCPV6
        } else {
            virtio::GSO_TCPV4
        };
        ensure!(
            h.gso_type == want_type && h.flags == virtio::FLAG_NEEDS_CSUM,
            "a coalesced write's header {h:?}"
        );
        ensure!(
            pkt.len() <= 65_535,
            "a coalesced write of {} bytes",
            pkt.len()
        );
        ensure!(
            f.as_ref().is_some_and(|f| f.total == pkt.len()
                && f.header_ok
                && f.proto == tcp::PROTO_TCP
                && usize::from(h.csum_start) == f.hl),
            "a coalesced write is not one valid TCP/IP packet"
        );
        let f = f.expect("checked");
        let payload = pkt.len() - usize::from(h.hdr_len);
        ensure!(
            payload <= w.segments * usize::from(h.gso_size)
                && payload > (w.segments - 1) * usize::from(h.gso_size),
            "{payload} bytes in {} segments of {}",
            w.segments,
            h.gso_size
        );
        ensure!(
            offload::complete_checksum(&h, &mut pkt).is_ok(),
            "the coalesced write's checksum offsets lie outside it"
        );
        let l4 = &pkt[f.hl..];
        let sum = pseudo_of(&pkt, tcp::PROTO_TCP, l4.len());
        ensure!(
            checksum_finish(checksum_sum(l4, sum)) == 0,
            "the coalesced write's TCP checksum does not verify"
        );
    }
    Ok(joined)
}

/// A single write marked partial (its sender left the checksum for a NIC
/// to fill in): a TCP or UDP packet whose field held the pseudo-header sum,
/// and whose checksum, once completed where the header says, verifies.
fn check_partial_single(h: &virtio::Header, pkt: &mut [u8]) -> Result<(), crate::Violation> {
    let f = facts(pkt);
    ensure!(
        f.as_ref()
            .is_some_and(|f| (f.proto == tcp::PROTO_TCP || f.proto == tcp::PROTO_UDP)
                && f.total <= pkt.len()
                && usize::from(h.csum_start) == f.hl),
        "a single marked partial is not one TCP/UDP packet: {h:?}"
    );
    let f = f.expect("checked");
    let pkt = &mut pkt[..f.total];
    ensure!(
        offload::complete_checksum(h, pkt).is_ok(),
        "a partial single's checksum offsets lie outside it"
    );
    let sum = pseudo_of(pkt, f.proto, f.total - f.hl);
    ensure!(
        checksum_finish(checksum_sum(&pkt[f.hl..], sum)) == 0,
        "a partial single's completed checksum does not verify"
    );
    Ok(())
}

fn wire_seeds() -> Vec<Vec<u8>> {
    let mut v = inner_packets();
    v.extend(inner_packets().iter().take(3).map(|p| encapsulate(p)));
    v.extend(segment_seeds().into_iter().map(|mut s| {
        s.truncate(200);
        s
    }));
    v
}

fn wire_mutate(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.random_range(0..4) {
        0 => mutate::ip_fields(rng, v, 0, ADDRS),
        1 => {
            let n = v.len();
            mutate::virtio(rng, v, 0, n);
        }
        _ => mutate::bytes(rng, v, seeds, 3000),
    }
}

/// Every view over the input at once, every accessor called; the ICMP
/// error for it built into a scratch buffer whose size the input picks.
/// [`wire_run`] for what the IPv6 view accepts: `peek_dst` agrees, and an
/// ICMPv6 error built into a small or large buffer fits it, goes back to the
/// source, stays within 1 280 bytes and verifies.
fn wire6(b: &[u8], ip: &ipv6::Packet<&[u8]>) -> Outcome {
    let peek = ipv6::peek_dst(b);
    ensure!(
        peek == Some(ip.dst()),
        "peek_dst {peek:?} != dst {}",
        ip.dst()
    );
    let _ = (
        ip.ver_tc_flow(),
        ip.payload_len(),
        ip.next_header(),
        ip.hop_limit(),
    );
    let _ = weft::wire::icmpv6::may_answer(ip);
    let size = usize::from(b[b.len() - 1] % 2) * 1500 + 48;
    let mut scratch = vec![0u8; size];
    let router: std::net::Ipv6Addr = "fc00:0:0:1::".parse().expect("an address");
    if let Some(n) = weft::wire::icmpv6::emit_unreachable(&mut scratch, b, router, 0) {
        ensure!(
            n <= size && n <= 1280,
            "emit_unreachable wrote {n} bytes into {size}"
        );
        let e = ipv6::Packet::new_checked(&scratch[..n]);
        ensure!(
            e.as_ref()
                .is_ok_and(|e| e.dst() == ip.src() && e.total_len() == n),
            "the ICMPv6 error is not a valid IPv6 packet"
        );
        let sum = ipv6::pseudo_header_sum(router, ip.src(), 58, (n - 40) as u32, 0);
        ensure!(
            checksum_finish(checksum_sum(&scratch[40..n], sum)) == 0,
            "the ICMPv6 error's checksum does not verify"
        );
    }
    accepted("ipv6")
}

fn wire_run(b: &[u8]) -> Outcome {
    if let Ok(f) = ethernet::Frame::new_checked(b) {
        let _ = (f.dst(), f.src(), f.ethertype(), f.payload().len());
    }
    if let Ok(x) = vxlan::Packet::new_checked(b) {
        let _ = (x.flags(), x.vni(), x.payload().len());
    }
    if let Ok(t) = tcp::Packet::new_checked(b) {
        let _ = (
            t.src_port(),
            t.dst_port(),
            t.seq(),
            t.header_len(),
            t.flags(),
        );
    }
    let h = virtio::Header::parse(b);
    ensure!(
        h.is_ok() == (b.len() >= virtio::HEADER_LEN),
        "virtio parse {h:?} of {} bytes",
        b.len()
    );
    if let Ok(h) = h {
        let mut out = [0u8; virtio::HEADER_LEN];
        h.emit(&mut out);
        ensure!(
            out[..] == b[..virtio::HEADER_LEN],
            "virtio emit(parse(b)) != b"
        );
        let _ = h.gso_kind();
    }
    let _ = flow_hash(b);
    let _ = checksum_fold(checksum_sum(b, u32::from(u16::MAX)));
    if let Ok(ip6) = ipv6::Packet::new_checked(b) {
        return wire6(b, &ip6);
    }
    let ip = ipv4::Packet::new_checked(b);
    let peek = ipv4::peek_dst(b);
    match ip {
        Ok(ip) => {
            ensure!(
                peek == Some(ip.dst()),
                "peek_dst {peek:?} != dst {}",
                ip.dst()
            );
            let _ = (
                ip.version(),
                ip.header_len(),
                ip.total_len(),
                ip.tos(),
                ip.ident(),
                ip.dont_frag(),
                ip.more_frags(),
                ip.checksum_ok(),
                ip.frag_offset(),
                ip.ttl(),
                ip.protocol(),
                ip.src(),
                ip.as_bytes().len(),
            );
            if let Some(l4) = b.get(ip.header_len()..) {
                if let Ok(t) = tcp::Packet::new_checked(l4) {
                    let _ = (t.seq(), t.flags(), t.header_len());
                }
            }
            let _ = icmp::may_answer(&ip);
            let size = usize::from(b[b.len() - 1] % 2) * 100 + 28;
            let mut scratch = vec![0u8; size];
            let router = Ipv4Addr::new(10, 244, 1, 0);
            if let Some(n) =
                icmp::emit_unreachable(&mut scratch, b, router, icmp::CODE_NET_UNREACHABLE)
            {
                ensure!(n <= size, "emit_unreachable wrote {n} bytes into {size}");
                let e = ipv4::Packet::new_checked(&scratch[..n]);
                ensure!(
                    e.as_ref().is_ok_and(|e| e.checksum_ok()
                        && e.dst() == ip.src()
                        && usize::from(e.total_len()) == n),
                    "the ICMP error is not a valid IPv4 packet"
                );
                ensure!(
                    checksum_finish(checksum_sum(&scratch[20..n], 0)) == 0,
                    "the ICMP error's checksum does not verify"
                );
            }
            accepted("ipv4")
        }
        Err(e) => refused(match e {
            weft::wire::WireError::Truncated => "truncated",
            weft::wire::WireError::Malformed => "malformed",
        }),
    }
}
