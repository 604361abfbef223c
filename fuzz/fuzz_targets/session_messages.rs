//! Fuzz target: decoded messages reaching the registry's session state machine and its
//! handlers over a temporary store. The first byte says whether a properly signed Member
//! opens the session (so Create, Join and GetCluster are reachable); the rest is a sequence
//! of length-prefixed plaintexts, each sealed as the client's next message. Nothing may
//! panic, every reply must open and decode, and the store must verify clean afterwards.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use xlreg::crypto::{HelloDecryptor, RsaKeyPair};
use xlreg::frame::FrameDecoder;
use xlreg::handlers::Context;
use xlreg::id::Id;
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::protocol::{ServerSession, Step};
use xlreg::session_crypto::{ClientHandshake, Role, SessionCipher};
use xlreg::store::Store;
use xlreg::token::{self, TokenFields};

struct Keys {
    registry: RsaKeyPair,
    decryptor: Arc<HelloDecryptor>,
    member: RsaKeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let registry = RsaKeyPair::generate(2048).expect("keygen");
        let decryptor = Arc::new(registry.hello_decryptor().expect("decryptor"));
        let member = RsaKeyPair::generate(2048).expect("keygen");
        Keys {
            registry,
            decryptor,
            member,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    let store = Store::temporary().expect("temporary store");
    let mut fresh_id = || Id::random(&mut rand::rng());
    let mut ctx = Context {
        store: &store,
        now_ms: 1,
        fresh_id: &mut fresh_id,
    };
    let mut session = ServerSession::new(keys.decryptor.clone());
    let (client, hello) = ClientHandshake::start(keys.registry.public_key()).expect("hello");
    let Step::Send { frame, .. } = session.on_frame(&hello, &mut ctx) else {
        panic!("a valid hello was not answered");
    };
    let session_keys = client.finish(&frame).expect("reply");
    let mut cipher = SessionCipher::new(&session_keys.key, Role::Client);

    let mut plaintexts = Vec::new();
    if flags & 1 == 1 {
        let der = keys.member.public_key().to_spki_der();
        let endpoints = vec!["127.0.0.1:4000".to_string()];
        let fields = TokenFields {
            id: None,
            name: "fuzz",
            attrs: 0,
            comms_key: der,
            sig_key: der,
            endpoints: &endpoints,
        };
        let member = XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(
                token::sign_v2(&fields, &keys.member, &session_keys.server_salt).expect("sign"),
            ),
            ..XlRegMsg::default()
        };
        plaintexts.push(member.encode_to_vec());
    }
    let mut decoder = FrameDecoder::new(16 * 1024);
    decoder.push(rest);
    while let Ok(Some(plaintext)) = decoder.next_frame() {
        plaintexts.push(plaintext);
    }

    for plaintext in plaintexts.iter().take(16) {
        let mut step = session.on_frame_applying(&cipher.seal(plaintext), &mut ctx);
        if let Step::Wait(_) = step {
            step = session.resume(&mut ctx, true);
        }
        match step {
            Step::Send { frame, close, .. } => {
                let reply = cipher.open(&frame).expect("a reply authenticates");
                XlRegMsg::decode(reply.as_slice()).expect("a reply decodes");
                if close {
                    break;
                }
            }
            Step::Close => break,
            Step::Wait(_) => panic!("still waiting after the deadline"),
            Step::Write(_) => panic!("a write's result led to a write"),
        }
    }
    let problems = store.verify().expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
});
