//! Criterion benchmarks of the rate quotas (`src/quota.rs`), which every Create and Member
//! passes through on the session path: a Create that finds its cluster (charged, then given
//! back), a refusal, and a flood of new addresses against a full table (the eviction sweep,
//! spread over the keys it makes room for).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use xlreg::id::Id;
use xlreg::quota::{Charge, QuotaConfig, Quotas, Rate};

fn quotas(c: &mut Criterion) {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let create = Charge::Cluster {
        node: Some(Id::from_bytes(&[7u8; 32]).unwrap()),
    };

    let defaults = Quotas::new(&QuotaConfig::default());
    c.bench_function("quota/create charged and given back", |b| {
        b.iter(|| {
            let reservation = defaults.reserve(black_box(&create), black_box(ip), 1_000);
            defaults.give_back(reservation.unwrap());
        })
    });

    let used_up = Quotas::new(&QuotaConfig {
        clusters_per_ip: Rate::parse("1/1h").unwrap(),
        ..QuotaConfig::default()
    });
    let _kept = used_up.reserve(&create, ip, 0).unwrap();
    c.bench_function("quota/create refused", |b| {
        b.iter(|| {
            used_up
                .reserve(black_box(&create), black_box(ip), 0)
                .unwrap_err()
        })
    });

    // Every address new, none refilled: the table stays full and sweeps an eighth at a time.
    let flood = Quotas::new(&QuotaConfig {
        registrations_per_ip: Rate::parse("1/1h").unwrap(),
        ..QuotaConfig::default()
    });
    let mut next = 0u32;
    c.bench_function("quota/registration from a new address, table full", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::from(next));
            flood.reserve(&Charge::Registration, ip, 0).unwrap()
        })
    });
}

criterion_group!(benches, quotas);
criterion_main!(benches);
