//! Criterion benchmarks of the per-session cryptography: the registry's hello decryption
//! (its one RSA private-key operation per session), sealing and opening session messages,
//! and verifying a member token's signature; and, side by side, the registry's whole side of
//! the xlReg/2 handshake against that of xlReg/3 (Noise NKpsk2 with X25519 on aws-lc-rs and
//! an ML-KEM-768 PSK) and its parts.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use xlreg::crypto::{HandshakeKeyPair, NoiseHandshake, RsaKeyPair, MLKEM768_CIPHERTEXT_LEN};
use xlreg::session_crypto::{
    ClientHandshake, ClientHandshakeV3, Role, ServerHandshake, ServerHandshakeV3, SessionCipher,
};
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

fn handshake_v2_vs_v3(c: &mut Criterion) {
    let registry = RsaKeyPair::generate(2048).unwrap();
    let decryptor = registry.hello_decryptor().unwrap();
    let (_, hello) = ClientHandshake::start(registry.public_key()).unwrap();
    let keys = HandshakeKeyPair::generate().unwrap();
    let (_, hello3) = ClientHandshakeV3::start(keys.public(), &mut rand::rng()).unwrap();
    let kem_ciphertext = &hello3[4..4 + MLKEM768_CIPHERTEXT_LEN];
    let mut group = c.benchmark_group("registry side of one handshake");
    group.bench_function("xlReg/2: RSA-2048 OAEP decrypt + reply", |b| {
        b.iter(|| ServerHandshake::accept(&decryptor, black_box(&hello), &mut rand::rng()).unwrap())
    });
    group.bench_function("xlReg/3: NKpsk2 + ML-KEM-768 responder", |b| {
        b.iter(|| ServerHandshakeV3::accept(&keys, black_box(&hello3), &mut rand::rng()).unwrap())
    });
    // During a key rotation's overlap: a client still on the previous set costs a failed
    // attempt with the current set first (docs/protocol.md section 11.7).
    let current = HandshakeKeyPair::generate().unwrap();
    let overlap = [&current, &keys];
    group.bench_function(
        "xlReg/3 during an overlap: client on the previous set (two attempts)",
        |b| {
            b.iter(|| {
                ServerHandshakeV3::accept_any(&overlap, black_box(&hello3), &mut rand::rng())
                    .unwrap()
            })
        },
    );
    let (_, stranger) = ClientHandshakeV3::start(
        HandshakeKeyPair::generate().unwrap().public(),
        &mut rand::rng(),
    )
    .unwrap();
    group.bench_function(
        "xlReg/3 during an overlap: first message to neither set (refused)",
        |b| {
            b.iter(|| {
                ServerHandshakeV3::accept_any(&overlap, black_box(&stranger), &mut rand::rng())
                    .unwrap_err()
            })
        },
    );
    group.bench_function("part: ML-KEM-768 decapsulate", |b| {
        b.iter(|| keys.decapsulate(black_box(kem_ciphertext)).unwrap())
    });
    // The Noise part alone (NKpsk2 responder, PSK given): the NK cost plus one HKDF.
    let psk = keys.decapsulate(kem_ciphertext).unwrap();
    let prologue = &hello3[..4 + MLKEM768_CIPHERTEXT_LEN];
    let message1 = &hello3[4 + MLKEM768_CIPHERTEXT_LEN..];
    group.bench_function("part: Noise NKpsk2 responder (X25519 on aws-lc-rs)", |b| {
        b.iter(|| {
            let mut noise = NoiseHandshake::responder(&keys, prologue, &psk, [7u8; 32]).unwrap();
            noise.read_message(black_box(message1)).unwrap();
            noise.write_message(&[]).unwrap();
            noise.into_transport().unwrap()
        })
    });
    group.finish();
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

/// Admission proofs (docs/protocol.md section 14): what a join with a token costs the
/// registry (one Ed25519 verification, inside the join's transaction) and the client (the
/// HKDF derivation and a signature).
fn admission_proofs(c: &mut Criterion) {
    use xlreg::model::admission::{join_proof_input, verify, JoinTokenSecret, JoiningNode};
    let comms = RsaKeyPair::generate(2048).unwrap();
    let sig = RsaKeyPair::generate(2048).unwrap();
    let endpoints = vec!["10.1.2.3:9000".to_string(), "10.1.2.3:9001".to_string()];
    let node = JoiningNode {
        id: &[7; 32],
        comms_key: comms.public_key().to_spki_der(),
        sig_key: sig.public_key().to_spki_der(),
        endpoints: &endpoints,
    };
    let token = JoinTokenSecret::parse("k3x9p0.abcdefghijklmnopqrstuvwxyz").unwrap();
    let key = token.key();
    let verifier = key.verifier();
    let input = join_proof_input(&[3; 32], &[5; 32], token.id(), &node);
    let proof = key.sign(&input);
    let mut group = c.benchmark_group("admission proofs");
    group.bench_function("registry: join proof input and Ed25519 verify", |b| {
        b.iter(|| {
            let input = join_proof_input(&[3; 32], &[5; 32], token.id(), black_box(&node));
            assert!(verify(&verifier, &input, black_box(&proof)))
        })
    });
    group.bench_function(
        "client: derive the token key (HKDF-SHA256, Ed25519 seed)",
        |b| b.iter(|| black_box(&token).key().verifier()),
    );
    group.bench_function("client: sign a join proof", |b| {
        b.iter(|| key.sign(black_box(&input)))
    });
    group.finish();
}

criterion_group!(
    benches,
    handshake,
    handshake_v2_vs_v3,
    session_cipher,
    token_verify,
    admission_proofs
);
criterion_main!(benches);
