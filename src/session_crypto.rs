//! xlReg/2 session cryptography: the RSA-protected handshake and the AES-256-GCM session
//! cipher (docs/protocol.md, sections "Handshake" and "Session messages").
//!
//! The handshake proves the registry's identity and agrees a session key:
//! 1. The client sends `OAEP-SHA256(ck, "XLR2" || version || key1 || salt1)` under the
//!    registry's comms key `ck` ([`ClientHandshake::start`]).
//! 2. The registry decrypts it ([`ServerHandshake::accept`]) and replies with
//!    `GCM(key1, salt1 || key2 || salt2 || version)`; only the holder of `ck`'s private half
//!    can know `key1` and echo `salt1` ([`ClientHandshake::finish`] checks both).
//! 3. Every later message in either direction is sealed with `key2` by a [`SessionCipher`],
//!    with nonces derived from per-direction counters: never reused, and any replayed,
//!    reordered, dropped or altered frame fails to open.
//!
//! xlReg/3 (docs/protocol.md, version 3) replaces the RSA key transport with the Noise
//! handshake `Noise_NKpsk2_25519_AESGCM_SHA256` plus ML-KEM-768:
//! 1. The client encapsulates a secret to the registry's static ML-KEM-768 key and sends
//!    `"XLR3" || ML-KEM ciphertext || Noise message 1` ([`ClientHandshakeV3::start`]); the
//!    prologue is `"XLR3" || ML-KEM ciphertext` and the KEM secret is the PSK.
//! 2. The registry decapsulates, reads message 1 and answers with Noise message 2
//!    ([`ServerHandshakeV3::accept`]); only the holder of both static private keys can write
//!    a message 2 that the client reads ([`ClientHandshakeV3::finish`]).
//! 3. Every later message is a [`NoiseCipher`] frame: Noise transport messages (AES-256-GCM,
//!    Noise's counter nonces), a continuation byte in each so a frame may exceed one Noise
//!    message. The handshake hash binds member tokens to the session.
//!
//! Pure functions of bytes, keys and a random number generator the caller hands in: no
//! socket, no clock, no global randomness (the registry gives each session its own RNG,
//! seeded from the operating system; tests may seed one).

use rand::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{
    self, AesKey, CryptoError, HandshakeKeyPair, HandshakePublicKeys, HelloDecryptor, NoiseError,
    NoiseHandshake, NoiseTransport, PublicKey, AES_KEY_LEN, HANDSHAKE_HASH_LEN, KEM_SECRET_LEN,
    MLKEM768_CIPHERTEXT_LEN, NOISE_MAX_MESSAGE_LEN, NOISE_MAX_PAYLOAD_LEN, NOISE_TAG_LEN,
    X25519_KEY_LEN,
};

/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version the registry accepts in a hello.
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// The four bytes that open every hello plaintext.
pub const HELLO_MAGIC: &[u8; 4] = b"XLR2";
/// Length of the client and server salts.
pub const SALT_LEN: usize = 16;
/// Length of the hello plaintext: magic, version, key1, salt1.
pub const HELLO_PLAINTEXT_LEN: usize = 4 + 4 + AES_KEY_LEN + SALT_LEN;
/// Length of the reply plaintext: salt1, key2, salt2, version.
pub const REPLY_PLAINTEXT_LEN: usize = SALT_LEN + AES_KEY_LEN + SALT_LEN + 4;

/// Why a handshake failed. The registry answers none of these: it closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The hello is not an RSA-OAEP-SHA-256 ciphertext under the registry's comms key.
    #[error("hello does not decrypt under the registry's key")]
    HelloUndecryptable,
    /// The hello decrypted but is not an xlReg/2 hello.
    #[error("hello is not an xlReg/2 hello")]
    HelloMalformed,
    /// The client proposed a version older than the registry supports.
    #[error(
        "client proposed protocol version {0}, the registry needs at least {MIN_PROTOCOL_VERSION}"
    )]
    VersionTooOld(u32),
    /// The reply does not authenticate under key1: it did not come from the registry whose
    /// key the client used.
    #[error("handshake reply does not authenticate: not the registry named in regCred")]
    ReplyUnauthentic,
    /// The reply authenticates but is malformed, echoes the wrong salt or picks a version
    /// the client did not offer.
    #[error("handshake reply is malformed")]
    ReplyMalformed,
    /// An RSA operation failed on the client side.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An xlReg/3 first message that is not one: wrong length or magic, or its Noise
    /// message does not authenticate under the registry's static key.
    #[error("xlReg/3 first message refused")]
    V3HelloRefused,
    /// The xlReg/3 reply does not authenticate: the peer does not hold the static keys in
    /// regCred.dat (or the first message was altered on the way).
    #[error("xlReg/3 handshake reply does not authenticate: not the registry named in regCred")]
    V3ReplyUnauthentic,
    /// A Noise or ML-KEM operation failed on the client side (bad keys in regCred.dat).
    #[error(transparent)]
    Noise(#[from] NoiseError),
}

/// Which end of the connection a cipher belongs to; it decides the nonce direction byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node or tool that opened the connection.
    Client,
    /// The registry.
    Server,
}

const CLIENT_TO_SERVER: u8 = b'C';
const SERVER_TO_CLIENT: u8 = b'S';

/// The 96-bit GCM nonce of message number `counter` sent in `direction`.
fn nonce(direction: u8, counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[0] = direction;
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// What both ends hold once the handshake is done.
pub struct SessionKeys {
    /// The session key (key2).
    pub key: AesKey,
    /// The registry's salt for this session (salt2); member token signatures cover it.
    pub server_salt: [u8; SALT_LEN],
    /// The protocol version the registry chose.
    pub version: u32,
}

/// The client's half of the handshake, between sending the hello and reading the reply.
pub struct ClientHandshake {
    key1: AesKey,
    salt1: [u8; SALT_LEN],
    proposed_version: u32,
}

impl ClientHandshake {
    /// Builds the hello for the registry whose comms key is `registry_comms_key`, drawing
    /// key1 and salt1 from the thread's RNG. Returns the state to keep and the hello frame
    /// payload to send.
    pub fn start(
        registry_comms_key: &PublicKey,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        Self::start_with(registry_comms_key, &mut rand::rng())
    }

    /// [`start`](Self::start), drawing key1 and salt1 from `rng`.
    pub fn start_with(
        registry_comms_key: &PublicKey,
        rng: &mut impl CryptoRng,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        let mut key1 = Zeroizing::new([0u8; AES_KEY_LEN]);
        rng.fill_bytes(key1.as_mut());
        let mut salt1 = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt1);
        let mut plaintext = Zeroizing::new(Vec::with_capacity(HELLO_PLAINTEXT_LEN));
        plaintext.extend_from_slice(HELLO_MAGIC);
        plaintext.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        plaintext.extend_from_slice(key1.as_ref());
        plaintext.extend_from_slice(&salt1);
        let hello = registry_comms_key.encrypt_oaep_sha256(&plaintext)?;
        let state = ClientHandshake {
            key1,
            salt1,
            proposed_version: PROTOCOL_VERSION,
        };
        Ok((state, hello))
    }

    /// Checks the registry's reply and returns the session keys.
    pub fn finish(self, reply: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let plaintext = crypto::gcm_open(&self.key1, &nonce(SERVER_TO_CLIENT, 0), reply)
            .map_err(|_| HandshakeError::ReplyUnauthentic)?;
        if plaintext.len() != REPLY_PLAINTEXT_LEN {
            return Err(HandshakeError::ReplyMalformed);
        }
        let (echoed_salt, rest) = plaintext.split_at(SALT_LEN);
        let (key2, rest) = rest.split_at(AES_KEY_LEN);
        let (salt2, version) = rest.split_at(SALT_LEN);
        if echoed_salt != self.salt1 {
            return Err(HandshakeError::ReplyMalformed);
        }
        let version = u32::from_be_bytes(
            version
                .try_into()
                .map_err(|_| HandshakeError::ReplyMalformed)?,
        );
        if !(MIN_PROTOCOL_VERSION..=self.proposed_version).contains(&version) {
            return Err(HandshakeError::ReplyMalformed);
        }
        let mut key = Zeroizing::new([0u8; AES_KEY_LEN]);
        key.copy_from_slice(key2);
        let mut server_salt = [0u8; SALT_LEN];
        server_salt.copy_from_slice(salt2);
        Ok(SessionKeys {
            key,
            server_salt,
            version,
        })
    }
}

/// The registry's half of the handshake.
pub struct ServerHandshake;

impl ServerHandshake {
    /// Decrypts a hello and builds the reply, drawing key2 and salt2 from `rng`. Returns the
    /// reply frame payload and the session keys. The RSA decryption here is the registry's
    /// only private-key operation per session.
    pub fn accept(
        decryptor: &HelloDecryptor,
        hello: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<(Vec<u8>, SessionKeys), HandshakeError> {
        let plaintext = decryptor
            .decrypt_oaep_sha256(hello)
            .map_err(|_| HandshakeError::HelloUndecryptable)?;
        if plaintext.len() != HELLO_PLAINTEXT_LEN || &plaintext[..4] != HELLO_MAGIC {
            return Err(HandshakeError::HelloMalformed);
        }
        let mut version_bytes = [0u8; 4];
        version_bytes.copy_from_slice(&plaintext[4..8]);
        let proposed = u32::from_be_bytes(version_bytes);
        if proposed < MIN_PROTOCOL_VERSION {
            return Err(HandshakeError::VersionTooOld(proposed));
        }
        let version = proposed.min(PROTOCOL_VERSION);
        let mut key1 = Zeroizing::new([0u8; AES_KEY_LEN]);
        key1.copy_from_slice(&plaintext[8..8 + AES_KEY_LEN]);
        let salt1 = &plaintext[8 + AES_KEY_LEN..];

        let mut key2 = Zeroizing::new([0u8; AES_KEY_LEN]);
        rng.fill_bytes(key2.as_mut());
        let mut salt2 = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt2);
        let mut reply = Zeroizing::new(Vec::with_capacity(REPLY_PLAINTEXT_LEN));
        reply.extend_from_slice(salt1);
        reply.extend_from_slice(key2.as_ref());
        reply.extend_from_slice(&salt2);
        reply.extend_from_slice(&version.to_be_bytes());
        let sealed = crypto::gcm_seal(&key1, &nonce(SERVER_TO_CLIENT, 0), &reply);
        Ok((
            sealed,
            SessionKeys {
                key: key2,
                server_salt: salt2,
                version,
            },
        ))
    }
}

/// Seals outgoing and opens incoming session messages for one end of one connection.
pub struct SessionCipher {
    key: AesKey,
    send_direction: u8,
    receive_direction: u8,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears in logs.
        write!(
            f,
            "SessionCipher(sent {}, received {})",
            self.sent, self.received
        )
    }
}

impl SessionCipher {
    /// A cipher for `role`'s end of a session keyed with `key`.
    pub fn new(key: &[u8; AES_KEY_LEN], role: Role) -> SessionCipher {
        let (send_direction, receive_direction) = match role {
            Role::Client => (CLIENT_TO_SERVER, SERVER_TO_CLIENT),
            Role::Server => (SERVER_TO_CLIENT, CLIENT_TO_SERVER),
        };
        SessionCipher {
            key: Zeroizing::new(*key),
            send_direction,
            receive_direction,
            sent: 0,
            received: 0,
        }
    }

    /// Seals the next outgoing message.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let sealed = crypto::gcm_seal(&self.key, &nonce(self.send_direction, self.sent), plaintext);
        self.sent += 1;
        sealed
    }

    /// Opens the next incoming message. A failure means the frame was forged, altered,
    /// replayed, reordered or dropped; the connection must be closed.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let plaintext = crypto::gcm_open(
            &self.key,
            &nonce(self.receive_direction, self.received),
            sealed,
        )?;
        self.received += 1;
        Ok(plaintext)
    }
}

/// The four bytes that open every xlReg/3 first message.
pub const V3_MAGIC: &[u8; 4] = b"XLR3";
/// Length of the xlReg/3 Noise messages 1 and 2: an ephemeral key and the tag of an empty
/// payload.
pub const V3_NOISE_MESSAGE_LEN: usize = X25519_KEY_LEN + NOISE_TAG_LEN;
/// Length of the xlReg/3 first message: magic, ML-KEM-768 ciphertext, Noise message 1.
pub const V3_HELLO_LEN: usize = V3_MAGIC.len() + MLKEM768_CIPHERTEXT_LEN + V3_NOISE_MESSAGE_LEN;
/// Length of the xlReg/3 reply: Noise message 2.
pub const V3_REPLY_LEN: usize = V3_NOISE_MESSAGE_LEN;
/// The first byte of a Noise message's plaintext inside a frame: more follow in this frame.
const MORE: u8 = 1;
/// The first byte of the last Noise message's plaintext in a frame.
const LAST: u8 = 0;
/// Most message bytes one Noise message carries (its plaintext also holds the flag byte).
const CHUNK_LEN: usize = NOISE_MAX_PAYLOAD_LEN - 1;

/// True if a first frame's payload is shaped like an xlReg/3 first message. An xlReg/2
/// hello is an RSA ciphertext as long as the comms key's modulus (256 to 512 bytes), never
/// 1,140 bytes, so the length alone tells the two apart; the magic is checked too.
pub fn is_v3_hello(payload: &[u8]) -> bool {
    payload.len() == V3_HELLO_LEN && payload.starts_with(V3_MAGIC)
}

/// The Noise prologue of an xlReg/3 session: the magic and the ML-KEM ciphertext, so the
/// handshake hash covers both.
fn v3_prologue(kem_ciphertext: &[u8]) -> Vec<u8> {
    let mut prologue = Vec::with_capacity(V3_MAGIC.len() + kem_ciphertext.len());
    prologue.extend_from_slice(V3_MAGIC);
    prologue.extend_from_slice(kem_ciphertext);
    prologue
}

/// What both ends hold once an xlReg/3 handshake is done.
#[derive(Debug)]
pub struct V3Session {
    /// The transport cipher.
    pub cipher: NoiseCipher,
    /// The Noise handshake hash `h`: member token signatures cover it.
    pub handshake_hash: [u8; HANDSHAKE_HASH_LEN],
}

/// The client's half of the xlReg/3 handshake, between the first message and the reply.
#[derive(Debug)]
pub struct ClientHandshakeV3 {
    noise: NoiseHandshake,
}

impl ClientHandshakeV3 {
    /// Builds the first message to the registry whose static keys are `keys`: encapsulates
    /// a fresh secret to its ML-KEM-768 key (aws-lc-rs's own randomness) and draws the
    /// ephemeral X25519 private key (32 bytes) from `rng`. Returns the state to keep and the frame payload.
    pub fn start(
        keys: &HandshakePublicKeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(ClientHandshakeV3, Vec<u8>), HandshakeError> {
        let (kem_ciphertext, secret) = keys.encapsulate()?;
        ClientHandshakeV3::start_with_kem(keys.x25519(), &kem_ciphertext, &secret, rng)
    }

    /// [`start`](Self::start) with the ML-KEM ciphertext and secret given (the worked
    /// example of docs/protocol.md fixes them).
    pub fn start_with_kem(
        registry_x25519: &[u8; X25519_KEY_LEN],
        kem_ciphertext: &[u8],
        kem_secret: &[u8; KEM_SECRET_LEN],
        rng: &mut impl CryptoRng,
    ) -> Result<(ClientHandshakeV3, Vec<u8>), HandshakeError> {
        if kem_ciphertext.len() != MLKEM768_CIPHERTEXT_LEN {
            return Err(NoiseError::Misuse.into());
        }
        let mut ephemeral = Zeroizing::new([0u8; X25519_KEY_LEN]);
        rng.fill_bytes(ephemeral.as_mut());
        let prologue = v3_prologue(kem_ciphertext);
        let mut noise =
            NoiseHandshake::initiator(registry_x25519, &prologue, kem_secret, *ephemeral)?;
        let message = noise.write_message(&[])?;
        let mut hello = prologue;
        hello.extend_from_slice(&message);
        Ok((ClientHandshakeV3 { noise }, hello))
    }

    /// Reads the registry's reply (Noise message 2): success proves the peer holds the
    /// static X25519 key and decapsulated the ML-KEM ciphertext.
    pub fn finish(mut self, reply: &[u8]) -> Result<V3Session, HandshakeError> {
        if reply.len() != V3_REPLY_LEN {
            return Err(HandshakeError::V3ReplyUnauthentic);
        }
        let payload = self
            .noise
            .read_message(reply)
            .map_err(|_| HandshakeError::V3ReplyUnauthentic)?;
        if !payload.is_empty() {
            return Err(HandshakeError::ReplyMalformed);
        }
        let handshake_hash = self.noise.handshake_hash();
        let transport = self.noise.into_transport()?;
        Ok(V3Session {
            cipher: NoiseCipher { transport },
            handshake_hash,
        })
    }
}

/// The registry's half of the xlReg/3 handshake.
pub struct ServerHandshakeV3;

impl ServerHandshakeV3 {
    /// Checks a first message against the registry's static `keys` and builds the reply
    /// (Noise message 2), drawing the ephemeral X25519 private key (32 bytes) from `rng`.
    pub fn accept(
        keys: &HandshakeKeyPair,
        hello: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<(Vec<u8>, V3Session), HandshakeError> {
        ServerHandshakeV3::accept_any(&[keys], hello, rng)
    }

    /// [`accept`](Self::accept) for a registry with several static key sets (the current
    /// one first, then the previous one during a rotation's overlap): the first message
    /// names no key, so each set is tried in turn until message 1 authenticates under one.
    /// Trying is safe: ML-KEM's implicit rejection makes a wrong set's decapsulation yield
    /// an unrelated secret, and message 1's tag fails under a wrong static key or PSK. A
    /// client on the current set costs one attempt; one still on the previous set, two.
    pub fn accept_any(
        key_sets: &[&HandshakeKeyPair],
        hello: &[u8],
        rng: &mut impl CryptoRng,
    ) -> Result<(Vec<u8>, V3Session), HandshakeError> {
        if !is_v3_hello(hello) {
            return Err(HandshakeError::V3HelloRefused);
        }
        let (prologue, message) = hello.split_at(V3_MAGIC.len() + MLKEM768_CIPHERTEXT_LEN);
        let refused = |_| HandshakeError::V3HelloRefused;
        // One ephemeral key whichever set answers: only the set that reads message 1 writes
        // message 2 with it.
        let mut ephemeral = Zeroizing::new([0u8; X25519_KEY_LEN]);
        rng.fill_bytes(ephemeral.as_mut());
        let mut accepted = None;
        for keys in key_sets {
            let secret = keys
                .decapsulate(&prologue[V3_MAGIC.len()..])
                .map_err(refused)?;
            let mut noise =
                NoiseHandshake::responder(keys, prologue, &secret, *ephemeral).map_err(refused)?;
            if let Ok(payload) = noise.read_message(message) {
                accepted = Some((noise, payload));
                break;
            }
        }
        let (mut noise, payload) = accepted.ok_or(HandshakeError::V3HelloRefused)?;
        if !payload.is_empty() {
            return Err(HandshakeError::V3HelloRefused);
        }
        let reply = noise.write_message(&[]).map_err(refused)?;
        let handshake_hash = noise.handshake_hash();
        let transport = noise.into_transport().map_err(refused)?;
        Ok((
            reply,
            V3Session {
                cipher: NoiseCipher { transport },
                handshake_hash,
            },
        ))
    }
}

/// Seals and opens xlReg/3 session frames: each frame payload is one or more Noise
/// transport messages of at most 65,535 bytes; the first plaintext byte of each is 1 if
/// another follows in the frame, 0 for the last, so cutting a frame short never yields a
/// shorter message that opens.
#[derive(Debug)]
pub struct NoiseCipher {
    transport: NoiseTransport,
}

impl NoiseCipher {
    /// The frame cipher over a finished Noise handshake's transport state.
    pub fn from_transport(transport: NoiseTransport) -> NoiseCipher {
        NoiseCipher { transport }
    }

    /// Seals the next outgoing message into one frame payload.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        let chunks = plaintext.len().div_ceil(CHUNK_LEN).max(1);
        let mut out = Vec::with_capacity(plaintext.len() + chunks * (NOISE_TAG_LEN + 1));
        let mut buffer = Vec::with_capacity(plaintext.len().min(CHUNK_LEN) + 1);
        for index in 0..chunks {
            let start = index * CHUNK_LEN;
            let end = (start + CHUNK_LEN).min(plaintext.len());
            buffer.clear();
            buffer.push(if index + 1 < chunks { MORE } else { LAST });
            buffer.extend_from_slice(&plaintext[start..end]);
            // Within bounds by construction; nonce exhaustion (2^64 messages) cannot happen.
            out.extend_from_slice(&self.transport.seal(&buffer).unwrap_or_default());
        }
        out
    }

    /// Opens the next incoming frame payload. A failure means the frame was forged,
    /// altered, cut, replayed, reordered or dropped; the connection must be closed.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let pieces = sealed.len().div_ceil(NOISE_MAX_MESSAGE_LEN).max(1);
        let mut out = Zeroizing::new(Vec::with_capacity(sealed.len()));
        for (index, piece) in sealed.chunks(NOISE_MAX_MESSAGE_LEN).enumerate() {
            let plaintext = self
                .transport
                .open(piece)
                .map_err(|_| CryptoError::Unauthentic)?;
            let expected = if index + 1 < pieces { MORE } else { LAST };
            let (&flag, data) = plaintext.split_first().ok_or(CryptoError::Unauthentic)?;
            if flag != expected {
                return Err(CryptoError::Unauthentic);
            }
            out.extend_from_slice(data);
        }
        if sealed.is_empty() {
            return Err(CryptoError::Unauthentic);
        }
        Ok(out)
    }
}

/// One session's cipher on either protocol version.
#[derive(Debug)]
pub enum WireCipher {
    /// xlReg/2: AES-256-GCM under key2 with xlreg's direction-and-counter nonces.
    V2(SessionCipher),
    /// xlReg/3: Noise transport messages.
    V3(NoiseCipher),
}

impl WireCipher {
    /// Seals the next outgoing message into one frame payload.
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        match self {
            WireCipher::V2(cipher) => cipher.seal(plaintext),
            WireCipher::V3(cipher) => cipher.seal(plaintext),
        }
    }

    /// Opens the next incoming frame payload.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match self {
            WireCipher::V2(cipher) => cipher.open(sealed),
            WireCipher::V3(cipher) => cipher.open(sealed),
        }
    }

    /// The protocol version this cipher belongs to.
    pub fn version(&self) -> u32 {
        match self {
            WireCipher::V2(_) => 2,
            WireCipher::V3(_) => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RsaKeyPair;
    use std::sync::OnceLock;

    fn registry_key() -> &'static RsaKeyPair {
        static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
        KEY.get_or_init(|| crate::test_support::fixture_key(0))
    }

    fn handshake() -> (SessionKeys, SessionKeys) {
        let key = registry_key();
        let decryptor = key.hello_decryptor().unwrap();
        let (client, hello) = ClientHandshake::start(key.public_key()).unwrap();
        assert_eq!(hello.len(), 256);
        let (reply, server_keys) =
            ServerHandshake::accept(&decryptor, &hello, &mut rand::rng()).unwrap();
        let client_keys = client.finish(&reply).unwrap();
        (client_keys, server_keys)
    }

    #[test]
    fn both_ends_agree_on_key_salt_and_version() {
        let (client, server) = handshake();
        assert_eq!(*client.key, *server.key);
        assert_eq!(client.server_salt, server.server_salt);
        assert_eq!(client.version, PROTOCOL_VERSION);
    }

    #[test]
    fn hello_under_another_key_is_refused() {
        let other = crate::test_support::fixture_key(1);
        let (_, hello) = ClientHandshake::start(other.public_key()).unwrap();
        let decryptor = registry_key().hello_decryptor().unwrap();
        assert!(matches!(
            ServerHandshake::accept(&decryptor, &hello, &mut rand::rng()),
            Err(HandshakeError::HelloUndecryptable)
        ));
        assert!(matches!(
            ServerHandshake::accept(&decryptor, &[0u8; 17], &mut rand::rng()),
            Err(HandshakeError::HelloUndecryptable)
        ));
    }

    #[test]
    fn a_reply_from_an_impostor_is_refused() {
        let key = registry_key();
        let (client, _hello) = ClientHandshake::start(key.public_key()).unwrap();
        // An impostor cannot decrypt the hello, so it can only answer with some other key1.
        let forged = crypto::gcm_seal(
            &[7u8; 32],
            &nonce(SERVER_TO_CLIENT, 0),
            &[0u8; REPLY_PLAINTEXT_LEN],
        );
        assert!(matches!(
            client.finish(&forged),
            Err(HandshakeError::ReplyUnauthentic)
        ));
    }

    mod v3 {
        use super::super::*;
        use crate::crypto::HandshakeKeyPair;
        use rand::rngs::StdRng;
        use rand::SeedableRng as _;
        use std::sync::OnceLock;

        fn registry_keys() -> &'static HandshakeKeyPair {
            static KEYS: OnceLock<HandshakeKeyPair> = OnceLock::new();
            KEYS.get_or_init(|| HandshakeKeyPair::generate().unwrap())
        }

        fn rng(seed: u64) -> StdRng {
            StdRng::seed_from_u64(seed)
        }

        fn handshake() -> (V3Session, V3Session, Vec<u8>) {
            let keys = registry_keys();
            let (client, hello) = ClientHandshakeV3::start(keys.public(), &mut rng(1)).unwrap();
            assert_eq!(hello.len(), V3_HELLO_LEN);
            assert!(is_v3_hello(&hello));
            let (reply, server) = ServerHandshakeV3::accept(keys, &hello, &mut rng(2)).unwrap();
            assert_eq!(reply.len(), V3_REPLY_LEN);
            let client = client.finish(&reply).unwrap();
            (client, server, hello)
        }

        #[test]
        fn both_ends_agree_on_the_handshake_hash_and_talk() {
            let (mut client, mut server, _) = handshake();
            assert_eq!(client.handshake_hash, server.handshake_hash);
            let request = client.cipher.seal(b"member");
            assert_eq!(&*server.cipher.open(&request).unwrap(), b"member");
            let reply = server.cipher.seal(b"ok");
            assert_eq!(&*client.cipher.open(&reply).unwrap(), b"ok");
            // Two sessions never share a hash (fresh ephemeral keys and KEM secret).
            let (other, _, _) = handshake();
            assert_ne!(other.handshake_hash, client.handshake_hash);
        }

        #[test]
        fn frames_larger_than_one_noise_message_round_trip_and_cannot_be_cut() {
            let (mut client, mut server, _) = handshake();
            for len in [
                0,
                1,
                CHUNK_LEN - 1,
                CHUNK_LEN,
                CHUNK_LEN + 1,
                2 * CHUNK_LEN,
                1 << 20,
            ] {
                let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let sealed = server.cipher.seal(&message);
                let pieces = len.div_ceil(CHUNK_LEN).max(1);
                assert_eq!(sealed.len(), len + pieces * (NOISE_TAG_LEN + 1), "{len}");
                assert_eq!(
                    &*client.cipher.open(&sealed).unwrap(),
                    &message[..],
                    "{len}"
                );
            }
            // A frame cut after its first Noise message does not open as a shorter one.
            let message = vec![7u8; CHUNK_LEN + 10];
            let sealed = server.cipher.seal(&message);
            assert!(client
                .cipher
                .open(&sealed[..NOISE_MAX_MESSAGE_LEN])
                .is_err());
            assert!(client.cipher.open(&[]).is_err());
        }

        #[test]
        fn replays_reorders_reflections_and_bit_flips_fail() {
            let (mut client, mut server, _) = handshake();
            let first = client.cipher.seal(b"member");
            let second = client.cipher.seal(b"create");
            assert!(server.cipher.open(&second).is_err(), "reordered");
            let (mut client, mut server, _) = handshake();
            let first_again = client.cipher.seal(b"member");
            assert!(server.cipher.open(&first).is_err(), "from another session");
            let mut flipped = first_again.clone();
            flipped[5] ^= 0x10;
            assert!(server.cipher.open(&flipped).is_err(), "bit flip");
            assert_eq!(&*server.cipher.open(&first_again).unwrap(), b"member");
            assert!(server.cipher.open(&first_again).is_err(), "replayed");
            // A client frame reflected back to the client does not open.
            let reflected = client.cipher.seal(b"x");
            assert!(client.cipher.open(&reflected).is_err());
        }

        #[test]
        fn a_bad_or_altered_first_message_is_refused() {
            let keys = registry_keys();
            let (_, hello) = ClientHandshakeV3::start(keys.public(), &mut rng(3)).unwrap();
            for cut in [0, 4, V3_HELLO_LEN - 1] {
                assert!(matches!(
                    ServerHandshakeV3::accept(keys, &hello[..cut], &mut rng(4)),
                    Err(HandshakeError::V3HelloRefused)
                ));
            }
            // Every bit flip outside the KEM ciphertext fails at the registry: the magic,
            // the ephemeral key and the tag are all covered by message 1's tag.
            for index in [0, 3, 4 + MLKEM768_CIPHERTEXT_LEN, V3_HELLO_LEN - 1] {
                let mut flipped = hello.clone();
                flipped[index] ^= 1;
                assert!(
                    ServerHandshakeV3::accept(keys, &flipped, &mut rng(4)).is_err(),
                    "{index}"
                );
            }
            // A flip inside the KEM ciphertext changes the prologue: refused too.
            let mut flipped = hello.clone();
            flipped[10] ^= 1;
            assert!(ServerHandshakeV3::accept(keys, &flipped, &mut rng(4)).is_err());
        }

        #[test]
        fn a_reply_from_a_registry_without_the_static_keys_is_refused() {
            let keys = registry_keys();
            let impostor = HandshakeKeyPair::generate().unwrap();
            let (client, hello) = ClientHandshakeV3::start(keys.public(), &mut rng(5)).unwrap();
            // The impostor cannot read message 1 (wrong static key, wrong KEM key)...
            assert!(ServerHandshakeV3::accept(&impostor, &hello, &mut rng(6)).is_err());
            // ...and any message 2 it makes up fails at the client.
            let (_, own_hello) = ClientHandshakeV3::start(impostor.public(), &mut rng(7)).unwrap();
            let (forged, _) =
                ServerHandshakeV3::accept(&impostor, &own_hello, &mut rng(8)).unwrap();
            assert!(matches!(
                client.finish(&forged),
                Err(HandshakeError::V3ReplyUnauthentic)
            ));
            // A client that trusts the impostor's keys is refused by the real registry.
            assert!(ServerHandshakeV3::accept(keys, &own_hello, &mut rng(9)).is_err());
        }

        #[test]
        fn during_an_overlap_either_key_set_is_accepted_and_no_other() {
            let current = HandshakeKeyPair::generate().unwrap();
            let previous = registry_keys();
            let both = [&current, previous];
            for (keys, seed) in [(&current, 30), (previous, 31)] {
                let (client, hello) =
                    ClientHandshakeV3::start(keys.public(), &mut rng(seed)).unwrap();
                let (reply, mut server) =
                    ServerHandshakeV3::accept_any(&both, &hello, &mut rng(40)).unwrap();
                // The same RNG gives the same ephemeral key whichever set answered.
                let (again, _) = ServerHandshakeV3::accept(keys, &hello, &mut rng(40)).unwrap();
                assert_eq!(reply, again, "seed {seed}");
                let mut client = client.finish(&reply).unwrap();
                assert_eq!(client.handshake_hash, server.handshake_hash);
                let sealed = client.cipher.seal(b"member");
                assert_eq!(&*server.cipher.open(&sealed).unwrap(), b"member");
            }
            // A client on a set the registry no longer holds is refused.
            let retired = HandshakeKeyPair::generate().unwrap();
            let (_, hello) = ClientHandshakeV3::start(retired.public(), &mut rng(32)).unwrap();
            assert!(matches!(
                ServerHandshakeV3::accept_any(&both, &hello, &mut rng(41)),
                Err(HandshakeError::V3HelloRefused)
            ));
            // After the overlap, the previous set's clients are refused too.
            let (_, hello) = ClientHandshakeV3::start(previous.public(), &mut rng(33)).unwrap();
            assert!(matches!(
                ServerHandshakeV3::accept_any(&[&current], &hello, &mut rng(42)),
                Err(HandshakeError::V3HelloRefused)
            ));
        }

        #[test]
        fn a_replayed_first_message_opens_a_session_nobody_can_use() {
            let keys = registry_keys();
            let (client, hello) = ClientHandshakeV3::start(keys.public(), &mut rng(10)).unwrap();
            let (reply, _server) = ServerHandshakeV3::accept(keys, &hello, &mut rng(11)).unwrap();
            let mut client = client.finish(&reply).unwrap();
            let recorded = client.cipher.seal(b"member");
            // The attacker replays message 1: the registry answers with a fresh ephemeral
            // key, so the session keys differ and the recorded frame does not open.
            let (replayed_reply, mut replayed) =
                ServerHandshakeV3::accept(keys, &hello, &mut rng(12)).unwrap();
            assert_ne!(replayed_reply, reply);
            assert!(replayed.cipher.open(&recorded).is_err());
        }

        #[test]
        fn disclosed_static_keys_do_not_open_a_recorded_session() {
            // A session recorded on the wire...
            let keys = HandshakeKeyPair::generate().unwrap();
            let (client, hello) = ClientHandshakeV3::start(keys.public(), &mut rng(20)).unwrap();
            let (reply, mut server) =
                ServerHandshakeV3::accept(&keys, &hello, &mut rng(21)).unwrap();
            let mut client = client.finish(&reply).unwrap();
            let request = client.cipher.seal(b"secret endpoints");
            let answer = server.cipher.seal(b"secret members");
            assert_eq!(&*server.cipher.open(&request).unwrap(), b"secret endpoints");
            drop((client, server));
            // ...then both static private keys are disclosed (a stolen backup).
            let stolen = HandshakeKeyPair::from_file_bytes(&keys.to_file_bytes().unwrap()).unwrap();
            // The attacker derives everything the static keys give: the KEM secret (the
            // PSK) and `es`: message 1 reads, so it holds every static secret...
            let (prologue, message1) = hello.split_at(4 + MLKEM768_CIPHERTEXT_LEN);
            let psk = stolen.decapsulate(&prologue[4..]).unwrap();
            for seed in [[0u8; 32], [0xffu8; 32]] {
                let mut attacker =
                    NoiseHandshake::responder(&stolen, prologue, &psk, seed).unwrap();
                assert!(attacker.read_message(message1).is_ok());
                // ...but `ee` needs an ephemeral private key, which neither side kept: with
                // any ephemeral of its own the keys differ, and no recorded frame opens.
                let _ = attacker.write_message(&[]).unwrap();
                let mut transport = NoiseCipher {
                    transport: attacker.into_transport().unwrap(),
                };
                assert!(transport.open(&request).is_err());
            }
            // Reading the recorded message 2 as the client needs the client's ephemeral key:
            // an initiator with a guessed one fails on message 2.
            let mut guess =
                NoiseHandshake::initiator(stolen.public().x25519(), prologue, &psk, [1u8; 32])
                    .unwrap();
            let _ = guess.write_message(&[]).unwrap();
            assert!(guess.read_message(&reply).is_err());
            let _ = answer;
        }
    }

    #[test]
    fn session_messages_flow_both_ways_and_replays_fail() {
        let (client_keys, server_keys) = handshake();
        let mut client = SessionCipher::new(&client_keys.key, Role::Client);
        let mut server = SessionCipher::new(&server_keys.key, Role::Server);
        let first = client.seal(b"member");
        let second = client.seal(b"create");
        assert_eq!(&*server.open(&first).unwrap(), b"member");
        assert!(
            server.open(&first).is_err(),
            "a replayed frame must not open"
        );
        let mut server = SessionCipher::new(&server_keys.key, Role::Server);
        assert!(
            server.open(&second).is_err(),
            "a reordered frame must not open"
        );
        let mut flipped = first.clone();
        flipped[0] ^= 1;
        let mut server = SessionCipher::new(&server_keys.key, Role::Server);
        assert!(
            server.open(&flipped).is_err(),
            "a bit-flipped frame must not open"
        );
        assert_eq!(&*server.open(&first).unwrap(), b"member");
        let reply = server.seal(b"ok");
        assert_eq!(&*client.open(&reply).unwrap(), b"ok");
        // A message the client sealed cannot be reflected back to it as if from the server.
        let mut client2 = SessionCipher::new(&client_keys.key, Role::Client);
        assert!(client2.open(&first).is_err());
    }
}
