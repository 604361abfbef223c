//! `xlreg admin` against real registries: every command offline and through a running
//! daemon's control socket (same output), backup during concurrent joins, restore (and
//! `serve` on the result), export -> import -> export, delete-cluster, `serve
//! --cluster-ttl`, and the control socket's owner-only rule.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{node, stderr, stdout, xlreg, xlreg_bin, Server};
use serde_json::Value;
use xlreg::client::ClusterView;
use xlreg::id::Id;
use xlreg::store::ClusterRef;

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `xlreg admin ARGS --data-dir DIR`.
fn admin(args: &[&str], dir: &Path) -> Output {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", text(dir)]);
    xlreg(&all)
}

/// Runs `xlreg admin ARGS --data-dir DIR`, which must succeed, and returns its stdout.
fn admin_ok(args: &[&str], dir: &Path) -> String {
    let out = admin(args, dir);
    assert!(
        out.status.success(),
        "xlreg admin {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < until,
            "gave up after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `populate` made.
struct Populated {
    /// Node IDs, in key pool order.
    nodes: Vec<Id>,
    /// The full 3-slot cluster "alpha" (nodes 0, 1, 2).
    alpha: Id,
}

/// Registers six nodes and makes three clusters: "alpha" (3 slots, full: nodes 0-2), "beta"
/// (4 slots, 2 endpoints each: nodes 3-4) and "spare" (empty). Node 5 is in no cluster.
async fn populate(server: &Server) -> Populated {
    let mut nodes = Vec::new();
    let mut alpha = None;
    for i in 0..6 {
        let endpoints = if (3..5).contains(&i) { 2 } else { 1 };
        let mut client = server.client().await;
        nodes.push(
            client
                .register(&node(i, &format!("node-{i}"), endpoints))
                .await
                .unwrap(),
        );
        if i == 0 {
            alpha = Some(client.create("alpha", 3, 1).await.unwrap().id);
            client.create("beta", 4, 2).await.unwrap();
            client.create("spare", 2, 1).await.unwrap();
        }
        let cluster = match i {
            0..=2 => Some("alpha"),
            3 | 4 => Some("beta"),
            _ => None,
        };
        if let Some(name) = cluster {
            client
                .join(Some(&ClusterRef::Name(name.into())))
                .await
                .unwrap();
        }
        client.bye().await.unwrap();
    }
    Populated {
        nodes,
        alpha: alpha.unwrap(),
    }
}

/// A populated registry served from a fresh `TEMP/data`.
async fn populated_server() -> (tempfile::TempDir, PathBuf, Server, Populated) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let server = Server::start(&dir, &[]);
    let populated = populate(&server).await;
    (root, dir, server, populated)
}

/// Registers key pair `key` as `name` and lists `cluster`.
async fn list_as(server: &Server, key: usize, name: &str, cluster: &str) -> ClusterView {
    let mut client = server.client().await;
    client.register(&node(key, name, 1)).await.unwrap();
    let view = client
        .get_cluster(
            Some(&ClusterRef::Name(cluster.into())),
            None,
            Duration::ZERO,
        )
        .await
        .unwrap();
    client.bye().await.unwrap();
    view
}

/// Every read command, each as a table and as JSON.
fn read_commands(p: &Populated) -> Vec<Vec<String>> {
    let alpha = p.alpha.to_hex();
    let n0 = p.nodes[0].to_hex();
    let n5 = p.nodes[5].to_hex();
    let mut commands: Vec<Vec<String>> = Vec::new();
    for json in [false, true] {
        for args in [
            vec!["info"],
            vec!["clusters"],
            vec!["cluster", "alpha"],
            vec!["cluster", &alpha],
            vec!["cluster", "beta"],
            vec!["nodes"],
            vec!["node", &n0],
            vec!["node", &n5],
            vec!["verify"],
        ] {
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            if json {
                args.push("--json".into());
            }
            commands.push(args);
        }
    }
    commands.push(vec!["export".into()]);
    commands
}

fn run_all(commands: &[Vec<String>], dir: &Path) -> Vec<String> {
    commands
        .iter()
        .map(|args| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_ok(&args, dir)
        })
        .collect()
}

#[tokio::test]
async fn every_read_command_gives_the_same_output_online_and_offline() {
    let (_root, dir, server, populated) = populated_server().await;
    // Restart once: sled preallocates its first segment when it reopens a directory, which
    // would otherwise make the first offline open's disk use differ from the daemon's.
    assert_eq!(server.stop(), Some(0));
    let server = Server::start(&dir, &[]);

    let socket = dir.join("control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let commands = read_commands(&populated);
    let online = run_all(&commands, &dir);
    let log = server.log_text();
    assert!(log.contains("admin request"), "{log}");
    let online_missing = admin(&["cluster", "nope"], &dir);
    assert_eq!(server.stop(), Some(0));
    assert!(
        !socket.exists(),
        "the daemon left its control socket behind"
    );

    let offline = run_all(&commands, &dir);
    for ((args, on), off) in commands.iter().zip(&online).zip(&offline) {
        assert_eq!(
            on,
            off,
            "`admin {}` differs online and offline",
            args.join(" ")
        );
    }
    let offline_missing = admin(&["cluster", "nope"], &dir);
    assert!(!online_missing.status.success() && !offline_missing.status.success());
    assert_eq!(stderr(&online_missing), "xlreg: no such cluster: nope\n");
    assert_eq!(stderr(&offline_missing), stderr(&online_missing));

    // And the output says what the registry holds.
    let info = json(&admin_ok(&["info", "--json"], &dir));
    assert_eq!(info["name"], "xlreg");
    assert_eq!(info["schema_version"], 2);
    assert_eq!(
        (&info["nodes"], &info["clusters"], &info["members"]),
        (&Value::from(6), &Value::from(3), &Value::from(5))
    );
    assert!(info["disk_bytes"].as_u64().unwrap() > 0);
    let clusters = json(&admin_ok(&["clusters", "--json"], &dir));
    let summary: Vec<(String, u64, u64)> = clusters
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["member_count"].as_u64().unwrap(),
                c["max_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("alpha".into(), 3, 3),
            ("beta".into(), 2, 4),
            ("spare".into(), 0, 2)
        ]
    );
    let table = admin_ok(&["clusters"], &dir);
    assert!(table.starts_with("NAME   ID"), "{table}");
    assert!(table.contains("3/3"), "{table}");

    let alpha = json(&admin_ok(&["cluster", "alpha", "--json"], &dir));
    let members = alpha["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (slot, member) in members.iter().enumerate() {
        assert_eq!(member["slot"], slot);
        assert_eq!(member["id"], populated.nodes[slot].to_hex());
        let (comms, sig) = common::key_pair(slot);
        assert_eq!(
            member["sig_key_fingerprint"],
            sig.public_key().fingerprint()
        );
        assert_eq!(
            member["comms_key_fingerprint"],
            comms.public_key().fingerprint()
        );
    }
    let n0 = json(&admin_ok(
        &["node", &populated.nodes[0].to_hex(), "--json"],
        &dir,
    ));
    assert_eq!(n0["clusters"][0]["cluster"], "alpha");
    let verify = json(&admin_ok(&["verify", "--json"], &dir));
    assert_eq!(verify["ok"], true);
    let export = json(&admin_ok(&["export"], &dir));
    assert_eq!(export["format"], "xlreg-export");
    assert_eq!(export["nodes"].as_array().unwrap().len(), 6);
    assert!(!admin_ok(&["export"], &dir).contains("PRIVATE"));
}

/// Appends `(cluster, node)` to `acked` once the registry has acknowledged the join.
async fn join_all(
    server_regcred: xlreg::regcred::RegCred,
    index: usize,
    clusters: Vec<String>,
    acked: Arc<Mutex<Vec<(String, Id)>>>,
) {
    let mut client =
        xlreg::client::Client::connect(&server_regcred, xlreg::client::DEFAULT_TIMEOUT)
            .await
            .unwrap();
    let id = client
        .register(&node(index, &format!("joiner-{index}"), 1))
        .await
        .unwrap();
    for name in clusters {
        client
            .join(Some(&ClusterRef::Name(name.clone())))
            .await
            .unwrap();
        acked.lock().unwrap().push((name, id.clone()));
    }
    client.bye().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_concurrent_joins_restores_every_acknowledged_join() {
    const JOINERS: usize = 16;
    const CLUSTERS: usize = 8;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let server = Server::start(&dir, &[]);
    // Make the keys first, so the joins race the backup rather than key generation.
    for i in 0..JOINERS {
        common::key_pair(i);
    }
    let names: Vec<String> = (0..CLUSTERS).map(|c| format!("load-{c}")).collect();
    {
        let mut client = server.client().await;
        client.register(&node(0, "creator", 1)).await.unwrap();
        for name in &names {
            client.create(name, 64, 1).await.unwrap();
        }
        client.bye().await.unwrap();
    }

    let acked = Arc::new(Mutex::new(Vec::new()));
    let joiners: Vec<_> = (0..JOINERS)
        .map(|i| {
            let mut order = names.clone();
            order.rotate_left(i % CLUSTERS);
            tokio::spawn(join_all(
                server.regcred.clone(),
                i,
                order,
                Arc::clone(&acked),
            ))
        })
        .collect();
    let total = JOINERS * CLUSTERS;
    wait_until(Duration::from_secs(60), "the first joins", || {
        acked.lock().unwrap().len() >= total / 8
    });
    // Every join acknowledged before the backup begins must be in it.
    let before: Vec<(String, Id)> = acked.lock().unwrap().clone();
    let snapshot = root.path().join("during.snap");
    let backup = {
        let (dir, snapshot) = (dir.clone(), snapshot.clone());
        tokio::task::spawn_blocking(move || admin(&["backup", "-o", text(&snapshot)], &dir))
            .await
            .unwrap()
    };
    assert!(
        backup.status.success(),
        "backup failed: {}",
        stderr(&backup)
    );
    eprintln!(
        "{} of {total} joins acknowledged before the backup began, {} when it ended",
        before.len(),
        acked.lock().unwrap().len()
    );
    for joiner in joiners {
        joiner.await.unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), total);
    let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let restored = root.path().join("restored");
    let out = admin(&["restore", text(&snapshot)], &restored);
    assert!(
        out.status.success(),
        "restore failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let verify = admin(&["verify"], &restored);
    assert!(
        verify.status.success(),
        "verify failed: {}",
        stdout(&verify)
    );

    let export = json(&admin_ok(&["export"], &restored));
    let mut restored_joins = BTreeSet::new();
    for cluster in export["clusters"].as_array().unwrap() {
        for member in cluster["members"].as_array().unwrap() {
            restored_joins.insert((
                cluster["name"].as_str().unwrap().to_string(),
                member["node_id"].as_str().unwrap().to_string(),
            ));
        }
    }
    for (cluster, node) in &before {
        assert!(
            restored_joins.contains(&(cluster.clone(), node.to_hex())),
            "join of {node} to {cluster}, acknowledged before the backup, is missing"
        );
    }

    // The restored registry starts with the same identity and keys.
    let original = server.regcred.clone();
    assert_eq!(server.stop(), Some(0));
    let revived = Server::start(&restored, &[]);
    assert_eq!(revived.regcred.id, original.id);
    assert_eq!(revived.regcred.name, original.name);
    assert_eq!(revived.regcred.comms_key, original.comms_key);
    assert_eq!(revived.regcred.sig_key, original.sig_key);
    // Clients holding the original regCred's keys reach it.
    let view = list_as(&revived, 0, "checker", "load-0").await;
    let load0_before = before.iter().filter(|(c, _)| c == "load-0").count();
    assert!(view.members.len() >= load0_before);
    assert_eq!(revived.stop(), Some(0));
}

#[tokio::test]
async fn restore_gives_a_registry_serve_starts_on_with_identical_contents() {
    let (root, dir, server, _) = populated_server().await;
    let snapshot = root.path().join("s.snap");
    let backup_out = admin_ok(&["backup", "-o", text(&snapshot)], &dir);
    assert!(
        backup_out.contains("6 nodes, 3 clusters, 5 members"),
        "{backup_out}"
    );
    let exported = admin_ok(&["export"], &dir);
    let original = server.regcred.clone();
    assert_eq!(server.stop(), Some(0));

    // Refusals first: each leaves the target as it was.
    let occupied = root.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep-me"), b"x").unwrap();
    let out = admin(&["restore", text(&snapshot)], &occupied);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let entries: Vec<_> = std::fs::read_dir(&occupied).unwrap().collect();
    assert_eq!(entries.len(), 1);

    let bytes = std::fs::read(&snapshot).unwrap();
    let target = root.path().join("target");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (name, damaged) in [
        ("flipped", flipped),
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
    ] {
        let path = root.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        let out = admin(&["restore", text(&path)], &target);
        assert!(!out.status.success(), "{name} snapshot was restored");
        assert!(
            stderr(&out).contains("checksum mismatch"),
            "{name}: {}",
            stderr(&out)
        );
        assert!(!target.exists(), "{name}: restore left files behind");
    }
    let not_a_snapshot = admin(
        &["restore", text(&root.path().join("occupied/keep-me"))],
        &target,
    );
    assert!(stderr(&not_a_snapshot).contains("not an xlreg snapshot"));

    // Into an empty directory: identical contents, offline and served.
    std::fs::create_dir(&target).unwrap();
    let out = admin_ok(&["restore", text(&snapshot)], &target);
    assert!(out.contains("6 nodes, 3 clusters, 5 members"), "{out}");
    for key in ["registry-comms.pem", "registry-sig.pem"] {
        assert_eq!(
            std::fs::read(target.join(key)).unwrap(),
            std::fs::read(dir.join(key)).unwrap()
        );
        let mode = std::fs::metadata(target.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(admin_ok(&["export"], &target), exported);
    let revived = Server::start(&target, &[]);
    assert_eq!(revived.regcred.id, original.id);
    assert_eq!(revived.regcred.comms_key, original.comms_key);
    assert_eq!(revived.regcred.sig_key, original.sig_key);
    assert_eq!(admin_ok(&["export"], &target), exported);
    admin_ok(&["verify"], &target);
    // It serves: a known node registers again and sees its cluster.
    let view = list_as(&revived, 0, "node-0", "alpha").await;
    assert_eq!(view.members.len(), 3);
    assert_eq!(revived.stop(), Some(0));
}

#[tokio::test]
async fn export_import_export_is_identical() {
    let (root, dir, server, _) = populated_server().await;
    let file = root.path().join("export.json");
    admin_ok(&["export", "-o", text(&file)], &dir);
    let original_id = server.regcred.id.clone();
    let original_sig = server.regcred.sig_key.clone();
    assert_eq!(server.stop(), Some(0));
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(admin_ok(&["export"], &dir), exported);

    // A damaged document is refused and nothing is created.
    let bad = root.path().join("bad.json");
    std::fs::write(&bad, exported.replacen("\"alpha\"", "\"9alpha\"", 1)).unwrap();
    let copy = root.path().join("copy");
    let out = admin(&["import", text(&bad)], &copy);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must start with a letter"),
        "{}",
        stderr(&out)
    );
    assert!(!copy.exists());
    let out = admin(&["import", text(&file)], &dir);
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));

    let out = admin_ok(&["import", text(&file)], &copy);
    assert!(
        out.contains("imported 6 nodes, 3 clusters and 5 members"),
        "{out}"
    );
    assert_eq!(admin_ok(&["export"], &copy), exported);
    admin_ok(&["verify"], &copy);

    // It serves, under the same name and ID with new keys.
    let imported = Server::start(&copy, &[]);
    assert_eq!(imported.regcred.id, original_id);
    assert_ne!(imported.regcred.sig_key, original_sig);
    assert_eq!(admin_ok(&["export"], &copy), exported);
    let view = list_as(&imported, 1, "node-1", "alpha").await;
    assert_eq!(view.members[1].name, "node-1");
    assert_eq!(imported.stop(), Some(0));
}

/// Runs the CLI with a pseudo-terminal as its stdin, typing `input` into it.
fn xlreg_on_a_terminal(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    let (mut master, slave) = common::openpty();
    let child = std::process::Command::new(xlreg_bin())
        .args(args)
        .env_remove("XLREG_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdin(slave)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    master.write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(master);
    out
}

#[tokio::test]
async fn delete_cluster_frees_the_name_and_keeps_the_nodes() {
    let (_root, dir, server, populated) = populated_server().await;
    // A running registry is asked through its control socket, with the same confirmation
    // (tests/cli_ops.rs deletes online); here the rest runs on the stopped registry.
    let out = admin(&["delete-cluster", "alpha"], &dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("without confirmation"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.stop(), Some(0));

    // No terminal and no --yes: refused.
    let out = admin(&["delete-cluster", "alpha"], &dir);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without confirmation"),
        "{}",
        stderr(&out)
    );
    // On a terminal: "n" keeps it, "y" deletes it.
    let args = ["admin", "delete-cluster", "alpha", "--data-dir", text(&dir)];
    let out = xlreg_on_a_terminal(&args, b"n\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Delete cluster alpha"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("not deleted"), "{}", stderr(&out));
    assert_eq!(json(&admin_ok(&["info", "--json"], &dir))["clusters"], 3);
    let out = xlreg_on_a_terminal(&args, b"y\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3 membership(s) removed"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&admin(&["cluster", "alpha"], &dir)).contains("no such cluster"));

    // By ID, with --yes.
    let beta = json(&admin_ok(&["cluster", "beta", "--json"], &dir));
    let beta_id = beta["cluster"]["id"].as_str().unwrap().to_string();
    admin_ok(&["delete-cluster", &beta_id, "--yes"], &dir);
    let info = json(&admin_ok(&["info", "--json"], &dir));
    assert_eq!(
        (&info["nodes"], &info["clusters"], &info["members"]),
        (&Value::from(6), &Value::from(1), &Value::from(0))
    );
    admin_ok(&["verify"], &dir);
    let out = admin(&["delete-cluster", "alpha", "--yes"], &dir);
    assert!(stderr(&out).contains("no such cluster: alpha"));

    // The name is free again, and the old members can form it anew.
    let server = Server::start(&dir, &[]);
    let mut client = server.client().await;
    client.register(&node(0, "node-0", 1)).await.unwrap();
    let again = client.create("alpha", 2, 1).await.unwrap();
    assert_ne!(again.id, populated.alpha);
    assert_eq!(again.size, 0);
    let (_, slot) = client.join(None).await.unwrap();
    assert_eq!(slot, 0);
    client.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test]
async fn cluster_ttl_removes_untouched_clusters_and_logs_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let server = Server::start(&dir, &["--cluster-ttl", "1s"]);
    let mut client = server.client().await;
    let id = client.register(&node(0, "short-lived", 1)).await.unwrap();
    client.create("throwaway", 2, 1).await.unwrap();
    client.join(None).await.unwrap();
    client.create("other", 2, 1).await.unwrap();
    client.bye().await.unwrap();

    wait_until(Duration::from_secs(60), "the clusters to expire", || {
        json(&admin_ok(&["clusters", "--json"], &dir))
            .as_array()
            .is_some_and(|c| c.is_empty())
    });
    wait_until(Duration::from_secs(30), "the expiry log lines", || {
        let log = server.log_text();
        log.contains("cluster expired: removed")
            && log.contains("throwaway")
            && log.contains("other")
    });
    // The nodes stay.
    let nodes = json(&admin_ok(&["nodes", "--json"], &dir));
    assert_eq!(nodes[0]["id"], id.to_hex());
    admin_ok(&["verify"], &dir);
    assert_eq!(server.stop(), Some(0));
    // Removals are durable.
    assert_eq!(admin_ok(&["clusters"], &dir), "no clusters\n");

    let out = xlreg(&["serve", "--data-dir", text(&dir), "--cluster-ttl", "soon"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a duration"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_control_socket_serves_only_its_owner() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a command as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let server = Server::start(&dir, &[]);
    // Even if the socket's mode were loosened, the daemon refuses other users.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("control.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let binary = root.path().join("xlreg");
    std::fs::copy(xlreg_bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();

    use std::os::unix::process::CommandExt as _;
    let out = std::process::Command::new(&binary)
        .args(["admin", "info", "--data-dir", text(&dir)])
        .env_remove("XLREG_DATA_DIR")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "another user was served: {}",
        stdout(&out)
    );
    // The client refuses a daemon that is not its own user's...
    assert!(stderr(&out).contains("served by uid 0"), "{}", stderr(&out));
    // ...and the daemon refused the connection on its side.
    wait_until(Duration::from_secs(30), "the daemon's refusal", || {
        let log = server.log_text();
        log.contains("control connection refused") && log.contains("65534")
    });
    // Its owner is still served.
    admin_ok(&["info"], &dir);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn verify_exits_non_zero_listing_what_is_wrong() {
    use xlreg::store::{ClusterRecord, MemberRecord, NodeRecord, Snapshot, Store};
    // A store no transaction could produce: a cluster over its maximum whose second member
    // is not a registered node, and a name index that misses it.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("damaged");
    let id = |b: u8| Id::from_bytes(&[b; 32]).unwrap();
    let node = NodeRecord {
        id: id(1),
        name: "one".into(),
        attrs: 0,
        comms_key: vec![1],
        sig_key: vec![2],
        endpoints: vec!["127.0.0.1:1".into()],
        registered_at_ms: 0,
        updated_at_ms: 0,
    };
    let member = |slot: u32, node: u8| MemberRecord {
        slot,
        node_id: id(node),
        name: format!("m{slot}"),
        attrs: 0,
        endpoints: vec!["127.0.0.1:1".into()],
        joined_at_ms: 0,
    };
    let cluster = ClusterRecord {
        admission: xlreg::model::Admission::open(),
        id: id(9),
        name: "crowded".into(),
        attrs: 0,
        max_size: 2,
        endpoint_count: 1,
        created_at_ms: 0,
        touched_at_ms: 0,
        members: vec![member(0, 1), member(1, 2), member(2, 1)],
    };
    let mut snapshot = Snapshot::from_records(None, &[node], &[cluster]).unwrap();
    snapshot
        .trees
        .get_mut(&b"cluster_names"[..])
        .unwrap()
        .clear();
    drop(Store::create_from_snapshot(&dir, &snapshot).unwrap());

    let out = admin(&["verify"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    for expected in [
        "is over its maximum (3/2)",
        "is not a registered node",
        "holds two slots",
        "holds slot 2, beyond its maximum size 2",
        "missing from the name index",
    ] {
        assert!(report.contains(expected), "{expected:?} in {report}");
    }
    assert!(
        stderr(&out).contains("verify found 5 problem(s)"),
        "{}",
        stderr(&out)
    );
    let out = admin(&["verify", "--json"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&stdout(&out));
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 5);
}

/// `-o` names a file that is replaced atomically; a FIFO (or a device such as /dev/null, or a
/// terminal) stays what it is and gets the output, for export and for backup alike. Before,
/// the atomic rename put a regular file where the FIFO was, and `-o /dev/null` run as root
/// replaced the system's /dev/null.
#[tokio::test]
async fn export_and_backup_to_a_fifo_write_through_it_and_leave_it_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let (root, dir, server, _populated) = populated_server().await;
    for (command, magic) in [("export", &b"{"[..]), ("backup", &b"XLREGSNP"[..])] {
        let fifo = root.path().join(format!("{command}.fifo"));
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(&fifo).unwrap())
        };
        let out = admin(&[command, "-o", text(&fifo)], &dir);
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Checked before joining the reader: a FIFO replaced by a file is never opened for
        // writing, and its reader would wait for ever.
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "{command} replaced the FIFO: {kind:?}");
        let received = reader.join().unwrap();
        assert!(
            received.starts_with(magic) && received.len() > 100,
            "{command} sent {} bytes",
            received.len()
        );
        assert_eq!(
            std::fs::read_dir(root.path())
                .unwrap()
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().contains(".tmp-"))
                .count(),
            0,
            "no temporary file is left beside it"
        );
    }
    drop(server);
}
