//! The daemon as a library and as `xlreg serve`: `xlreg::daemon` run in-process on loopback
//! serves a real session and stops cleanly; settings out of range and addresses in use fail
//! the start before it creates anything. (`/health` answering 503 while sessions in flight
//! finish after SIGTERM is tests/ops.rs's
//! `shutdown_answers_a_request_that_has_started_arriving_then_exits_zero`.)

mod common;

use std::net::TcpListener as StdTcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http_get, node, xlreg_bin, Server};
use xlreg::admin::{Reply, Request};
use xlreg::client::{Client, DEFAULT_TIMEOUT};
use xlreg::daemon::{Daemon, DaemonConfig, DaemonError, LegacyConfig};
use xlreg::regcred::RegCred;
use xlreg::store::{BackendChoice, ClusterRef};

/// A daemon config on `data` listening on an ephemeral loopback port.
fn loopback_config(data: &Path) -> DaemonConfig {
    let mut config = DaemonConfig::new(data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_run_in_process_serves_a_session_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No template identity: this first start makes the registry's keys itself.
    let mut config = loopback_config(&data);
    config.name = Some("in-process".into());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.legacy = Some(LegacyConfig::new("127.0.0.1:0".parse().unwrap()));
    let daemon = Daemon::start(config).await.unwrap();
    let legacy = RegCred::read(data.join("legacy").join("regCred.dat")).unwrap();
    assert_eq!(legacy.endpoint(), daemon.legacy_addr().unwrap().to_string());
    assert_eq!(legacy.version, "1.9.24");
    let addr = daemon.local_addr();
    let metrics = daemon.metrics_addr().unwrap().to_string();
    // What it wrote is what it reports.
    let regcred = daemon.regcred().clone();
    assert_eq!(RegCred::read(data.join("regCred.dat")).unwrap(), regcred);
    assert_eq!(regcred.endpoint(), addr.to_string());
    assert_eq!(regcred.name, "in-process");
    assert!(data.join("control.sock").exists());
    for key in [
        xlreg::registry::COMMS_KEY_FILE,
        xlreg::registry::SIG_KEY_FILE,
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(daemon.serve(async {
        let _ = stopped.await;
    }));
    let mut client = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
    client.register(&node(0, "solo", 1)).await.unwrap();
    let created = client.create("pair", 2, 1).await.unwrap();
    let (joined, slot) = client.join(None).await.unwrap();
    assert_eq!((joined.id, slot), (created.id, 0));
    client.bye().await.unwrap();
    let health = tokio::task::spawn_blocking(move || http_get(&metrics, "/health"))
        .await
        .unwrap();
    assert_eq!(health, (200, "ok\n".to_string()));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the daemon stops within the grace")
        .unwrap()
        .expect("a clean stop: the final flush succeeded");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts connections after the stop"
    );
    assert!(!data.join("control.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_runs_whole_on_the_memory_backend_and_keeps_nothing_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = loopback_config(&data);
    config.name = Some("in-memory".into());
    config.backend = BackendChoice::Memory;
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let daemon = Daemon::start(config).await.unwrap();
    let metrics = daemon.metrics_addr().unwrap().to_string();
    let regcred = daemon.regcred().clone();
    let registry = daemon.registry().clone();
    assert_eq!(registry.store.data_dir(), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(daemon.serve(async {
        let _ = stopped.await;
    }));

    // Two real clients over loopback: register, create, join, and a GetCluster that waits
    // for the second member (woken through the memory store's watchers).
    let mut first = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
    let first_id = first.register(&node(0, "first", 1)).await.unwrap();
    let created = first.create("pair", 2, 1).await.unwrap();
    let (_, slot) = first.join(None).await.unwrap();
    assert_eq!(slot, 0);
    let waiting = tokio::spawn(async move {
        let view = first
            .get_cluster(None, None, Duration::from_secs(20))
            .await
            .unwrap();
        first.bye().await.unwrap();
        view
    });
    let mut second = Client::connect(&regcred, DEFAULT_TIMEOUT).await.unwrap();
    let second_id = second.register(&node(1, "second", 1)).await.unwrap();
    let pair = ClusterRef::Name("pair".into());
    let (joined, slot) = second.join(Some(&pair)).await.unwrap();
    assert_eq!((joined.id, slot), (created.id.clone(), 1));
    second.bye().await.unwrap();
    let view = waiting.await.unwrap();
    let members: Vec<_> = view.members.iter().map(|m| m.name.clone()).collect();
    assert_eq!(members, ["first", "second"]);

    // Read back through the admin port, as the control socket and offline commands do.
    let store = registry.store.clone();
    let (info, detail) = tokio::task::spawn_blocking(move || {
        let ask =
            |request| xlreg::admin::answer(&*store, &request, 0, &mut std::io::sink()).unwrap();
        let info = ask(Request::Info);
        let detail = ask(Request::Cluster {
            cluster: "pair".into(),
        });
        (info, detail)
    })
    .await
    .unwrap();
    let Reply::Info(info) = info else {
        panic!("not an info reply: {info:?}")
    };
    assert_eq!(info.name.as_deref(), Some("in-memory"));
    assert_eq!((info.nodes, info.clusters, info.members), (2, 1, 2));
    let Reply::Cluster(detail) = detail else {
        panic!("not a cluster reply: {detail:?}")
    };
    assert_eq!(detail.cluster.id, created.id.to_hex());
    let members: Vec<_> = detail
        .members
        .iter()
        .map(|m| (m.slot, m.id.clone()))
        .collect();
    assert_eq!(members, [(0, first_id.to_hex()), (1, second_id.to_hex())]);
    // The metrics endpoint reads the same store through the port, and its health.
    let (health, (status, text)) = tokio::task::spawn_blocking(move || {
        (
            http_get(&metrics, "/health"),
            http_get(&metrics, "/metrics"),
        )
    })
    .await
    .unwrap();
    assert_eq!(health, (200, "ok\n".to_string()));
    assert_eq!(status, 200);
    for series in [
        "xlreg_store_nodes 2",
        "xlreg_store_clusters 1",
        "xlreg_store_members 2",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), serving)
        .await
        .expect("the daemon stops within the grace")
        .unwrap()
        .expect("a clean stop");
    // Nothing but regCred.dat was written: no store files, no keys, no control socket.
    let mut written: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, ["regCred.dat"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ephemeral_keeps_nothing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cluster_ids = Vec::new();
    for _ in 0..2 {
        let server = Server::start(&data, &["--ephemeral"]);
        let mut client = server.client().await;
        client.register(&node(0, "solo", 1)).await.unwrap();
        cluster_ids.push(client.create("pair", 2, 1).await.unwrap().id);
        client.bye().await.unwrap();
        assert!(server.log_text().contains("backend=memory"));
        assert_eq!(server.stop(), Some(0));
        assert!(!data.join("db").exists() && !data.join("control.sock").exists());
    }
    // The second start found no cluster "pair": it made a new one.
    assert_ne!(cluster_ids[0], cluster_ids[1]);
}

/// A change to a daemon config, for table-driven tests.
type ConfigChange = Box<dyn Fn(&mut DaemonConfig)>;

#[tokio::test]
async fn settings_out_of_range_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases: Vec<(ConfigChange, &str)> = vec![
        (
            Box::new(|c| c.limits.max_frame = 1 << 30),
            "--max-frame: 1073741824 is out of range",
        ),
        (
            Box::new(|c| c.limits.write_timeout = Duration::ZERO),
            "--write-timeout: must be at least 1 second",
        ),
        (
            Box::new(|c| c.listen = "0.0.0.0:0".parse().unwrap()),
            "say which address clients should dial",
        ),
        (
            Box::new(|c| c.advertise = Some("no-port".into())),
            "--advertise: endpoint \"no-port\" is not host:port",
        ),
        (
            Box::new(|c| {
                let mut legacy = LegacyConfig::new("127.0.0.1:0".parse().unwrap());
                legacy.regcred_out = Some(c.regcred_path());
                c.legacy = Some(legacy);
            }),
            "--legacy-regcred-out",
        ),
    ];
    for (change, expected) in cases {
        let mut config = loopback_config(&data);
        change(&mut config);
        let error = Daemon::start(config).await.unwrap_err();
        assert!(matches!(error, DaemonError::Invalid { .. }), "{error:?}");
        assert!(error.to_string().contains(expected), "{error}");
        assert!(!data.exists(), "a refused start created {}", data.display());
    }
}

#[test]
fn serve_on_a_port_in_use_fails_naming_the_address_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let free_addr = StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for flags in [
        vec!["--listen", taken_addr.as_str()],
        vec![
            "--listen",
            free_addr.as_str(),
            "--legacy-listen",
            taken_addr.as_str(),
        ],
        vec![
            "--listen",
            free_addr.as_str(),
            "--metrics-listen",
            taken_addr.as_str(),
        ],
    ] {
        let output = Command::new(xlreg_bin())
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(&flags)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = common::stderr(&output);
        assert!(!output.status.success(), "{flags:?}: exited 0; {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {taken_addr}"))
                && stderr.contains("Address already in use"),
            "{flags:?}: {stderr}"
        );
        assert!(
            !data.exists(),
            "{flags:?}: a start that could not bind created {}",
            data.display()
        );
    }
    drop(taken);
}
