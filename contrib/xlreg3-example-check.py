# Independent check of the xlReg/3 worked example in docs/protocol.md (section 12): the
# Noise_NKpsk2_25519_AESGCM_SHA256 handshake written from the Noise specification with
# Python's `cryptography` package, no xlreg code. Run: python3 contrib/xlreg3-example-check.py
# and compare with the hex in the spec (tests/protocol_example_v3.rs checks the same bytes).
import hashlib, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization as ser

def pub(priv): return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
def dh(priv, pub_): return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub_))
def H(x): return hashlib.sha256(x).digest()
def hkdf(ck, ikm, n):
    t = hmac.new(ck, ikm, hashlib.sha256).digest()
    o1 = hmac.new(t, b"\x01", hashlib.sha256).digest()
    o2 = hmac.new(t, o1 + b"\x02", hashlib.sha256).digest()
    if n == 2: return o1, o2
    o3 = hmac.new(t, o2 + b"\x03", hashlib.sha256).digest()
    return o1, o2, o3
def nonce(n): return b"\0\0\0\0" + n.to_bytes(8, "big")

class SS:
    def __init__(self, name):
        self.h = name.ljust(32, b"\0") if len(name) <= 32 else H(name)
        self.ck = self.h; self.k = None; self.n = 0
    def mix_hash(self, d): self.h = H(self.h + d)
    def mix_key(self, ikm): self.ck, k = hkdf(self.ck, ikm, 2); self.k = k; self.n = 0
    def mix_key_and_hash(self, ikm):
        self.ck, th, k = hkdf(self.ck, ikm, 3); self.mix_hash(th); self.k = k; self.n = 0
    def enc_hash(self, pt):
        c = AESGCM(self.k).encrypt(nonce(self.n), pt, self.h); self.n += 1; self.mix_hash(c); return c
    def split(self): return hkdf(self.ck, b"", 2)

s = bytes([0x11]*32); e_c = bytes([0x22]*32); e_r = bytes([0x33]*32)
ct = bytes([0x44]*1088); psk = bytes([0x55]*32)
rs = pub(s)
print("static", rs.hex())
st = SS(b"Noise_NKpsk2_25519_AESGCM_SHA256")
st.mix_hash(b"XLR3" + ct)          # prologue
st.mix_hash(rs)                    # <- s
ec = pub(e_c); st.mix_hash(ec); st.mix_key(ec)   # e (psk mode: MixKey too)
st.mix_key(dh(e_c, rs))            # es
m1 = ec + st.enc_hash(b"")
print("msg1", m1.hex())
er = pub(e_r); st.mix_hash(er); st.mix_key(er)   # e
st.mix_key(dh(e_r, ec))            # ee
st.mix_key_and_hash(psk)           # psk
m2 = er + st.enc_hash(b"")
print("msg2", m2.hex())
print("hash", st.h.hex())
k_c2r, k_r2c = st.split()
bye = AESGCM(k_c2r).encrypt(nonce(0), b"\x00\x08\x0b", b"")
print("bye ", (len(bye)).to_bytes(4, "big").hex() + bye.hex())
ack = AESGCM(k_r2c).encrypt(nonce(0), b"\x00\x08\x0c", b"")
print("ack ", (len(ack)).to_bytes(4, "big").hex() + ack.hex())
