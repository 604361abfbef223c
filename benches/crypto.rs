//! Criterion benchmarks of the per-session cryptography: the registry's hello decryption
//! (its one RSA private-key operation per session), sealing and opening session messages,
//! and verifying a member token's signature.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use xlreg::crypto::RsaKeyPair;
use xlreg::session_crypto::{ClientHandshake, Role, ServerHandshake, SessionCipher};
use xlreg::token::{self, Scheme, TokenFields};

fn handshake(c: &mut Criterion) {
    let registry = RsaKeyPair::generate(2048).unwrap();
    let decryptor = registry.hello_decryptor().unwrap();
    let (_, hello) = ClientHandshake::start(registry.public_key()).unwrap();
    c.bench_function(
        "hello decrypt + reply (server, RSA-2048 OAEP on aws-lc-rs)",
        |b| {
            b.iter(|| {
                ServerHandshake::accept(&decryptor, black_box(&hello), &mut rand::rng()).unwrap()
            })
        },
    );
    c.bench_function("hello build (client, RSA-2048 OAEP encrypt on rsa)", |b| {
        b.iter(|| ClientHandshake::start(registry.public_key()).unwrap())
    });
}

fn session_cipher(c: &mut Criterion) {
    let key = [7u8; 32];
    let message = vec![0x42u8; 512];
    let mut group = c.benchmark_group("session cipher, 512-byte message");
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("seal", |b| {
        let mut cipher = SessionCipher::new(&key, Role::Client);
        b.iter(|| cipher.seal(black_box(&message)))
    });
    group.bench_function("seal + open", |b| {
        b.iter_batched(
            || {
                (
                    SessionCipher::new(&key, Role::Client),
                    SessionCipher::new(&key, Role::Server),
                )
            },
            |(mut client, mut server)| server.open(&client.seal(&message)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn token_verify(c: &mut Criterion) {
    let comms = RsaKeyPair::generate(2048).unwrap();
    let sig = RsaKeyPair::generate(2048).unwrap();
    let endpoints = vec!["10.1.2.3:9000".to_string(), "10.1.2.3:9001".to_string()];
    let salt = [3u8; 16];
    let fields = TokenFields {
        id: None,
        name: "node-17",
        attrs: 0,
        comms_key: comms.public_key().to_spki_der(),
        sig_key: sig.public_key().to_spki_der(),
        endpoints: &endpoints,
    };
    let signed = token::sign_v2(&fields, &sig, &salt).unwrap();
    let signature = signed.dig_sig.unwrap();
    c.bench_function(
        "token verify (RSA-2048 PKCS#1 v1.5 SHA-256 on aws-lc-rs)",
        |b| {
            b.iter(|| {
                token::verify(
                    &fields,
                    sig.public_key(),
                    black_box(&signature),
                    Scheme::V2 { server_salt: &salt },
                )
                .unwrap()
            })
        },
    );
    c.bench_function("member key parse and size check (2 x DER SPKI, rsa)", |b| {
        b.iter(|| {
            xlreg::crypto::PublicKey::from_member_der(black_box(comms.public_key().to_spki_der()))
                .unwrap();
            xlreg::crypto::PublicKey::from_member_der(black_box(sig.public_key().to_spki_der()))
                .unwrap()
        })
    });
}

criterion_group!(benches, handshake, session_cipher, token_verify);
criterion_main!(benches);
