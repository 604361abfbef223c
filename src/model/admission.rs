//! Admission credentials: the owner credential and join tokens, the keys derived from their
//! secrets, the bytes every admission proof signs, and the regCred pin.
//!
//! This module owns the one derivation both sides use (docs/protocol.md section 14). A
//! secret is made by the client and never sent: HKDF-SHA256 over it, with an info string
//! per use, gives a 32-byte Ed25519 seed; the registry stores only the public key of that
//! pair (the *verifier*). A proof is an Ed25519 signature by the derived key over a
//! domain-separated, length-prefixed input that starts with the session binding (xlReg/2:
//! the registry's salt; xlReg/3: the handshake hash), so a proof is good in one session only
//! and a stolen store or backup (verifiers only) cannot make one.
//!
//! It also owns the regCred pin ([`regcred_pin`]), the hash a join string carries so a node
//! can check registry credentials fetched over the network.

use std::fmt;

use aws_lc_rs::hkdf;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use sha2::{Digest as _, Sha256};

/// HKDF info of the owner credential's key.
pub const OWNER_INFO: &[u8] = b"xlreg owner v1";
/// HKDF info of a join token's key, followed by `00 || tid`.
pub const TOKEN_INFO: &[u8] = b"xlreg join token v1";
/// Domain separator of a join proof's input.
pub const JOIN_PROOF_DOMAIN: &[u8] = b"xlreg join proof v1\0";
/// Domain separator of a list proof's input.
pub const LIST_PROOF_DOMAIN: &[u8] = b"xlreg list proof v1\0";
/// Domain separator of an owner proof's input.
pub const OWNER_PROOF_DOMAIN: &[u8] = b"xlreg owner op v1\0";
/// Domain separator of the regCred pin's input.
pub const PIN_DOMAIN: &[u8] = b"xlreg regcred pin v1\0";

/// Length of an Ed25519 public key (a verifier).
pub const VERIFIER_LEN: usize = 32;
/// Length of an Ed25519 signature (a proof).
pub const PROOF_LEN: usize = 64;
/// Longest token id.
pub const MAX_TOKEN_ID_LEN: usize = 16;
/// Length of the token ids xlreg's client makes.
pub const TOKEN_ID_LEN: usize = 6;
/// Length of a join token's secret: 26 base32 characters, 130 bits.
pub const TOKEN_SECRET_LEN: usize = 26;
/// Length of the owner credential's secret: 32 base32 characters, 160 bits.
pub const OWNER_SECRET_LEN: usize = 32;

/// The characters of a secret: lowercase RFC 4648 base32, 5 bits each.
const SECRET_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// The characters of a token id.
const TOKEN_ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a credential's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A token id that is empty, too long, or not of `[a-z0-9]`.
    #[error("token id {0:?} must be 1 to 16 characters of a-z and 0-9")]
    BadTokenId(String),
    /// A join token's text that is not `tid.secret` with a 26-character base32 secret.
    #[error("a join token is ID.SECRET: 1 to 16 characters of a-z0-9, a dot, 26 of a-z2-7")]
    BadJoinToken,
    /// An owner credential that is not 32 characters of base32.
    #[error("an owner credential is 32 characters of a-z and 2-7")]
    BadOwnerCredential,
}

/// Checks a token id: 1..=16 characters of `[a-z0-9]`.
pub fn check_token_id(tid: &str) -> Result<(), CredentialError> {
    let ok = !tid.is_empty()
        && tid.len() <= MAX_TOKEN_ID_LEN
        && tid.bytes().all(|b| TOKEN_ID_ALPHABET.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadTokenId(
            tid.chars().take(MAX_TOKEN_ID_LEN + 1).collect(),
        ))
    }
}

fn is_secret(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| SECRET_ALPHABET.contains(&b))
}

fn random_text<R: rand::Rng + ?Sized>(rng: &mut R, alphabet: &[u8], len: usize) -> String {
    // Rejection sampling keeps every character uniform (36 does not divide 256).
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut byte = [0u8; 1];
        rng.fill_bytes(&mut byte);
        if usize::from(byte[0]) < limit {
            out.push(char::from(alphabet[usize::from(byte[0]) % alphabet.len()]));
        }
    }
    out
}

/// An Ed25519 key pair derived from a secret: signs proofs.
pub struct ProofKey(Ed25519KeyPair);

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProofKey({})", hex::encode(self.verifier()))
    }
}

impl ProofKey {
    /// The key pair of HKDF-SHA256(salt empty, ikm = `secret`, info = `info`, 32 bytes) as
    /// an Ed25519 seed (RFC 8032 section 5.1.5).
    fn derive(secret: &[u8], info: &[&[u8]]) -> ProofKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret);
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes of one SHA-256 HKDF expansion can neither be refused nor fail.
        let okm = prk
            .expand(info, hkdf::HKDF_SHA256)
            .expect("32 bytes is within HKDF-SHA256's output limit");
        okm.fill(&mut seed[..])
            .expect("the output buffer is the length asked for");
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..])
            .expect("every 32-byte string is an Ed25519 seed");
        ProofKey(pair)
    }

    /// The public key the registry stores.
    pub fn verifier(&self) -> [u8; VERIFIER_LEN] {
        let mut out = [0u8; VERIFIER_LEN];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// A proof: the Ed25519 signature of `input`.
    pub fn sign(&self, input: &[u8]) -> [u8; PROOF_LEN] {
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(self.0.sign(input).as_ref());
        out
    }
}

/// Whether `proof` is a valid Ed25519 signature of `input` by `verifier`. Wrong lengths are
/// simply invalid.
pub fn verify(verifier: &[u8], input: &[u8], proof: &[u8]) -> bool {
    verifier.len() == VERIFIER_LEN
        && proof.len() == PROOF_LEN
        && signature::UnparsedPublicKey::new(&signature::ED25519, verifier)
            .verify(input, proof)
            .is_ok()
}

/// A join token as its holder has it: the public id and the secret, written `tid.secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinTokenSecret {
    tid: String,
    secret: zeroize::Zeroizing<String>,
}

impl fmt::Debug for JoinTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        write!(f, "JoinTokenSecret({}.…)", self.tid)
    }
}

impl JoinTokenSecret {
    /// A fresh token: a 6-character id and a 26-character secret from `rng` (a
    /// cryptographic one).
    pub fn generate<R: rand::Rng + ?Sized>(rng: &mut R) -> JoinTokenSecret {
        JoinTokenSecret {
            tid: random_text(rng, TOKEN_ID_ALPHABET, TOKEN_ID_LEN),
            secret: zeroize::Zeroizing::new(random_text(rng, SECRET_ALPHABET, TOKEN_SECRET_LEN)),
        }
    }

    /// Parses `tid.secret` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<JoinTokenSecret, CredentialError> {
        let (tid, secret) = text
            .trim()
            .split_once('.')
            .ok_or(CredentialError::BadJoinToken)?;
        check_token_id(tid).map_err(|_| CredentialError::BadJoinToken)?;
        if !is_secret(secret, TOKEN_SECRET_LEN) {
            return Err(CredentialError::BadJoinToken);
        }
        Ok(JoinTokenSecret {
            tid: tid.to_string(),
            secret: zeroize::Zeroizing::new(secret.to_string()),
        })
    }

    /// The public token id.
    pub fn id(&self) -> &str {
        &self.tid
    }

    /// The token's text, `tid.secret`: a secret, never to be logged.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.tid, self.secret.as_str())
    }

    /// The key pair of the token: info = [`TOKEN_INFO`] `|| 00 || tid`.
    pub fn key(&self) -> ProofKey {
        ProofKey::derive(
            self.secret.as_bytes(),
            &[TOKEN_INFO, &[0], self.tid.as_bytes()],
        )
    }
}

/// The owner credential: a 32-character base32 secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerSecret(zeroize::Zeroizing<String>);

impl fmt::Debug for OwnerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerSecret(…)")
    }
}

impl OwnerSecret {
    /// A fresh owner credential from `rng` (a cryptographic one).
    pub fn generate<R: rand::Rng + ?Sized>(rng: &mut R) -> OwnerSecret {
        OwnerSecret(zeroize::Zeroizing::new(random_text(
            rng,
            SECRET_ALPHABET,
            OWNER_SECRET_LEN,
        )))
    }

    /// Parses the credential's text (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<OwnerSecret, CredentialError> {
        let text = text.trim();
        if !is_secret(text, OWNER_SECRET_LEN) {
            return Err(CredentialError::BadOwnerCredential);
        }
        Ok(OwnerSecret(zeroize::Zeroizing::new(text.to_string())))
    }

    /// The credential's text: a secret, never to be logged.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The owner's key pair: info = [`OWNER_INFO`].
    pub fn key(&self) -> ProofKey {
        ProofKey::derive(self.0.as_bytes(), &[OWNER_INFO])
    }
}

/// Appends `field(bytes)` = `u32 length (big-endian) || bytes`, the length-prefixed field of
/// every signed input (member tokens, docs/protocol.md section 7, and the proofs here).
/// Every input is bounded by the frame limit, far below `u32::MAX`.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// What a join proof covers besides the session and the cluster: the joining node as it
/// registered in this session.
#[derive(Debug, Clone, Copy)]
pub struct JoiningNode<'a> {
    /// The node's id.
    pub id: &'a [u8],
    /// Its comms key, DER SubjectPublicKeyInfo.
    pub comms_key: &'a [u8],
    /// Its signing key, DER SubjectPublicKeyInfo.
    pub sig_key: &'a [u8],
    /// Its endpoints, in order.
    pub endpoints: &'a [String],
}

/// The input of a join proof: [`JOIN_PROOF_DOMAIN`] `|| field(binding) || field(cluster id)
/// || field(tid) || field(node id) || field(comms key) || field(sig key) || count (u32) ||
/// field(endpoint)...`.
pub fn join_proof_input(
    binding: &[u8],
    cluster_id: &[u8],
    tid: &str,
    node: &JoiningNode<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(JOIN_PROOF_DOMAIN.len() + 700);
    out.extend_from_slice(JOIN_PROOF_DOMAIN);
    put_field(&mut out, binding);
    put_field(&mut out, cluster_id);
    put_field(&mut out, tid.as_bytes());
    put_field(&mut out, node.id);
    put_field(&mut out, node.comms_key);
    put_field(&mut out, node.sig_key);
    out.extend_from_slice(
        &u32::try_from(node.endpoints.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for endpoint in node.endpoints {
        put_field(&mut out, endpoint.as_bytes());
    }
    out
}

/// The input of a list proof: [`LIST_PROOF_DOMAIN`] `|| field(binding) || field(cluster id)
/// || field(tid)`.
pub fn list_proof_input(binding: &[u8], cluster_id: &[u8], tid: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(LIST_PROOF_DOMAIN.len() + 80);
    out.extend_from_slice(LIST_PROOF_DOMAIN);
    put_field(&mut out, binding);
    put_field(&mut out, cluster_id);
    put_field(&mut out, tid.as_bytes());
    out
}

/// The owner's operations, as named in an owner proof's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerOp {
    /// Create (target: the cluster's name; a: the owner verifier; b: the first token's id).
    Create,
    /// GetCluster as the owner.
    Get,
    /// MintToken (a: the token id; b: its verifier).
    Mint,
    /// ListTokens.
    ListTokens,
    /// RevokeToken (a: the token id).
    Revoke,
    /// Evict (a: the member's node id).
    Evict,
    /// CloseCluster.
    Close,
    /// DeleteCluster.
    Delete,
}

impl OwnerOp {
    /// The operation's name in the proof input.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerOp::Create => "create",
            OwnerOp::Get => "get",
            OwnerOp::Mint => "mint",
            OwnerOp::ListTokens => "list-tokens",
            OwnerOp::Revoke => "revoke",
            OwnerOp::Evict => "evict",
            OwnerOp::Close => "close",
            OwnerOp::Delete => "delete",
        }
    }
}

/// The input of an owner proof: [`OWNER_PROOF_DOMAIN`] `|| field(binding) || field(op) ||
/// field(target) || field(a) || field(b)`; `target` is the cluster's id (its name for
/// Create), `a` and `b` the operation's arguments (empty when it has none).
pub fn owner_proof_input(
    binding: &[u8],
    op: OwnerOp,
    target: &[u8],
    a: &[u8],
    b: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(OWNER_PROOF_DOMAIN.len() + 160);
    out.extend_from_slice(OWNER_PROOF_DOMAIN);
    put_field(&mut out, binding);
    put_field(&mut out, op.as_str().as_bytes());
    put_field(&mut out, target);
    put_field(&mut out, a);
    put_field(&mut out, b);
    out
}

/// The regCred pin: SHA-256 of [`PIN_DOMAIN`] `|| field(registry id) || field(comms key DER)
/// || field(sig key DER)`, keys as DER SubjectPublicKeyInfo. The version-3 handshake keys
/// are covered by their signature by the sig key (section 9).
pub fn regcred_pin(registry_id: &[u8], comms_key_der: &[u8], sig_key_der: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(PIN_DOMAIN.len() + 700);
    input.extend_from_slice(PIN_DOMAIN);
    put_field(&mut input, registry_id);
    put_field(&mut input, comms_key_der);
    put_field(&mut input, sig_key_der);
    Sha256::digest(&input).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinTokenSecret {
        JoinTokenSecret::parse("k3x9p0.abcdefghijklmnopqrstuvwxyz").unwrap()
    }

    #[test]
    fn token_text_round_trips_and_bad_text_is_refused() {
        let t = token();
        assert_eq!(t.id(), "k3x9p0");
        assert_eq!(JoinTokenSecret::parse(&t.expose()).unwrap(), t);
        for bad in [
            "",
            "k3x9p0",
            "k3x9p0.",
            ".abcdefghijklmnopqrstuvwxyz",
            "K3X9P0.abcdefghijklmnopqrstuvwxyz",
            "k3x9p0.abcdefghijklmnopqrstuvwxy",
            "k3x9p0.abcdefghijklmnopqrstuvwxy1",
            "k3x9p0.abcdefghijklmnopqrstuvwxyza",
            "0123456789abcdefg.abcdefghijklmnopqrstuvwxyz",
        ] {
            assert_eq!(
                JoinTokenSecret::parse(bad),
                Err(CredentialError::BadJoinToken),
                "{bad}"
            );
        }
        assert!(!format!("{t:?}").contains("abcdef"));
    }

    #[test]
    fn generated_credentials_parse_and_differ() {
        let mut rng = rand::rng();
        let a = JoinTokenSecret::generate(&mut rng);
        let b = JoinTokenSecret::generate(&mut rng);
        assert_ne!(a, b);
        assert_eq!(JoinTokenSecret::parse(&a.expose()).unwrap(), a);
        let owner = OwnerSecret::generate(&mut rng);
        assert_eq!(OwnerSecret::parse(owner.expose()).unwrap(), owner);
        assert!(OwnerSecret::parse("short").is_err());
        assert!(!format!("{owner:?}").contains(owner.expose()));
    }

    #[test]
    fn a_proof_verifies_only_under_its_key_and_input() {
        let key = token().key();
        let input = list_proof_input(&[1; 16], &[2; 32], "k3x9p0");
        let proof = key.sign(&input);
        assert!(verify(&key.verifier(), &input, &proof));
        let other_session = list_proof_input(&[3; 16], &[2; 32], "k3x9p0");
        assert!(!verify(&key.verifier(), &other_session, &proof));
        let owner = OwnerSecret::parse("abcdefghijklmnopqrstuvwxyz234567").unwrap();
        assert!(!verify(&owner.key().verifier(), &input, &proof));
        assert!(!verify(&key.verifier(), &input, &proof[..63]));
        assert!(!verify(&key.verifier()[..31], &input, &proof));
    }

    #[test]
    fn the_same_secret_under_another_id_or_use_gives_another_key() {
        let a = JoinTokenSecret::parse("aaaaaa.abcdefghijklmnopqrstuvwxyz").unwrap();
        let b = JoinTokenSecret::parse("bbbbbb.abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_ne!(a.key().verifier(), b.key().verifier());
        assert_eq!(a.key().verifier(), a.clone().key().verifier());
    }

    #[test]
    fn token_ids_are_checked() {
        assert!(check_token_id("a").is_ok());
        assert!(check_token_id("0123456789abcdef").is_ok());
        assert!(check_token_id("").is_err());
        assert!(check_token_id("0123456789abcdefg").is_err());
        assert!(check_token_id("a-b").is_err());
        assert!(check_token_id("é").is_err());
    }
}
