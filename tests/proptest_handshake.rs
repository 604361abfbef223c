//! Property tests of the xlReg/3 handshake: for any client and registry randomness the two
//! ends agree on the handshake hash and talk both ways; any single bit flip in either
//! handshake message, or any truncation of either, makes the handshake fail; and anything
//! shaped otherwise than a first message is refused without a panic.

use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use xlreg::crypto::HandshakeKeyPair;
use xlreg::session_crypto::{ClientHandshakeV3, ServerHandshakeV3, V3_HELLO_LEN, V3_REPLY_LEN};

fn keys() -> &'static HandshakeKeyPair {
    static KEYS: OnceLock<HandshakeKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| HandshakeKeyPair::generate().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn both_ends_agree_and_talk(
        client_seed in any::<u64>(),
        server_seed in any::<u64>(),
        messages in vec(vec(any::<u8>(), 0..300), 1..5),
    ) {
        let (client, hello) =
            ClientHandshakeV3::start(keys().public(), &mut StdRng::seed_from_u64(client_seed))
                .unwrap();
        prop_assert_eq!(hello.len(), V3_HELLO_LEN);
        let (reply, mut server) =
            ServerHandshakeV3::accept(keys(), &hello, &mut StdRng::seed_from_u64(server_seed))
                .unwrap();
        prop_assert_eq!(reply.len(), V3_REPLY_LEN);
        let mut client = client.finish(&reply).unwrap();
        prop_assert_eq!(client.handshake_hash, server.handshake_hash);
        for message in &messages {
            let sealed = client.cipher.seal(message);
            prop_assert_eq!(&*server.cipher.open(&sealed).unwrap(), message);
            let answer = server.cipher.seal(message);
            prop_assert_eq!(&*client.cipher.open(&answer).unwrap(), message);
        }
    }

    #[test]
    fn a_bit_flip_in_either_handshake_message_fails_the_handshake(
        seed in any::<u64>(),
        in_reply in any::<bool>(),
        bit in any::<Index>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (client, mut hello) = ClientHandshakeV3::start(keys().public(), &mut rng).unwrap();
        if !in_reply {
            let bit = bit.index(hello.len() * 8);
            hello[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ServerHandshakeV3::accept(keys(), &hello, &mut rng).is_err());
            return Ok(());
        }
        let (mut reply, _) = ServerHandshakeV3::accept(keys(), &hello, &mut rng).unwrap();
        let bit = bit.index(reply.len() * 8);
        reply[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(client.finish(&reply).is_err());
    }

    #[test]
    fn a_truncated_handshake_message_fails(seed in any::<u64>(), cut in any::<Index>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (client, hello) = ClientHandshakeV3::start(keys().public(), &mut rng).unwrap();
        let short = &hello[..cut.index(hello.len())];
        prop_assert!(ServerHandshakeV3::accept(keys(), short, &mut rng).is_err());
        let (reply, _) = ServerHandshakeV3::accept(keys(), &hello, &mut rng).unwrap();
        prop_assert!(client.finish(&reply[..cut.index(reply.len())]).is_err());
    }

    #[test]
    fn arbitrary_first_messages_are_refused_without_panicking(
        mut bytes in vec(any::<u8>(), 0..1200),
        magic in any::<bool>(),
    ) {
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(b"XLR3");
        }
        let mut rng = StdRng::seed_from_u64(0);
        prop_assert!(ServerHandshakeV3::accept(keys(), &bytes, &mut rng).is_err());
    }
}

#[test]
fn arbitrary_first_messages_of_the_exact_length_are_refused() {
    // The property above rarely hits exactly 1,140 bytes; cover that length on purpose.
    let mut rng = StdRng::seed_from_u64(1);
    for fill in [0u8, 0x5a, 0xff] {
        let mut bytes = vec![fill; V3_HELLO_LEN];
        bytes[..4].copy_from_slice(b"XLR3");
        assert!(ServerHandshakeV3::accept(keys(), &bytes, &mut rng).is_err());
    }
}
