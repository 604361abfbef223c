//! Handshake-key rotation (`xlreg admin rotate-handshake-keys`) against real `xlreg serve`
//! processes over loopback: during the overlap a client holding the old regCred.dat still
//! connects and one holding the new one connects too; after it the old one is closed
//! unanswered and told to fetch the current file; rotation while serving and on a stopped
//! registry; a restart keeps the overlap; backups carry the previous keys.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{node, stderr, stdout, wait_until, xlreg, Server};
use xlreg::client::{Client, ClientError, DEFAULT_TIMEOUT};
use xlreg::handshake_keys::PREVIOUS_HANDSHAKE_KEY_FILE;
use xlreg::regcred::RegCred;

/// Runs `xlreg admin rotate-handshake-keys --json` on `dir` and returns its JSON output.
fn rotate(dir: &Path, overlap: &str) -> serde_json::Value {
    let output = xlreg(&[
        "admin",
        "rotate-handshake-keys",
        "--overlap",
        overlap,
        "--data-dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.status.success(), "rotate: {}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// A v3 session with `cred` that registers a node: the registry accepted the keys.
async fn connects(cred: &RegCred, index: usize) {
    let mut client = Client::connect(cred, DEFAULT_TIMEOUT).await.unwrap();
    assert_eq!(client.version(), 3);
    client
        .register(&node(index, &format!("n{index}"), 1))
        .await
        .unwrap();
    client.bye().await.unwrap();
}

/// `cred` (its keys) pointed at `server`'s endpoint: each start here listens on a new
/// port, and the keys are what is under test.
fn at(cred: &RegCred, server: &Server) -> RegCred {
    RegCred {
        endpoints: server.regcred.endpoints.clone(),
        ..cred.clone()
    }
}

fn x25519_hex(cred: &RegCred) -> String {
    hex::encode(cred.handshake.as_ref().unwrap().keys.x25519())
}

#[tokio::test]
async fn while_serving_the_old_regcred_works_for_the_overlap_and_is_refused_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let old = server.regcred.clone();
    assert_eq!(old.handshake_previous, None);

    let report = rotate(&data, "4s");
    assert_eq!(report["online"], true);
    let rotated = &report["rotated"];
    assert_eq!(rotated["previous_x25519"], x25519_hex(&old).as_str());
    assert_eq!(
        rotated["regcred"],
        server.regcred_path.to_str().unwrap(),
        "the daemon rewrote its regCred.dat"
    );
    let new = RegCred::read(&server.regcred_path).unwrap();
    assert_eq!(rotated["current_x25519"], x25519_hex(&new).as_str());
    assert_ne!(new.handshake, old.handshake);
    assert_eq!(new.handshake_previous, old.handshake, "both sets listed");
    assert!(data.join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());

    // During the overlap both files work, on the same listener.
    connects(&old, 0).await;
    connects(&new, 1).await;

    // When the overlap ends the registry drops the old keys by itself, file and all.
    wait_until("the overlap to end", Duration::from_secs(20), || {
        RegCred::read(&server.regcred_path).is_ok_and(|cred| cred.handshake_previous.is_none())
    });
    assert!(!data.join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
    let after = RegCred::read(&server.regcred_path).unwrap();
    assert_eq!(after.handshake, new.handshake);
    match Client::connect(&old, DEFAULT_TIMEOUT).await {
        Err(error @ ClientError::KeyNotAccepted { .. }) => {
            assert!(
                error.to_string().contains("fetch the current one"),
                "{error}"
            )
        }
        Err(other) => panic!("the old regCred.dat failed unclearly: {other}"),
        Ok(_) => panic!("the old keys are still accepted after the overlap"),
    }
    connects(&new, 2).await;
    server.wait_for_log("the overlap's end logged", |log| {
        log.contains("previous keys dropped")
    });
}

#[tokio::test]
async fn an_offline_rotation_survives_restarts_is_backed_up_and_overlap_0_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let old = server.regcred.clone();
    assert_eq!(server.stop(), Some(0));

    let report = rotate(&data, "1h");
    assert_eq!(report["online"], false);
    assert_eq!(report["rotated"]["regcred"], serde_json::Value::Null);
    for file in ["registry-handshake.key", PREVIOUS_HANDSHAKE_KEY_FILE] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // The next start publishes both sets, and a restart keeps the overlap.
    let mut new = None;
    for round in 0..2 {
        let server = Server::start(&data, &[]);
        assert_eq!(server.regcred.handshake_previous, old.handshake, "{round}");
        assert_eq!(
            x25519_hex(&server.regcred),
            report["rotated"]["current_x25519"].as_str().unwrap()
        );
        connects(&at(&old, &server), 10 + round).await;
        connects(&server.regcred, 20 + round).await;
        new = Some(server.regcred.clone());
        assert_eq!(server.stop(), Some(0));
    }
    let new = new.unwrap();

    // A backup carries the previous keys; the restored registry serves both sets.
    let snapshot = dir.path().join("snap");
    let restored = dir.path().join("restored");
    for args in [
        vec![
            "admin",
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            "-o",
        ],
        vec!["admin", "restore"],
    ] {
        let mut args = args;
        args.push(snapshot.to_str().unwrap());
        if args[1] == "restore" {
            args.extend(["--data-dir", restored.to_str().unwrap()]);
        }
        let output = xlreg(&args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    }
    assert!(restored.join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());

    // Rotating online with no overlap retires the old keys at once.
    let server = Server::start(&data, &[]);
    let report = rotate(&data, "0");
    assert_eq!(
        report["rotated"]["previous_x25519"],
        serde_json::Value::Null
    );
    let latest = RegCred::read(&server.regcred_path).unwrap();
    assert_eq!(latest.handshake_previous, None);
    assert!(!data.join(PREVIOUS_HANDSHAKE_KEY_FILE).exists());
    for stale in [&old, &new] {
        assert!(matches!(
            Client::connect(&at(stale, &server), DEFAULT_TIMEOUT).await,
            Err(ClientError::KeyNotAccepted { .. })
        ));
    }
    connects(&latest, 30).await;
}

#[test]
fn a_bad_overlap_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let before = std::fs::read(data.join("registry-handshake.key")).unwrap();
    let output = xlreg(&[
        "admin",
        "rotate-handshake-keys",
        "--overlap",
        "soon",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a duration"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(data.join("registry-handshake.key")).unwrap(),
        before
    );
    assert_eq!(RegCred::read(&server.regcred_path).unwrap(), server.regcred);
}
