//! The crate's `rust-version` is true: no locked dependency needs a newer Rust.
//!
//! No second toolchain can be installed where the suite runs, so instead of building with
//! the oldest supported Rust, this reads every locked package's own `rust-version` from
//! `cargo metadata --locked` and fails naming any that asks for more than ours. CI runs it
//! as `cargo test --test msrv`.

use std::process::Command;

/// "1.89", "1.88.0" -> (1, 89, 0).
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The host's target triple: the packages built here (metadata for every platform would
/// need crates, Windows ones say, that an offline machine never downloaded).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_rust_version_says() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata --locked failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "xlreg")
        .and_then(|p| p["rust_version"].as_str())
        .expect("Cargo.toml sets rust-version");
    let needs_more: Vec<String> = packages
        .iter()
        .filter_map(|p| {
            let theirs = p["rust_version"].as_str()?;
            (version(theirs) > version(ours))
                .then(|| format!("{} {} needs Rust {theirs}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        needs_more.is_empty(),
        "rust-version is {ours}, but {}",
        needs_more.join("; ")
    );
    // And it is not lower than it needs to be by accident: some dependency needs exactly
    // it, so the number says something (raise it only when a dependency does).
    assert!(
        packages
            .iter()
            .filter(|p| p["name"] != "xlreg")
            .any(|p| p["rust_version"].as_str().map(version) == Some(version(ours))),
        "no locked dependency needs Rust {ours}: rust-version may claim more than it must"
    );
}
