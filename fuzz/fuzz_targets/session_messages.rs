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
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use xlreg::driver::poll_applying;
use xlreg::frame::{self, FrameDecoder};
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::protocol::ServerSession;
use xlreg::session::{SessionCore as _, Step, Timeouts};
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

/// The payload of the one frame in `bytes`.
fn payload(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(frame::MAX_FRAME_LEN);
    decoder.push(bytes);
    decoder.next_frame().expect("a frame").expect("a whole frame")
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    let store = Store::temporary().expect("temporary store");
    let timeouts = Timeouts {
        handshake_ms: 10_000,
        idle_ms: 60_000,
    };
    let mut session = ServerSession::new(
        keys.decryptor.clone(),
        StdRng::seed_from_u64(1),
        64 * 1024,
        timeouts,
        1,
    );
    let (client, hello) = ClientHandshake::start(keys.registry.public_key()).expect("hello");
    session.on_bytes(&frame::encode(&hello));
    let Some(Step::Send { bytes, .. }) = poll_applying(&mut session, &store, 1) else {
        panic!("a valid hello was not answered");
    };
    let session_keys = client.finish(&payload(&bytes)).expect("reply");
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
        session.on_bytes(&frame::encode(&cipher.seal(plaintext)));
        let mut step = poll_applying(&mut session, &store, 1);
        if let Some(Step::Watch(_)) = step {
            // The driver would wait for a change or the deadline: take the deadline.
            let deadline = session.poll_timeout().expect("a held reply has a deadline");
            session.on_timeout(deadline);
            step = poll_applying(&mut session, &store, deadline);
        }
        match step.expect("a reply or a close") {
            Step::Send { bytes, close, .. } => {
                let reply = cipher.open(&payload(&bytes)).expect("a reply authenticates");
                XlRegMsg::decode(reply.as_slice()).expect("a reply decodes");
                if close {
                    break;
                }
            }
            Step::Close => break,
            Step::Watch(_) => panic!("still waiting after the deadline"),
            Step::Read(_) | Step::Write(_) => panic!("a store operation was left undone"),
        }
    }
    let problems = store.verify().expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
});
