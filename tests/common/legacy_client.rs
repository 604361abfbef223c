//! A minimal xlReg 1.9 client, written for the test suite from the reference page
//! (shared/reference/legacy-wire.md) and independent of src/legacy: it builds the hello, reads
//! the reply and seals, sends and reads session messages itself, using only the crypto
//! primitives of `xlreg::crypto`, the protobuf types and the 1.9 token signature. Like the Go
//! client it is lock-step; unlike it, it reads replies robustly (they may arrive in pieces).

use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use xlreg::crypto::{cbc_decrypt, cbc_encrypt, random_array, PublicKey, RsaKeyPair};
use xlreg::proto::{Tag, XlRegMsg};
use xlreg::regcred::RegCred;
use xlreg::token::{sign_legacy, TokenFields};

/// How long the client waits for any one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A 1.9 member's identity: its name, keys, client-chosen 20-byte ID and endpoints.
#[derive(Clone)]
pub struct LegacyMember {
    /// Member name.
    pub name: String,
    /// Comms key.
    pub comms: RsaKeyPair,
    /// Sig key.
    pub sig: RsaKeyPair,
    /// The ID the member chose itself, as the Go client does.
    pub id: [u8; 20],
    /// Endpoints.
    pub endpoints: Vec<String>,
    /// The MemberAttrs it proposes (xlCluster_go: ATTR_EPHEMERAL 1, ATTR_ADMIN 2,
    /// ATTR_SOLO 4).
    pub attrs: u64,
}

/// xlCluster_go's ATTR_EPHEMERAL.
pub const ATTR_EPHEMERAL: u64 = 1;
/// xlCluster_go's ATTR_ADMIN.
pub const ATTR_ADMIN: u64 = 2;
/// xlCluster_go's ATTR_SOLO.
pub const ATTR_SOLO: u64 = 4;

impl LegacyMember {
    /// A member using key pair `index` of the shared pool and a random 20-byte ID.
    pub fn new(index: usize, name: &str) -> LegacyMember {
        let (comms, sig) = super::key_pair(index);
        LegacyMember {
            name: name.to_string(),
            comms,
            sig,
            id: random_array(),
            endpoints: vec![format!("127.0.0.1:{}", 30_000 + index)],
            attrs: ATTR_EPHEMERAL,
        }
    }

    /// The Go client library's `AdminClient`, as Go tooling creates clusters with it: a
    /// fresh random ID, the name "admin", ATTR_ADMIN|ATTR_SOLO|ATTR_EPHEMERAL and **no
    /// endpoints**. It runs Member, Create, Bye and never joins.
    pub fn go_admin_client(index: usize) -> LegacyMember {
        LegacyMember {
            endpoints: Vec::new(),
            attrs: ATTR_ADMIN | ATTR_SOLO | ATTR_EPHEMERAL,
            ..LegacyMember::new(index, "admin")
        }
    }

    /// The Go client library's `SoloMember`: ATTR_SOLO, **no endpoints**, no cluster; it
    /// runs Member, Bye to obtain an ID.
    pub fn go_solo_member(index: usize, name: &str) -> LegacyMember {
        LegacyMember {
            endpoints: Vec::new(),
            attrs: ATTR_SOLO,
            ..LegacyMember::new(index, name)
        }
    }

    /// The Member message: the token with ID, Attrs (ATTR_EPHEMERAL for an ordinary
    /// member, as the Go client sets), both keys as DER and a SHA-1 signature by the sig
    /// key; MyEnds empty if the member has no endpoints, as the Go code sends it.
    pub fn member_msg(&self) -> XlRegMsg {
        let fields = TokenFields {
            id: Some(&self.id),
            name: &self.name,
            attrs: self.attrs,
            comms_key: self.comms.public_key().to_spki_der(),
            sig_key: self.sig.public_key().to_spki_der(),
            endpoints: &self.endpoints,
        };
        XlRegMsg {
            op: Some(Tag::Member as i32),
            member_specs: Some(sign_legacy(&fields, &self.sig).unwrap()),
            ..XlRegMsg::default()
        }
    }
}

/// A message with only its Op set.
pub fn op(tag: Tag) -> XlRegMsg {
    XlRegMsg {
        op: Some(tag as i32),
        ..XlRegMsg::default()
    }
}

/// Create, as the Go client sends it (zero-valued ClusterAttrs included).
pub fn create_msg(name: &str, max_size: u32) -> XlRegMsg {
    XlRegMsg {
        cluster_name: Some(name.to_string()),
        cluster_max_size: Some(max_size),
        cluster_attrs: Some(0),
        end_point_count: Some(1),
        ..op(Tag::Create)
    }
}

/// Join by ClusterID.
pub fn join_by_id(id: &[u8]) -> XlRegMsg {
    XlRegMsg {
        cluster_id: Some(id.to_vec()),
        ..op(Tag::Join)
    }
}

/// Join by ClusterName.
pub fn join_by_name(name: &str) -> XlRegMsg {
    XlRegMsg {
        cluster_name: Some(name.to_string()),
        ..op(Tag::Join)
    }
}

/// GetCluster of the slots in `which`.
pub fn get_msg(cluster_id: &[u8], which: u64) -> XlRegMsg {
    XlRegMsg {
        cluster_id: Some(cluster_id.to_vec()),
        which: Some(which),
        ..op(Tag::GetCluster)
    }
}

/// The 256-byte hello: OAEP-SHA-1 under `ck` of key1 (32) || salt1 (8) || version 0 (4,
/// little-endian), as the Go client proposes. Returns key1 and the bytes.
pub fn hello(ck: &PublicKey) -> ([u8; 32], Vec<u8>) {
    let key1: [u8; 32] = random_array();
    let mut plaintext = key1.to_vec();
    plaintext.extend_from_slice(&random_array::<8>());
    plaintext.extend_from_slice(&0u32.to_le_bytes());
    (key1, ck.encrypt_oaep_sha1(&plaintext).unwrap())
}

/// IV || AES-256-CBC(key, PKCS#7(plaintext)).
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let iv: [u8; 16] = random_array();
    let mut out = iv.to_vec();
    out.extend_from_slice(&cbc_encrypt(key, &iv, plaintext));
    out
}

fn open(key: &[u8; 32], bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 32 || !(bytes.len() - 16).is_multiple_of(16) {
        return None;
    }
    let iv: [u8; 16] = bytes[..16].try_into().ok()?;
    cbc_decrypt(key, &iv, &bytes[16..]).ok().map(|p| p.to_vec())
}

/// One lock-step 1.9 session.
pub struct LegacyClient {
    stream: TcpStream,
    key: [u8; 32],
    inbox: Vec<u8>,
    /// The version bytes of the registry's reply, in wire order.
    pub version: [u8; 4],
}

impl LegacyClient {
    /// Dials the legacy endpoint of `cred` and completes the hello.
    pub async fn connect(cred: &RegCred) -> LegacyClient {
        Self::connect_in_pieces(cred, 1, Duration::ZERO).await
    }

    /// Like [`LegacyClient::connect`], writing the hello in `pieces` writes `pause` apart.
    pub async fn connect_in_pieces(cred: &RegCred, pieces: usize, pause: Duration) -> LegacyClient {
        let stream = TcpStream::connect(cred.endpoint()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (key1, hello) = hello(&cred.comms_key);
        let mut client = LegacyClient {
            stream,
            key: key1,
            inbox: Vec::new(),
            version: [0; 4],
        };
        client.write_in_pieces(&hello, pieces, pause).await;
        // The reply: 64 bytes, the 44-byte key2 || salt2 || version2 under key1.
        let mut reply = [0u8; 64];
        tokio::time::timeout(REPLY_TIMEOUT, client.stream.read_exact(&mut reply))
            .await
            .expect("hello reply in time")
            .expect("hello reply");
        let plaintext = open(&key1, &reply).expect("reply decrypts under key1");
        assert_eq!(plaintext.len(), 44);
        client.key.copy_from_slice(&plaintext[..32]);
        client.version.copy_from_slice(&plaintext[40..]);
        client
    }

    /// Seals and sends `msg` in one write.
    pub async fn send(&mut self, msg: &XlRegMsg) {
        self.send_in_pieces(msg, 1, Duration::ZERO).await;
    }

    /// Seals `msg` and sends it in `pieces` writes, `pause` apart.
    pub async fn send_in_pieces(&mut self, msg: &XlRegMsg, pieces: usize, pause: Duration) {
        let bytes = seal(&self.key, &msg.encode_to_vec());
        self.write_in_pieces(&bytes, pieces, pause).await;
    }

    /// Sends raw bytes in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn write_in_pieces(&mut self, bytes: &[u8], pieces: usize, pause: Duration) {
        let size = bytes.len().div_ceil(pieces.max(1));
        for (i, piece) in bytes.chunks(size).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            self.stream.write_all(piece).await.unwrap();
            self.stream.flush().await.unwrap();
        }
    }

    /// The next reply, or None if the registry closed the connection first.
    pub async fn recv(&mut self) -> Option<XlRegMsg> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(plaintext) = open(&self.key, &self.inbox) {
                if let Ok(msg) = XlRegMsg::decode(plaintext.as_slice()) {
                    if msg.op.map(Tag::try_from).is_some_and(|t| t.is_ok()) {
                        self.inbox.clear();
                        return Some(msg);
                    }
                }
            }
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("a reply in time");
            match read {
                Ok(0) | Err(_) => {
                    assert!(self.inbox.is_empty(), "connection closed mid-reply");
                    return None;
                }
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `msg` and returns the reply.
    pub async fn call(&mut self, msg: &XlRegMsg) -> XlRegMsg {
        self.send(msg).await;
        self.recv().await.expect("a reply, not a close")
    }

    /// Sends Member for `member` and returns MemberOK (panics on anything else).
    pub async fn member(&mut self, member: &LegacyMember) -> XlRegMsg {
        expect(self.call(&member.member_msg()).await, Tag::MemberOk)
    }

    /// Sends Bye, expects Ack, then the registry's close.
    pub async fn bye(mut self) {
        expect(self.call(&op(Tag::Bye)).await, Tag::Ack);
        assert!(self.recv().await.is_none(), "the registry closes after Ack");
    }
}

/// Checks a reply's Op, showing the registry's error text if it is an Error.
pub fn expect(reply: XlRegMsg, tag: Tag) -> XlRegMsg {
    assert_eq!(
        reply.op,
        Some(tag as i32),
        "expected {tag:?}, got {reply:?} (ErrDesc {:?})",
        reply.err_desc
    );
    reply
}

/// Checks a reply is an Error whose text contains `text`, and that the registry then
/// closes the connection.
pub async fn expect_error(client: &mut LegacyClient, reply: XlRegMsg, text: &str) {
    let reply = expect(reply, Tag::Error);
    let description = reply.err_desc.unwrap_or_default();
    assert!(
        description.contains(text),
        "error {description:?} should contain {text:?}"
    );
    assert!(
        client.recv().await.is_none(),
        "the registry closes after Error"
    );
}
