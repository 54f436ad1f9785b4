//! Criterion benchmarks of the packet core, no syscalls: encapsulation and
//! decapsulation at 64 / 512 / 1400 bytes, and forwarding-table lookups with
//! 10, 1 000 and 10 000 leases.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft::dataplane::core::{Core, RxAction, TxAction};
use weft::dataplane::table::Table;
use weft::dataplane::{HEADROOM, SLOT};
use weft::lease::{Lease, LeaseAttrs};
use weft::types::{Vni, VtepMac};
use weft::wire::ipv4;

/// `n` leases of /24s inside 10.0.0.0/8 (node i holds 10.(i/256).(i%256).0/24).
fn leases(n: u32) -> Vec<Lease> {
    (1..=n)
        .map(|i| {
            let ip = Ipv4Addr::from(0xc000_0000 + i);
            Lease {
                subnet: format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap(),
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
    ipv4::emit_header(&mut p, len as u16, 64, 17, Ipv4Addr::new(10, 0, 0, 5), dst);
    p
}

fn encap_decap(c: &mut Criterion) {
    let table = Table::build(&leases(1000), None, Vni::new(1).unwrap(), 8472).0;
    let tx = core_of("10.0.0.0/24");
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
        assert!(matches!(rx.decap(&slot, start, len), RxAction::Deliver(_)));
        g.bench_with_input(BenchmarkId::new("decap", size), &size, |b, _| {
            b.iter(|| black_box(rx.decap(black_box(&slot), start, len)))
        });
        g.bench_with_input(BenchmarkId::new("encap+decap", size), &size, |b, &size| {
            b.iter(|| {
                let a = tx.encap(&table, black_box(&mut slot), size, &mut scratch);
                black_box(a);
                black_box(rx.decap(black_box(&slot), start, len))
            })
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [10u32, 1000, 10_000] {
        let ls = leases(n);
        let mut table = Table::build(&ls, None, Vni::new(1).unwrap(), 8472).0;
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

criterion_group!(benches, encap_decap, lookup);
criterion_main!(benches);
