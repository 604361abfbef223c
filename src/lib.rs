//! xlreg: a durable cluster registry.
//!
//! Nodes register and receive a globally unique 256-bit ID; someone creates a named cluster
//! with a maximum size; members join with their two RSA public keys and their endpoints; and
//! every member fetches the others' details. All state lives in an embedded sled database, so
//! the registry survives restarts and crashes.
//!
//! # Architecture: layers and the dependency rule
//!
//! Every module belongs to one layer:
//! - **model**, the vocabulary: [`id`], [`proto`] (the protobuf messages), [`model`] (the
//!   records, the writes, the refusals and the registry's rules as pure functions);
//! - **core**, pure and clock-free, deciding what every message means: [`frame`]
//!   (length-prefixed frames), [`crypto`] (every primitive), [`session_crypto`] (handshake
//!   and session cipher), [`token`] (member token signatures), [`validate`] (input rules),
//!   [`join_string`] (the paste-able join string's text form),
//!   [`handlers`] (one request per file: they say what to write or read, and build replies
//!   from the result), and the session cores, deterministic in the manner of quinn-proto (no
//!   socket, no clock, no store handle, no global randomness; time and an RNG are passed
//!   in): [`session`] (the [`session::SessionCore`] trait, the one [`session::Step`] type,
//!   the lock-step bookkeeping both cores share), [`protocol`] (the xlReg/2 and xlReg/3 core) and
//!   [`legacy::session`] (the xlReg 1.9 core), with the 1.9 wire's pure parts
//!   [`legacy::wire`] and [`legacy::reader`]; and [`quota`], the rate quotas on new
//!   clusters and nodes (a limiter whose time is passed in);
//! - **store**: [`store`] (the store's ports, `SessionStore` and `AdminStore`, `Backend`
//!   (both ports and the storage's health), `BackendChoice` (the one place a backend is
//!   opened), and the backends: sled with group commit and migrations, and memory) and
//!   [`failstop`] (the storage's health: fail-stop and the watchdog);
//! - **glue**, which owns sockets, files, tasks, signals and the clock: [`connection`]
//!   (frames over tokio streams, with timeouts), [`driver`] (the one session driver: runs a
//!   core of either wire over a socket, and is the only place a session touches the store),
//!   [`server`] (the accept loop, the connection limit, shutdown),
//!   [`admission`] (per-address connection limits and flood-proof log summaries),
//!   [`legacy::server`], [`registry`] (the registry's identity and shared state),
//!   [`sealed_identity`] (that identity sealed under an operator's secret, for etcd),
//!   [`ha`] (several servers on etcd: server lease, announcements, sweeper election),
//!   [`metrics`] (the Prometheus metric set), [`admin`] (inspection, export/import,
//!   backup/restore, the control socket, cluster expiry), [`daemon`] (a whole running
//!   registry, its metrics endpoint included), [`process`] (malloc, rlimits, umask, sd_notify),
//!   [`clock`], and the client side: [`client`], [`legacy::client`], [`regcred`] (the
//!   `regCred.dat` file), [`node`] (a node's identity directory);
//! - **tools**, the programs: [`cli`] (the `xlreg` command), [`bench`](mod@bench) (the load
//!   generator).
//!
//! The rule: **the core depends on the model; the store on the model; the glue on core and
//! store; nothing on the glue** but other glue and the tools; nothing on the tools but the
//! tools; and no two modules depend on each other, directly or around a loop.
//! `cargo test --test architecture` checks it: it reads every `crate::` path in `src/`, and
//! fails on an edge against the rule or a cycle between top-level modules, naming the file
//! and line (docs/architecture.md, "Layers and the dependency rule").
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod connection;
pub mod crypto;
pub mod daemon;
pub mod driver;
pub mod failstop;
pub mod frame;
pub mod ha;
pub mod handlers;
pub mod handshake_keys;
pub mod id;
pub mod join_string;
pub mod legacy;
pub mod metrics;
pub mod model;
pub mod node;
pub mod process;
pub mod proto;
pub mod protocol;
pub mod quota;
pub mod regcred;
pub mod registry;
pub mod sealed_identity;
pub mod server;
pub mod session;
pub mod session_crypto;
pub mod store;
pub mod token;
pub mod validate;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by unit tests in several modules.

    use crate::crypto::RsaKeyPair;

    include!("../tests/data/fixture_keys.rs");

    /// A two-worker tokio runtime with I/O and timers.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a test runtime")
    }
}
