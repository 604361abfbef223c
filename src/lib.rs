//! xlreg: a durable cluster registry.
//!
//! Nodes register and receive a globally unique 256-bit ID; someone creates a named cluster
//! with a maximum size; members join with their two RSA public keys and their endpoints; and
//! every member fetches the others' details. All state lives in an embedded sled database, so
//! the registry survives restarts and crashes.
//!
//! The crate is laid out by concern:
//! - wire: [`frame`] (length-prefixed frames), [`proto`] (the protobuf messages),
//!   [`connection`] (frames over tokio streams, with timeouts);
//! - cryptography: [`crypto`] (every primitive), [`session_crypto`] (handshake and session
//!   cipher), [`token`] (member token signatures);
//! - the protocol core, pure and clock-free: [`protocol`] (the xlReg/2 session state
//!   machine) and [`handlers`] (one request per file), with [`validate`] for input rules;
//! - state: [`model`] (the records, the writes and the registry's rules as pure functions),
//!   [`store`] (the store port and its backends: sled with group commit and migrations, and
//!   memory), [`registry`] (the registry's identity and shared state), [`id`];
//! - glue and tools: [`server`] (listener and session tasks), [`client`] (the client
//!   library), [`regcred`] (the `regCred.dat` file), [`node`] (a node's identity directory),
//!   [`cli`] (the `xlreg` command), [`bench`] (the load generator);
//! - [`legacy`]: the opt-in listener for xlReg 1.9 (Go) clients, over the same store and
//!   handlers;
//! - operations: [`metrics`] (the Prometheus metric set and its HTTP endpoint), [`admin`]
//!   (inspection, export/import, backup/restore, the daemon's control socket and cluster
//!   expiry).
#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod client;
pub mod connection;
pub mod crypto;
pub mod frame;
pub mod handlers;
pub mod id;
pub mod legacy;
pub mod metrics;
pub mod model;
pub mod node;
pub mod proto;
pub mod protocol;
pub mod regcred;
pub mod registry;
pub mod server;
pub mod session_crypto;
pub mod store;
pub mod token;
pub mod validate;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by unit tests in several modules.

    /// A two-worker tokio runtime with I/O and timers.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a test runtime")
    }
}
