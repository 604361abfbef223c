//! `xlreg bench` against a real registry: it completes every session, finds the registry's
//! process and reports its CPU time.

mod common;

use common::{stderr, xlreg, Server};

#[test]
fn bench_runs_complete_sessions_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = server.regcred_path.to_str().unwrap();
    let output = xlreg(&[
        "bench",
        "--regcred",
        regcred,
        "--clients",
        "6",
        "--sessions",
        "12",
        "--cluster-size",
        "3",
        "--identities",
        "2",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["completed"], 12);
    assert_eq!(report["errors"].as_object().unwrap().len(), 0);
    assert!(report["sessions_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency_ms"]["max"].as_f64().unwrap()
            >= report["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert!(
        report["server_pid"].as_u64().is_some(),
        "the local registry is found: {report}"
    );
    assert!(report["server_cpu_ms_per_session"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_refuses_parameters_that_cannot_complete_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let regcred = server.regcred_path.to_str().unwrap();
    for (args, expected) in [
        (
            ["--clients", "2", "--sessions", "8", "--cluster-size", "4"],
            "must be at least --cluster-size",
        ),
        (
            ["--clients", "8", "--sessions", "6", "--cluster-size", "4"],
            "multiple of --cluster-size",
        ),
    ] {
        let mut all = vec!["bench", "--regcred", regcred, "--identities", "1"];
        all.extend(args);
        let output = xlreg(&all);
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}
