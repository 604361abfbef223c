//! Operating the daemon, against real `xlreg serve` processes: the metrics endpoint,
//! graceful shutdown (under load, and with a request half-arrived), crash safety, the
//! connection limits and timeouts, JSON logs, `--version`, and systemd notification.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_get, metric, node, stdout, wait_for_metric, wait_until, xlreg, Server};
use xlreg::client::{Client, ClientError, DEFAULT_TIMEOUT};
use xlreg::id::Id;
use xlreg::node::NodeIdentity;
use xlreg::proto::ErrCode;
use xlreg::regcred::RegCred;
use xlreg::session_crypto::ClientHandshake;
use xlreg::store::{ClusterRef, Store};

/// Reads from a raw socket until the registry closes it (EOF or reset), for at most 60 s;
/// panics if it sends anything or keeps the connection open.
fn assert_closed_by_registry(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the registry sent {n} bytes instead of closing"),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("the registry did not close the connection: {e}"),
    }
}

/// Reads one whole frame's payload from a raw socket (60 s at most).
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).expect("frame length");
    let mut payload = vec![0u8; u32::from_be_bytes(prefix) as usize];
    stream.read_exact(&mut payload).expect("frame payload");
    payload
}

#[tokio::test]
async fn metrics_show_what_a_session_did() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr();
    assert_eq!(http_get(&metrics, "/health"), (200, "ok\n".to_string()));

    let mut member = server.client().await;
    let id = member.register(&node(0, "alpha", 1)).await.unwrap();
    member.create("watched", 2, 1).await.unwrap();
    member.join(None).await.unwrap();

    // Scraped while the session is still open. A request is counted just after its reply
    // is written, so the Join's count may trail its reply by a moment: wait for it (the
    // earlier requests were counted before the session read the next one).
    let text = wait_for_metric(
        &metrics,
        r#"xlreg_requests_total{op="Join",result="ok"}"#,
        1.0,
    );
    for (series, value) in [
        (r#"xlreg_requests_total{op="Member",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="Create",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="Join",result="ok"}"#, 1.0),
        (r#"xlreg_requests_total{op="GetCluster",result="ok"}"#, 0.0),
        (r#"xlreg_errors_total{kind="InvalidState"}"#, 0.0),
        (r#"xlreg_sessions_total{outcome="bye"}"#, 0.0),
        ("xlreg_session_duration_seconds_count", 0.0),
        ("xlreg_open_connections", 1.0),
        ("xlreg_max_connections", 1024.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    // Store figures are read at scrape time, at most every few seconds.
    wait_for_metric(&metrics, "xlreg_store_nodes", 1.0);
    wait_for_metric(&metrics, "xlreg_store_clusters", 1.0);
    let text = wait_for_metric(&metrics, "xlreg_store_members", 1.0);
    assert!(metric(&text, "xlreg_store_size_bytes").is_some_and(|bytes| bytes > 0.0));

    // A second session breaks the rules: Join before Member.
    let mut rude = server.client().await;
    match rude.join(Some(&ClusterRef::Name("watched".into()))).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, Some(ErrCode::InvalidState)),
        other => panic!("expected an InvalidState refusal, got {other:?}"),
    }
    let text = wait_for_metric(&metrics, r#"xlreg_sessions_total{outcome="refused"}"#, 1.0);
    assert_eq!(
        metric(
            &text,
            r#"xlreg_requests_total{op="Join",result="InvalidState"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"xlreg_errors_total{kind="InvalidState"}"#),
        Some(1.0)
    );

    member.bye().await.unwrap();
    let text = wait_for_metric(&metrics, r#"xlreg_sessions_total{outcome="bye"}"#, 1.0);
    assert_eq!(
        metric(&text, r#"xlreg_requests_total{op="Bye",result="ok"}"#),
        Some(1.0)
    );
    wait_for_metric(&metrics, "xlreg_session_duration_seconds_count", 2.0);
    wait_for_metric(&metrics, "xlreg_open_connections", 0.0);

    // The session line names the node that registered.
    server.wait_for_log("the bye session's log line", |log| {
        log.lines()
            .any(|l| l.contains(&id.to_hex()) && l.contains("result=\"bye\""))
    });
    assert_eq!(http_get(&metrics, "/nowhere").0, 404);
}

#[test]
fn shutdown_answers_a_request_that_has_started_arriving_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &dir.path().join("data"),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "120",
            "--handshake-timeout",
            "120",
        ],
    );
    let metrics = server.metrics_addr();
    let (handshake, hello) = ClientHandshake::start(&server.regcred.comms_key).unwrap();
    let wire = xlreg::frame::encode(&hello);
    let (first, rest) = wire.split_at(wire.len() / 2);
    let mut stream = TcpStream::connect(server.endpoint()).unwrap();
    stream.write_all(first).unwrap();
    // An idle session, which shutdown may close at once.
    let idle = TcpStream::connect(server.endpoint()).unwrap();
    wait_for_metric(&metrics, "xlreg_open_connections", 2.0);

    server.send_signal(libc::SIGTERM);
    // Draining: /health says so, and no new connection is accepted...
    wait_until("/health to answer 503", Duration::from_secs(60), || {
        http_get(&metrics, "/health") == (503, "shutting down\n".to_string())
    });
    assert!(
        TcpStream::connect(server.endpoint()).is_err(),
        "a draining registry accepted a connection"
    );
    let mut idle = idle;
    assert_closed_by_registry(&mut idle);
    // ...but the hello that had started arriving is read to its end and answered.
    assert!(server.is_running());
    stream.write_all(rest).unwrap();
    let reply = read_frame(&mut stream);
    handshake
        .finish(&reply)
        .expect("the handshake reply authenticates");
    // Then the session, now between requests, is closed, and the registry exits cleanly.
    assert_closed_by_registry(&mut stream);
    let log_path = server.log.clone();
    assert_eq!(server.wait_exit(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert_eq!(
        log.matches("closed: shutting down").count(),
        2,
        "both sessions end as closed by the shutdown:\n{log}"
    );
}

/// One session that registers `node`, creates the one-member cluster `name` and joins it.
/// Returns the node's ID once the JoinReply is in, and says Bye if the registry still
/// listens.
async fn join_once(regcred: &RegCred, node: &NodeIdentity, name: &str) -> Result<Id, ClientError> {
    let mut client = Client::connect(regcred, DEFAULT_TIMEOUT).await?;
    let id = client.register(node).await?;
    client.create(name, 1, 1).await?;
    client.join(None).await?;
    let _ = client.bye().await;
    Ok(id)
}

/// Runs concurrent joiners against a registry, stops it with `stop` once some joins are
/// acknowledged (while others are in flight), and checks that every acknowledged join is
/// in the store afterwards and served after a restart.
async fn acknowledged_joins_survive(stop: impl FnOnce(Server) + Send + 'static) {
    const JOINERS: usize = 12;
    const SESSIONS_PER_JOINER: usize = 500;
    const ACKS_BEFORE_STOP: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--shutdown-grace", "30"]);
    let regcred = server.regcred.clone();
    // Every joiner uses the same key pair (key generation is slow); each session registers
    // afresh and gets a new node ID.
    let identity = node(0, "joiner", 1);
    let acked: Arc<Mutex<Vec<(String, Id)>>> = Arc::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut joiners = tokio::task::JoinSet::new();
    for joiner in 0..JOINERS {
        let (regcred, identity) = (regcred.clone(), identity.clone());
        let (acked, stopping) = (acked.clone(), stopping.clone());
        joiners.spawn(async move {
            for n in 0..SESSIONS_PER_JOINER {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let name = format!("load-{joiner}-{n}");
                match join_once(&regcred, &identity, &name).await {
                    Ok(id) => acked.lock().unwrap().push((name, id)),
                    // The registry is going away: a join without a reply may or may not
                    // have happened, and is not checked.
                    Err(_) => return,
                }
            }
        });
    }
    let until = Instant::now() + Duration::from_secs(180);
    while acked.lock().unwrap().len() < ACKS_BEFORE_STOP {
        assert!(
            Instant::now() < until,
            "joins too slow to reach {ACKS_BEFORE_STOP}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log_path = server.log.clone();
    let acked_at_stop = acked.lock().unwrap().len();
    tokio::task::spawn_blocking(move || stop(server))
        .await
        .unwrap();
    stopping.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(120), async {
        while joiners.join_next().await.is_some() {}
    })
    .await
    .expect("joiners stop once the registry is gone");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= ACKS_BEFORE_STOP);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!(
        "{} joins acknowledged when the stop began, {} in all; {}",
        acked_at_stop,
        acked.len(),
        log.lines()
            .find(|l| l.contains("in_flight"))
            .unwrap_or("(crashed)")
    );

    let store = Store::open(&data).unwrap();
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    for (name, id) in &acked {
        let cluster = store
            .cluster(&ClusterRef::Name(name.clone()))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged cluster {name} is missing"));
        assert!(
            cluster.member_by_node(id).is_some(),
            "acknowledged join of {name} is missing; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    drop(store);

    let server = Server::start(&data, &[]);
    let mut client = server.client().await;
    client.register(&node(1, "checker", 1)).await.unwrap();
    let (name, id) = acked.last().unwrap();
    let view = client
        .get_cluster(Some(&ClusterRef::Name(name.clone())), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(view.members.len(), 1);
    assert_eq!(&view.members[0].id, id);
    client.bye().await.unwrap();
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_under_load_loses_no_acknowledged_join() {
    acknowledged_joins_survive(|server| {
        let log_path = server.log.clone();
        let code = server.stop();
        let log = std::fs::read_to_string(log_path).unwrap();
        assert_eq!(code, Some(0), "exit status after SIGTERM; log:\n{log}");
        assert!(log.contains("shutting down: no longer accepting connections"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_under_load_loses_no_acknowledged_join() {
    acknowledged_joins_survive(Server::kill).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--max-connections", "2", "--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr();
    let mut member = server.client().await;
    member.register(&node(0, "alpha", 1)).await.unwrap();
    let silent = TcpStream::connect(server.endpoint()).unwrap();
    wait_for_metric(&metrics, "xlreg_open_connections", 2.0);

    let mut over = TcpStream::connect(server.endpoint()).unwrap();
    assert_closed_by_registry(&mut over);
    wait_for_metric(&metrics, "xlreg_refused_connections_total", 1.0);
    server.wait_for_log("the refusal in the log", |log| {
        log.contains("connection refused: too many connections")
    });

    // The sessions already admitted are served as before.
    member.create("limited", 2, 1).await.unwrap();
    let (_, slot) = member.join(None).await.unwrap();
    assert_eq!(slot, 0);
    member.bye().await.unwrap();

    // Once connections close, newcomers are admitted again.
    drop(silent);
    wait_for_metric(&metrics, "xlreg_open_connections", 0.0);
    let mut newcomer = server.client().await;
    newcomer.register(&node(1, "beta", 1)).await.unwrap();
    let (_, slot) = newcomer
        .join(Some(&ClusterRef::Name("limited".into())))
        .await
        .unwrap();
    assert_eq!(slot, 1);
    newcomer.bye().await.unwrap();
}

/// Starts a registry with `flags`; opens a raw connection and lets `misbehave` break a
/// limit on it; checks that the registry closes it, counts the session under `outcome` and
/// logs `log_says`; and that a well-behaved session is still served.
async fn a_limit_closes_only_the_offender(
    flags: &[&str],
    misbehave: impl FnOnce(&mut TcpStream),
    outcome: &str,
    log_says: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let server = Server::start(&dir.path().join("data"), &args);
    let metrics = server.metrics_addr();
    let mut offender = TcpStream::connect(server.endpoint()).unwrap();
    misbehave(&mut offender);
    assert_closed_by_registry(&mut offender);
    wait_for_metric(
        &metrics,
        &format!("xlreg_sessions_total{{outcome=\"{outcome}\"}}"),
        1.0,
    );
    server.wait_for_log("the offender's session line", |log| log.contains(log_says));
    let mut client = server.client().await;
    client.register(&node(0, "alpha", 1)).await.unwrap();
    client.bye().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_speaks_is_closed_after_the_handshake_timeout() {
    a_limit_closes_only_the_offender(
        &["--handshake-timeout", "1"],
        |_silent| {},
        "handshake_timeout",
        "peer sent nothing for 1s",
    )
    .await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection() {
    a_limit_closes_only_the_offender(
        &["--max-frame", "4096"],
        |stream| stream.write_all(&4097u32.to_be_bytes()).unwrap(),
        "frame_too_large",
        "frame of 4097 bytes exceeds the limit of 4096 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_session_silent_between_requests_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--idle-timeout", "1", "--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.metrics_addr();
    let mut idle = server.client().await;
    idle.register(&node(0, "alpha", 1)).await.unwrap();
    wait_for_metric(
        &metrics,
        r#"xlreg_sessions_total{outcome="idle_timeout"}"#,
        1.0,
    );
    let late = idle.create("too-late", 2, 1).await;
    assert!(
        late.as_ref().is_err_and(ClientError::is_retryable),
        "{late:?}"
    );
    let mut client = server.client().await;
    client.register(&node(0, "alpha", 1)).await.unwrap();
    client.create("in-time", 2, 1).await.unwrap();
    client.bye().await.unwrap();
}

#[tokio::test]
async fn json_log_lines_parse_carry_the_session_fields_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--log-format", "json"]);
    let member_identity = node(0, "alpha", 1);
    let mut member = server.client().await;
    let id = member.register(&member_identity).await.unwrap();
    let cluster = member.create("logged", 2, 1).await.unwrap();
    member.join(None).await.unwrap();
    member.bye().await.unwrap();
    let mut rude = server.client().await;
    assert!(rude.create("nope", 2, 1).await.is_err());

    let log = server.wait_for_log("two session lines", |log| {
        log.matches("\"session\"").count() >= 2
    });
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let sessions: Vec<&serde_json::Value> = lines
        .iter()
        .map(|line| &line["fields"])
        .filter(|fields| fields["message"] == "session")
        .collect();
    let bye = sessions
        .iter()
        .find(|f| f["result"] == "bye")
        .expect("a session line for the bye");
    assert_eq!(bye["node"], id.to_hex());
    assert_eq!(bye["cluster"], cluster.id.to_hex());
    assert_eq!(bye["ops"], 4);
    assert!(bye["duration_ms"].is_u64());
    assert!(bye["peer"]
        .as_str()
        .is_some_and(|peer| peer.starts_with("127.0.0.1:")));
    let refused = sessions
        .iter()
        .find(|f| f["result"] == "refused: InvalidState")
        .expect("a session line for the refusal");
    assert_eq!(refused["node"], "");
    assert_eq!(refused["ops"], 1);

    // No private key, the registry's or the member's, ever reaches the log.
    let mut secrets = Vec::new();
    for file in ["registry-comms.pem", "registry-sig.pem"] {
        secrets.push(std::fs::read_to_string(data.join(file)).unwrap());
    }
    for key in [&member_identity.comms, &member_identity.sig] {
        secrets.push(key.to_pkcs8_pem().unwrap().to_string());
    }
    for pem in &secrets {
        for chunk in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(chunk), "a private key line is in the log");
        }
    }
}

#[test]
fn version_flag_prints_the_release() {
    let output = xlreg(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        format!("xlreg {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn systemd_hears_ready_then_stopping_and_sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut message = [0u8; 256];
    let n = socket.recv(&mut message).expect("READY=1 from xlreg");
    assert_eq!(&message[..n], b"READY=1\n");
    server.send_signal(libc::SIGINT);
    let n = socket.recv(&mut message).expect("STOPPING=1 from xlreg");
    assert_eq!(&message[..n], b"STOPPING=1\n");
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn zero_timeouts_are_refused_with_a_clear_error_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for flag in ["--handshake-timeout", "--idle-timeout"] {
        let mut child = std::process::Command::new(common::xlreg_bin())
            .args(["serve", "--listen", "127.0.0.1:0", flag, "0", "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                panic!("serve {flag} 0 kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        assert!(!output.status.success());
        assert!(
            common::stderr(&output).contains("must be at least 1 second"),
            "{}",
            common::stderr(&output)
        );
        assert!(!data.exists(), "a refused start created {}", data.display());
    }
}
