//! xlReg/2 and xlReg/3 side by side against one real `xlreg serve` process over loopback,
//! and the xlReg/3 handshake under attack: bad first messages, the wrong static keys, a
//! replayed first message, bit flips, a truncated handshake and a downgrade attempt.

mod common;

use std::time::Duration;

use common::{node, Heard, RawConn, Server};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use xlreg::client::{Client, ClientError, RegistryKeys, DEFAULT_TIMEOUT};
use xlreg::crypto::HandshakeKeyPair;
use xlreg::frame;
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::regcred::RegCred;
use xlreg::session_crypto::{
    ClientHandshakeV3, HandshakeError, NoiseCipher, V3_HELLO_LEN, V3_REPLY_LEN,
};

/// A raw xlReg/3 session: the connection, the cipher and the handshake hash.
async fn raw_v3(server: &Server) -> (RawConn, NoiseCipher, [u8; 32]) {
    let keys = &server.regcred.handshake.as_ref().expect("v3 keys").keys;
    let (handshake, hello) = ClientHandshakeV3::start(keys, &mut rand::rng()).unwrap();
    let mut conn = RawConn::connect(&server.endpoint()).await;
    conn.send_frame(&hello).await.unwrap();
    let Heard::Frame(reply) = conn.hear().await else {
        panic!("no xlReg/3 reply")
    };
    assert_eq!(reply.len(), V3_REPLY_LEN);
    let session = handshake.finish(&reply).unwrap();
    (conn, session.cipher, session.handshake_hash)
}

async fn call(conn: &mut RawConn, cipher: &mut NoiseCipher, msg: &XlRegMsg) -> XlRegMsg {
    conn.send_frame(&cipher.seal(&msg.encode_to_vec()))
        .await
        .unwrap();
    let Heard::Frame(sealed) = conn.hear().await else {
        panic!("no reply")
    };
    XlRegMsg::decode(cipher.open(&sealed).unwrap().as_slice()).unwrap()
}

#[tokio::test]
async fn v2_and_v3_clients_share_one_listener_and_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    assert_eq!(server.regcred.versions(), vec![2, 3]);
    // The registry keeps its handshake keys private, like its RSA keys.
    let key_file = dir.path().join("data").join("registry-handshake.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let mut v3 = Client::connect(&server.regcred, DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!((v3.version(), v3.session_binding().len()), (3, 32));
    let mut v2 = Client::connect_version(&server.regcred, 2, DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!((v2.version(), v2.session_binding().len()), (2, 16));

    v3.register(&node(0, "three", 1)).await.unwrap();
    v2.register(&node(1, "two", 1)).await.unwrap();
    v3.create("mixed", 2, 1).await.unwrap();
    v3.join(None).await.unwrap();
    let name = xlreg::store::ClusterRef::Name("mixed".into());
    v2.join(Some(&name)).await.unwrap();
    for client in [&mut v2, &mut v3] {
        let view = client
            .get_cluster(Some(&name), None, Duration::from_secs(5))
            .await
            .unwrap();
        let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["three", "two"]);
    }
    // A reply bigger than one Noise message (65,535 bytes) crosses the wire whole: a
    // cluster of 40 members with 8 endpoints each.
    v3.create("wide", 64, 8).await.unwrap();
    let wide = xlreg::store::ClusterRef::Name("wide".into());
    for i in 0..40 {
        let mut member = Client::connect(&server.regcred, DEFAULT_TIMEOUT)
            .await
            .unwrap();
        let mut identity = node(i % 8, &format!("w{i}"), 8);
        identity.endpoints = (0..8)
            .map(|e| {
                let label = |c: &str| c.repeat(60);
                format!(
                    "{}.{}.{}.example.org:{}",
                    label("a"),
                    label("b"),
                    label("c"),
                    1000 + e
                )
            })
            .collect();
        member.register(&identity).await.unwrap();
        member.join(Some(&wide)).await.unwrap();
        member.bye().await.unwrap();
    }
    let view = v3
        .get_cluster(Some(&wide), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 40);
    v3.bye().await.unwrap();
    v2.bye().await.unwrap();
    // Each session's log line names the version it spoke.
    let says = |log: &str, wire: &str, ops: u32| {
        log.lines().any(|line| {
            line.contains(&format!("wire=\"{wire}\""))
                && line.contains("result=\"bye\"")
                && line.contains(&format!("ops={ops} "))
        })
    };
    server.wait_for_log("a session line for each version", |log| {
        says(log, "xlReg/2", 4) && says(log, "xlReg/3", 7)
    });
}

#[tokio::test]
async fn hostile_first_messages_are_closed_unanswered_and_the_registry_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let keys = &server.regcred.handshake.as_ref().unwrap().keys;
    let (_, hello) = ClientHandshakeV3::start(keys, &mut rand::rng()).unwrap();
    let impostor = HandshakeKeyPair::generate().unwrap();
    let (_, wrong_keys) = ClientHandshakeV3::start(impostor.public(), &mut rand::rng()).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("to the wrong static keys", wrong_keys),
        ("zeros after the magic", {
            let mut bytes = vec![0u8; V3_HELLO_LEN];
            bytes[..4].copy_from_slice(b"XLR3");
            bytes
        }),
        ("one byte short", hello[..V3_HELLO_LEN - 1].to_vec()),
        ("one byte long", [hello.as_slice(), &[0]].concat()),
    ];
    for index in [0, 2, 4, 600, 4 + 1088, 4 + 1088 + 31, V3_HELLO_LEN - 1] {
        let mut flipped = hello.clone();
        flipped[index] ^= 0x04;
        cases.push(("a bit flip", flipped));
    }
    for (case, payload) in cases {
        let mut conn = RawConn::connect(&server.endpoint()).await;
        conn.send_frame(&payload).await.unwrap();
        conn.expect_silent_close(case).await;
    }
    // A first message cut off inside its frame gets nothing until the handshake timeout.
    let mut conn = RawConn::connect(&server.endpoint()).await;
    let whole = frame::encode(&hello);
    conn.send_raw(&whole[..whole.len() - 100]).await.unwrap();
    conn.half_close().await;
    conn.expect_silent_close("truncated handshake").await;
    // The registry still serves both versions.
    let mut client = server.client().await;
    client.register(&node(2, "after", 1)).await.unwrap();
    client.bye().await.unwrap();
}

#[tokio::test]
async fn a_replayed_first_message_gets_a_session_its_sender_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let keys = &server.regcred.handshake.as_ref().unwrap().keys;
    let (handshake, hello) = ClientHandshakeV3::start(keys, &mut rand::rng()).unwrap();
    let mut honest = RawConn::connect(&server.endpoint()).await;
    honest.send_frame(&hello).await.unwrap();
    let Heard::Frame(reply) = honest.hear().await else {
        panic!("no reply")
    };
    let mut session = handshake.finish(&reply).unwrap();
    let bye = XlRegMsg {
        op: Some(Tag::Bye as i32),
        ..XlRegMsg::default()
    };
    let recorded = session.cipher.seal(&bye.encode_to_vec());

    // An attacker replays the recorded first message, then the recorded request.
    let mut replay = RawConn::connect(&server.endpoint()).await;
    replay.send_frame(&hello).await.unwrap();
    let Heard::Frame(replayed_reply) = replay.hear().await else {
        panic!("the registry answers a replayed first message (it cannot tell)")
    };
    assert_ne!(replayed_reply, reply, "a fresh ephemeral key every time");
    replay.send_frame(&recorded).await.unwrap();
    replay
        .expect_silent_close("recorded request in a replayed session")
        .await;

    // The honest session is untouched.
    honest.send_frame(&recorded).await.unwrap();
    let Heard::Frame(ack) = honest.hear().await else {
        panic!("no Ack")
    };
    let ack = XlRegMsg::decode(session.cipher.open(&ack).unwrap().as_slice()).unwrap();
    assert_eq!(ack.op, Some(Tag::Ack as i32));
}

#[tokio::test]
async fn bit_flipped_session_frames_are_closed_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    for index in [0usize, 1, 17] {
        let (mut conn, mut cipher, hash) = raw_v3(&server).await;
        let member = common::member_msg(&node(3, "flip", 1), &hash);
        let mut sealed = cipher.seal(&member.encode_to_vec());
        let at = index.min(sealed.len() - 1);
        sealed[at] ^= 0x01;
        conn.send_frame(&sealed).await.unwrap();
        conn.expect_silent_close("flipped frame").await;
    }
    // Unflipped, the same request works.
    let (mut conn, mut cipher, hash) = raw_v3(&server).await;
    let member = common::member_msg(&node(3, "flip", 1), &hash);
    let reply = call(&mut conn, &mut cipher, &member).await;
    assert_eq!(reply.op, Some(Tag::MemberOk as i32));
}

/// A registry impostor on the client's path: it answers whatever it is sent with an
/// xlReg/2-shaped reply (84 bytes), or with a made-up xlReg/3 reply.
async fn impostor(reply: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
                if stream.read_exact(&mut hello).await.is_ok() {
                    let _ = stream.write_all(&frame::encode(&reply)).await;
                    // Keep the connection open a while, as a real registry would.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
    });
    endpoint
}

#[tokio::test]
async fn a_v3_client_cannot_be_talked_down_to_v2() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut regcred: RegCred = server.regcred.clone();
    let keys = regcred.handshake.as_ref().unwrap().keys.clone();
    // Whatever comes back that is not the registry's Noise message 2 ends the attempt; the
    // client never retries with an xlReg/2 hello, so the RSA path is never offered.
    for (case, reply) in [
        ("an xlReg/2 reply", vec![0x5a; 84]),
        ("a made-up message 2", vec![0x11; V3_REPLY_LEN]),
        ("an empty frame", Vec::new()),
    ] {
        let endpoint = impostor(reply).await;
        regcred.endpoints = vec![endpoint.clone()];
        let result = Client::connect(&regcred, Duration::from_secs(5)).await;
        assert!(
            matches!(
                result,
                Err(ClientError::Handshake(HandshakeError::V3ReplyUnauthentic))
            ),
            "{case}: {result:?}"
        );
        let result = Client::connect_keys(
            &endpoint,
            RegistryKeys::V3(&keys),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .await;
        assert!(result.is_err(), "{case}");
    }
    // Asking for version 3 with a file that has no handshake keys is refused up front.
    let mut old = server.regcred.clone();
    old.handshake = None;
    assert!(matches!(
        Client::connect_version(&old, 3, DEFAULT_TIMEOUT).await,
        Err(ClientError::NoV3Keys)
    ));
    // And with them, the real registry answers version 3.
    let client = Client::connect(&server.regcred, DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(client.version(), 3);
}

#[test]
fn regcred_show_names_the_versions_a_file_supports() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let path = server.regcred_path.to_str().unwrap();
    let output = common::xlreg(&["regcred", "show", path]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert!(
        common::stdout(&output).contains("protocols: xlReg/2, xlReg/3 (handshake keys signed"),
        "{}",
        common::stdout(&output)
    );
    let output = common::xlreg(&["regcred", "show", "--json", path]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["protocol_versions"], serde_json::json!([2, 3]));
    // An xlReg/2-only file (as every file before xlReg/3).
    let mut old = server.regcred.clone();
    old.handshake = None;
    let old_path = dir.path().join("old.dat");
    old.write(&old_path).unwrap();
    let output = common::xlreg(&["regcred", "show", old_path.to_str().unwrap()]);
    assert!(common::stdout(&output).contains("protocols: xlReg/2 (no handshake keys"));
    // A file whose handshake keys were swapped is refused with the reason.
    let text = std::fs::read_to_string(&server.regcred_path).unwrap();
    let other = HandshakeKeyPair::generate().unwrap();
    let mut forged = server.regcred.clone();
    forged.handshake.as_mut().unwrap().keys = other.public().clone();
    let forged_path = dir.path().join("forged.dat");
    std::fs::write(&forged_path, forged.to_text()).unwrap();
    assert_ne!(forged.to_text(), text);
    let output = common::xlreg(&["regcred", "show", forged_path.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        common::stderr(&output).contains("HandshakeSig does not verify"),
        "{}",
        common::stderr(&output)
    );
}

#[tokio::test]
async fn the_handshake_keys_survive_a_restart_so_old_regcred_files_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let before = server.regcred.clone();
    assert_eq!(server.stop(), Some(0));
    let server = Server::start(&data, &[]);
    assert_eq!(server.regcred.handshake, before.handshake);
    // A client holding the file from before the restart (its endpoint updated: the port
    // is new) still speaks xlReg/3 with the registry.
    let mut old = before.clone();
    old.endpoints = server.regcred.endpoints.clone();
    let client = Client::connect(&old, DEFAULT_TIMEOUT).await.unwrap();
    assert_eq!(client.version(), 3);
    client.bye().await.unwrap();
}

#[test]
fn the_cli_speaks_xlreg3_when_its_regcred_has_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = server.regcred_path.to_str().unwrap();
    let output = common::xlreg(&["ping", "--regcred", regcred]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    server.wait_for_log("the ping's session line", |log| {
        log.lines()
            .any(|line| line.contains("wire=\"xlReg/3\"") && line.contains("result=\"bye\""))
    });
    // With an xlReg/2-only file, the same command speaks xlReg/2.
    let mut old = server.regcred.clone();
    old.handshake = None;
    let old_path = dir.path().join("old.dat");
    old.write(&old_path).unwrap();
    let output = common::xlreg(&["ping", "--regcred", old_path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", common::stderr(&output));
    server.wait_for_log("an xlReg/2 session line", |log| {
        log.lines()
            .any(|line| line.contains("wire=\"xlReg/2\"") && line.contains("result=\"bye\""))
    });
}
