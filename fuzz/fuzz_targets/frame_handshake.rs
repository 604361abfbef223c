//! Fuzz target: bytes off the wire, cut into pieces of a fuzzed size, through the frame
//! decoder, then each frame as a hello (registry side), as a handshake reply (client side)
//! and as a session frame. Nothing may panic; nothing forged may be accepted.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xlreg::crypto::{HelloDecryptor, RsaKeyPair};
use xlreg::frame::FrameDecoder;
use xlreg::session_crypto::{ClientHandshake, Role, ServerHandshake, SessionCipher};

fn registry() -> &'static (RsaKeyPair, HelloDecryptor) {
    static KEY: OnceLock<(RsaKeyPair, HelloDecryptor)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaKeyPair::generate(2048).expect("keygen");
        let decryptor = key.hello_decryptor().expect("decryptor");
        (key, decryptor)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, wire)) = data.split_first() else {
        return;
    };
    let (key, decryptor) = registry();
    let mut decoder = FrameDecoder::new(64 * 1024);
    let mut frames = Vec::new();
    for chunk in wire.chunks(usize::from(piece) + 1) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                // The registry closes the connection here.
                Err(_) => return,
            }
        }
    }
    for frame in frames.iter().take(4) {
        // Random bytes cannot be an OAEP ciphertext under the registry's key.
        assert!(ServerHandshake::accept(decryptor, frame, &mut rand::rng()).is_err());
        // Nor a reply sealed under a fresh random key1.
        let (client, _hello) = ClientHandshake::start(key.public_key()).expect("hello");
        assert!(client.finish(frame).is_err());
        // Nor a session frame under a key the fuzzer does not know.
        let mut cipher = SessionCipher::new(&[0x42; 32], Role::Server);
        assert!(cipher.open(frame).is_err());
    }
});
