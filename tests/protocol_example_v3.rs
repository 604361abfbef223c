//! The xlReg/3 worked example in docs/protocol.md (section 12), checked byte for byte.
//!
//! ML-KEM-768 encapsulation is randomised inside aws-lc-rs, so the example fixes its output
//! (the ciphertext and the shared secret, which is the PSK) and checks everything Noise makes
//! from them; the ML-KEM round trip itself is checked in `src/crypto.rs`.

use std::convert::Infallible;

use prost::Message as _;
use xlreg::crypto::{HandshakeKeyPair, NoiseHandshake, HANDSHAKE_KEY_FILE_LEN};
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::session_crypto::{ClientHandshakeV3, NoiseCipher, V3_HELLO_LEN};
use xlreg::token::{signed_bytes_v2, TokenFields};

const REGISTRY_STATIC: [u8; 32] = [0x11; 32];
const CLIENT_EPHEMERAL: [u8; 32] = [0x22; 32];
const REGISTRY_EPHEMERAL: [u8; 32] = [0x33; 32];
const KEM_CIPHERTEXT: [u8; 1088] = [0x44; 1088];
const KEM_SECRET: [u8; 32] = [0x55; 32];

/// An RNG that hands out fixed bytes: the example's ephemeral keys.
struct Fixed(Vec<u8>);

impl rand::rand_core::TryRng for Fixed {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("the handshake draws whole keys")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("the handshake draws whole keys")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

impl rand::rand_core::TryCryptoRng for Fixed {}

/// The registry's keys with the example's static X25519 key (its ML-KEM key is not used:
/// the example fixes the KEM's output).
fn registry() -> HandshakeKeyPair {
    let generated = HandshakeKeyPair::generate()
        .unwrap()
        .to_file_bytes()
        .unwrap();
    let mut file = generated.to_vec();
    assert_eq!(file.len(), HANDSHAKE_KEY_FILE_LEN);
    file[24..56].copy_from_slice(&REGISTRY_STATIC);
    HandshakeKeyPair::from_file_bytes(&file).unwrap()
}

fn spaced(text: &str) -> String {
    text.split_whitespace().collect()
}

struct Example {
    hello: Vec<u8>,
    reply: Vec<u8>,
    hash: [u8; 32],
    client: NoiseCipher,
    registry: NoiseCipher,
}

fn example() -> Example {
    let registry_keys = registry();
    let (client, hello) = ClientHandshakeV3::start_with_kem(
        registry_keys.public().x25519(),
        &KEM_CIPHERTEXT,
        &KEM_SECRET,
        &mut Fixed(CLIENT_EPHEMERAL.to_vec()),
    )
    .unwrap();
    // The registry's side, with the KEM secret it would have decapsulated.
    let (prologue, message1) = hello.split_at(4 + 1088);
    let mut responder =
        NoiseHandshake::responder(&registry_keys, prologue, &KEM_SECRET, REGISTRY_EPHEMERAL)
            .unwrap();
    assert!(responder.read_message(message1).unwrap().is_empty());
    let reply = responder.write_message(&[]).unwrap();
    let client = client.finish(&reply).unwrap();
    assert_eq!(client.handshake_hash, responder.handshake_hash());
    let registry = responder.into_transport().unwrap();
    Example {
        hello,
        reply,
        hash: client.handshake_hash,
        client: client.cipher,
        registry: NoiseCipher::from_transport(registry),
    }
}

#[test]
fn the_registry_static_key() {
    assert_eq!(
        hex::encode(registry().public().x25519()),
        spaced("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
    );
}

#[test]
fn first_message_reply_and_handshake_hash() {
    let example = example();
    assert_eq!(example.hello.len(), V3_HELLO_LEN);
    assert_eq!(&example.hello[..4], b"XLR3");
    assert_eq!(&example.hello[4..1092], &KEM_CIPHERTEXT[..]);
    assert_eq!(
        hex::encode(&example.hello[1092..]),
        spaced(
            "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20
             afe3b97cbf54fb34ec2ca9829331f420"
        )
    );
    assert_eq!(
        hex::encode(&example.reply),
        spaced(
            "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14
             d3ac9e75a62caed30f1a45d5895c5e46"
        )
    );
    assert_eq!(
        hex::encode(example.hash),
        spaced("c2ee18fbcd172beb789d9b63ee9f94da307f2b8f2b15ae4c18161a56a4674809")
    );
}

#[test]
fn session_frames_both_ways() {
    let mut example = example();
    let bye = XlRegMsg {
        op: Some(Tag::Bye as i32),
        ..XlRegMsg::default()
    };
    assert_eq!(hex::encode(bye.encode_to_vec()), "080b");
    let request = xlreg::frame::encode(&example.client.seal(&bye.encode_to_vec()));
    assert_eq!(
        hex::encode(&request),
        spaced("00000013 41 eb95 04abb1e0db9a87eebd02e0bc30f6804a")
    );
    let ack = XlRegMsg {
        op: Some(Tag::Ack as i32),
        ..XlRegMsg::default()
    };
    let opened = example.registry.open(&request[4..]).unwrap();
    assert_eq!(&*opened, bye.encode_to_vec().as_slice());
    let reply = xlreg::frame::encode(&example.registry.seal(&ack.encode_to_vec()));
    assert_eq!(
        hex::encode(&reply),
        spaced("00000013 e6 b959 ec1c96285cf4f4bd6e5d2db09d7943b9")
    );
    assert_eq!(
        &*example.client.open(&reply[4..]).unwrap(),
        [0x08, 0x0c].as_slice()
    );
}

#[test]
fn token_signature_input_binds_the_handshake_hash() {
    let example = example();
    let endpoints = vec!["10.0.0.1:9000".to_string()];
    let fields = TokenFields {
        id: None,
        name: "n1",
        attrs: 0,
        comms_key: &[0xc0, 0xc1],
        sig_key: &[0x5a],
        endpoints: &endpoints,
    };
    assert_eq!(
        hex::encode(signed_bytes_v2(&fields, &example.hash)),
        spaced(&format!(
            "786c5265672f32206d656d62657220746f6b656e00 00000020 {}
             00000000 00000002 6e31 0000000000000000 00000002 c0c1 00000001 5a
             00000001 0000000d 31302e302e302e313a39303030",
            hex::encode(example.hash)
        ))
    );
}
