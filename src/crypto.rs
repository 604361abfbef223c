//! Every cryptographic operation xlreg performs, in one place.
//!
//! This module owns RSA keys (generation, PKCS#8 PEM and SubjectPublicKeyInfo DER encodings,
//! the OpenSSH `ssh-rsa` form used by `regCred.dat`), RSA-OAEP hello encryption and
//! decryption, RSA PKCS#1 v1.5 token signatures, the AES-256-GCM session cipher, and the
//! AES-256-CBC cipher of the xlReg 1.9 wire, HKDF-SHA256 (the key that seals the registry's
//! identity on etcd), and the xlReg/3 primitives: the registry's
//! static handshake keys (X25519 and ML-KEM-768, [`HandshakeKeyPair`]), ML-KEM-768
//! encapsulation, and the Noise handshake and transport states ([`NoiseHandshake`],
//! [`NoiseTransport`]) on snow with a resolver that hands X25519 to aws-lc-rs. Nothing
//! outside this module names a crypto crate.
//!
//! Crate choices (see docs/dependencies.md):
//! - The server's RSA private-key operation, one per session, runs on aws-lc-rs: 4x the rsa
//!   crate's speed on this hardware, constant-time, and it builds with a C compiler alone.
//! - Signature verification, run on every Member request, also uses aws-lc-rs (4x faster),
//!   and so does reading a member's keys when they come in canonical DER (the rsa crate's
//!   parse computes a Montgomery form that neither storing the key nor verifying needs).
//! - The rsa crate (0.10, constant-time arithmetic) generates keys, encodes and decodes them,
//!   encrypts hellos and signs on the client side.
//! - AES-GCM and AES-CBC come from RustCrypto (constant-time AES with hardware support).
//! - Noise is snow 0.10 (maintained, reviewed); its X25519 runs on aws-lc-rs (half the
//!   responder's cost of snow's pure-Rust default), ML-KEM-768 is aws-lc-rs's `kem` module.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Size in bits of the keys xlreg generates.
pub const RSA_BITS: usize = 2048;
/// Smallest RSA key a member may register.
pub const MIN_MEMBER_KEY_BITS: usize = 2048;
/// Largest RSA key a member may register (bounds the cost of verifying its signatures).
pub const MAX_MEMBER_KEY_BITS: usize = 4096;
/// Length of an AES-256 key.
pub const AES_KEY_LEN: usize = 32;
/// Length of the AES-GCM authentication tag appended to every sealed message.
pub const GCM_TAG_LEN: usize = 16;
/// Length of an AES block, and of the xlReg 1.9 per-message IV.
pub const AES_BLOCK_LEN: usize = 16;

/// What went wrong in a cryptographic operation. Deliberately coarse: a peer learns nothing
/// from the kind of failure beyond what it could already see.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key could not be generated.
    #[error("RSA key generation failed: {0}")]
    KeyGeneration(String),
    /// A private key (PEM or DER) could not be parsed.
    #[error("not a valid RSA private key: {0}")]
    BadPrivateKey(String),
    /// A public key (DER, PEM or ssh-rsa) could not be parsed.
    #[error("not a valid RSA public key: {0}")]
    BadPublicKey(String),
    /// An RSA key is smaller or larger than this registry accepts.
    #[error("RSA key of {bits} bits is outside the accepted {min}..={max} bits")]
    KeySize {
        /// The key's modulus size.
        bits: usize,
        /// Smallest accepted size.
        min: usize,
        /// Largest accepted size.
        max: usize,
    },
    /// RSA encryption failed (for example, a plaintext too long for the key).
    #[error("RSA encryption failed")]
    Encrypt,
    /// An RSA ciphertext did not decrypt under the registry's key.
    #[error("RSA decryption failed")]
    Decrypt,
    /// A signature could not be made.
    #[error("signing failed")]
    Sign,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// An AES-GCM message failed authentication (tampered, replayed, reordered or wrong key).
    #[error("message authentication failed")]
    Unauthentic,
    /// An AES-CBC message was not a whole number of blocks or had bad padding.
    #[error("malformed AES-CBC message")]
    BadCbc,
    /// HKDF could not derive a key (never for the lengths xlreg asks for).
    #[error("key derivation failed")]
    KeyDerivation,
}

/// An AES-256 key, wiped from memory when dropped.
pub type AesKey = Zeroizing<[u8; AES_KEY_LEN]>;

/// Fills a fresh array from the operating system's cryptographic RNG (through rand's
/// thread-local generator, which reseeds from it).
pub fn random_array<const N: usize>() -> [u8; N] {
    use rand::Rng as _;
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

/// A fresh random AES-256 key.
pub fn random_aes_key() -> AesKey {
    Zeroizing::new(random_array::<AES_KEY_LEN>())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// An RSA private key held by a node (or by the registry for its signing key), with its
/// public half. Used on the client side and for key files; the registry's hot-path
/// decryption uses [`HelloDecryptor`].
#[derive(Clone)]
pub struct RsaKeyPair {
    private: rsa::PrivateKey,
    /// The same key on aws-lc-rs, for signing: a member signs its token in every session,
    /// and aws-lc-rs's private-key operation is 4x the rsa crate's (docs/dependencies.md).
    /// `None` for keys aws-lc-rs refuses (below 2048 bits, which only tests make): those
    /// sign with the rsa crate.
    signer: Option<std::sync::Arc<signature::RsaKeyPair>>,
    public: PublicKey,
}

impl std::fmt::Debug for RsaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private material.
        write!(f, "RsaKeyPair({})", self.public.fingerprint())
    }
}

impl RsaKeyPair {
    /// Generates a new key pair with public exponent 65537.
    pub fn generate(bits: usize) -> Result<RsaKeyPair, CryptoError> {
        let private = rsa::PrivateKey::new(&mut rand::rng(), bits)
            .map_err(|e| CryptoError::KeyGeneration(e.to_string()))?;
        RsaKeyPair::from_private(private)
    }

    fn from_private(private: rsa::PrivateKey) -> Result<RsaKeyPair, CryptoError> {
        let public = PublicKey::from_rsa(private.to_public_key())?;
        let der = private
            .to_pkcs8_der()
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))?;
        let signer = signature::RsaKeyPair::from_pkcs8(der.as_bytes())
            .ok()
            .map(std::sync::Arc::new);
        Ok(RsaKeyPair {
            private,
            signer,
            public,
        })
    }

    /// Reads a PKCS#8 PEM (`BEGIN PRIVATE KEY`) or PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`) key.
    pub fn from_pem(pem: &str) -> Result<RsaKeyPair, CryptoError> {
        let private = match rsa::PrivateKey::from_pkcs8_pem(pem) {
            Ok(key) => key,
            Err(pkcs8_err) => rsa::PrivateKey::from_pkcs1_pem(pem)
                .map_err(|_| CryptoError::BadPrivateKey(pkcs8_err.to_string()))?,
        };
        RsaKeyPair::from_private(private)
    }

    /// The PKCS#8 PEM encoding, wiped from memory when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))
    }

    /// The PKCS#8 DER encoding, wiped from memory when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = self
            .private
            .to_pkcs8_der()
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// RSASSA-PKCS1-v1_5 signature with SHA-256 over `message` (xlReg/2 tokens).
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(signer) = &self.signer else {
            return self
                .private
                .pkcs1v15_sign::<Sha256>(message)
                .map_err(|_| CryptoError::Sign);
        };
        let mut out = vec![0u8; signer.public_modulus_len()];
        signer
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message,
                &mut out,
            )
            .map_err(|_| CryptoError::Sign)?;
        Ok(out)
    }

    /// RSASSA-PKCS1-v1_5 signature with SHA-1 over `message` (xlReg 1.9 tokens only).
    pub fn sign_sha1(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        // aws-lc-rs makes no SHA-1 signatures; only the 1.9 wire needs them.
        self.private
            .pkcs1v15_sign::<sha1::Sha1>(message)
            .map_err(|_| CryptoError::Sign)
    }

    /// RSA-OAEP decryption with the rsa crate, for client-side and test use. The registry
    /// decrypts hellos with [`HelloDecryptor`].
    pub fn decrypt_oaep_sha1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.private
            .oaep_decrypt::<sha1::Sha1>(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// A decryptor for this key on the fast (aws-lc-rs) path.
    pub fn hello_decryptor(&self) -> Result<HelloDecryptor, CryptoError> {
        HelloDecryptor::from_pkcs8_der(&self.to_pkcs8_der()?)
    }
}

/// An RSA public key as exchanged on the wire: DER SubjectPublicKeyInfo (PKIX).
#[derive(Clone)]
pub struct PublicKey {
    /// The canonical DER SubjectPublicKeyInfo encoding.
    der: Vec<u8>,
    /// The modulus's size in bytes.
    modulus_len: usize,
    /// The rsa crate's form, for encryption and the ssh-rsa form: made on first use for a
    /// key read by [`PublicKey::from_member_der`] (building it costs a big-integer
    /// remainder, about 20 us, that storing a member's key and checking its signature never
    /// need).
    key: std::sync::OnceLock<rsa::PublicKey>,
}

impl PartialEq for PublicKey {
    /// Two keys are equal when their canonical encodings are: the same modulus and exponent.
    fn eq(&self, other: &PublicKey) -> bool {
        self.der == other.der
    }
}

impl Eq for PublicKey {}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} bits, {})", self.bits(), self.fingerprint())
    }
}

/// The DER of an rsaEncryption AlgorithmIdentifier with NULL parameters, the only one the
/// canonical encoding (the rsa crate's) carries.
const RSA_ENCRYPTION_ALGORITHM_DER: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

impl PublicKey {
    fn from_rsa(key: rsa::PublicKey) -> Result<PublicKey, CryptoError> {
        let der = key
            .to_public_key_der()
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?
            .into_vec();
        Ok(PublicKey {
            der,
            modulus_len: key.size(),
            key: std::sync::OnceLock::from(key),
        })
    }

    /// Parses DER SubjectPublicKeyInfo, as carried in tokens. The stored encoding is the
    /// canonical re-encoding, so byte-wise comparison of two keys is meaningful.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, CryptoError> {
        let key = rsa::PublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?;
        PublicKey::from_rsa(key)
    }

    /// Parses a PEM `BEGIN PUBLIC KEY` block.
    pub fn from_spki_pem(pem: &str) -> Result<PublicKey, CryptoError> {
        let key = rsa::PublicKey::from_public_key_pem(pem)
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?;
        PublicKey::from_rsa(key)
    }

    /// Parses DER and checks the size is one a member may register. The same keys are
    /// accepted, with the same stored encoding and errors, as by [`PublicKey::from_spki_der`]
    /// followed by the size check; a key already in canonical form (what every client
    /// sends) is read on the fast path (`PublicKey::from_canonical_der`).
    pub fn from_member_der(der: &[u8]) -> Result<PublicKey, CryptoError> {
        let key = match PublicKey::from_canonical_der(der) {
            Some(key) => key,
            None => PublicKey::from_spki_der(der)?,
        };
        key.of_member_size()
    }

    /// This key, if its size is one a member may register.
    fn of_member_size(self) -> Result<PublicKey, CryptoError> {
        let bits = self.bits();
        if !(MIN_MEMBER_KEY_BITS..=MAX_MEMBER_KEY_BITS).contains(&bits) {
            return Err(CryptoError::KeySize {
                bits,
                min: MIN_MEMBER_KEY_BITS,
                max: MAX_MEMBER_KEY_BITS,
            });
        }
        Ok(self)
    }

    /// Reads `der` with aws-lc-rs if it is a canonical rsaEncryption SubjectPublicKeyInfo of
    /// 2048 to 8192 bits: `None` for anything else (the caller then takes the rsa crate's
    /// path, whose answer stands). For the keys it takes, the rsa crate would accept the
    /// same key with the same encoding: aws-lc checks what the rsa crate checks (a minimal
    /// DER SEQUENCE of two positive INTEGERs; n odd; e odd, at least 3 and at most 33 bits;
    /// and e < n follows from the sizes), and `der` is byte for byte the re-encoding, with
    /// the rsaEncryption/NULL algorithm the rsa crate writes.
    fn from_canonical_der(der: &[u8]) -> Option<PublicKey> {
        use aws_lc_rs::encoding::AsDer as _;
        // SEQUENCE, its length in two bytes (every key of 2048 bits or more), then the
        // algorithm.
        if der.get(4..4 + RSA_ENCRYPTION_ALGORITHM_DER.len())? != RSA_ENCRYPTION_ALGORITHM_DER {
            return None;
        }
        let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(der).ok()?;
        let canonical = key.as_der().ok()?;
        if canonical.as_ref() != der {
            return None;
        }
        Some(PublicKey {
            der: der.to_vec(),
            modulus_len: key.key_size_bytes(),
            key: std::sync::OnceLock::new(),
        })
    }

    /// The rsa crate's form of this key, made on first use.
    fn rsa_key(&self) -> Result<&rsa::PublicKey, CryptoError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = rsa::PublicKey::from_public_key_der(&self.der)
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?;
        Ok(self.key.get_or_init(|| key))
    }

    /// The DER SubjectPublicKeyInfo encoding.
    pub fn to_spki_der(&self) -> &[u8] {
        &self.der
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.modulus_len * 8
    }

    /// SHA-256 of the DER encoding, lowercase hex: how operators tell keys apart.
    pub fn fingerprint(&self) -> String {
        hex::encode(sha256(&self.der))
    }

    /// RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label (xlReg/2 hello).
    pub fn encrypt_oaep_sha256(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rsa_key()?
            .oaep_encrypt::<Sha256>(plaintext)
            .map_err(|_| CryptoError::Encrypt)
    }

    /// RSA-OAEP with SHA-1 and MGF1-SHA-1, empty label (xlReg 1.9 hello).
    pub fn encrypt_oaep_sha1(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rsa_key()?
            .oaep_encrypt::<sha1::Sha1>(plaintext)
            .map_err(|_| CryptoError::Encrypt)
    }

    /// Verifies an RSASSA-PKCS1-v1_5 SHA-256 signature over `message`.
    pub fn verify_sha256(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.verify_fast(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
    }

    /// Verifies an RSASSA-PKCS1-v1_5 SHA-1 signature over `message` (xlReg 1.9 tokens).
    pub fn verify_sha1(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        self.verify_fast(
            &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            message,
            signature,
        )
    }

    /// Signature verification runs on every Member request, so it takes the aws-lc-rs path:
    /// 34 us per RSA-2048 verification here against 132 us for the rsa crate
    /// (docs/dependencies.md). Keys below 2048 bits never verify.
    fn verify_fast(
        &self,
        algorithm: &'static signature::RsaParameters,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), CryptoError> {
        signature::UnparsedPublicKey::new(algorithm, &self.der)
            .verify(message, sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// The OpenSSH `ssh-rsa AAAA...` form (RFC 4253 section 6.6), as written in regCred.dat.
    pub fn to_ssh(&self) -> String {
        let mut blob = Vec::with_capacity(self.der.len() + 32);
        put_ssh_string(&mut blob, b"ssh-rsa");
        // Every PublicKey's DER is one the rsa crate accepts: it made it, or (a member's
        // key) `from_canonical_der` took only what it accepts.
        let key = self
            .rsa_key()
            .expect("a PublicKey's DER is always one the rsa crate reads");
        put_ssh_mpint(&mut blob, &key.e_bytes());
        put_ssh_mpint(&mut blob, &key.n_bytes());
        format!(
            "ssh-rsa {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    /// Parses the OpenSSH `ssh-rsa AAAA... [comment]` form.
    pub fn from_ssh(text: &str) -> Result<PublicKey, CryptoError> {
        let bad = |why: &str| CryptoError::BadPublicKey(format!("ssh-rsa key: {why}"));
        let mut parts = text.split_whitespace();
        if parts.next() != Some("ssh-rsa") {
            return Err(bad("does not start with ssh-rsa"));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(parts.next().ok_or_else(|| bad("no key data"))?)
            .map_err(|_| bad("key data is not base64"))?;
        let mut rest = blob.as_slice();
        if take_ssh_string(&mut rest).ok_or_else(|| bad("truncated"))? != b"ssh-rsa" {
            return Err(bad("key type inside the blob is not ssh-rsa"));
        }
        let e = take_ssh_string(&mut rest).ok_or_else(|| bad("truncated"))?;
        let n = take_ssh_string(&mut rest).ok_or_else(|| bad("truncated"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let to_uint = |bytes: &[u8]| {
            let bytes = strip_leading_zeros(bytes);
            rsa::BoxedUint::from_be_slice_vartime(bytes)
        };
        let key = rsa::PublicKey::new(to_uint(n), to_uint(e))
            .map_err(|e| CryptoError::BadPublicKey(e.to_string()))?;
        PublicKey::from_rsa(key)
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn put_ssh_string(out: &mut Vec<u8>, data: &[u8]) {
    // Lengths here are of RSA parameters and a fixed name: always far below u32::MAX.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn put_ssh_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let magnitude = strip_leading_zeros(magnitude);
    // A positive mpint whose top bit is set gets a leading zero byte.
    if magnitude.first().is_some_and(|b| b & 0x80 != 0) {
        out.extend_from_slice(&((magnitude.len() + 1) as u32).to_be_bytes());
        out.push(0);
        out.extend_from_slice(magnitude);
    } else {
        put_ssh_string(out, magnitude);
    }
}

fn take_ssh_string<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len_bytes: [u8; 4] = input.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let data = input.get(4..4usize.checked_add(len)?)?;
    *input = &input[4 + len..];
    Some(data)
}

/// The registry's RSA private comms key on the fast path (aws-lc-rs): decrypts hellos.
pub struct HelloDecryptor {
    key: OaepPrivateDecryptingKey,
}

impl std::fmt::Debug for HelloDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HelloDecryptor(..)")
    }
}

impl HelloDecryptor {
    /// Loads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<HelloDecryptor, CryptoError> {
        let private = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| CryptoError::BadPrivateKey(e.to_string()))?;
        let key = OaepPrivateDecryptingKey::new(private)
            .map_err(|_| CryptoError::BadPrivateKey("unusable for OAEP".into()))?;
        Ok(HelloDecryptor { key })
    }

    /// Length of the ciphertexts this key decrypts (the modulus size in bytes).
    pub fn ciphertext_len(&self) -> usize {
        self.key.key_size_bytes()
    }

    /// RSA-OAEP-SHA-256 decryption (xlReg/2 hello).
    pub fn decrypt_oaep_sha256(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext)
    }

    /// RSA-OAEP-SHA-1 decryption (xlReg 1.9 hello).
    pub fn decrypt_oaep_sha1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.decrypt(&OAEP_SHA1_MGF1SHA1, ciphertext)
    }

    fn decrypt(
        &self,
        algorithm: &'static aws_lc_rs::rsa::OaepAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() != self.ciphertext_len() {
            return Err(CryptoError::Decrypt);
        }
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let len = self
            .key
            .decrypt(algorithm, ciphertext, &mut out, None)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// AES-256-GCM sealing with an explicit 96-bit nonce. Callers guarantee nonce uniqueness
/// per key (the session layer derives nonces from per-direction counters).
pub fn gcm_seal(key: &[u8; AES_KEY_LEN], nonce: &[u8; 12], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    // Encryption only fails for plaintexts beyond GCM's 64 GiB limit; frames are bounded far below.
    cipher
        .encrypt(&Nonce::from(*nonce), Payload::from(plaintext))
        .unwrap_or_default()
}

/// AES-256-GCM opening; any tampering, replay, reordering or wrong key fails.
pub fn gcm_open(
    key: &[u8; AES_KEY_LEN],
    nonce: &[u8; 12],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(&Nonce::from(*nonce), Payload::from(ciphertext))
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Unauthentic)
}

/// HKDF-SHA256 (RFC 5869, on aws-lc-rs): an AES-256 key from `secret`, `salt` and `info`.
/// Used to seal the registry's identity under an operator's secret file (docs/ha.md).
pub fn hkdf_sha256_key(secret: &[u8], salt: &[u8], info: &[u8]) -> Result<AesKey, CryptoError> {
    struct Len;
    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            AES_KEY_LEN
        }
    }
    let mut key = Zeroizing::new([0u8; AES_KEY_LEN]);
    let info = [info];
    // expand() fails only when asked for more than 255 hash lengths; 32 bytes is one.
    aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, salt)
        .extract(secret)
        .expand(&info, Len)
        .and_then(|okm| okm.fill(key.as_mut_slice()))
        .map_err(|_| CryptoError::KeyDerivation)?;
    Ok(key)
}

type Aes256CbcEncryptor = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDecryptor = cbc::Decryptor<aes::Aes256>;

/// AES-256-CBC encryption of `plaintext` with PKCS#7 padding (xlReg 1.9 wire only). The
/// output is always a whole, non-zero number of blocks. Unauthenticated: see
/// docs/legacy.md for why this is acceptable only on a trusted network.
pub fn cbc_encrypt(key: &[u8; AES_KEY_LEN], iv: &[u8; AES_BLOCK_LEN], plaintext: &[u8]) -> Vec<u8> {
    use cbc::cipher::{BlockModeEncrypt as _, KeyIvInit as _};
    Aes256CbcEncryptor::new(key.into(), iv.into())
        .encrypt_padded_vec::<cbc::cipher::block_padding::Pkcs7>(plaintext)
}

/// AES-256-CBC decryption with strict PKCS#7 unpadding (xlReg 1.9 wire only). Fails with
/// [`CryptoError::BadCbc`], never panics, when the ciphertext is empty or not a whole number
/// of blocks, or when the padding is malformed (last byte `n` outside 1..=16, or any of the
/// last `n` bytes different from `n`).
pub fn cbc_decrypt(
    key: &[u8; AES_KEY_LEN],
    iv: &[u8; AES_BLOCK_LEN],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use cbc::cipher::{BlockModeDecrypt as _, KeyIvInit as _};
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(AES_BLOCK_LEN) {
        return Err(CryptoError::BadCbc);
    }
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let len = Aes256CbcDecryptor::new(key.into(), iv.into())
        .decrypt_padded::<cbc::cipher::block_padding::Pkcs7>(&mut buffer)
        .map_err(|_| CryptoError::BadCbc)?
        .len();
    buffer.truncate(len);
    Ok(buffer)
}

// ---------------------------------------------------------------------------------------
// xlReg/3: the Noise handshake (snow) with X25519 on aws-lc-rs, and ML-KEM-768 (aws-lc-rs).
// ---------------------------------------------------------------------------------------

/// The Noise protocol xlReg/3 runs (docs/protocol.md, version 3).
pub const NOISE_PARAMS: &str = "Noise_NKpsk2_25519_AESGCM_SHA256";
/// Length of an X25519 public or private key.
pub const X25519_KEY_LEN: usize = 32;
/// Length of an ML-KEM-768 encapsulation (public) key.
pub const MLKEM768_PUBLIC_LEN: usize = 1184;
/// Length of an ML-KEM-768 decapsulation (private) key, in aws-lc-rs's raw form.
pub const MLKEM768_PRIVATE_LEN: usize = 2400;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an ML-KEM-768 shared secret, and of a Noise PSK.
pub const KEM_SECRET_LEN: usize = 32;
/// Length of the Noise handshake hash with SHA-256.
pub const HANDSHAKE_HASH_LEN: usize = 32;
/// Largest Noise message (the Noise specification's limit; snow enforces it).
pub const NOISE_MAX_MESSAGE_LEN: usize = 65_535;
/// Length of the AES-GCM tag a Noise message carries when its payload is encrypted.
pub const NOISE_TAG_LEN: usize = 16;
/// Bytes a handshake message may add to its payload: an ephemeral key, an encrypted static
/// key and a tag (more than NK ever uses).
const HANDSHAKE_TOKEN_ROOM: usize =
    X25519_KEY_LEN + (X25519_KEY_LEN + NOISE_TAG_LEN) + NOISE_TAG_LEN;
/// Largest payload of one Noise transport message.
pub const NOISE_MAX_PAYLOAD_LEN: usize = NOISE_MAX_MESSAGE_LEN - NOISE_TAG_LEN;

/// Opens the registry's handshake key file: a fixed header, then the raw keys.
const HANDSHAKE_KEY_MAGIC: &[u8; 24] = b"xlreg handshake keys v1\n";
/// Length of the registry's handshake key file.
pub const HANDSHAKE_KEY_FILE_LEN: usize =
    HANDSHAKE_KEY_MAGIC.len() + X25519_KEY_LEN + MLKEM768_PRIVATE_LEN + MLKEM768_PUBLIC_LEN;

/// Why a Noise or ML-KEM operation failed. Deliberately coarse, like [`CryptoError`].
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// A key has the wrong length or is not a valid key of its kind.
    #[error("not a valid {0}")]
    BadKey(&'static str),
    /// The handshake key file is not one this version wrote.
    #[error(
        "not an xlreg handshake key file (expected {HANDSHAKE_KEY_FILE_LEN} bytes with its header)"
    )]
    BadKeyFile,
    /// Key generation or encapsulation failed inside aws-lc-rs.
    #[error("ML-KEM-768 operation failed")]
    Kem,
    /// A handshake message did not authenticate or was malformed: wrong static key, wrong
    /// PSK (KEM ciphertext), altered bytes or a truncated message.
    #[error("Noise handshake message refused")]
    Handshake,
    /// A transport message failed to open (forged, altered, replayed, reordered, dropped).
    #[error("Noise transport message failed authentication")]
    Unauthentic,
    /// A message or payload over the Noise limit, or an operation out of turn.
    #[error("Noise message out of bounds or out of turn")]
    Misuse,
}

/// X25519 for snow, done by aws-lc-rs (snow's default pure-Rust DH costs twice as much per
/// handshake: docs/dependencies.md).
#[derive(Default)]
struct AwsX25519 {
    private: Zeroizing<[u8; X25519_KEY_LEN]>,
    public: [u8; X25519_KEY_LEN],
    key: Option<std::sync::Arc<aws_lc_rs::agreement::PrivateKey>>,
    /// The registry's static key, parsed once: snow sets it on every handshake, and parsing
    /// an X25519 private key costs a base-point multiplication.
    known: Option<StaticX25519>,
}

/// A static X25519 key with its public half, parsed once.
#[derive(Clone)]
struct StaticX25519 {
    private: Zeroizing<[u8; X25519_KEY_LEN]>,
    public: [u8; X25519_KEY_LEN],
    key: std::sync::Arc<aws_lc_rs::agreement::PrivateKey>,
}

impl StaticX25519 {
    fn new(private: &[u8]) -> Option<StaticX25519> {
        let key = aws_lc_rs::agreement::PrivateKey::from_private_key(
            &aws_lc_rs::agreement::X25519,
            private,
        )
        .ok()?;
        let public: [u8; X25519_KEY_LEN] =
            key.compute_public_key().ok()?.as_ref().try_into().ok()?;
        let mut copy = Zeroizing::new([0u8; X25519_KEY_LEN]);
        copy.copy_from_slice(private);
        Some(StaticX25519 {
            private: copy,
            public,
            key: std::sync::Arc::new(key),
        })
    }
}

impl snow::types::Dh for AwsX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        X25519_KEY_LEN
    }

    fn priv_len(&self) -> usize {
        X25519_KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        // snow passes priv_len() bytes; anything else leaves the key unset, and every dh()
        // then fails.
        self.key = None;
        if privkey.len() != X25519_KEY_LEN {
            return;
        }
        self.private.copy_from_slice(privkey);
        let parsed = match &self.known {
            Some(known) if known.private.as_slice() == privkey => Some(known.clone()),
            _ => StaticX25519::new(privkey),
        };
        if let Some(parsed) = parsed {
            self.public = parsed.public;
            self.key = Some(parsed.key);
        }
    }

    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        let mut private = Zeroizing::new([0u8; X25519_KEY_LEN]);
        rng.try_fill_bytes(private.as_mut())?;
        self.set(private.as_ref());
        if self.key.is_none() {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.private.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key: &aws_lc_rs::agreement::PrivateKey = self.key.as_deref().ok_or(snow::Error::Dh)?;
        // snow passes the peer's key in its MAXDHLEN (65-byte) buffer, and takes the secret
        // in another: both keys and secret are the first 32 bytes.
        let pubkey = pubkey.get(..X25519_KEY_LEN).ok_or(snow::Error::Dh)?;
        let peer =
            aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, pubkey);
        aws_lc_rs::agreement::agree(key, peer, snow::Error::Dh, |secret| {
            out.get_mut(..secret.len())
                .ok_or(snow::Error::Dh)?
                .copy_from_slice(secret);
            Ok(())
        })
    }
}

/// The one random draw snow makes in an NK handshake: the ephemeral private key, given by
/// the caller (who draws it from its RNG). The session cores own no global randomness, and
/// the worked example of docs/protocol.md fixes it. A second draw fails the handshake.
struct EphemeralKey(Option<Zeroizing<[u8; X25519_KEY_LEN]>>);

impl snow::types::Random for EphemeralKey {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(key) if dest.len() == X25519_KEY_LEN => {
                dest.copy_from_slice(key.as_ref());
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

/// snow's crypto for xlReg/3: X25519 from aws-lc-rs, the ephemeral key given by the caller,
/// SHA-256 and AES-256-GCM from snow's default (RustCrypto) resolver.
struct XlregResolver {
    ephemeral: [u8; X25519_KEY_LEN],
    /// The local static key (the registry's), if there is one.
    known: Option<StaticX25519>,
}

impl snow::resolvers::CryptoResolver for XlregResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(EphemeralKey(Some(Zeroizing::new(self.ephemeral)))))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => Some(Box::new(AwsX25519 {
                known: self.known.clone(),
                ..AwsX25519::default()
            })),
            _ => None,
        }
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        snow::resolvers::DefaultResolver.resolve_cipher(choice)
    }
}

/// The registry's public handshake keys, as published in regCred.dat.
#[derive(Clone, PartialEq, Eq)]
pub struct HandshakePublicKeys {
    x25519: [u8; X25519_KEY_LEN],
    ml_kem: Vec<u8>,
}

impl std::fmt::Debug for HandshakePublicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HandshakePublicKeys(x25519 {})",
            hex::encode(self.x25519)
        )
    }
}

impl HandshakePublicKeys {
    /// Checks and wraps a static X25519 key (32 bytes) and an ML-KEM-768 encapsulation key
    /// (1,184 bytes).
    pub fn new(x25519: &[u8], ml_kem: &[u8]) -> Result<HandshakePublicKeys, NoiseError> {
        let x25519: [u8; X25519_KEY_LEN] = x25519
            .try_into()
            .map_err(|_| NoiseError::BadKey("X25519 public key"))?;
        aws_lc_rs::kem::EncapsulationKey::new(&aws_lc_rs::kem::ML_KEM_768, ml_kem)
            .map_err(|_| NoiseError::BadKey("ML-KEM-768 public key"))?;
        Ok(HandshakePublicKeys {
            x25519,
            ml_kem: ml_kem.to_vec(),
        })
    }

    /// The static X25519 key.
    pub fn x25519(&self) -> &[u8; X25519_KEY_LEN] {
        &self.x25519
    }

    /// The ML-KEM-768 encapsulation key.
    pub fn ml_kem(&self) -> &[u8] {
        &self.ml_kem
    }

    /// Encapsulates a fresh shared secret to the ML-KEM key: the ciphertext (1,088 bytes)
    /// and the secret (32 bytes). aws-lc-rs draws the randomness itself (FIPS 203 `m`).
    pub fn encapsulate(&self) -> Result<(Vec<u8>, Zeroizing<[u8; KEM_SECRET_LEN]>), NoiseError> {
        let key = aws_lc_rs::kem::EncapsulationKey::new(&aws_lc_rs::kem::ML_KEM_768, &self.ml_kem)
            .map_err(|_| NoiseError::BadKey("ML-KEM-768 public key"))?;
        let (ciphertext, secret) = key.encapsulate().map_err(|_| NoiseError::Kem)?;
        let mut out = Zeroizing::new([0u8; KEM_SECRET_LEN]);
        out.copy_from_slice(secret.as_ref());
        Ok((ciphertext.as_ref().to_vec(), out))
    }
}

/// The registry's static handshake keys: X25519 for Noise's `s`, ML-KEM-768 for the PSK.
pub struct HandshakeKeyPair {
    x25519: StaticX25519,
    ml_kem: aws_lc_rs::kem::DecapsulationKey,
    public: HandshakePublicKeys,
}

impl std::fmt::Debug for HandshakeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private material.
        write!(f, "HandshakeKeyPair({:?})", self.public)
    }
}

impl HandshakeKeyPair {
    /// Makes new static keys from the operating system's RNG.
    pub fn generate() -> Result<HandshakeKeyPair, NoiseError> {
        let x25519 = Zeroizing::new(random_array::<X25519_KEY_LEN>());
        let ml_kem = aws_lc_rs::kem::DecapsulationKey::generate(&aws_lc_rs::kem::ML_KEM_768)
            .map_err(|_| NoiseError::Kem)?;
        let ml_kem_public = ml_kem
            .encapsulation_key()
            .and_then(|key| key.key_bytes())
            .map_err(|_| NoiseError::Kem)?;
        HandshakeKeyPair::from_parts(x25519, ml_kem, ml_kem_public.as_ref())
    }

    fn from_parts(
        x25519: Zeroizing<[u8; X25519_KEY_LEN]>,
        ml_kem: aws_lc_rs::kem::DecapsulationKey,
        ml_kem_public: &[u8],
    ) -> Result<HandshakeKeyPair, NoiseError> {
        let x25519 =
            StaticX25519::new(x25519.as_ref()).ok_or(NoiseError::BadKey("X25519 private key"))?;
        let public = HandshakePublicKeys::new(&x25519.public, ml_kem_public)?;
        Ok(HandshakeKeyPair {
            x25519,
            ml_kem,
            public,
        })
    }

    /// Reads the key file's bytes ([`to_file_bytes`](Self::to_file_bytes)).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<HandshakeKeyPair, NoiseError> {
        if bytes.len() != HANDSHAKE_KEY_FILE_LEN || !bytes.starts_with(HANDSHAKE_KEY_MAGIC) {
            return Err(NoiseError::BadKeyFile);
        }
        let rest = &bytes[HANDSHAKE_KEY_MAGIC.len()..];
        let (x25519_bytes, rest) = rest.split_at(X25519_KEY_LEN);
        let (private, public) = rest.split_at(MLKEM768_PRIVATE_LEN);
        let mut x25519 = Zeroizing::new([0u8; X25519_KEY_LEN]);
        x25519.copy_from_slice(x25519_bytes);
        let ml_kem = aws_lc_rs::kem::DecapsulationKey::new(&aws_lc_rs::kem::ML_KEM_768, private)
            .map_err(|_| NoiseError::BadKey("ML-KEM-768 private key"))?;
        HandshakeKeyPair::from_parts(x25519, ml_kem, public)
    }

    /// The key file's bytes: `"xlreg handshake keys v1\n" || X25519 private (32) ||
    /// ML-KEM-768 private (2,400) || ML-KEM-768 public (1,184)`.
    pub fn to_file_bytes(&self) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        let private = self.ml_kem.key_bytes().map_err(|_| NoiseError::Kem)?;
        let mut out = Zeroizing::new(Vec::with_capacity(HANDSHAKE_KEY_FILE_LEN));
        out.extend_from_slice(HANDSHAKE_KEY_MAGIC);
        out.extend_from_slice(self.x25519.private.as_ref());
        out.extend_from_slice(private.as_ref());
        out.extend_from_slice(&self.public.ml_kem);
        Ok(out)
    }

    /// The public halves.
    pub fn public(&self) -> &HandshakePublicKeys {
        &self.public
    }

    /// Decapsulates an ML-KEM-768 ciphertext. A ciphertext of the right length always
    /// yields a secret (ML-KEM's implicit rejection): a wrong one only makes the Noise
    /// handshake fail later.
    pub fn decapsulate(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<[u8; KEM_SECRET_LEN]>, NoiseError> {
        if ciphertext.len() != MLKEM768_CIPHERTEXT_LEN {
            return Err(NoiseError::Handshake);
        }
        let secret = self
            .ml_kem
            .decapsulate(ciphertext.into())
            .map_err(|_| NoiseError::Handshake)?;
        let mut out = Zeroizing::new([0u8; KEM_SECRET_LEN]);
        out.copy_from_slice(secret.as_ref());
        Ok(out)
    }
}

/// One side of a Noise handshake in progress (snow's `HandshakeState`).
pub struct NoiseHandshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for NoiseHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseHandshake(..)")
    }
}

fn noise_params() -> snow::params::NoiseParams {
    // The constant parses; a failure would be a bug caught by every test.
    NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("{NOISE_PARAMS} parses"))
}

impl NoiseHandshake {
    /// The initiator (client) of `Noise_NKpsk2_25519_AESGCM_SHA256` to the registry's static
    /// X25519 key, with `prologue` and `psk`, and the ephemeral private key `ephemeral`
    /// (fresh random bytes: reusing one breaks the handshake's secrecy).
    pub fn initiator(
        registry: &[u8; X25519_KEY_LEN],
        prologue: &[u8],
        psk: &[u8; KEM_SECRET_LEN],
        ephemeral: [u8; X25519_KEY_LEN],
    ) -> Result<NoiseHandshake, NoiseError> {
        let resolver = Box::new(XlregResolver {
            ephemeral,
            known: None,
        });
        let state = snow::Builder::with_resolver(noise_params(), resolver)
            .remote_public_key(registry)
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.psk(2, psk))
            .and_then(|b| b.build_initiator())
            .map_err(|_| NoiseError::Misuse)?;
        Ok(NoiseHandshake { state })
    }

    /// The responder (registry) with its static keys, `prologue` and `psk`; its ephemeral
    /// private key is `ephemeral` (fresh random bytes).
    pub fn responder(
        keys: &HandshakeKeyPair,
        prologue: &[u8],
        psk: &[u8; KEM_SECRET_LEN],
        ephemeral: [u8; X25519_KEY_LEN],
    ) -> Result<NoiseHandshake, NoiseError> {
        let resolver = Box::new(XlregResolver {
            ephemeral,
            known: Some(keys.x25519.clone()),
        });
        let state = snow::Builder::with_resolver(noise_params(), resolver)
            .local_private_key(keys.x25519.private.as_ref())
            .and_then(|b| b.prologue(prologue))
            .and_then(|b| b.psk(2, psk))
            .and_then(|b| b.build_responder())
            .map_err(|_| NoiseError::Misuse)?;
        Ok(NoiseHandshake { state })
    }

    /// Writes the next handshake message carrying `payload`.
    pub fn write_message(&mut self, payload: &[u8]) -> Result<Vec<u8>, NoiseError> {
        // Room for the payload, its tag and the tokens an NK message carries (at most an
        // ephemeral key and an encrypted static key), not a whole 64 KiB per message.
        let room = payload.len() + HANDSHAKE_TOKEN_ROOM;
        let mut out = vec![0u8; room.min(NOISE_MAX_MESSAGE_LEN)];
        let len = self
            .state
            .write_message(payload, &mut out)
            .map_err(|_| NoiseError::Misuse)?;
        out.truncate(len);
        Ok(out)
    }

    /// Reads the peer's next handshake message and returns its payload.
    pub fn read_message(&mut self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        // The payload is never longer than the message that carries it.
        let mut out = Zeroizing::new(vec![0u8; message.len().min(NOISE_MAX_MESSAGE_LEN)]);
        let len = self
            .state
            .read_message(message, &mut out)
            .map_err(|_| NoiseError::Handshake)?;
        out.truncate(len);
        Ok(out)
    }

    /// The handshake hash `h` so far (final once the handshake is done).
    pub fn handshake_hash(&self) -> [u8; HANDSHAKE_HASH_LEN] {
        let mut out = [0u8; HANDSHAKE_HASH_LEN];
        let hash = self.state.get_handshake_hash();
        out.copy_from_slice(&hash[..HANDSHAKE_HASH_LEN.min(hash.len())]);
        out
    }

    /// The transport state once both handshake messages are through.
    pub fn into_transport(self) -> Result<NoiseTransport, NoiseError> {
        let state = self
            .state
            .into_transport_mode()
            .map_err(|_| NoiseError::Misuse)?;
        Ok(NoiseTransport { state })
    }
}

/// Noise transport messages after the handshake: AES-256-GCM with Noise's counter nonces
/// (snow's `TransportState`), one key per direction.
pub struct NoiseTransport {
    state: snow::TransportState,
}

impl std::fmt::Debug for NoiseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys never appear in logs.
        write!(
            f,
            "NoiseTransport(sent {}, received {})",
            self.state.sending_nonce(),
            self.state.receiving_nonce()
        )
    }
}

impl NoiseTransport {
    /// Seals the next outgoing message (at most [`NOISE_MAX_PAYLOAD_LEN`] bytes of payload).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plaintext.len() > NOISE_MAX_PAYLOAD_LEN {
            return Err(NoiseError::Misuse);
        }
        let mut out = vec![0u8; plaintext.len() + NOISE_TAG_LEN];
        let len = self
            .state
            .write_message(plaintext, &mut out)
            .map_err(|_| NoiseError::Misuse)?;
        out.truncate(len);
        Ok(out)
    }

    /// Opens the next incoming message.
    pub fn open(&mut self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        if message.len() < NOISE_TAG_LEN || message.len() > NOISE_MAX_MESSAGE_LEN {
            return Err(NoiseError::Unauthentic);
        }
        let mut out = Zeroizing::new(vec![0u8; message.len() - NOISE_TAG_LEN]);
        let len = self
            .state
            .read_message(message, &mut out)
            .map_err(|_| NoiseError::Unauthentic)?;
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; AES_KEY_LEN] = [7u8; AES_KEY_LEN];
    const IV: [u8; AES_BLOCK_LEN] = [3u8; AES_BLOCK_LEN];

    /// Only the given ephemeral key: with snow's default resolver behind it, a resolver with
    /// snow's own pure-Rust X25519 to check ours against.
    struct SeedOnly {
        seed: [u8; 32],
    }

    impl snow::resolvers::CryptoResolver for SeedOnly {
        fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
            XlregResolver {
                ephemeral: self.seed,
                known: None,
            }
            .resolve_rng()
        }
        fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
            None
        }
        fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
            None
        }
        fn resolve_cipher(
            &self,
            _: &snow::params::CipherChoice,
        ) -> Option<Box<dyn snow::types::Cipher>> {
            None
        }
    }

    /// The member-key path the registry used before the fast path: the rsa crate's parse,
    /// then the size check.
    fn member_key_by_the_rsa_crate(der: &[u8]) -> Result<PublicKey, CryptoError> {
        PublicKey::from_spki_der(der)?.of_member_size()
    }

    /// `from_member_der` and the rsa crate's path agree on `der`: both accept it with the
    /// same stored encoding and size, or both refuse it with the same error text.
    fn assert_same_as_the_rsa_crate(der: &[u8]) {
        match (
            PublicKey::from_member_der(der),
            member_key_by_the_rsa_crate(der),
        ) {
            (Ok(fast), Ok(slow)) => {
                assert_eq!(fast.to_spki_der(), slow.to_spki_der());
                assert_eq!(fast.bits(), slow.bits());
                assert_eq!(fast, slow);
                assert_eq!(fast.to_ssh(), slow.to_ssh());
            }
            (Err(fast), Err(slow)) => assert_eq!(fast.to_string(), slow.to_string()),
            (fast, slow) => panic!("fast path {fast:?}, rsa crate {slow:?}"),
        }
    }

    /// A SubjectPublicKeyInfo for modulus `n` and exponent `e` (big-endian magnitudes),
    /// canonical DER, with `algorithm` as its AlgorithmIdentifier's DER.
    fn spki(algorithm: &[u8], n: &[u8], e: &[u8]) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match body.len() {
                len @ 0..=0x7f => out.push(len as u8),
                len @ 0x80..=0xff => out.extend([0x81, len as u8]),
                len => out.extend([0x82, (len >> 8) as u8, len as u8]),
            }
            out.extend_from_slice(body);
            out
        }
        fn integer(magnitude: &[u8]) -> Vec<u8> {
            let magnitude = strip_leading_zeros(magnitude);
            let mut body = Vec::new();
            if magnitude.first().is_none_or(|b| b & 0x80 != 0) {
                body.push(0);
            }
            body.extend_from_slice(magnitude);
            tlv(0x02, &body)
        }
        let rsa_key = tlv(0x30, &[integer(n), integer(e)].concat());
        let mut bit_string = vec![0u8];
        bit_string.extend(rsa_key);
        tlv(0x30, &[algorithm.to_vec(), tlv(0x03, &bit_string)].concat())
    }

    #[test]
    fn member_keys_on_the_fast_path_are_those_the_rsa_crate_reads() {
        let key = RsaKeyPair::generate(2048).unwrap();
        let der = key.public_key().to_spki_der().to_vec();
        assert!(
            PublicKey::from_canonical_der(&der).is_some(),
            "a client's key is canonical"
        );
        assert_same_as_the_rsa_crate(&der);
        // Encrypting with a key read on the fast path makes its rsa-crate form on demand.
        let member = PublicKey::from_member_der(&der).unwrap();
        let sealed = member.encrypt_oaep_sha256(b"hello").unwrap();
        assert_eq!(sealed.len(), 256);

        let rsa = key.public_key().rsa_key().unwrap();
        let (n, e) = (rsa.n_bytes(), rsa.e_bytes());
        let odd = |mut bytes: Vec<u8>, bit: u8| {
            let last = bytes.len() - 1;
            bytes[last] ^= bit;
            bytes
        };
        let pss = [
            0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
        ];
        let no_null = [
            0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        ];
        let cases: Vec<Vec<u8>> = vec![
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &e),
            // Not canonical: the rsa crate's answer stands (and re-encodes it).
            spki(&pss, &n, &e),
            spki(&no_null, &n, &e),
            // Even modulus, even exponent, exponent 1, exponent over 33 bits.
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &odd(n.to_vec(), 1), &e),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &odd(e.to_vec(), 1)),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &[1]),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &[3]),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &[1, 0, 0, 0, 1]),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n, &[3, 0, 0, 0, 1]),
            // Sizes: 1024 and 2040 bits (too small), 4104 bits (too large), 8200 bits.
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n[..128], &e),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n[..255], &e),
            spki(
                &RSA_ENCRYPTION_ALGORITHM_DER,
                &[&n[..], &n[..1]].concat(),
                &e,
            ),
            spki(&RSA_ENCRYPTION_ALGORITHM_DER, &n.repeat(5)[..1025], &e),
            // Truncated, trailing bytes, empty.
            der[..der.len() - 1].to_vec(),
            [der.as_slice(), &[0]].concat(),
            Vec::new(),
        ];
        for case in &cases {
            assert_same_as_the_rsa_crate(case);
        }
    }

    #[test]
    fn member_key_parsing_agrees_with_the_rsa_crate_on_altered_keys() {
        let der = RsaKeyPair::generate(2048)
            .unwrap()
            .public_key()
            .to_spki_der()
            .to_vec();
        // Every byte of a canonical key, one bit flipped in each: the structure (tags and
        // lengths), the algorithm, the modulus and the exponent.
        for at in 0..der.len() {
            let mut case = der.clone();
            case[at] ^= 1 << (at % 8);
            assert_same_as_the_rsa_crate(&case);
        }
    }

    #[test]
    fn aws_lc_x25519_interoperates_with_snows_own() {
        let keys = HandshakeKeyPair::generate().unwrap();
        let psk = [9u8; 32];
        let mut client =
            NoiseHandshake::initiator(keys.public().x25519(), b"p", &psk, [1u8; 32]).unwrap();
        // The responder on snow's default (curve25519-dalek) DH.
        let state = snow::Builder::with_resolver(
            noise_params(),
            Box::new(snow::resolvers::FallbackResolver::new(
                Box::new(SeedOnly { seed: [2u8; 32] }),
                Box::new(snow::resolvers::DefaultResolver),
            )),
        )
        .local_private_key(keys.x25519.private.as_ref())
        .unwrap()
        .prologue(b"p")
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .build_responder()
        .unwrap();
        let mut server = NoiseHandshake { state };
        let first = client.write_message(b"").unwrap();
        assert_eq!(first.len(), 32 + 16);
        server.read_message(&first).unwrap();
        let second = server.write_message(b"").unwrap();
        client.read_message(&second).unwrap();
        assert_eq!(client.handshake_hash(), server.handshake_hash());
        let mut client = client.into_transport().unwrap();
        let mut server = server.into_transport().unwrap();
        let sealed = client.seal(b"hello").unwrap();
        assert_eq!(&*server.open(&sealed).unwrap(), b"hello");
        assert!(server.open(&sealed).is_err(), "a replay must not open");
    }

    #[test]
    fn ml_kem_secrets_agree_and_a_wrong_ciphertext_gives_another() {
        let keys = HandshakeKeyPair::generate().unwrap();
        let (ciphertext, secret) = keys.public().encapsulate().unwrap();
        assert_eq!(ciphertext.len(), MLKEM768_CIPHERTEXT_LEN);
        assert_eq!(*keys.decapsulate(&ciphertext).unwrap(), *secret);
        let mut flipped = ciphertext.clone();
        flipped[100] ^= 1;
        assert_ne!(*keys.decapsulate(&flipped).unwrap(), *secret);
        assert!(keys.decapsulate(&ciphertext[1..]).is_err());
        let other = HandshakeKeyPair::generate().unwrap();
        assert_ne!(*other.decapsulate(&ciphertext).unwrap(), *secret);
    }

    #[test]
    fn handshake_keys_survive_their_file() {
        let keys = HandshakeKeyPair::generate().unwrap();
        let bytes = keys.to_file_bytes().unwrap();
        assert_eq!(bytes.len(), HANDSHAKE_KEY_FILE_LEN);
        let back = HandshakeKeyPair::from_file_bytes(&bytes).unwrap();
        assert_eq!(back.public(), keys.public());
        let (ciphertext, secret) = keys.public().encapsulate().unwrap();
        assert_eq!(*back.decapsulate(&ciphertext).unwrap(), *secret);
        assert!(HandshakeKeyPair::from_file_bytes(&bytes[1..]).is_err());
        let mut wrong = bytes.to_vec();
        wrong[0] = b'X';
        assert!(HandshakeKeyPair::from_file_bytes(&wrong).is_err());
        assert!(HandshakePublicKeys::new(&[0u8; 31], keys.public().ml_kem()).is_err());
        assert!(HandshakePublicKeys::new(keys.public().x25519(), &[0u8; 1183]).is_err());
    }

    #[test]
    fn a_handshake_to_the_wrong_static_key_or_psk_fails() {
        let keys = HandshakeKeyPair::generate().unwrap();
        let other = HandshakeKeyPair::generate().unwrap();
        let psk = [5u8; 32];
        for (static_key, client_psk) in [
            (other.public().x25519(), psk),
            (keys.public().x25519(), [6u8; 32]),
        ] {
            let mut client =
                NoiseHandshake::initiator(static_key, b"", &client_psk, [3u8; 32]).unwrap();
            let mut server = NoiseHandshake::responder(&keys, b"", &psk, [4u8; 32]).unwrap();
            let first = client.write_message(b"").unwrap();
            let read = server.read_message(&first);
            if read.is_err() {
                continue; // the wrong static key fails at `es`, on message 1
            }
            let second = server.write_message(b"").unwrap();
            // the wrong PSK fails on message 2, at the client
            assert!(client.read_message(&second).is_err());
        }
    }

    #[test]
    fn cbc_round_trips_every_length_and_always_pads() {
        for len in 0..100 {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ciphertext = cbc_encrypt(&KEY, &IV, &plaintext);
            // PKCS#7 always adds 1..=16 bytes.
            assert_eq!(ciphertext.len(), (len / AES_BLOCK_LEN + 1) * AES_BLOCK_LEN);
            assert_eq!(
                cbc_decrypt(&KEY, &IV, &ciphertext).unwrap().as_slice(),
                &plaintext[..]
            );
        }
    }

    #[test]
    fn cbc_refuses_bad_lengths_without_panicking() {
        for len in [0, 1, 15, 17, 31, 33] {
            assert!(matches!(
                cbc_decrypt(&KEY, &IV, &vec![0u8; len]),
                Err(CryptoError::BadCbc)
            ));
        }
    }

    /// Encrypts one block whose plaintext is exactly `block` (no padding added by us), so
    /// the decryptor sees `block` as the padded plaintext.
    fn raw_block(block: [u8; AES_BLOCK_LEN]) -> Vec<u8> {
        let padded = cbc_encrypt(&KEY, &IV, &block);
        // The first ciphertext block is E(IV ^ block): exactly what we want.
        padded[..AES_BLOCK_LEN].to_vec()
    }

    #[test]
    fn cbc_unpadding_is_strict() {
        let mut good = [0xAAu8; AES_BLOCK_LEN];
        good[13..].fill(3);
        assert_eq!(cbc_decrypt(&KEY, &IV, &raw_block(good)).unwrap().len(), 13);
        let mut full = [16u8; AES_BLOCK_LEN];
        assert!(cbc_decrypt(&KEY, &IV, &raw_block(full)).unwrap().is_empty());
        full[0] = 15;
        assert!(cbc_decrypt(&KEY, &IV, &raw_block(full)).is_err());
        for last in [0u8, 17, 255] {
            let mut bad = [0xAAu8; AES_BLOCK_LEN];
            bad[AES_BLOCK_LEN - 1] = last;
            assert!(cbc_decrypt(&KEY, &IV, &raw_block(bad)).is_err(), "{last}");
        }
        // The Go side checks only the last byte; we also check the bytes before it.
        let mut inconsistent = [0xAAu8; AES_BLOCK_LEN];
        inconsistent[AES_BLOCK_LEN - 1] = 3;
        inconsistent[AES_BLOCK_LEN - 2] = 3;
        assert!(cbc_decrypt(&KEY, &IV, &raw_block(inconsistent)).is_err());
    }

    #[test]
    fn cbc_decrypt_survives_arbitrary_input() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = cbc_decrypt(&KEY, &IV, &bytes);
        }
    }
}
