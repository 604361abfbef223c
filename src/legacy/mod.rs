//! xlReg 1.9, the Go registry's wire: the opt-in listener for 1.9 clients, sharing the store,
//! the request handlers and the session driver with xlReg/2, and a 1.9 client for load
//! generation.
//!
//! Clusters built with the Go registry's client code move to this registry unchanged: they
//! dial the legacy listener (`xlreg serve --legacy-listen ADDR`, found through a Go-format
//! regCred.dat) and get a registry that survives restarts. The 1.9 wire is weak (no
//! integrity, replayable token signatures, SHA-1): docs/legacy.md says what that means and
//! why the listener belongs on a trusted network only.
//!
//! - [`wire`]: the pure codec (hello, reply, session messages, version numbers);
//! - [`reader`]: finding message boundaries in an unframed byte stream;
//! - [`session`]: the pure 1.9 session core over the shared [`crate::handlers`], a
//!   [`crate::session::SessionCore`] like the xlReg/2 one;
//! - [`server`]: the listener, accepted on by [`crate::server::Server`]'s accept loop, whose
//!   connections the one session driver ([`crate::driver`]) runs;
//! - [`client`]: a 1.9 client library over the same codec (drives `xlreg bench --legacy`).

pub mod client;
pub mod reader;
pub mod server;
pub mod session;
pub mod wire;

#[cfg(test)]
mod vectors;
