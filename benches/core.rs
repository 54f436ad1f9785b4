//! Criterion benchmarks of the packet core, no syscalls: encapsulation and
//! decapsulation at 64 / 512 / 1400 bytes, forwarding-table lookups with
//! 10, 1 000 and 10 000 leases, and the offload paths: cutting a 64 KB TCP
//! super-packet into segments and coalescing them again.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft::dataplane::core::{Core, RxAction, TxAction};
use weft::dataplane::offload::{self, Arena, Coalescer, Datagram};
use weft::dataplane::{ENCAP_LEN, Gather, HEADROOM, Part, SLOT};
use weft::lease::{Lease, LeaseAttrs};
use weft::node::Admission;
use weft::types::{Vni, VtepMac};
use weft::wire::ipv4;
use weft::wire::virtio;

/// `n` leases of /24s inside 10.0.0.0/8 (node i holds 10.(i/256).(i%256).0/24).
fn leases(n: u32) -> Vec<Lease> {
    (1..=n)
        .map(|i| {
            let ip = Ipv4Addr::from(0xc000_0000 + i);
            Lease {
                subnet: format!("10.{}.{}.0/24", i / 256, i % 256).parse().ok(),
                ipv6_subnet: None,
                attrs: LeaseAttrs::vxlan(ip, Vni::new(1).unwrap(), VtepMac::derive(&ip.octets())),
                expiration: None,
            }
        })
        .collect()
}

fn core_of(subnet: &str) -> Core {
    Core::new(
        Vni::new(1).unwrap(),
        VtepMac::derive(subnet.as_bytes()),
        subnet.parse().unwrap(),
    )
}

fn packet(len: usize, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    ipv4::emit_header(&mut p, len as u16, 64, 17, Ipv4Addr::new(10, 0, 1, 5), dst);
    p
}

fn encap_decap(c: &mut Criterion) {
    let table = Admission::vxlan(None, Vni::new(1).unwrap(), 8472)
        .table(&leases(1000), None)
        .0;
    // The sender holds lease 1 (10.0.1.0/24, public IP 192.0.0.1).
    let tx = core_of("10.0.1.0/24");
    let sender = Ipv4Addr::from(0xc000_0001u32);
    // The receiver is the owner of 10.0.2.0/24 (lease 2), whose MAC is derived from 192.0.0.2.
    let mut rx = core_of("10.0.2.0/24");
    rx.mac = VtepMac::derive(&Ipv4Addr::from(0xc000_0002u32).octets());
    let mut g = c.benchmark_group("packet");
    for size in [64usize, 512, 1400] {
        g.throughput(Throughput::Bytes(size as u64));
        let pkt = packet(size, Ipv4Addr::new(10, 0, 2, 9));
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 128];
        slot[HEADROOM..HEADROOM + size].copy_from_slice(&pkt);
        g.bench_with_input(BenchmarkId::new("encap", size), &size, |b, &size| {
            b.iter(|| {
                let a = tx.encap(&table, black_box(&mut slot), size, &mut scratch);
                debug_assert!(matches!(a, TxAction::Send { .. }));
                black_box(a)
            })
        });
        let TxAction::Send { range, .. } = tx.encap(&table, &mut slot, size, &mut scratch) else {
            panic!("no route in the benchmark table")
        };
        let (start, len) = (range.start, range.len());
        // Decap includes the source checks: the sender's lookup (once per
        // datagram in the worker) and its subnet holding the inner source.
        let decap = |slot: &[u8]| match rx.sender(&table, black_box(sender).into()) {
            Ok(from) => rx.decap(from, slot, start, len),
            Err(r) => RxAction::Drop(r),
        };
        assert!(matches!(decap(&slot), RxAction::Deliver(_)));
        g.bench_with_input(BenchmarkId::new("decap", size), &size, |b, _| {
            b.iter(|| black_box(decap(black_box(&slot))))
        });
        g.bench_with_input(BenchmarkId::new("encap+decap", size), &size, |b, &size| {
            b.iter(|| {
                let a = tx.encap(&table, black_box(&mut slot), size, &mut scratch);
                black_box(a);
                black_box(decap(black_box(&slot)))
            })
        });
    }
    g.finish();
}

/// `n` dual-stack leases: lease i also holds fc00:0:0:i::/64, its IPv6
/// VTEP at 2001:db8::i.
fn leases6(n: u32) -> Vec<Lease> {
    leases(n)
        .into_iter()
        .zip(1..)
        .map(|(mut l, i): (Lease, u32)| {
            let ip6: std::net::Ipv6Addr = format!("2001:db8::{i:x}").parse().unwrap();
            l.ipv6_subnet = format!("fc00:0:0:{i:x}::/64").parse().ok();
            l.attrs = l
                .attrs
                .with_ipv6(ip6, Vni::new(1).unwrap(), VtepMac::derive(&ip6.octets()));
            l
        })
        .collect()
}

fn packet6(len: usize, dst: &str) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    weft::wire::ipv6::emit_header(
        &mut p,
        (len - 40) as u16,
        17,
        64,
        "fc00:0:0:1::5".parse().unwrap(),
        dst.parse().unwrap(),
    );
    p
}

/// IPv6 beside IPv4: the same three sizes, encapsulated for a peer's IPv6
/// VTEP and decapsulated with the IPv6 source checks, 1 000 dual-stack leases.
fn encap_decap6(c: &mut Criterion) {
    let n6 = "fc00::/48".parse().ok();
    let table = Admission::vxlan(n6, Vni::new(1).unwrap(), 8472)
        .table(&leases6(1000), None)
        .0;
    let sender: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let tx = core_of("10.0.1.0/24").with_ipv6(
        "fc00:0:0:1::/64".parse().unwrap(),
        VtepMac::derive(&sender.octets()),
    );
    let rx6: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
    let rx = core_of("10.0.2.0/24").with_ipv6(
        "fc00:0:0:2::/64".parse().unwrap(),
        VtepMac::derive(&rx6.octets()),
    );
    let mut g = c.benchmark_group("packet6");
    for size in [64usize, 512, 1400] {
        g.throughput(Throughput::Bytes(size as u64));
        let pkt = packet6(size, "fc00:0:0:2::9");
        let mut slot = vec![0u8; SLOT];
        let mut scratch = [0u8; 1400];
        slot[HEADROOM..HEADROOM + size].copy_from_slice(&pkt);
        g.bench_with_input(BenchmarkId::new("encap", size), &size, |b, &size| {
            b.iter(|| black_box(tx.encap(&table, black_box(&mut slot), size, &mut scratch)))
        });
        let TxAction::Send { range, .. } = tx.encap(&table, &mut slot, size, &mut scratch) else {
            panic!("no IPv6 route in the benchmark table")
        };
        let (start, len) = (range.start, range.len());
        let decap = |slot: &[u8]| match rx.sender(&table, black_box(sender).into()) {
            Ok(from) => rx.decap(from, slot, start, len),
            Err(r) => RxAction::Drop(r),
        };
        assert!(matches!(decap(&slot), RxAction::Deliver(_)));
        g.bench_with_input(BenchmarkId::new("decap", size), &size, |b, _| {
            b.iter(|| black_box(decap(black_box(&slot))))
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [10u32, 1000, 10_000] {
        let ls = leases(n);
        let mut table = Admission::vxlan(None, Vni::new(1).unwrap(), 8472)
            .table(&ls, None)
            .0;
        // As weftd does: the dense index over the Network (10.0.0.0/8 holds these /24s).
        table.index_dense("10.0.0.0/8".parse().unwrap());
        // Destinations spread over every lease, visited in a scrambled order.
        let dsts: Vec<Ipv4Addr> = (0..4096u32)
            .map(|i| {
                let k = (i.wrapping_mul(2_654_435_761) % n) + 1;
                Ipv4Addr::new(10, (k / 256) as u8, (k % 256) as u8, 7)
            })
            .collect();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(table.lookup(black_box(dsts[i])))
            })
        });
    }
    g.finish();
}

/// A TCP/IPv4 super-packet as a TUN device with TSO hands it over: 20-byte
/// IP header, 32-byte TCP header (timestamps), `payload` bytes, and the
/// virtio-net header asking for `mss`-byte segments.
fn super_packet(payload: usize, mss: u16) -> (virtio::Header, Vec<u8>) {
    let len = 52 + payload;
    let mut p: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    ipv4::emit_header(
        &mut p,
        len as u16,
        64,
        6,
        Ipv4Addr::new(10, 0, 0, 5),
        Ipv4Addr::new(10, 0, 2, 9),
    );
    let t = &mut p[20..52];
    t[..12].copy_from_slice(&[0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 1]);
    t[12] = 8 << 4; // data offset: 32 bytes
    t[13] = 0x18; // PSH|ACK
    t[14..20].copy_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    let h = virtio::Header {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type: virtio::GSO_TCPV4,
        hdr_len: 52,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    };
    (h, p)
}

/// The same super-packet over IPv6 (GSO_TCPV6, fc00:0:0:1::5 → fc00:0:0:2::9).
fn super_packet6(payload: usize, mss: u16) -> (virtio::Header, Vec<u8>) {
    let (h4, p4) = super_packet(payload, mss);
    let mut p = vec![0u8; 40];
    weft::wire::ipv6::emit_header(
        &mut p,
        (p4.len() - 20) as u16,
        6,
        64,
        "fc00:0:0:1::5".parse().unwrap(),
        "fc00:0:0:2::9".parse().unwrap(),
    );
    p.extend_from_slice(&p4[20..]);
    let h = virtio::Header {
        gso_type: virtio::GSO_TCPV6,
        hdr_len: h4.hdr_len + 20,
        csum_start: 40,
        ..h4
    };
    (h, p)
}

fn offload_paths(c: &mut Criterion) {
    offload_paths_of(c, "offload", super_packet(64_000, 1398), "192.0.2.2:8472");
    offload_paths_of(
        c,
        "offload6",
        super_packet6(64_000, 1378),
        "[2001:db8::2]:8472",
    );
}

/// Cutting a 64 000-byte super-packet of `sp` and coalescing the segments again.
fn offload_paths_of(c: &mut Criterion, group: &str, sp: (virtio::Header, Vec<u8>), to: &str) {
    let (h, pkt) = sp;
    let mss = usize::from(h.gso_size);
    let segs = 64_000usize.div_ceil(mss);
    let to = to.parse().unwrap();
    let prefix = [0u8; ENCAP_LEN];
    let mut arena = Arena::default();
    let mut parts: Vec<Part> = Vec::with_capacity(4 * segs);
    let mut dgrams: Vec<Datagram> = Vec::with_capacity(2 * segs);
    let mut g = c.benchmark_group(group);
    // Per segment of `mss` payload bytes.
    g.throughput(Throughput::Elements(segs as u64));
    g.bench_function(format!("segment 64000 B into {segs}"), |b| {
        b.iter(|| {
            arena.clear();
            parts.clear();
            dgrams.clear();
            let n = offload::segment(
                &h,
                black_box(&pkt),
                0,
                0,
                &prefix,
                to,
                &mut arena,
                &mut parts,
                &mut dgrams,
            );
            black_box(n.expect("segments"))
        })
    });
    // The segments as a receiver sees them once decapsulated: IP packets.
    arena.clear();
    parts.clear();
    dgrams.clear();
    offload::segment(
        &h,
        &pkt,
        0,
        0,
        &prefix,
        to,
        &mut arena,
        &mut parts,
        &mut dgrams,
    )
    .unwrap();
    let bufs = [pkt.clone()];
    let from = Gather {
        arena: arena.bytes(),
        bufs: &bufs,
        parts: &parts,
    };
    let inner: Vec<Vec<u8>> = dgrams
        .iter()
        .map(|d| {
            from.slices(d.parts.clone())
                .flatten()
                .copied()
                .skip(ENCAP_LEN)
                .collect()
        })
        .collect();
    let mut co = Coalescer::new();
    g.bench_function(format!("coalesce {segs} into 1"), |b| {
        b.iter(|| {
            co.clear();
            for (i, p) in inner.iter().enumerate() {
                co.push(black_box(p), i, 0..p.len());
            }
            co.close();
            black_box(co.writes().0.len())
        })
    });
    g.finish();
}

criterion_group!(benches, encap_decap, encap_decap6, lookup, offload_paths);
criterion_main!(benches);
