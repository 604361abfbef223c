//! The worked example in docs/protocol.md, checked byte for byte so the spec stays true.

use prost::Message as _;
use xlreg::crypto::gcm_seal;
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::session_crypto::{Role, SessionCipher, HELLO_MAGIC, PROTOCOL_VERSION};
use xlreg::token::{signed_bytes_v2, TokenFields};

const KEY1: [u8; 32] = [0x11; 32];
const SALT1: [u8; 16] = [0x22; 16];
const KEY2: [u8; 32] = [0x33; 32];
const SALT2: [u8; 16] = [0x44; 16];

#[test]
fn hello_and_reply_plaintexts() {
    let mut hello = HELLO_MAGIC.to_vec();
    hello.extend(PROTOCOL_VERSION.to_be_bytes());
    hello.extend(KEY1);
    hello.extend(SALT1);
    assert_eq!(
        hex::encode(&hello),
        "584c523200000002\
         1111111111111111111111111111111111111111111111111111111111111111\
         22222222222222222222222222222222"
    );
    let mut reply = SALT1.to_vec();
    reply.extend(KEY2);
    reply.extend(SALT2);
    reply.extend(2u32.to_be_bytes());
    let nonce = *b"S\0\0\0\0\0\0\0\0\0\0\0";
    assert_eq!(
        hex::encode(gcm_seal(&KEY1, &nonce, &reply)),
        "9d0433641f69aaf7c9a2838b349efa95352211fc0f2ce4c6527639f79492abf3\
         62740bab4f6e310601c472af9b6687517511162a4026e41326b04f0a05eb746d\
         99f233c93dccc2c10547f611887c4a49d29d2ec5"
    );
}

#[test]
fn a_create_request_on_the_wire() {
    let create = XlRegMsg {
        op: Some(Tag::Create as i32),
        cluster_name: Some("web".into()),
        cluster_max_size: Some(3),
        end_point_count: Some(1),
        ..XlRegMsg::default()
    };
    let protobuf = create.encode_to_vec();
    assert_eq!(hex::encode(&protobuf), "080572037765627803880101");
    // The client's second message (the first was Member) uses counter 1.
    let mut cipher = SessionCipher::new(&KEY2, Role::Client);
    let _member = cipher.seal(b"member");
    let sealed = cipher.seal(&protobuf);
    assert_eq!(
        hex::encode(xlreg::frame::encode(&sealed)),
        "0000001c1b52aad5ec8d41367d0a97170ada8ad06379fe6d739224793af5d3da"
    );
}

#[test]
fn token_signature_input() {
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
        hex::encode(signed_bytes_v2(&fields, &SALT2)),
        "786c5265672f32206d656d62657220746f6b656e00\
         00000010 44444444444444444444444444444444\
         00000000\
         00000002 6e31\
         0000000000000000\
         00000002 c0c1\
         00000001 5a\
         00000001 0000000d 31302e302e302e313a39303030"
            .replace(' ', "")
    );
}

#[test]
fn a_complete_member_message_on_the_wire() {
    // The test keys key-00 (comms) and key-01 (sig) of tests/data/keys; PKCS#1 v1.5
    // signatures are deterministic, so the whole message is fixed.
    let comms = xlreg::crypto::RsaKeyPair::from_pem(include_str!("data/keys/key-00.pem")).unwrap();
    let sig = xlreg::crypto::RsaKeyPair::from_pem(include_str!("data/keys/key-01.pem")).unwrap();
    let endpoints = vec!["10.0.0.1:9000".to_string()];
    let fields = TokenFields {
        id: None,
        name: "n1",
        attrs: 0,
        comms_key: comms.public_key().to_spki_der(),
        sig_key: sig.public_key().to_spki_der(),
        endpoints: &endpoints,
    };
    let member = XlRegMsg {
        op: Some(Tag::Member as i32),
        member_specs: Some(xlreg::token::sign_v2(&fields, &sig, &SALT2).unwrap()),
        ..XlRegMsg::default()
    };
    let protobuf = member.encode_to_vec();
    let text = hex::encode(&protobuf);
    let doc = include_str!("../docs/protocol.md");
    let expected: String = doc
        .split("<!-- member-protobuf -->")
        .nth(1)
        .expect("the Member example in docs/protocol.md")
        .lines()
        .filter(|line| !line.starts_with("```") && !line.trim().is_empty())
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(text, expected);
    // Member is the client's first message: counter 0 under key2.
    let mut cipher = SessionCipher::new(&KEY2, Role::Client);
    let frame = xlreg::frame::encode(&cipher.seal(&protobuf));
    assert_eq!(
        format!(
            "{} {} {}",
            hex::encode(&frame[..4]),
            hex::encode(&frame[frame.len() - 16..]),
            hex::encode(xlreg::crypto::sha256(&frame))
        ),
        "0000037f bab91f1b49279cd0ffc7de47f68309e4 \
         a21822a7f29f0ec17beec38687336cfb1efd88c7f09cd667c4d61fc6e3462337"
    );
}
