//! The protobuf messages of proto/xlreg.proto, generated at build time by prost.
//!
//! One schema serves both wire protocols. The generated names keep the Go registry's field
//! names (`Op`, `MemberSpecs`, ...) converted to Rust case by prost.
#![allow(missing_docs)]
#![allow(clippy::doc_lazy_continuation, clippy::enum_variant_names)]

include!(concat!(env!("OUT_DIR"), "/reg.rs"));

pub use xl_reg_msg::{ErrCode, Tag};
