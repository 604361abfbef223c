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
//! Pure functions of bytes, keys and a random number generator the caller hands in: no
//! socket, no clock, no global randomness (the registry gives each session its own RNG,
//! seeded from the operating system; tests may seed one).

use rand::CryptoRng;
use zeroize::Zeroizing;

use crate::crypto::{self, AesKey, CryptoError, HelloDecryptor, PublicKey, AES_KEY_LEN};

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
