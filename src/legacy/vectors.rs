//! Golden vectors from the Go registry 1.9.24 (tests/data/legacy-vectors/, a byte-exact
//! copy of the reference set; its README says how each file was made): the codec must
//! reproduce them byte for byte, and the state machine, fed the live capture, must answer
//! with replies of the same shape as the Go server's.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;
use serde_json::Value;

use super::session::{LegacySession, INVALID_STATE};
use super::wire::{self, Hello, Version, HELLO_LEN, IV_LEN};
use crate::crypto::{HelloDecryptor, RsaKeyPair, AES_KEY_LEN};
use crate::driver::poll_applying;
use crate::proto::{Tag, XlRegMsg, XlRegToken};
use crate::session::{SessionCore as _, Step};
use crate::store::Store;
use crate::token::{self, Scheme, TokenFields};

const HELLO_JSON: &str = include_str!("../../tests/data/legacy-vectors/hello.json");
const MEMBER_JSON: &str = include_str!("../../tests/data/legacy-vectors/member.json");
const MESSAGES_JSON: &str = include_str!("../../tests/data/legacy-vectors/messages.json");
const SESSION_JSON: &str = include_str!("../../tests/data/legacy-vectors/session.json");
const REGISTRY_JSON: &str = include_str!("../../tests/data/legacy-vectors/registry.json");
const REGISTRY_CK_PEM: &str = include_str!("../../tests/data/legacy-vectors/registry-ck.pem");
const MEMBER_1_PEM: &str = include_str!("../../tests/data/legacy-vectors/member-1.pem");
const MEMBER_2_PEM: &str = include_str!("../../tests/data/legacy-vectors/member-2.pem");

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string"))
}

fn bytes(value: &Value, field: &str) -> Vec<u8> {
    hex::decode(text(value, field)).unwrap()
}

fn key(value: &Value, field: &str) -> [u8; AES_KEY_LEN] {
    bytes(value, field).try_into().unwrap()
}

fn iv(value: &Value, field: &str) -> [u8; IV_LEN] {
    bytes(value, field).try_into().unwrap()
}

fn decryptor() -> Arc<HelloDecryptor> {
    Arc::new(
        RsaKeyPair::from_pem(REGISTRY_CK_PEM)
            .unwrap()
            .hello_decryptor()
            .unwrap(),
    )
}

/// The PEM blocks of a file holding several, in order.
fn pem_blocks(text: &str) -> Vec<RsaKeyPair> {
    text.split("-----BEGIN")
        .filter(|block| !block.trim().is_empty())
        .map(|block| RsaKeyPair::from_pem(&format!("-----BEGIN{block}")).unwrap())
        .collect()
}

/// The names of the fields present in a message, in the vectors' spelling.
fn shape(msg: &XlRegMsg) -> Vec<&'static str> {
    let present = [
        ("Op", msg.op.is_some()),
        ("AesKey", msg.aes_key.is_some()),
        ("Salt1", msg.salt1.is_some()),
        ("Salt2", msg.salt2.is_some()),
        ("Version", msg.version.is_some()),
        ("MemberName", msg.member_name.is_some()),
        ("MemberID", msg.member_id.is_some()),
        ("MemberAttrs", msg.member_attrs.is_some()),
        ("MemberSpecs", msg.member_specs.is_some()),
        ("ClusterID", msg.cluster_id.is_some()),
        ("ClusterName", msg.cluster_name.is_some()),
        ("ClusterMaxSize", msg.cluster_max_size.is_some()),
        ("ClusterAttrs", msg.cluster_attrs.is_some()),
        ("EndPointCount", msg.end_point_count.is_some()),
        ("Which", msg.which.is_some()),
        ("Tokens", !msg.tokens.is_empty()),
        ("DigSig", msg.dig_sig.is_some()),
        ("ErrDesc", msg.err_desc.is_some()),
        ("WaitMs", msg.wait_ms.is_some()),
        ("ClusterSize", msg.cluster_size.is_some()),
        ("Slot", msg.slot.is_some()),
        ("ErrKind", msg.err_kind.is_some()),
    ];
    present
        .into_iter()
        .filter(|(_, here)| *here)
        .map(|(name, _)| name)
        .collect()
}

fn token_shape(token: &XlRegToken) -> Vec<&'static str> {
    let present = [
        ("Name", token.name.is_some()),
        ("Attrs", token.attrs.is_some()),
        ("ID", token.id.is_some()),
        ("CommsKey", token.comms_key.is_some()),
        ("SigKey", token.sig_key.is_some()),
        ("MyEnds", !token.my_ends.is_empty()),
        ("DigSig", token.dig_sig.is_some()),
    ];
    present
        .into_iter()
        .filter(|(_, here)| *here)
        .map(|(name, _)| name)
        .collect()
}

/// The field names the vectors list for a message (their `fields` object, less the
/// convenience entries).
fn recorded_shape(fields: &Value) -> Vec<String> {
    let mut names: Vec<String> = fields
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !matches!(k.as_str(), "Op_value" | "Which_hex"))
        .cloned()
        .collect();
    names.sort();
    names
}

fn sorted(names: Vec<&'static str>) -> Vec<String> {
    let mut names: Vec<String> = names.into_iter().map(String::from).collect();
    names.sort();
    names
}

/// Decodes a protobuf and checks it re-encodes to the same bytes (Go writes fields in
/// ascending order, zero values included, as prost does for proto2 fields that are set).
fn decode_exact(protobuf: &[u8]) -> XlRegMsg {
    let msg = XlRegMsg::decode(protobuf).unwrap();
    assert_eq!(msg.encode_to_vec(), protobuf, "re-encoding differs");
    msg
}

#[test]
fn the_hellos_decrypt_to_the_recorded_plaintexts() {
    let vectors = json(HELLO_JSON);
    let decryptor = decryptor();
    for (hello, version) in [
        (&vectors, Version([0, 0, 0, 0])),
        (&vectors["alt_hello"], Version::GO_REGISTRY),
    ] {
        let ciphertext = bytes(hello, "hello_ciphertext");
        assert_eq!(ciphertext.len(), decryptor.ciphertext_len());
        let plaintext = decryptor.decrypt_oaep_sha1(&ciphertext).unwrap();
        assert_eq!(plaintext.as_slice(), bytes(hello, "hello_plaintext"));
        let parsed = wire::open_hello(&decryptor, &ciphertext).unwrap();
        assert_eq!(*parsed.key, key(hello, "key1"));
        assert_eq!(parsed.salt.to_vec(), bytes(hello, "salt1"));
        assert_eq!(parsed.version, version);
        assert_eq!(parsed.version.0.to_vec(), bytes(hello, "version1_le"));
        assert_eq!(
            u64::from(parsed.version.to_u32()),
            hello["version1_u32"].as_u64().unwrap()
        );
        // The OAEP seed quirk: Go's append overwrote the seed's first four bytes with the
        // version, which only a client can notice; the server decrypts either way.
        assert_eq!(
            bytes(hello, "oaep_seed")[..4],
            bytes(hello, "version1_le")[..]
        );
    }
}

#[test]
fn the_reply_decrypts_under_key1_and_re_encrypts_to_the_wire_bytes() {
    let vectors = json(HELLO_JSON);
    let key1 = key(&vectors, "key1");
    let reply_wire = bytes(&vectors, "reply_wire");
    assert_eq!(reply_wire.len(), 64);
    let plaintext = wire::open(&key1, &reply_wire).unwrap();
    assert_eq!(plaintext.as_slice(), bytes(&vectors, "reply_plaintext"));
    assert_eq!(
        wire::seal(&key1, &iv(&vectors, "reply_iv"), &plaintext),
        reply_wire
    );
    let reply = Hello::parse(&plaintext).unwrap();
    assert_eq!(*reply.key, key(&vectors, "key2"));
    assert_eq!(reply.salt.to_vec(), bytes(&vectors, "salt2"));
    assert_eq!(reply.version, Version::GO_REGISTRY);
    assert_eq!(reply.version.to_string(), text(&vectors, "version2"));
    assert_eq!(
        u64::from(reply.version.to_u32()),
        vectors["version2_u32"].as_u64().unwrap()
    );
    assert_eq!(reply.to_bytes().as_slice(), &plaintext[..]);

    let registry = json(REGISTRY_JSON);
    assert_eq!(
        Version::GO_REGISTRY.0.to_vec(),
        bytes(&registry, "version_wire_le")
    );
    assert_eq!(Version::GO_REGISTRY.to_string(), text(&registry, "version"));
    let ck = RsaKeyPair::from_pem(REGISTRY_CK_PEM).unwrap();
    assert_eq!(
        ck.public_key().to_spki_der(),
        &bytes(&registry, "ck_pkix_der")[..]
    );
}

#[test]
fn every_session_message_decrypts_decodes_and_re_encrypts_exactly() {
    let vectors = json(MESSAGES_JSON);
    let key2 = key(&vectors, "key2");
    let messages = vectors["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 13);
    for item in messages {
        let id = text(item, "id");
        let wire_bytes = bytes(item, "wire");
        let protobuf = bytes(item, "protobuf");
        assert_eq!(&wire_bytes[..IV_LEN], &bytes(item, "iv")[..], "{id}");
        assert_eq!(
            wire::open(&key2, &wire_bytes).unwrap().as_slice(),
            &protobuf[..],
            "{id}"
        );
        assert_eq!(
            wire::seal(&key2, &iv(item, "iv"), &protobuf),
            wire_bytes,
            "{id}"
        );
        let msg = decode_exact(&protobuf);
        assert_eq!(wire::open_message(&key2, &wire_bytes).unwrap(), msg);
        let fields = &item["fields"];
        assert_eq!(msg.op.map(i64::from), fields["Op_value"].as_i64(), "{id}");
        assert_eq!(
            Tag::try_from(msg.op.unwrap()).unwrap().as_str_name(),
            text(item, "name"),
            "{id}"
        );
        assert_eq!(sorted(shape(&msg)), recorded_shape(fields), "{id}");
        if let Some(which) = fields["Which"].as_u64() {
            assert_eq!(msg.which, Some(which), "{id}");
        }
        // IDs made by 1.9.24 are 20 bytes.
        for id_bytes in [&msg.member_id, &msg.cluster_id].into_iter().flatten() {
            assert_eq!(id_bytes.len(), 20, "{id}");
        }
        if id == "Error" {
            assert_eq!(msg.err_desc.as_deref(), Some(INVALID_STATE));
        }
    }
}

/// The token fields a member.json entry records.
fn recorded_token(entry: &Value) -> (Vec<u8>, u64, Vec<u8>, Vec<u8>, Vec<String>) {
    let ends = entry["MyEnds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    (
        text(entry, "Name").as_bytes().to_vec(),
        entry["Attrs"].as_u64().unwrap(),
        bytes(entry, "CommsKey"),
        bytes(entry, "SigKey"),
        ends,
    )
}

#[test]
fn member_signatures_are_sha1_over_the_go_concatenation() {
    let vectors = json(MEMBER_JSON);
    for (entry, signature, pem) in [
        (&vectors["token"], bytes(&vectors, "dig_sig"), MEMBER_1_PEM),
        (
            &vectors["member_2"],
            bytes(&vectors["member_2"], "dig_sig"),
            MEMBER_2_PEM,
        ),
    ] {
        let (name, attrs, comms_der, sig_der, ends) = recorded_token(entry);
        let keys = pem_blocks(pem);
        assert_eq!(keys.len(), 2);
        // Block 1 is the comms key, block 2 the sig key.
        assert_eq!(keys[0].public_key().to_spki_der(), &comms_der[..]);
        assert_eq!(keys[1].public_key().to_spki_der(), &sig_der[..]);
        let id = bytes(entry, "ID");
        assert_eq!(id.len(), 20);
        let name = String::from_utf8(name).unwrap();
        let fields = TokenFields {
            id: Some(&id),
            name: &name,
            attrs,
            comms_key: &comms_der,
            sig_key: &sig_der,
            endpoints: &ends,
        };
        token::verify(&fields, keys[1].public_key(), &signature, Scheme::Legacy).unwrap();
        // PKCS#1 v1.5 is deterministic: re-signing gives the recorded bytes.
        let signed = token::signed_bytes_legacy(&fields);
        assert_eq!(keys[1].sign_sha1(&signed).unwrap(), signature);
        // The signature covers neither the ID nor the comms key's role: a wrong key fails.
        assert!(token::verify(&fields, keys[0].public_key(), &signature, Scheme::Legacy).is_err());
    }
    let (name, attrs, ..) = recorded_token(&vectors["token"]);
    let signed = token::signed_bytes_legacy(&TokenFields {
        id: None,
        name: std::str::from_utf8(&name).unwrap(),
        attrs,
        comms_key: &bytes(&vectors["token"], "CommsKey"),
        sig_key: &bytes(&vectors["token"], "SigKey"),
        endpoints: &recorded_token(&vectors["token"]).4,
    });
    assert_eq!(signed, bytes(&vectors, "signed_data"));
    assert_eq!(
        vectors["attrs_le"].as_str(),
        Some(hex::encode(attrs.to_le_bytes()).as_str())
    );

    // The Member message itself.
    let key2 = key(&vectors, "key2");
    let wire_bytes = bytes(&vectors, "wire");
    let protobuf = bytes(&vectors, "protobuf");
    assert_eq!(
        wire::open(&key2, &wire_bytes).unwrap().as_slice(),
        &protobuf[..]
    );
    assert_eq!(
        wire::seal(&key2, &iv(&vectors, "iv"), &protobuf),
        wire_bytes
    );
    let msg = decode_exact(&protobuf);
    let token = msg.member_specs.unwrap();
    assert_eq!(token.id, Some(bytes(&vectors["token"], "ID")));
    assert_eq!(token.dig_sig, Some(bytes(&vectors, "dig_sig")));
    assert_eq!(token.attrs, Some(1));
}

/// One connection of the live capture, as replayed against our state machine.
struct Replay {
    session: LegacySession,
    /// key1 and key2 of the captured (Go) session.
    go_key1: [u8; AES_KEY_LEN],
    go_key2: [u8; AES_KEY_LEN],
    /// The key2 our session chose.
    our_key2: Option<[u8; AES_KEY_LEN]>,
    /// Our answer to the client's last message: the reply, or None for a silent close.
    our_reply: Option<XlRegMsg>,
    /// Whether our last step closes the connection.
    our_close: bool,
}

#[test]
fn the_live_capture_replays_with_replies_of_the_go_servers_shape() {
    let capture = json(SESSION_JSON);
    let store = Store::temporary().unwrap();
    let decryptor = decryptor();
    let mut replays: HashMap<u64, Replay> = HashMap::new();
    let mut chunks = Vec::new();
    for conn in capture["connections"].as_array().unwrap() {
        let id = conn["conn"].as_u64().unwrap();
        replays.insert(
            id,
            Replay {
                session: LegacySession::new(
                    decryptor.clone(),
                    Version::GO_REGISTRY,
                    crate::driver::session_rng(),
                    64 * 1024,
                    crate::driver::ServerConfig::default().timeouts(),
                    1_000,
                ),
                go_key1: key(conn, "key1"),
                go_key2: key(conn, "key2"),
                our_key2: None,
                our_reply: None,
                our_close: false,
            },
        );
        for chunk in conn["chunks"].as_array().unwrap() {
            chunks.push((chunk["seq"].as_u64().unwrap(), id, chunk));
        }
    }
    chunks.sort_by_key(|(seq, ..)| *seq);
    let mut cluster_ids = Vec::new();
    // Go's cluster IDs (20 bytes) and the ones our store issued (32) for the same cluster.
    let mut our_cluster_id: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut compared = 0;
    for (seq, conn, chunk) in chunks {
        let replay = replays.get_mut(&conn).unwrap();
        let from_client = text(chunk, "dir") == "client->server";
        let kind = text(chunk, "kind");
        if kind == "close" {
            if !from_client {
                assert!(replay.our_close, "seq {seq}: Go closed, we would not");
            }
            continue;
        }
        let captured = bytes(chunk, "bytes");
        let plaintext = match kind {
            "hello" => decryptor.decrypt_oaep_sha1(&captured).unwrap(),
            "reply" => wire::open(&replay.go_key1, &captured).unwrap(),
            _ => {
                let plaintext = wire::open(&replay.go_key2, &captured).unwrap();
                let iv: [u8; IV_LEN] = captured[..IV_LEN].try_into().unwrap();
                assert_eq!(wire::seal(&replay.go_key2, &iv, &plaintext), captured);
                assert_eq!(plaintext.as_slice(), bytes(chunk, "protobuf"), "seq {seq}");
                plaintext
            }
        };
        if kind != "message" {
            assert_eq!(plaintext.as_slice(), bytes(chunk, "plaintext"), "seq {seq}");
        }
        match (kind, from_client) {
            ("hello", true) => {
                assert_eq!(*Hello::parse(&plaintext).unwrap().key, replay.go_key1);
                replay.session.on_bytes(&captured);
                let step = poll_applying(&mut replay.session, &store, 1_000);
                let Some(Step::Send { bytes, close, .. }) = step else {
                    panic!("seq {seq}: no reply to the captured hello")
                };
                assert!(!close);
                assert_eq!(bytes.len(), 64);
                let ours = Hello::parse(&wire::open(&replay.go_key1, &bytes).unwrap()).unwrap();
                assert_eq!(ours.version, Version::GO_REGISTRY);
                replay.our_key2 = Some(*ours.key);
            }
            ("reply", false) => {
                let go = Hello::parse(&plaintext).unwrap();
                assert_eq!(*go.key, replay.go_key2);
                assert_eq!(go.version, Version::GO_REGISTRY);
                assert_eq!(plaintext.len(), HELLO_LEN);
            }
            ("message", true) => {
                let mut msg = decode_exact(&plaintext);
                if let Some(go_id) = &msg.cluster_id {
                    msg.cluster_id = Some(our_cluster_id[go_id].clone());
                }
                let our_key2 = replay.our_key2.unwrap();
                // The same request, under the key our session chose.
                replay
                    .session
                    .on_bytes(&wire::seal_message(&our_key2, &msg));
                match poll_applying(&mut replay.session, &store, 1_000) {
                    Some(Step::Send { bytes, close, .. }) => {
                        replay.our_reply = Some(wire::open_message(&our_key2, &bytes).unwrap());
                        replay.our_close = close;
                    }
                    other => panic!("seq {seq}: {other:?} instead of a reply"),
                }
            }
            ("message", false) => {
                let go = decode_exact(&plaintext);
                let ours = replay.our_reply.take().expect("a reply of ours to compare");
                assert_eq!(ours.op, go.op, "seq {seq}");
                assert_eq!(shape(&ours), shape(&go), "seq {seq}: {ours:?}");
                assert_eq!(ours.tokens.len(), go.tokens.len(), "seq {seq}");
                for (mine, theirs) in ours.tokens.iter().zip(&go.tokens) {
                    assert_eq!(token_shape(mine), token_shape(theirs));
                    assert_eq!(mine, theirs, "seq {seq}: member tokens differ");
                }
                assert_eq!(ours.member_id, go.member_id, "seq {seq}");
                assert_eq!(ours.member_attrs, go.member_attrs, "seq {seq}");
                assert_eq!(ours.cluster_max_size, go.cluster_max_size, "seq {seq}");
                assert_eq!(ours.cluster_attrs, go.cluster_attrs, "seq {seq}");
                assert_eq!(ours.end_point_count, go.end_point_count, "seq {seq}");
                assert_eq!(ours.which, go.which, "seq {seq}");
                assert_eq!(ours.err_desc, go.err_desc, "seq {seq}");
                if let (Some(go_id), Some(our_id)) = (&go.cluster_id, &ours.cluster_id) {
                    our_cluster_id.insert(go_id.clone(), our_id.clone());
                }
                cluster_ids.extend(ours.cluster_id);
                let closes = matches!(go.op.map(Tag::try_from), Some(Ok(Tag::Ack | Tag::Error)));
                assert_eq!(replay.our_close, closes, "seq {seq}");
                compared += 1;
            }
            other => panic!("seq {seq}: unexpected chunk {other:?}"),
        }
    }
    // MemberOK, CreateReply, JoinReply, ClusterMembers and Ack on each member's connection;
    // the Error on the third.
    assert_eq!(compared, 11);
    // Create, Join and GetCluster on both connections name the one cluster.
    assert_eq!(cluster_ids.len(), 6);
    assert!(cluster_ids.iter().all(|id| id == &cluster_ids[0]));
}
