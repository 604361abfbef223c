//! Criterion benchmarks of recording into the metric set: counting a request alone, and
//! counting it with its latency (what the server does for every request), to show what the
//! per-request latency histogram costs on the session path.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::Duration;
use xlreg::metrics::Metrics;
use xlreg::proto::{ErrCode, Tag};

fn record(c: &mut Criterion) {
    let metrics = Metrics::new();
    c.bench_function("metrics/request counted", |b| {
        b.iter(|| metrics.request(black_box(Some(Tag::Join)), black_box(Ok(()))))
    });
    c.bench_function("metrics/request counted and timed", |b| {
        b.iter(|| {
            metrics.request_took(
                black_box(Some(Tag::Join)),
                black_box(Ok(())),
                black_box(Duration::from_micros(900)),
            )
        })
    });
    c.bench_function("metrics/refusal counted and timed", |b| {
        b.iter(|| {
            metrics.request_took(
                black_box(Some(Tag::Join)),
                black_box(Err(ErrCode::ClusterFull)),
                black_box(Duration::from_micros(300)),
            )
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
