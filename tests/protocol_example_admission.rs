//! The worked example of docs/protocol.md section 14.11 (admission proofs), checked byte for
//! byte, and each value checked to appear in the spec so the spec stays true.

use aws_lc_rs::hkdf;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use xlreg::model::admission::{
    join_proof_input, list_proof_input, owner_proof_input, regcred_pin, verify, JoinTokenSecret,
    JoiningNode, OwnerOp, OwnerSecret,
};

const DOC: &str = include_str!("../docs/protocol.md");
const BINDING: [u8; 16] = [0x44; 16];
const CLUSTER: [u8; 32] = [0x55; 32];

/// The spec's section 14 reduced to its hex words run together (annotations, spaces and line
/// breaks removed), so that values split over words and lines can be found.
fn doc_hex() -> String {
    let start = DOC.find("## 14. Admission").expect("section 14");
    DOC[start..]
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| "`(),.:".contains(c)))
        .filter(|w| {
            w.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .collect()
}

fn in_doc(what: &str, hex: &str) {
    assert!(doc_hex().contains(hex), "{what} {hex} is not in section 14");
}

/// The example's seed, computed with HKDF directly (not through the module under test).
fn seed(ikm: &[u8], info: &[&[u8]]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(ikm);
    let mut out = [0u8; 32];
    prk.expand(info, hkdf::HKDF_SHA256)
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

#[test]
fn join_token_key_and_join_proof() {
    let token = JoinTokenSecret::parse("k3x9p0.abcdefghijklmnopqrstuvwxyz").unwrap();
    let seed = seed(
        b"abcdefghijklmnopqrstuvwxyz",
        &[b"xlreg join token v1", &[0], b"k3x9p0"],
    );
    assert_eq!(
        hex::encode(seed),
        "88c567898c54d40be3829b667feb995fe354d496ea8738c95099433a4c5fcfce"
    );
    in_doc("seed", &hex::encode(seed));
    let key = token.key();
    let by_seed = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    assert_eq!(by_seed.public_key().as_ref(), key.verifier());
    assert_eq!(
        hex::encode(key.verifier()),
        "b22565a267f5f575e866d4ceac5055988b06a4a9cf5107d3870e21b2c66ab0b4"
    );
    in_doc("verifier", &hex::encode(key.verifier()));

    let endpoints = vec!["10.0.0.1:9000".to_string()];
    let node = JoiningNode {
        id: &[0x66; 32],
        comms_key: &[0xc0, 0xc1],
        sig_key: &[0x5a],
        endpoints: &endpoints,
    };
    let input = join_proof_input(&BINDING, &CLUSTER, token.id(), &node);
    let expected_input = concat!(
        "786c726567206a6f696e2070726f6f6620763100",
        "0000001044444444444444444444444444444444",
        "000000205555555555555555555555555555555555555555555555555555555555555555",
        "000000066b3378397030",
        "000000206666666666666666666666666666666666666666666666666666666666666666",
        "00000002c0c1",
        "000000015a",
        "000000010000000d31302e302e302e313a39303030",
    );
    assert_eq!(hex::encode(&input), expected_input);
    in_doc("join proof input", expected_input);
    let proof = key.sign(&input);
    let expected_proof = "ceb9c759d78bafd29ba10be070a5e60d66802afcec80d9a9bd41f3275d3b7e23\
                          b93901f7a5641b1c981adbef371653e490e2ac989b252aa8254c8fc862efb304";
    assert_eq!(hex::encode(proof), expected_proof);
    in_doc("join proof", expected_proof);
    assert!(verify(&key.verifier(), &input, &proof));
    // Another session's binding: the same proof does not verify.
    let replayed = join_proof_input(&[0x45; 16], &CLUSTER, token.id(), &node);
    assert!(!verify(&key.verifier(), &replayed, &proof));
}

#[test]
fn owner_key_and_owner_proof() {
    let owner = OwnerSecret::parse("abcdefghijklmnopqrstuvwxyz234567").unwrap();
    let seed = seed(b"abcdefghijklmnopqrstuvwxyz234567", &[b"xlreg owner v1"]);
    assert_eq!(
        hex::encode(seed),
        "be1e86c825393c7127753220c62414b63ff7569647f3d28d80d969110126dca5"
    );
    in_doc("owner seed", &hex::encode(seed));
    let key = owner.key();
    assert_eq!(
        hex::encode(key.verifier()),
        "8310a63ee00ea7d2c8174eaf74589688a66c53c7d61963743d4dbfbd68a6ab81"
    );
    in_doc("owner key", &hex::encode(key.verifier()));
    let input = owner_proof_input(&BINDING, OwnerOp::Close, &CLUSTER, &[], &[]);
    let expected_input = concat!(
        "786c726567206f776e6572206f7020763100",
        "0000001044444444444444444444444444444444",
        "00000005636c6f7365",
        "000000205555555555555555555555555555555555555555555555555555555555555555",
        "0000000000000000",
    );
    assert_eq!(hex::encode(&input), expected_input);
    in_doc("owner input", expected_input);
    let sig = "7595ac11f9abbea2446d88d733a8473f74e8064322872373ca83d4a96be8ac04\
               94e79d38225dbb02569e66ad572dc7d2940b99401cce5fc1f36eb2a703d6b300";
    assert_eq!(hex::encode(key.sign(&input)), sig);
    in_doc("owner sig", sig);
}

#[test]
fn list_proof_and_pin() {
    let token = JoinTokenSecret::parse("k3x9p0.abcdefghijklmnopqrstuvwxyz").unwrap();
    let input = list_proof_input(&BINDING, &CLUSTER, token.id());
    assert_eq!(
        hex::encode(&input),
        concat!(
            "786c726567206c6973742070726f6f6620763100",
            "0000001044444444444444444444444444444444",
            "000000205555555555555555555555555555555555555555555555555555555555555555",
            "000000066b3378397030",
        )
    );
    let proof = "b31ab2189be9d49c09f1b9c0176c21d5e8e3694839c4f7f4f4dfb5a0614d224c\
                 e69c9b029743a608b58e7cd7ade8dc70aee9baef251889d32cd66c57554fbc0f";
    assert_eq!(hex::encode(token.key().sign(&input)), proof);
    in_doc("list proof", proof);
    let pin = hex::encode(regcred_pin(&[0x77; 32], &[0xc0, 0xc1], &[0x5a]));
    assert_eq!(
        pin,
        "f0af0b2608ca0a79578443a4b3c48393d274a74b7515dbf9b181c0af4e6105e1"
    );
    in_doc("pin", &pin);
}
