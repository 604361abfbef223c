// The loader of the committed test-only keys, one copy for the unit tests (included by
// src/lib.rs's `test_support`) and the black-box tests (included by tests/common). Where it
// is included, `RsaKeyPair` must name `xlreg::crypto::RsaKeyPair`.

/// How many keys tests/data/keys holds (key-00.pem, key-01.pem, ...).
#[allow(dead_code)]
pub const FIXTURE_KEYS: usize = 32;

/// Fixture key number `n` (below [`FIXTURE_KEYS`]): a 2048-bit RSA key made once by the
/// project's own key generation and committed, for tests only (it is public: never use it
/// for a real registry or node). Loading one takes microseconds; generating one takes tens
/// to hundreds of milliseconds.
pub fn fixture_key(n: usize) -> RsaKeyPair {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join("keys")
        .join(format!("key-{n:02}.pem"));
    let pem = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    RsaKeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
