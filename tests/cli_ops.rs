//! The command line as an operator meets it (issue 15), through the real `xlreg` binary
//! against real registries: what a stale regCred.dat or a stopped registry says, clusters
//! named by name or ID everywhere, sizes refused, exit codes, settings from the environment,
//! data directories of another user, deleting nodes and clusters while the daemon serves,
//! JSON everywhere, `ping`, Ctrl-C during a join, completions and man pages.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, xlreg, Server};
use serde_json::Value;
use xlreg::regcred::RegCred;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn init_node(dir: &Path, name: &str) {
    common::init_node(dir, name, 9000);
}

/// The arguments of `xlreg cluster join CLUSTER --wait WAIT`.
fn join_args<'a>(
    node: &'a Path,
    cluster: &'a str,
    regcred: &'a str,
    wait: &'a str,
) -> [&'a str; 9] {
    let node = s(node);
    [
        "cluster",
        "join",
        cluster,
        "--node",
        node,
        "--regcred",
        regcred,
        "--wait",
        wait,
    ]
}

/// `xlreg cluster join CLUSTER --wait WAIT --json`.
fn join_json(node: &Path, cluster: &str, regcred: &str, wait: &str) -> Output {
    let mut args = join_args(node, cluster, regcred, wait).to_vec();
    args.push("--json");
    xlreg(&args)
}

/// Starts `xlreg cluster join CLUSTER --wait 120` in the background, stderr piped.
fn spawn_join(node: &Path, cluster: &str, regcred: &str) -> std::process::Child {
    Command::new(common::xlreg_bin())
        .args(join_args(node, cluster, regcred, "120"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited, not killed")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: not JSON: {}", stdout(output)))
}

/// Runs the CLI with extra environment variables.
fn xlreg_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(common::xlreg_bin())
        .args(args)
        .env_remove("XLREG_DATA_DIR")
        .env_remove("XLREG_REGCRED")
        .env_remove("XLREG_NODE")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run xlreg")
}

/// A regCred.dat naming `endpoint` with `key_from`'s keys.
fn regcred_for(endpoint: &str, key_from: &RegCred, path: &Path) {
    let mut cred = key_from.clone();
    cred.endpoints = vec![endpoint.to_string()];
    cred.write(path).unwrap();
}

/// Creates cluster `name` of `size` and returns its ID.
fn create(regcred: &str, name: &str, size: &str) -> String {
    let created = xlreg(&[
        "cluster",
        "create",
        name,
        "--open",
        "--size",
        size,
        "--regcred",
        regcred,
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    stdout(&created).trim().to_string()
}

#[test]
fn a_stale_regcred_is_named_at_once_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let live = Server::start(&dir.path().join("live"), &[]);
    // A registry of its own identity, not the template every test server shares.
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    xlreg::registry::create_key_files(&dir.path().join("other")).unwrap();
    let rebuilt = Server::start(&dir.path().join("other"), &[]);
    // The live registry's endpoint with another registry's key: what a client holds after
    // the registry was rebuilt or imported into a new data directory.
    let stale = dir.path().join("stale-regCred.dat");
    regcred_for(&live.endpoint(), &rebuilt.regcred, &stale);

    for args in [
        vec!["cluster", "members", "web", "--regcred", s(&stale)],
        vec!["ping", "--regcred", s(&stale)],
    ] {
        let started = Instant::now();
        let output = xlreg(&args);
        let err = stderr(&output);
        assert_eq!(code(&output), 5, "{args:?}: unauthorized: {err}");
        assert!(
            err.contains(&format!(
                "the registry at {} did not accept this regCred.dat's key: fetch the current one",
                live.endpoint()
            )),
            "{err}"
        );
        assert!(!err.contains("retrying"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_registry_at_its_per_address_limit_is_not_taken_for_one_that_refused_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-connections-per-ip", "1"]);
    // This address's one connection is taken: every further one is closed on arrival,
    // before its hello is read, as a refused key's hello would be after it.
    let held = std::net::TcpStream::connect(server.endpoint()).unwrap();
    let output = xlreg(&[
        "ping",
        "--retry-for",
        "1",
        "--regcred",
        s(&server.regcred_path),
    ]);
    let err = stderr(&output);
    assert!(
        !err.contains("did not accept this regCred.dat's key"),
        "{err}"
    );
    assert!(err.contains("the registry closed the connection"), "{err}");
    assert_eq!(code(&output), 6, "unreachable, not unauthorized: {err}");
    drop(held);
    // With the connection given back, the same command goes through.
    let output = xlreg(&["ping", "--regcred", s(&server.regcred_path)]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn nothing_listening_says_so_at_once_unless_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = dir.path().join("regCred.dat");
    std::fs::copy(&server.regcred_path, &regcred).unwrap();
    let endpoint = server.endpoint();
    assert_eq!(server.stop(), Some(0));

    let started = Instant::now();
    let output = xlreg(&["cluster", "members", "web", "--regcred", s(&regcred)]);
    let err = stderr(&output);
    assert_eq!(code(&output), 6, "unreachable: {err}");
    assert!(
        err.contains(&format!("is `xlreg serve` running at {endpoint}?")),
        "{err}"
    );
    assert!(!err.contains("retrying"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A script that starts alongside the registry asks for retries.
    let output = xlreg(&["ping", "--regcred", s(&regcred), "--retry-for", "1"]);
    assert_eq!(code(&output), 6);
    assert!(stderr(&output).contains("retrying"), "{}", stderr(&output));
}

#[test]
fn every_command_naming_a_cluster_takes_its_name_or_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    let id = create(&regcred, "pair", "2");
    assert_eq!(id.len(), 64);
    let node = dir.path().join("n");
    init_node(&node, "n");

    let joined = join_json(&node, &id, &regcred, "0");
    assert!(joined.status.success(), "{}", stderr(&joined));
    assert_eq!(json(&joined)["cluster"]["name"], "pair");

    for target in [&id, "pair"] {
        let listed = xlreg(&[
            "cluster",
            "members",
            target,
            "--regcred",
            &regcred,
            "--json",
        ]);
        assert!(listed.status.success(), "{}", stderr(&listed));
        assert_eq!(json(&listed)["cluster"]["id"], id.as_str());
        let admin = xlreg(&[
            "admin",
            "cluster",
            target,
            "--data-dir",
            s(&server.dir),
            "--json",
        ]);
        assert!(admin.status.success(), "{}", stderr(&admin));
        assert_eq!(json(&admin)["cluster"]["id"], id.as_str());
    }
}

#[test]
fn out_of_range_sizes_and_frames_are_usage_errors_that_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    for size in ["1", "100", "0"] {
        let output = xlreg(&[
            "cluster",
            "create",
            "x",
            "--size",
            size,
            "--regcred",
            &regcred,
        ]);
        assert_eq!(code(&output), 2, "--size {size}: {}", stderr(&output));
        assert!(stderr(&output).contains("2..=64"), "{}", stderr(&output));
    }
    let output = xlreg(&[
        "cluster",
        "create",
        "x",
        "--size",
        "3",
        "--endpoints",
        "9",
        "--regcred",
        &regcred,
    ]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("9 is not in 1..=8"),
        "{}",
        stderr(&output)
    );
    let info = xlreg(&["admin", "info", "--data-dir", s(&server.dir), "--json"]);
    assert_eq!(json(&info)["clusters"], 0, "nothing was created");

    let fresh = dir.path().join("fresh");
    let output = xlreg(&["serve", "--data-dir", s(&fresh), "--max-frame", "2000000"]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1024..=1048576"),
        "{}",
        stderr(&output)
    );
    assert!(!fresh.exists());
}

#[test]
fn exit_codes_tell_the_kinds_of_failure_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    create(&regcred, "duo", "2");
    let nodes: Vec<_> = (0..3).map(|i| dir.path().join(format!("n{i}"))).collect();
    for (i, node) in nodes.iter().enumerate() {
        init_node(node, &format!("n{i}"));
    }
    let join = |node: &Path, cluster: &str, wait: &str| join_json(node, cluster, &regcred, wait);
    assert_eq!(code(&join(&nodes[0], "duo", "0")), 0);
    // Waiting for a second member that does not come: a timeout.
    let waited = join(&nodes[0], "duo", "1");
    assert_eq!(code(&waited), 7, "{}", stderr(&waited));
    assert_eq!(code(&join(&nodes[1], "duo", "0")), 0);
    let full = join(&nodes[2], "duo", "0");
    assert_eq!(code(&full), 4, "full: {}", stderr(&full));
    assert!(stderr(&full).contains("full"), "{}", stderr(&full));
    let missing = join(&nodes[2], "nosuch", "0");
    assert_eq!(code(&missing), 3, "{}", stderr(&missing));
    assert_eq!(code(&xlreg(&["cluster", "create", "x"])), 2);
    assert_eq!(
        code(&xlreg(&[
            "admin",
            "info",
            "--data-dir",
            s(&dir.path().join("none"))
        ])),
        3
    );

    // Under --json the error is one JSON object on stderr, with its kind and code.
    let missing = xlreg(&[
        "cluster",
        "members",
        "nosuch",
        "--regcred",
        &regcred,
        "--json",
    ]);
    assert_eq!(code(&missing), 3);
    let error: Value = serde_json::from_str(stderr(&missing).trim()).unwrap();
    assert_eq!(error["kind"], "not_found");
    assert_eq!(error["exit_code"], 3);
    assert!(error["error"].as_str().unwrap().contains("nosuch"));

    // The codes are listed in --help.
    let help = stdout(&xlreg(&["--help"]));
    assert!(
        help.contains("5 unauthorized") && help.contains("7 timeout"),
        "{help}"
    );
}

#[test]
fn client_and_serve_settings_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(common::xlreg_bin())
        .arg("serve")
        .env("XLREG_DATA_DIR", &data)
        .env("XLREG_LISTEN", &listen)
        .env("XLREG_NAME", "from-env")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let regcred = data.join("regCred.dat");
    common::wait_until("regCred.dat", Duration::from_secs(60), || {
        RegCred::read(&regcred).is_ok()
    });
    let cred = RegCred::read(&regcred).unwrap();
    assert_eq!(cred.endpoint(), listen);
    assert_eq!(cred.name, "from-env");

    let node = dir.path().join("node");
    init_node(&node, "env-node");
    let env = [("XLREG_REGCRED", s(&regcred)), ("XLREG_NODE", s(&node))];
    let registered = xlreg_env(&["register"], &env);
    assert!(registered.status.success(), "{}", stderr(&registered));
    let created = xlreg_env(
        &["cluster", "create", "envy", "--open", "--size", "2"],
        &env,
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let joined = xlreg_env(&["cluster", "join", "envy", "--wait", "0"], &env);
    assert!(joined.status.success(), "{}", stderr(&joined));
    // --node came from XLREG_NODE for create too: one node, no throwaway.
    let info = xlreg(&["admin", "info", "--data-dir", s(&data), "--json"]);
    assert_eq!(json(&info)["nodes"], 1, "{}", stdout(&info));

    let help = stdout(&xlreg(&["serve", "--help"]));
    for variable in [
        "XLREG_LISTEN",
        "XLREG_MAX_FRAME",
        "XLREG_WRITE_TIMEOUT",
        "XLREG_LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable} in {help}"
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_data_directory_of_another_user_is_refused_naming_owner_and_path() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing a directory's owner needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    assert_eq!(server.stop(), Some(0));
    let before: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let nobody = 65534;
    std::os::unix::fs::chown(&data, Some(nobody), Some(nobody)).unwrap();
    for args in [
        vec!["admin", "info"],
        vec!["admin", "delete-cluster", "x", "--yes"],
        vec!["admin", "delete-node", &"ab".repeat(32), "--yes"],
    ] {
        let mut args = args.clone();
        args.extend(["--data-dir", s(&data)]);
        let output = xlreg(&args);
        let err = stderr(&output);
        assert_eq!(code(&output), 5, "{args:?}: {err}");
        assert!(
            err.contains(&format!("{} belongs to uid {nobody}", data.display())),
            "{err}"
        );
    }
    let after: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "no file was created");
}

#[tokio::test]
async fn nodes_and_clusters_are_deleted_online_durably_and_waiters_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let regcred = s(&server.regcred_path).to_string();
    let member = dir.path().join("member");
    init_node(&member, "member");
    let loner = dir.path().join("loner");
    init_node(&loner, "loner");
    let loner_id = stdout(&xlreg(&[
        "register",
        "--node",
        s(&loner),
        "--regcred",
        &regcred,
    ]))
    .trim()
    .to_string();
    create(&regcred, "trio", "3");

    // A member waits for the cluster to complete.
    let waiter = spawn_join(&member, "trio", &regcred);
    common::wait_until("the member joined", Duration::from_secs(60), || {
        let out = xlreg(&["admin", "cluster", "trio", "--data-dir", s(&data), "--json"]);
        out.status.success()
            && json(&out)["members"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
    });
    let member_id = json(&xlreg(&[
        "admin",
        "cluster",
        "trio",
        "--data-dir",
        s(&data),
        "--json",
    ]))["members"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let admin = |args: &[&str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend(["--data-dir", s(&data)]);
        xlreg(&all)
    };
    // A member is not deleted.
    let refused = admin(&["delete-node", &member_id, "--yes"]);
    assert_eq!(code(&refused), 4, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("is a member of trio"),
        "{}",
        stderr(&refused)
    );
    // Without --yes off a terminal, nothing happens.
    let unconfirmed = admin(&["delete-node", &loner_id]);
    assert_eq!(code(&unconfirmed), 2, "{}", stderr(&unconfirmed));

    let deleted = admin(&["delete-node", &loner_id, "--yes", "--json"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(json(&deleted)["deleted"]["node"]["id"], loner_id.as_str());
    let gone = admin(&["node", &loner_id]);
    assert_eq!(code(&gone), 3, "{}", stderr(&gone));

    let started = Instant::now();
    let deleted = admin(&["delete-cluster", "trio", "--yes", "--json"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(json(&deleted)["deleted"]["cluster"]["member_count"], 1);
    // The waiter is answered at once, not after its 120 s.
    let waited = waiter.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(code(&waited), 3, "{}", stderr(&waited));
    assert!(stderr(&waited).contains("trio"), "{}", stderr(&waited));

    // Durable before answering: a crash now loses neither delete.
    server.kill();
    let info = xlreg(&["admin", "info", "--data-dir", s(&data), "--json"]);
    assert!(info.status.success(), "{}", stderr(&info));
    assert_eq!(json(&info)["clusters"], 0);
    assert_eq!(json(&info)["nodes"], 2, "the member and create's node stay");

    // Offline, the same commands work.
    let deleted = admin(&["delete-node", &member_id, "--yes"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(stdout(&deleted).contains(&format!("deleted node member ({member_id})")));
    // What is left is the throwaway identity `cluster create` registered without --node.
    let swept = admin(&["delete-node", "--throwaway", "--yes", "--json"]);
    assert!(swept.status.success(), "{}", stderr(&swept));
    let swept = json(&swept);
    let names: Vec<_> = swept["deleted"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 1, "{swept}");
    assert!(names[0].starts_with("xlreg-cli-"), "{swept}");
    let info = json(&admin(&["info", "--json"]));
    assert_eq!(info["nodes"], 0);
}

#[test]
fn every_command_speaks_json_with_one_schema_per_object() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let regcred = s(&server.regcred_path).to_string();
    let node = dir.path().join("node");
    let inited = xlreg(&[
        "node",
        "init",
        "--dir",
        s(&node),
        "--name",
        "j",
        "--endpoint",
        "127.0.0.1:1",
        "--json",
    ]);
    let inited = json(&inited);
    let registered = json(&xlreg(&[
        "register",
        "--node",
        s(&node),
        "--regcred",
        &regcred,
        "--json",
    ]));
    let id = registered["node"]["id"].as_str().unwrap().to_string();
    let created = json(&xlreg(&[
        "cluster",
        "create",
        "solo",
        "--open",
        "--size",
        "2",
        "--regcred",
        &regcred,
        "--node",
        s(&node),
        "--json",
    ]));
    let joined = json(&join_json(&node, "solo", &regcred, "0"));
    let members = json(&xlreg(&[
        "cluster",
        "members",
        "solo",
        "--regcred",
        &regcred,
        "--json",
        "--node",
        s(&node),
    ]));
    let admin_cluster = json(&xlreg(&[
        "admin",
        "cluster",
        "solo",
        "--data-dir",
        s(&data),
        "--json",
    ]));
    let admin_node = json(&xlreg(&[
        "admin",
        "node",
        &id,
        "--data-dir",
        s(&data),
        "--json",
    ]));
    for cluster in [
        &created["cluster"],
        &joined["cluster"],
        &members["cluster"],
        &admin_cluster["cluster"],
    ] {
        for field in [
            "name",
            "id",
            "max_size",
            "endpoint_count",
            "attrs",
            "member_count",
        ] {
            assert!(!cluster[field].is_null(), "{field} in {cluster}");
        }
    }
    assert_eq!(
        members["cluster"]["member_count"],
        admin_cluster["cluster"]["member_count"]
    );
    // One fingerprint format: hex SHA-256 of the DER key, wherever a key is shown.
    let fingerprint = inited["node"]["sig_key_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(members["members"][0]["sig_key_fingerprint"], fingerprint);
    assert_eq!(
        admin_cluster["members"][0]["sig_key_fingerprint"],
        fingerprint
    );
    assert_eq!(admin_node["node"]["sig_key_fingerprint"], fingerprint);

    let snapshot = dir.path().join("snap");
    let backup = json(&xlreg(&[
        "admin",
        "backup",
        "--data-dir",
        s(&data),
        "-o",
        s(&snapshot),
        "--json",
    ]));
    assert_eq!(backup["snapshot"]["clusters"], 1);
    let export = dir.path().join("export.json");
    let exported = json(&xlreg(&[
        "admin",
        "export",
        "--data-dir",
        s(&data),
        "-o",
        s(&export),
        "--json",
    ]));
    assert_eq!(exported["exported"]["clusters"], 1);
    drop(server);
    let restored = json(&xlreg(&[
        "admin",
        "restore",
        s(&snapshot),
        "--data-dir",
        s(&dir.path().join("restored")),
        "--json",
    ]));
    assert_eq!(restored["restored"]["snapshot"]["nodes"], 1);
    let imported = json(&xlreg(&[
        "admin",
        "import",
        s(&export),
        "--data-dir",
        s(&dir.path().join("imported")),
        "--json",
    ]));
    assert_eq!(imported["imported"]["members"], 1);
}

#[test]
fn ping_checks_the_registry_and_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--name", "pinged"]);
    let regcred = s(&server.regcred_path).to_string();
    let text = xlreg(&["ping", "--regcred", &regcred]);
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("registry pinged"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("round trip"), "{}", stdout(&text));
    let pinged = json(&xlreg(&["ping", "--regcred", &regcred, "--json"]));
    assert_eq!(pinged["name"], "pinged");
    assert_eq!(pinged["id"], server.regcred.id.to_hex());
    assert!(pinged["round_trip_ms"].as_f64().unwrap() > 0.0);
    let info = json(&xlreg(&["admin", "info", "--data-dir", s(&data), "--json"]));
    assert_eq!(info["nodes"], 0, "ping registers nothing");
}

#[test]
fn ctrl_c_during_a_join_says_where_the_node_stands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    create(&regcred, "slow", "3");
    let node = dir.path().join("n");
    init_node(&node, "n");
    let mut child = spawn_join(&node, "slow", &regcred);
    // Wait until it reports progress, then interrupt it.
    let mut err = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("waiting for cluster") {
        use std::io::Read as _;
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "stderr closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(
        rest.contains("interrupted: the node is a member of cluster slow (slot 0); the cluster is incomplete (1/3 members)"),
        "{rest}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let output = xlreg(&["completions", shell]);
        assert!(output.status.success(), "{}", stderr(&output));
        let script = stdout(&output);
        assert!(
            script.contains("delete-node") && script.contains("retry-for"),
            "{shell}"
        );
    }
    assert_eq!(code(&xlreg(&["completions", "tcsh"])), 2);
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let output = xlreg(&["man", "--dir", s(&man)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let page = std::fs::read_to_string(man.join("xlreg-serve.1")).unwrap();
    assert!(page.contains("XLREG_LISTEN"), "{page}");
    assert!(man.join("xlreg.1").is_file());
    assert!(man.join("xlreg-admin-delete-cluster.1").is_file());
}

#[test]
fn bench_removes_what_it_registered_when_given_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let output = xlreg(&[
        "bench",
        "--regcred",
        s(&server.regcred_path),
        "--sessions",
        "4",
        "--clients",
        "4",
        "--cluster-size",
        "2",
        "--identities",
        "2",
        "--cleanup-data-dir",
        s(&data),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!(report["removed"]["clusters"], 2, "{report}");
    assert_eq!(report["removed"]["nodes"], 4, "{report}");
    let info = json(&xlreg(&["admin", "info", "--data-dir", s(&data), "--json"]));
    assert_eq!(
        (info["nodes"].clone(), info["clusters"].clone()),
        (0.into(), 0.into())
    );
}

#[tokio::test]
async fn metrics_include_request_latency_and_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let mut client = server.client().await;
    client.register(&common::node(0, "timed", 1)).await.unwrap();
    client.bye().await.unwrap();
    let text = common::wait_for_metric(
        &server.metrics_addr(),
        r#"xlreg_request_duration_seconds_count{op="Member",result="ok"}"#,
        1.0,
    );
    assert!(common::metric(&text, "xlreg_process_cpu_seconds").is_some_and(|v| v >= 0.0));
    for series in [
        "xlreg_process_resident_memory_bytes",
        "xlreg_process_open_fds",
        "xlreg_process_start_time_seconds",
        "xlreg_store_size_bytes",
    ] {
        assert!(
            common::metric(&text, series).is_some_and(|v| v > 0.0),
            "{series} in\n{text}"
        );
    }
}

#[test]
fn a_fatal_serve_error_is_one_json_line_under_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let output = xlreg(&[
        "serve",
        "--data-dir",
        s(&dir.path().join("data")),
        "--listen",
        &listen,
        "--log-format",
        "json",
    ]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let last = stderr(&output)
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let error: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(
        error["error"].as_str().unwrap().contains(&listen),
        "{error}"
    );
    assert_eq!(error["exit_code"], 1);
}

/// `xlreg --help` written to a pseudo-terminal, as a person sees it; `env` is added.
fn help_on_a_terminal(env: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Read as _;
    let (mut master, slave) = common::openpty();
    let mut child = Command::new(common::xlreg_bin())
        .arg("--help")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(slave);
    let mut text = Vec::new();
    // Once the child has exited and closed the terminal, reading the master ends in EIO.
    let _ = master.read_to_end(&mut text);
    assert!(child.wait().unwrap().success());
    text
}

#[test]
fn help_on_a_terminal_is_coloured_unless_no_color_is_set() {
    let escape = |text: &[u8]| text.contains(&0x1b);
    let coloured = help_on_a_terminal(&[]);
    assert!(
        String::from_utf8_lossy(&coloured).contains("completions"),
        "{coloured:?}"
    );
    assert!(escape(&coloured), "a terminal gets styles");
    let plain = help_on_a_terminal(&[("NO_COLOR", "1")]);
    assert!(String::from_utf8_lossy(&plain).contains("completions"));
    assert!(
        !escape(&plain),
        "NO_COLOR: {}",
        String::from_utf8_lossy(&plain)
    );
}

/// Starts `xlreg serve` on `data` listening on `listen`, and waits for its regCred.dat.
fn serve_on(data: &Path, listen: &str) -> std::process::Child {
    let _ = std::fs::remove_file(data.join("regCred.dat"));
    let child = Command::new(common::xlreg_bin())
        .args(["serve", "--data-dir", s(data), "--listen", listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("regCred.dat", Duration::from_secs(60), || {
        RegCred::read(data.join("regCred.dat")).is_ok()
    });
    child
}

#[test]
fn a_join_waiting_through_a_registry_restart_retries_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut server = serve_on(&data, &listen);
    let regcred = dir.path().join("regCred.dat");
    std::fs::copy(data.join("regCred.dat"), &regcred).unwrap();
    let regcred = s(&regcred).to_string();
    create(&regcred, "pair", "2");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    init_node(&first, "first");
    init_node(&second, "second");
    let waiter = spawn_join(&first, "pair", &regcred);
    common::wait_until("the first member joined", Duration::from_secs(60), || {
        let out = xlreg(&["admin", "cluster", "pair", "--data-dir", s(&data), "--json"]);
        out.status.success() && json(&out)["cluster"]["member_count"] == 1
    });

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert!(server.wait().unwrap().success());
    let mut server = serve_on(&data, &listen);
    let joined = join_json(&second, "pair", &regcred, "0");
    assert!(joined.status.success(), "{}", stderr(&joined));

    let waited = waiter.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(code(&waited), 0, "{err}");
    assert!(err.contains("retrying"), "{err}");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert!(server.wait().unwrap().success());
}
