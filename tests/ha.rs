//! Many servers, one truth (docs/ha.md): several `xlreg serve --etcd` processes on one real
//! 3-member etcd present one registry identity, sealed in etcd under the operators' secret
//! file; each announces itself under a lease and keeps regCred.dat listing every live
//! server; a key rotation through one reaches the others; one server at a time sweeps
//! expired clusters, and another takes over when it dies.
//!
//! Without etcd installed these tests print `SKIPPED: etcd not installed` and pass; under
//! `CI=true` they fail instead.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcd::{cluster_or_skip, secret_file, server_args, server_on};
use common::{node, stderr, wait_until, xlreg, Server};
use xlreg::client::{Client, ClientError, EndpointOrder, RegistryKeys, DEFAULT_TIMEOUT};
use xlreg::proto::ErrCode;
use xlreg::regcred::RegCred;
use xlreg::store::ClusterRef;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts one server per directory, all at the same moment (a race of first starts).
fn start_at_once(
    etcd: &common::etcd::EtcdCluster,
    prefix: &str,
    dirs: &[PathBuf],
    extra: &[&str],
) -> Vec<Server> {
    std::thread::scope(|scope| {
        let started: Vec<_> = dirs
            .iter()
            .map(|dir| scope.spawn(move || server_on(etcd, prefix, dir, extra)))
            .collect();
        started.into_iter().map(|s| s.join().unwrap()).collect()
    })
}

/// The endpoint the server advertises (its own: regCred.dat may list others first), from
/// its start-up log line.
fn own_endpoint(server: &Server) -> String {
    // The line follows the writing of regCred.dat, which Server::start waited for.
    let log = server.wait_for_log("the start-up line", |log| {
        log.contains("xlreg registry serving")
    });
    let line = log
        .lines()
        .find(|line| line.contains("xlreg registry serving"))
        .expect("the start-up line");
    let at = line.find("advertise=").expect("advertise field") + "advertise=".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// The server's regCred.dat as it is on disk now.
fn current_regcred(server: &Server) -> RegCred {
    RegCred::read(&server.regcred_path).unwrap()
}

/// Waits until the server's regCred.dat lists exactly `endpoints` (in any order).
fn wait_for_listing(server: &Server, endpoints: &[String], within: Duration) {
    let mut want = endpoints.to_vec();
    want.sort();
    wait_until(
        &format!("{} to list {want:?}", server.regcred_path.display()),
        within,
        || {
            let mut listed = RegCred::read(&server.regcred_path)
                .map(|c| c.endpoints)
                .unwrap_or_default();
            listed.sort();
            listed == want
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_first_starts_make_one_sealed_identity_and_every_regcred_lists_the_live_servers() {
    let Some(etcd) = cluster_or_skip("three_first_starts_make_one_sealed_identity") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let mut servers = start_at_once(&etcd, "/one", &dirs, &[]);

    // One identity: the same ID and keys in every server's regCred.dat, created by one.
    let creds: Vec<RegCred> = servers.iter().map(current_regcred).collect();
    for cred in &creds[1..] {
        assert_eq!(cred.id, creds[0].id);
        assert_eq!(cred.comms_key, creds[0].comms_key);
        assert_eq!(cred.sig_key, creds[0].sig_key);
        assert_eq!(cred.handshake, creds[0].handshake);
    }
    let created: usize = servers
        .iter()
        .map(|s| s.log_count("registry identity created and sealed"))
        .sum();
    assert_eq!(created, 1, "exactly one server created the identity");
    // Not the template key files the harness puts in each data directory: made fresh.
    let template =
        std::fs::read_to_string(common::test_data_dir().join("registry/registry-comms.pem"))
            .unwrap();
    let template = xlreg::crypto::RsaKeyPair::from_pem(&template).unwrap();
    assert_ne!(&creds[0].comms_key, template.public_key());
    // Nothing private in etcd in the clear, and no key files written for etcd.
    for dir in &dirs {
        assert!(
            !dir.join("registry-handshake.key").exists(),
            "{}",
            dir.display()
        );
    }

    // Every regCred.dat comes to list all three servers.
    let all: Vec<String> = servers.iter().map(own_endpoint).collect();
    for server in &servers {
        wait_for_listing(server, &all, Duration::from_secs(15));
    }
    // One file works against every server, over xlReg/3.
    let listing = current_regcred(&servers[0]);
    let keys = RegistryKeys::of(&listing);
    assert!(matches!(keys, RegistryKeys::V3(_)));
    for endpoint in &all {
        let order = EndpointOrder::as_listed(std::slice::from_ref(endpoint));
        let client = Client::connect_any(&order, keys, Duration::from_secs(5), DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        client.bye().await.unwrap();
    }

    // A SIGKILLed server drops out of the others' regCred.dat within its lease's TTL.
    servers.pop().unwrap().kill();
    for server in &servers {
        wait_for_listing(
            server,
            &all[..2],
            xlreg::ha::LEASE_TTL + Duration::from_secs(5),
        );
    }
    // A stopped one at once (its lease is revoked).
    let stopped = servers.pop().unwrap();
    assert_eq!(stopped.stop(), Some(0));
    wait_for_listing(&servers[0], &all[..1], Duration::from_secs(5));
    servers[0].assert_running();
}

#[test]
fn a_server_with_a_wrong_missing_or_open_secret_refuses_to_start() {
    let Some(etcd) = cluster_or_skip("a_server_with_a_wrong_missing_or_open_secret") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = server_on(&etcd, "/secret", &tmp.path().join("first"), &[]);

    let refused = |args: Vec<String>, dir: &str| {
        let data = tmp.path().join(dir);
        let mut all = vec![
            "serve".to_string(),
            "--data-dir".into(),
            s(&data).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        all.extend(args);
        let out = xlreg(&all.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!out.status.success(), "{dir}: started");
        stderr(&out)
    };

    // Another prefix's secret: the stored identity does not open.
    let other = secret_file(&etcd, "/another");
    let mut args = server_args(&etcd, "/secret", &[]);
    let at = args
        .iter()
        .position(|a| a == "--identity-secret-file")
        .unwrap();
    args[at + 1] = s(&other).to_string();
    let text = refused(args, "wrong");
    assert!(
        text.contains("does not open with this identity secret"),
        "{text}"
    );
    assert!(text.contains("/secret/identity"), "{text}");

    // No secret at all.
    let mut args = server_args(&etcd, "/secret", &[]);
    args.drain(at..at + 2);
    let text = refused(args, "none");
    assert!(text.contains("--identity-secret-file"), "{text}");
    assert!(text.contains("required with --etcd"), "{text}");

    // A secret others can read.
    use std::os::unix::fs::PermissionsExt as _;
    let open = tmp.path().join("open-secret");
    std::fs::copy(secret_file(&etcd, "/secret"), &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = server_args(&etcd, "/secret", &[]);
    args[at + 1] = s(&open).to_string();
    let text = refused(args, "open");
    assert!(text.contains("chmod 600"), "{text}");

    // None of them changed the registry: the first server serves the same identity.
    let mut first = first;
    first.assert_running();
    assert_eq!(current_regcred(&first).id, first.regcred.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_through_one_server_reaches_the_others() {
    let Some(etcd) = cluster_or_skip("a_key_rotation_through_one_server_reaches_the_others") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = server_on(&etcd, "/rotate", &tmp.path().join("a"), &[]);
    let b = server_on(&etcd, "/rotate", &tmp.path().join("b"), &[]);
    let before = current_regcred(&b).handshake.unwrap();

    let rotated = xlreg(&[
        "admin",
        "rotate-handshake-keys",
        "--data-dir",
        s(&a.dir),
        "--overlap",
        "1m",
    ]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let new = current_regcred(&a).handshake.unwrap();
    assert_ne!(new.keys, before.keys);
    // B serves the new keys (and lists the old ones for the overlap) within its reload.
    wait_until(
        "server B to serve the rotated keys",
        xlreg::handshake_keys::SEALED_RELOAD * 3,
        || {
            let cred = current_regcred(&b);
            cred.handshake.as_ref().map(|h| &h.keys) == Some(&new.keys)
                && cred.handshake_previous.as_ref().map(|h| &h.keys) == Some(&before.keys)
        },
    );
    // A client holding A's new file reaches B over xlReg/3.
    let cred = current_regcred(&a);
    let order = EndpointOrder::as_listed(&[own_endpoint(&b)]);
    let client = Client::connect_any(
        &order,
        RegistryKeys::of(&cred),
        Duration::from_secs(5),
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    client.bye().await.unwrap();
}

/// True once the cluster `name` is gone (asked through `server`).
async fn cluster_gone(server: &Server, name: &str) -> bool {
    let mut client = server.client().await;
    client.register(&node(1, "asker", 1)).await.unwrap();
    let result = client
        .get_cluster(Some(&ClusterRef::Name(name.into())), None, Duration::ZERO)
        .await;
    matches!(
        result,
        Err(ClientError::Refused {
            code: Some(ErrCode::NotFound),
            ..
        })
    )
}

async fn create(server: &Server, name: &str) {
    let mut client = server.client().await;
    client.register(&node(0, "creator", 1)).await.unwrap();
    client.create(name, 3, 1).await.unwrap();
    client.bye().await.unwrap();
}

async fn wait_gone(server: &Server, name: &str, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    while !cluster_gone(server, name).await {
        assert!(
            tokio::time::Instant::now() < until,
            "{name} was not swept within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_elected_server_sweeps_and_another_takes_over_when_it_dies() {
    let Some(etcd) = cluster_or_skip("one_elected_server_sweeps") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let mut servers = start_at_once(&etcd, "/sweep", &dirs, &["--cluster-ttl", "1s"]);
    const ELECTED: &str = "sweeper: elected";
    wait_until("a sweeper to be elected", Duration::from_secs(10), || {
        servers.iter().any(|s| s.log_count(ELECTED) > 0)
    });
    create(&servers[0], "short-lived").await;
    wait_gone(&servers[1], "short-lived", Duration::from_secs(10)).await;
    // One holder, and only its log says it removed the cluster.
    let holders: Vec<usize> = (0..3)
        .filter(|&i| servers[i].log_count(ELECTED) > 0)
        .collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = holders[0];
    for (i, server) in servers.iter().enumerate() {
        let removed = server.log_count("cluster expired: removed");
        assert_eq!(removed, usize::from(i == holder), "server {i}");
    }

    // The holder dies; within the lease TTL another server is elected and sweeps.
    servers.remove(holder).kill();
    create(&servers[0], "after-the-holder").await;
    wait_until(
        "another sweeper to be elected",
        xlreg::ha::LEASE_TTL + Duration::from_secs(5),
        || servers.iter().any(|s| s.log_count(ELECTED) > 0),
    );
    wait_gone(&servers[1], "after-the-holder", Duration::from_secs(10)).await;
    let holders = servers.iter().filter(|s| s.log_count(ELECTED) > 0).count();
    assert_eq!(holders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_sled_registry_to_etcd_and_back_and_a_backup_of_it_restores() {
    let Some(etcd) = cluster_or_skip("migrate_moves_a_sled_registry_to_etcd_and_back") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A sled registry with a cluster and a member, then stopped.
    let sled = Server::start(&tmp.path().join("sled"), &[]);
    let mut client = sled.client().await;
    client.register(&node(0, "member", 1)).await.unwrap();
    client.create("moved", 3, 1).await.unwrap();
    let (_, slot) = client.join(None).await.unwrap();
    client.bye().await.unwrap();
    let before = current_regcred(&sled);
    let sled_dir = sled.dir.clone();
    assert_eq!(sled.stop(), Some(0));

    let endpoints = etcd.endpoints_arg();
    let secret = secret_file(&etcd, "/moved");
    let migrate = |args: &[&str]| {
        let mut all = vec![
            "admin",
            "migrate",
            "--etcd",
            &endpoints,
            "--etcd-prefix",
            "/moved",
            "--identity-secret-file",
            s(&secret),
        ];
        all.extend_from_slice(args);
        xlreg(&all)
    };
    let moved = migrate(&["--from-data-dir", s(&sled_dir)]);
    assert!(moved.status.success(), "{}", stderr(&moved));
    // A non-empty prefix is refused, and nothing changes.
    let again = migrate(&["--from-data-dir", s(&sled_dir)]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("empty etcd prefix"),
        "{}",
        stderr(&again)
    );

    // A server on etcd is the same registry: same ID and keys, the member in its slot.
    let server = server_on(&etcd, "/moved", &tmp.path().join("on-etcd"), &[]);
    let after = current_regcred(&server);
    assert_eq!(after.id, before.id);
    assert_eq!(after.comms_key, before.comms_key);
    assert_eq!(after.handshake, before.handshake);
    // The old regCred.dat's keys work against the server on etcd, over xlReg/3.
    let order = EndpointOrder::as_listed(&[own_endpoint(&server)]);
    let client = Client::connect_any(
        &order,
        RegistryKeys::of(&before),
        Duration::from_secs(5),
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    client.bye().await.unwrap();
    let shown = xlreg(&[
        "admin",
        "cluster",
        "moved",
        "--json",
        "--etcd",
        &endpoints,
        "--etcd-prefix",
        "/moved",
    ]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let json: serde_json::Value = serde_json::from_str(&common::stdout(&shown)).unwrap();
    assert_eq!(json["members"][0]["slot"], slot);
    let verify = xlreg(&[
        "admin",
        "verify",
        "--etcd",
        &endpoints,
        "--etcd-prefix",
        "/moved",
    ]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    // A backup of the registry on etcd, keys included, restores into a sled directory.
    let snapshot = tmp.path().join("etcd.snap");
    let backed_up = xlreg(&[
        "admin",
        "backup",
        "--etcd",
        &endpoints,
        "--etcd-prefix",
        "/moved",
        "--identity-secret-file",
        s(&secret),
        "-o",
        s(&snapshot),
    ]);
    assert!(backed_up.status.success(), "{}", stderr(&backed_up));
    let restored_dir = tmp.path().join("restored");
    let restored = xlreg(&[
        "admin",
        "restore",
        s(&snapshot),
        "--data-dir",
        s(&restored_dir),
    ]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let from_backup = Server::start(&restored_dir, &[]);
    assert_eq!(current_regcred(&from_backup).id, before.id);
    assert_eq!(current_regcred(&from_backup).comms_key, before.comms_key);
    assert_eq!(from_backup.stop(), Some(0));
    // An online backup through the running server's control socket carries the identity
    // it serves (its keys are in etcd, not in its directory) and restores the same way.
    let online = tmp.path().join("online.snap");
    let backed_up = xlreg(&[
        "admin",
        "backup",
        "--data-dir",
        s(&server.dir),
        "-o",
        s(&online),
    ]);
    assert!(backed_up.status.success(), "{}", stderr(&backed_up));
    let online_dir = tmp.path().join("restored-online");
    let restored = xlreg(&["admin", "restore", s(&online), "--data-dir", s(&online_dir)]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let from_online = Server::start(&online_dir, &[]);
    assert_eq!(current_regcred(&from_online).id, before.id);
    assert_eq!(current_regcred(&from_online).comms_key, before.comms_key);
    assert_eq!(current_regcred(&from_online).handshake, before.handshake);
    assert_eq!(from_online.stop(), Some(0));
    assert_eq!(server.stop(), Some(0));

    // And back into an empty directory (a non-empty one is refused).
    let occupied = migrate(&["--to-data-dir", s(&sled_dir)]);
    assert!(!occupied.status.success());
    let back_dir = tmp.path().join("back");
    let back = migrate(&["--to-data-dir", s(&back_dir)]);
    assert!(back.status.success(), "{}", stderr(&back));
    let sled_again = Server::start(&back_dir, &[]);
    let again = current_regcred(&sled_again);
    assert_eq!(again.id, before.id);
    assert_eq!(again.comms_key, before.comms_key);
    assert_eq!(again.handshake, before.handshake);
    let info = xlreg(&["admin", "clusters", "--data-dir", s(&back_dir), "--json"]);
    assert!(
        common::stdout(&info).contains("moved"),
        "{}",
        common::stdout(&info)
    );
}
