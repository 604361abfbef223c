//! Fuzz target: an xlReg/3 first message (the registry's side of the handshake). The input
//! is taken as the frame payload as is, and also with the magic and length forced right so
//! the fuzzer reaches the ML-KEM decapsulation and the Noise message 1. Nothing may panic;
//! nothing the fuzzer makes up may be accepted (it holds no secret the registry would).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use xlreg::crypto::HandshakeKeyPair;
use xlreg::session_crypto::{ClientHandshakeV3, ServerHandshakeV3, V3_HELLO_LEN};

fn keys() -> &'static HandshakeKeyPair {
    static KEYS: OnceLock<HandshakeKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| HandshakeKeyPair::generate().expect("keygen"))
}

fuzz_target!(|data: &[u8]| {
    let mut rng = StdRng::seed_from_u64(0);
    let _ = ServerHandshakeV3::accept(keys(), data, &mut rng);
    // Shaped like a first message: an encapsulation and message 1 the fuzzer made up.
    let mut shaped = vec![0u8; V3_HELLO_LEN];
    shaped[..4].copy_from_slice(b"XLR3");
    let n = data.len().min(V3_HELLO_LEN - 4);
    shaped[4..4 + n].copy_from_slice(&data[..n]);
    assert!(ServerHandshakeV3::accept(keys(), &shaped, &mut rng).is_err());
    // And as a reply to a real client: never accepted.
    let (client, _) = ClientHandshakeV3::start(keys().public(), &mut rng).expect("hello");
    assert!(client.finish(data).is_err());
});
