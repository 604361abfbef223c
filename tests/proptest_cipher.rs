//! Property tests of the session cipher: messages round-trip in both directions, and any
//! single bit flip, truncation, reordering, replay or reflection makes a frame fail to open.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use xlreg::session_crypto::{Role, SessionCipher};

fn pair(key: &[u8; 32]) -> (SessionCipher, SessionCipher) {
    (
        SessionCipher::new(key, Role::Client),
        SessionCipher::new(key, Role::Server),
    )
}

proptest! {
    #[test]
    fn messages_round_trip_both_ways(
        key in any::<[u8; 32]>(),
        messages in vec(vec(any::<u8>(), 0..400), 1..10),
    ) {
        let (mut client, mut server) = pair(&key);
        for message in &messages {
            let sealed = client.seal(message);
            prop_assert_eq!(&*server.open(&sealed).unwrap(), message);
            let reply = server.seal(message);
            prop_assert_eq!(&*client.open(&reply).unwrap(), message);
        }
    }

    #[test]
    fn any_single_bit_flip_fails(
        key in any::<[u8; 32]>(),
        messages in vec(vec(any::<u8>(), 0..200), 1..6),
        which in any::<Index>(),
        bit in any::<Index>(),
    ) {
        let (mut client, mut server) = pair(&key);
        let sealed: Vec<Vec<u8>> = messages.iter().map(|m| client.seal(m)).collect();
        let target = which.index(sealed.len());
        for frame in &sealed[..target] {
            prop_assert!(server.open(frame).is_ok());
        }
        let mut flipped = sealed[target].clone();
        let bit = bit.index(flipped.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(server.open(&flipped).is_err());
    }

    #[test]
    fn any_truncation_fails(
        key in any::<[u8; 32]>(),
        message in vec(any::<u8>(), 0..200),
        keep in any::<Index>(),
    ) {
        let (mut client, mut server) = pair(&key);
        let sealed = client.seal(&message);
        let keep = keep.index(sealed.len());
        prop_assert!(server.open(&sealed[..keep]).is_err());
    }

    #[test]
    fn reordered_replayed_or_reflected_frames_fail(
        key in any::<[u8; 32]>(),
        messages in vec(vec(any::<u8>(), 0..100), 2..6),
        early in any::<Index>(),
        late in any::<Index>(),
    ) {
        let (mut client, mut server) = pair(&key);
        let sealed: Vec<Vec<u8>> = messages.iter().map(|m| client.seal(m)).collect();
        let (a, b) = (early.index(sealed.len()), late.index(sealed.len()));
        prop_assume!(a != b);
        let (first, second) = (a.min(b), a.max(b));
        for frame in &sealed[..first] {
            prop_assert!(server.open(frame).is_ok());
        }
        // A later frame where an earlier one is due.
        prop_assert!(server.open(&sealed[second]).is_err());
        prop_assert!(server.open(&sealed[first]).is_ok());
        // The frame just opened, again.
        prop_assert!(server.open(&sealed[first]).is_err());
        // A client's own frame reflected back to it.
        let mut other_client = SessionCipher::new(&key, Role::Client);
        prop_assert!(other_client.open(&sealed[0]).is_err());
    }
}
