//! Member tokens: the signed statement of a member's name, attributes, keys and endpoints.
//!
//! This module owns the bytes a token signature covers, for both wire protocols:
//! - xlReg/2 ([`signed_bytes_v2`]): a length-prefixed canonical encoding that includes the
//!   registry's salt for this session, signed with RSASSA-PKCS1-v1_5/SHA-256 by the
//!   member's sig key. The salt binds the signature to one session, so a captured token
//!   cannot be replayed in another.
//! - xlReg 1.9 ([`signed_bytes_legacy`]): the Go registry's concatenation, signed with
//!   PKCS1-v1_5/SHA-1. Kept only for the opt-in legacy listener; it can be replayed.
//!
//! [`verify`] parses and checks a received token; [`sign_v2`] builds one on the client side.

use crate::crypto::{CryptoError, PublicKey, RsaKeyPair};
use crate::model::admission::put_field;
use crate::proto::XlRegToken;

/// Domain separator that opens every xlReg/2 token signature input.
pub const V2_DOMAIN: &[u8] = b"xlReg/2 member token\0";

/// Which wire protocol's signature scheme a token is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Scheme<'a> {
    /// xlReg/2: SHA-256 over [`signed_bytes_v2`] with this session's server salt.
    V2 {
        /// The registry's salt for the session in which the token arrived.
        server_salt: &'a [u8],
    },
    /// xlReg 1.9: SHA-1 over [`signed_bytes_legacy`].
    Legacy,
}

/// The fields of a token that a signature covers, borrowed from wherever they live.
#[derive(Debug, Clone, Copy)]
pub struct TokenFields<'a> {
    /// Node ID, if the member presents one.
    pub id: Option<&'a [u8]>,
    /// Member name.
    pub name: &'a str,
    /// Attribute bits.
    pub attrs: u64,
    /// Comms key, DER SubjectPublicKeyInfo.
    pub comms_key: &'a [u8],
    /// Sig key, DER SubjectPublicKeyInfo.
    pub sig_key: &'a [u8],
    /// Endpoints, in order.
    pub endpoints: &'a [String],
}

/// The xlReg/2 signature input:
/// `V2_DOMAIN || field(salt2) || field(id or empty) || field(name) || attrs (u64 BE) ||
/// field(comms DER) || field(sig DER) || count (u32 BE) || field(endpoint)...`, where
/// `field(x)` is `len(x)` as u32 big-endian followed by `x`.
pub fn signed_bytes_v2(fields: &TokenFields<'_>, server_salt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        V2_DOMAIN.len() + fields.comms_key.len() + fields.sig_key.len() + fields.name.len() + 128,
    );
    out.extend_from_slice(V2_DOMAIN);
    put_field(&mut out, server_salt);
    put_field(&mut out, fields.id.unwrap_or_default());
    put_field(&mut out, fields.name.as_bytes());
    out.extend_from_slice(&fields.attrs.to_be_bytes());
    put_field(&mut out, fields.comms_key);
    put_field(&mut out, fields.sig_key);
    out.extend_from_slice(&(fields.endpoints.len() as u32).to_be_bytes());
    for endpoint in fields.endpoints {
        put_field(&mut out, endpoint.as_bytes());
    }
    out
}

/// The xlReg 1.9 signature input: `Name || Attrs (u64 LE) || CommsKey || SigKey || MyEnds...`
/// (no lengths, no ID, no session binding: the Go registry's format).
pub fn signed_bytes_legacy(fields: &TokenFields<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(fields.name.as_bytes());
    out.extend_from_slice(&fields.attrs.to_le_bytes());
    out.extend_from_slice(fields.comms_key);
    out.extend_from_slice(fields.sig_key);
    for endpoint in fields.endpoints {
        out.extend_from_slice(endpoint.as_bytes());
    }
    out
}

/// Checks `signature` over `fields` against `sig_key` under `scheme`.
pub fn verify(
    fields: &TokenFields<'_>,
    sig_key: &PublicKey,
    signature: &[u8],
    scheme: Scheme<'_>,
) -> Result<(), CryptoError> {
    match scheme {
        Scheme::V2 { server_salt } => {
            sig_key.verify_sha256(&signed_bytes_v2(fields, server_salt), signature)
        }
        Scheme::Legacy => sig_key.verify_sha1(&signed_bytes_legacy(fields), signature),
    }
}

/// Builds a signed xlReg/2 token for the session whose server salt is `server_salt`.
pub fn sign_v2(
    fields: &TokenFields<'_>,
    sig_key: &RsaKeyPair,
    server_salt: &[u8],
) -> Result<XlRegToken, CryptoError> {
    let signature = sig_key.sign_sha256(&signed_bytes_v2(fields, server_salt))?;
    Ok(token_of(fields, Some(signature)))
}

/// Builds a signed xlReg 1.9 token (used by the test suite's 1.9 client and the load
/// generator's `--legacy` mode).
pub fn sign_legacy(
    fields: &TokenFields<'_>,
    sig_key: &RsaKeyPair,
) -> Result<XlRegToken, CryptoError> {
    let signature = sig_key.sign_sha1(&signed_bytes_legacy(fields))?;
    Ok(token_of(fields, Some(signature)))
}

fn token_of(fields: &TokenFields<'_>, signature: Option<Vec<u8>>) -> XlRegToken {
    XlRegToken {
        name: Some(fields.name.to_owned()),
        attrs: Some(fields.attrs),
        id: fields.id.map(<[u8]>::to_vec),
        comms_key: Some(fields.comms_key.to_vec()),
        sig_key: Some(fields.sig_key.to_vec()),
        my_ends: fields.endpoints.to_vec(),
        dig_sig: signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn keys() -> &'static (RsaKeyPair, RsaKeyPair) {
        static KEYS: OnceLock<(RsaKeyPair, RsaKeyPair)> = OnceLock::new();
        KEYS.get_or_init(|| {
            (
                crate::test_support::fixture_key(0),
                crate::test_support::fixture_key(1),
            )
        })
    }

    #[test]
    fn a_v2_signature_holds_only_in_its_own_session() {
        let (comms, sig) = keys();
        let endpoints = vec!["127.0.0.1:9000".to_string()];
        let fields = TokenFields {
            id: None,
            name: "node-a",
            attrs: 0,
            comms_key: comms.public_key().to_spki_der(),
            sig_key: sig.public_key().to_spki_der(),
            endpoints: &endpoints,
        };
        let token = sign_v2(&fields, sig, &[1u8; 16]).unwrap();
        let signature = token.dig_sig.unwrap();
        let own = Scheme::V2 {
            server_salt: &[1u8; 16],
        };
        let other = Scheme::V2 {
            server_salt: &[2u8; 16],
        };
        assert!(verify(&fields, sig.public_key(), &signature, own).is_ok());
        assert!(verify(&fields, sig.public_key(), &signature, other).is_err());
        let renamed = TokenFields {
            name: "node-b",
            ..fields
        };
        assert!(verify(&renamed, sig.public_key(), &signature, own).is_err());
        assert!(verify(&fields, comms.public_key(), &signature, own).is_err());
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_apart() {
        let one = vec!["ab".to_string(), "c".to_string()];
        let two = vec!["a".to_string(), "bc".to_string()];
        let base = TokenFields {
            id: None,
            name: "n",
            attrs: 0,
            comms_key: b"k",
            sig_key: b"s",
            endpoints: &one,
        };
        let other = TokenFields {
            endpoints: &two,
            ..base
        };
        assert_ne!(
            signed_bytes_v2(&base, b"salt"),
            signed_bytes_v2(&other, b"salt")
        );
        // The 1.9 format has no such boundaries: that is one of its weaknesses.
        assert_eq!(signed_bytes_legacy(&base), signed_bytes_legacy(&other));
    }
}
