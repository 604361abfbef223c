//! The `xlreg` command line, run as a user would: node identities, registration, cluster
//! create/join/members, regcred show, and clear one-line errors.

mod common;

use std::path::Path;

use common::{init_node, stderr, stdout, xlreg, Server};

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn three_nodes_form_a_cluster_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();

    // As README.md's quickstart: the owner file, and the join string from the
    // `join token:` line.
    let owner_file = dir.path().join("trio.owner");
    let created = xlreg(&[
        "cluster",
        "create",
        "trio",
        "--size",
        "3",
        "--regcred",
        &regcred,
        "--owner-file",
        s(&owner_file),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let printed = stdout(&created);
    let line = |label: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in {printed}"))
            .trim()
            .to_string()
    };
    let cluster_id = line("cluster:");
    assert_eq!(cluster_id.len(), 64);
    let join_string = line("join token:");
    assert!(join_string.starts_with("xlreg1:"), "{join_string}");
    assert!(std::fs::read_to_string(&owner_file)
        .unwrap()
        .contains(&line("owner:")));

    let nodes: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("node{i}")))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        init_node(node, &format!("node-{i}"), 9000 + i as u16);
    }
    // `register` issues an ID, records it in node.json and prints it.
    let registered = xlreg(&["register", "--node", s(&nodes[0]), "--regcred", &regcred]);
    assert!(registered.status.success(), "{}", stderr(&registered));
    let node0_id = stdout(&registered).trim().to_string();
    let node_file = std::fs::read_to_string(nodes[0].join("node.json")).unwrap();
    assert!(node_file.contains(&node0_id), "{node_file}");

    // Two join and wait in the background; the third completes the cluster.
    let children: Vec<_> = nodes[..2]
        .iter()
        .map(|node| {
            std::process::Command::new(common::xlreg_bin())
                .args(["cluster", "join", "trio", "--node", s(node)])
                .env("XLREG_JOIN_TOKEN", &join_string)
                .env_remove("XLREG_REGCRED")
                .args(["--wait", "60", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let last = xlreg(&[
        "cluster",
        "join",
        "trio",
        "--node",
        s(&nodes[2]),
        "--token",
        &join_string,
        "--regcred",
        &regcred,
        "--wait",
        "60",
        "--json",
    ]);
    assert!(last.status.success(), "{}", stderr(&last));
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(doc["members"].as_array().unwrap().len(), 3);
    }
    let doc: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(doc["cluster"]["name"], "trio");
    assert_eq!(doc["cluster"]["id"], cluster_id.as_str());
    assert_eq!(doc["cluster"]["max_size"], 3);
    assert_eq!(doc["cluster"]["endpoint_count"], 1);
    assert_eq!(doc["cluster"]["open"], false);
    assert_eq!(doc["cluster"]["closed"], false);
    let members = doc["members"].as_array().unwrap();
    let mut names: Vec<_> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["node-0", "node-1", "node-2"]);
    for (slot, member) in members.iter().enumerate() {
        assert_eq!(member["slot"], slot);
        assert_eq!(member["id"].as_str().unwrap().len(), 64);
        assert!(member["endpoints"][0]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:900"));
    }
    assert!(members.iter().any(|m| m["id"] == node0_id.as_str()));

    // Members by name and by ID, as a table: as a member, and as the owner.
    for (target, who, credential) in [
        ("trio", "--node", s(&nodes[0])),
        (cluster_id.as_str(), "--node", s(&nodes[0])),
        ("trio", "--owner-file", s(&owner_file)),
    ] {
        let listed = xlreg(&[
            "cluster",
            "members",
            target,
            "--regcred",
            &regcred,
            who,
            credential,
        ]);
        assert!(listed.status.success(), "{}", stderr(&listed));
        let text = stdout(&listed);
        assert!(
            text.contains("3/3 members, 1 endpoint(s) each, admission-controlled"),
            "{text}"
        );
        assert!(text.contains("node-2"), "{text}");
    }
}

#[test]
fn join_with_wait_zero_returns_at_once_and_an_incomplete_wait_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    let node = dir.path().join("solo");
    init_node(&node, "solo", 9100);
    let created = xlreg(&[
        "cluster",
        "create",
        "big",
        "--open",
        "--size",
        "4",
        "--regcred",
        &regcred,
        "--node",
        s(&node),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let joined = xlreg(&[
        "cluster",
        "join",
        "big",
        "--node",
        s(&node),
        "--regcred",
        &regcred,
        "--wait",
        "0",
    ]);
    assert!(joined.status.success(), "{}", stderr(&joined));
    assert!(
        stdout(&joined).contains("1/4 members"),
        "{}",
        stdout(&joined)
    );
    let waited = xlreg(&[
        "cluster",
        "join",
        "big",
        "--node",
        s(&node),
        "--regcred",
        &regcred,
        "--wait",
        "1",
    ]);
    assert!(!waited.status.success());
    let err = stderr(&waited);
    assert!(
        err.contains("is not complete after 1 s (1/4 members)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = s(&server.regcred_path).to_string();
    let node = dir.path().join("n");
    init_node(&node, "n", 9200);
    let (other, missing, nofile) = (
        dir.path().join("m"),
        dir.path().join("missing"),
        dir.path().join("nofile"),
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "cluster",
                "join",
                "nosuch",
                "--node",
                s(&node),
                "--regcred",
                &regcred,
                "--wait",
                "0",
            ],
            "no such cluster: nosuch",
        ),
        (
            vec![
                "cluster",
                "create",
                "9bad",
                "--size",
                "3",
                "--regcred",
                &regcred,
            ],
            "must start with a letter",
        ),
        (
            vec![
                "node",
                "init",
                "--dir",
                s(&node),
                "--name",
                "n",
                "--endpoint",
                "127.0.0.1:1",
            ],
            "already holds a node identity",
        ),
        (
            vec![
                "node",
                "init",
                "--dir",
                s(&other),
                "--name",
                "m",
                "--endpoint",
                "nohost",
            ],
            "not host:port",
        ),
        (
            vec!["register", "--node", s(&missing), "--regcred", &regcred],
            "missing",
        ),
        (vec!["regcred", "show", s(&nofile)], "nofile"),
    ];
    for (args, expected) in cases {
        let output = xlreg(&args);
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn regcred_show_reads_the_go_registrys_file() {
    let output = xlreg(&[
        "regcred",
        "show",
        "--json",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/regCred-go-vectors.dat"
        ),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["name"], "xlReg");
    assert_eq!(doc["endpoints"][0], "127.0.0.1:56789");
    assert_eq!(doc["version"], "1.9.24");
    assert_eq!(doc["comms_key_bits"], 2048);
}

#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    // `xlreg regcred show FILE | head -0`: the pipe is closed before xlreg writes.
    let mut child = std::process::Command::new(common::xlreg_bin())
        .args([
            "regcred",
            "show",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/regCred-go-vectors.dat"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{err}");
    assert!(output.status.success(), "{err}");
}
