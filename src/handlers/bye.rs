//! Bye: the client is done; the registry acknowledges and closes the connection.

use crate::proto::{Tag, XlRegMsg};

/// The Ack that answers a Bye.
pub fn handle() -> XlRegMsg {
    XlRegMsg {
        op: Some(Tag::Ack as i32),
        ..XlRegMsg::default()
    }
}
