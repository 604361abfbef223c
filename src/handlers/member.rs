//! Member: a node introduces itself with a signed token and is registered (or recognised).
//!
//! The token must carry a valid name, two RSA public keys of 2048..=4096 bits, 1..=8
//! endpoints (0..=8 over the 1.9 wire, as the Go registry accepted) and a signature by its
//! sig key under the session's scheme. Without an ID the
//! node gets a fresh 32-byte one; with a registered ID it is accepted only if its keys match
//! the stored ones; with an unregistered ID it is bound to the presented keys.

use super::HandlerError;
use crate::crypto::PublicKey;
use crate::id::Id;
use crate::model::{NewNode, Write};
use crate::proto::XlRegMsg;
use crate::token::{self, Scheme, TokenFields};
use crate::validate;

/// Checks the message's token (fields, key sizes, signature) and returns the registration to
/// store; the reply is built by [`finish`](super::finish) from what the store did.
pub fn prepare(msg: &XlRegMsg, scheme: Scheme<'_>, now_ms: u64) -> Result<Write, HandlerError> {
    let bad = |text: &str| HandlerError::BadRequest(text.to_string());
    let token = msg
        .member_specs
        .as_ref()
        .ok_or_else(|| bad("Member carries no token (MemberSpecs)"))?;
    let name = token
        .name
        .as_deref()
        .ok_or_else(|| bad("token has no Name"))?;
    validate::member_name(name)?;
    let comms_der = token
        .comms_key
        .as_deref()
        .ok_or_else(|| bad("token has no CommsKey"))?;
    let sig_der = token
        .sig_key
        .as_deref()
        .ok_or_else(|| bad("token has no SigKey"))?;
    let comms_key = PublicKey::from_member_der(comms_der)
        .map_err(|e| HandlerError::BadRequest(format!("CommsKey: {e}")))?;
    let sig_key = PublicKey::from_member_der(sig_der)
        .map_err(|e| HandlerError::BadRequest(format!("SigKey: {e}")))?;
    match scheme {
        Scheme::V2 { .. } => validate::endpoints(&token.my_ends)?,
        // The Go client library's AdminClient and SoloMember register with no endpoints,
        // and the Go registry accepts them (docs/legacy.md).
        Scheme::Legacy => validate::stored_endpoints(&token.my_ends)?,
    }
    let id = token
        .id
        .as_deref()
        .map(Id::from_bytes)
        .transpose()
        .map_err(|e| HandlerError::BadRequest(format!("token ID: {e}")))?;
    let attrs = token.attrs.unwrap_or(0);
    let signature = token
        .dig_sig
        .as_deref()
        .ok_or_else(|| bad("token has no DigSig"))?;
    let fields = TokenFields {
        id: token.id.as_deref(),
        name,
        attrs,
        comms_key: comms_der,
        sig_key: sig_der,
        endpoints: &token.my_ends,
    };
    token::verify(&fields, &sig_key, signature, scheme)
        .map_err(|_| HandlerError::Unauthorized("token signature does not verify".to_string()))?;

    Ok(Write::RegisterNode {
        node: NewNode {
            id,
            name: name.to_string(),
            attrs,
            comms_key: comms_key.to_spki_der().to_vec(),
            sig_key: sig_key.to_spki_der().to_vec(),
            endpoints: token.my_ends.clone(),
        },
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::testing::{apply, keys, member_msg, NOW, SALT};
    use crate::handlers::{Reply, SessionState};
    use crate::proto::Tag;
    use crate::store::{AdminStore, MemoryStore};

    fn register(
        store: &MemoryStore,
        msg: &XlRegMsg,
    ) -> Result<(Reply, SessionState), HandlerError> {
        let mut state = SessionState::default();
        let scheme = Scheme::V2 { server_salt: &SALT };
        let reply = apply(store, &mut state, prepare(msg, scheme, NOW))?;
        Ok((reply, state))
    }

    #[test]
    fn a_new_node_gets_a_fresh_32_byte_id() {
        let store = MemoryStore::new();
        let (reply, state) = register(&store, &member_msg(0, "a", None, &["127.0.0.1:1"])).unwrap();
        assert!(reply.changed);
        assert_eq!(reply.msg.op, Some(Tag::MemberOk as i32));
        let id = reply.msg.member_id.unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(state.node.unwrap().id.as_bytes(), &id[..]);
    }

    #[test]
    fn a_registered_id_needs_the_same_keys() {
        let store = MemoryStore::new();
        let (reply, _) = register(&store, &member_msg(0, "a", None, &["127.0.0.1:1"])).unwrap();
        let id = Id::from_bytes(&reply.msg.member_id.unwrap()).unwrap();
        let (again, _) =
            register(&store, &member_msg(0, "a", Some(&id), &["127.0.0.1:1"])).unwrap();
        assert!(!again.changed);
        assert_eq!(again.msg.member_id.unwrap(), id.as_bytes());
        let err = register(&store, &member_msg(1, "a", Some(&id), &["127.0.0.1:1"])).unwrap_err();
        assert!(err.to_string().contains("different signing key"), "{err}");
    }

    #[test]
    fn an_unknown_20_byte_id_is_bound_to_its_keys() {
        let store = MemoryStore::new();
        let legacy = Id::from_bytes(&[5u8; 20]).unwrap();
        let (reply, _) = register(
            &store,
            &member_msg(2, "old", Some(&legacy), &["127.0.0.1:1"]),
        )
        .unwrap();
        assert_eq!(reply.msg.member_id.unwrap(), legacy.as_bytes());
    }

    #[test]
    fn over_the_1_9_wire_a_node_may_register_no_endpoints() {
        // As the Go client library's AdminClient does (attrs ADMIN|SOLO|EPHEMERAL).
        let store = MemoryStore::new();
        let (comms, sig) = &keys()[0];
        let fields = TokenFields {
            id: None,
            name: "admin",
            attrs: 7,
            comms_key: comms.public_key().to_spki_der(),
            sig_key: sig.public_key().to_spki_der(),
            endpoints: &[],
        };
        let msg = XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(token::sign_legacy(&fields, sig).unwrap()),
            ..XlRegMsg::default()
        };
        let mut state = SessionState::default();
        let reply = apply(&store, &mut state, prepare(&msg, Scheme::Legacy, NOW)).unwrap();
        assert!(reply.changed);
        let id = state.node.unwrap().id;
        assert!(store.node(&id).unwrap().unwrap().endpoints.is_empty());
    }

    #[test]
    fn bad_tokens_are_refused_and_change_nothing() {
        let store = MemoryStore::new();
        let mut no_token = member_msg(0, "a", None, &["127.0.0.1:1"]);
        no_token.member_specs = None;
        let mut bad_sig = member_msg(0, "a", None, &["127.0.0.1:1"]);
        bad_sig.member_specs.as_mut().unwrap().name = Some("b".into());
        let mut short_key = member_msg(0, "a", None, &["127.0.0.1:1"]);
        short_key.member_specs.as_mut().unwrap().comms_key = Some(vec![0x30, 0x03, 1, 2, 3]);
        let cases = [
            (no_token, "no token"),
            (bad_sig, "signature does not verify"),
            (short_key, "CommsKey"),
            (member_msg(0, "", None, &["127.0.0.1:1"]), "name is empty"),
            (member_msg(0, "a", None, &["nohost"]), "not host:port"),
            (member_msg(0, "a", None, &[]), "at least one endpoint"),
        ];
        for (msg, expected) in cases {
            let err = register(&store, &msg).unwrap_err();
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected}"
            );
        }
        assert_eq!(store.counts().unwrap().nodes, 0);
        // A signature made for another session is refused too.
        let msg = member_msg(0, "a", None, &["127.0.0.1:1"]);
        let scheme = Scheme::V2 {
            server_salt: &[0u8; 16],
        };
        let err = prepare(&msg, scheme, NOW).unwrap_err();
        assert!(matches!(err, HandlerError::Unauthorized(_)));
        let _ = keys();
    }
}
