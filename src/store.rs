//! The registry's durable state. The sled backend lives in [`sled`](self::sled) and is
//! re-exported here, so `crate::store::Store` is the sled-backed store.

mod sled;

pub use self::sled::*;
