//! Ed25519 verification against one fixed public key, faster once the key has checked
//! many signatures (a cache's key checks one per narinfo): the key's multiples are
//! precomputed into a table, as the basepoint's are, so `[s]B - [k]A` costs two table
//! multiplications instead of one double-scalar multiplication. The verdict is exactly
//! `ed25519_dalek::VerifyingKey::verify_strict`'s (which is libsodium's, and so Nix's):
//!
//! * `s` must be canonical (`< ℓ`); a key of small order verifies nothing;
//! * `R` must be the canonical encoding of the recomputed point `[s]B - [k]A`, with
//!   `k = SHA-512(R ‖ A ‖ message) mod ℓ` over the bytes as given, and that point must
//!   not be of small order.
//!
//! dalek decompresses `R` first and rejects it if it is invalid or of small order; here
//! the recomputed point is compressed and compared instead, which decides the same: a
//! point's canonical encoding decompresses to that point, so equality of encodings makes
//! `R` valid and the small-order test of the recomputed point the test of `R`. The unit
//! tests check the two verdicts agree on valid, tampered, non-canonical, small-order and
//! mixed-torsion signatures and keys.
//!
//! Building the table takes about as long as 25 verifications, so the first
//! [`TABLE_AFTER`] signatures of a key are checked by dalek directly.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::BasepointTable;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

/// How many signatures a key checks the plain way before its table is built.
pub const TABLE_AFTER: u32 = 64;

/// A public key with what makes checking many signatures by it fast.
pub struct FixedKeyVerifier {
    key: VerifyingKey,
    uses: AtomicU32,
    table: OnceLock<Table>,
}

struct Table {
    /// `A`'s multiples, for `[k]A`.
    multiples: Box<EdwardsBasepointTable>,
    small_order: bool,
}

impl FixedKeyVerifier {
    pub fn new(key: VerifyingKey) -> Self {
        FixedKeyVerifier {
            key,
            uses: AtomicU32::new(0),
            table: OnceLock::new(),
        }
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether `sig` is a valid signature of `message` by this key, by `verify_strict`'s
    /// rules (see the module doc).
    pub fn verify_strict(&self, message: &[u8], sig: &[u8; 64]) -> bool {
        let table = match self.table.get() {
            Some(t) => t,
            None if self.uses.fetch_add(1, Ordering::Relaxed) < TABLE_AFTER => {
                let sig = ed25519_dalek::Signature::from_bytes(sig);
                return self.key.verify_strict(message, &sig).is_ok();
            }
            None => self.table.get_or_init(|| Table::new(&self.key)),
        };
        table.verify_strict(self.key.as_bytes(), message, sig)
    }
}

impl Table {
    fn new(key: &VerifyingKey) -> Table {
        // The key was made from these bytes, so they decompress; `verify_strict` too uses
        // the point they decompress to and hashes the bytes themselves.
        let point = CompressedEdwardsY(*key.as_bytes())
            .decompress()
            .unwrap_or_default();
        Table {
            multiples: Box::new(EdwardsBasepointTable::create(&point)),
            small_order: point.is_small_order(),
        }
    }

    fn verify_strict(&self, key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
        if self.small_order {
            return false;
        }
        let (r, s) = sig.split_at(32);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(s);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let mut h = Sha512::new();
        h.update(r);
        h.update(key);
        h.update(message);
        let k = Scalar::from_hash(h);
        let expected: EdwardsPoint =
            ED25519_BASEPOINT_TABLE.mul_base(&s) - self.multiples.mul_base(&k);
        expected.compress().as_bytes()[..] == *r && !expected.is_small_order()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use ed25519_dalek::Signer;

    fn scalar(seed: &[u8]) -> Scalar {
        Scalar::from_bytes_mod_order_wide(&Sha512::digest(seed).into())
    }

    /// Points of small order, from their encodings (order 2, 4 and 8).
    fn torsion() -> Vec<EdwardsPoint> {
        let mut order2 = [0xff; 32];
        order2[0] = 0xec;
        order2[31] = 0x7f;
        let order8 = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05";
        let mut o8 = [0u8; 32];
        for (i, b) in o8.iter_mut().enumerate() {
            *b = u8::from_str_radix(&order8[2 * i..2 * i + 2], 16).unwrap();
        }
        let points: Vec<EdwardsPoint> = [order2, [0; 32], o8]
            .iter()
            .map(|b| CompressedEdwardsY(*b).decompress().unwrap())
            .collect();
        for p in &points {
            assert!(p.is_small_order() && *p != EdwardsPoint::default());
        }
        points
    }

    /// A signature made from scalars directly: `R = [r]B + t`, `s = r + k·a + extra`.
    fn craft(a: &Scalar, key: &[u8; 32], msg: &[u8], r: &Scalar, t: EdwardsPoint) -> [u8; 64] {
        let big_r = (ED25519_BASEPOINT_POINT * r + t).compress();
        let mut h = Sha512::new();
        h.update(big_r.as_bytes());
        h.update(key);
        h.update(msg);
        let s = r + Scalar::from_hash(h) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    /// Checks the table's verdict against dalek's on `sig`, and returns it.
    fn agree(v: &FixedKeyVerifier, msg: &[u8], sig: &[u8; 64]) -> bool {
        let dalek = v
            .key
            .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok();
        let table = Table::new(&v.key);
        let ours = table.verify_strict(v.key.as_bytes(), msg, sig);
        assert_eq!(ours, dalek, "sig {sig:02x?}");
        assert_eq!(v.verify_strict(msg, sig), dalek);
        dalek
    }

    #[test]
    fn same_verdicts_as_verify_strict() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let v = FixedKeyVerifier::new(sk.verifying_key());
        for i in 0..40u32 {
            let msg = format!("1;/nix/store/x{i};sha256:abc;{i};");
            let mut sig = sk.sign(msg.as_bytes()).to_bytes();
            assert!(agree(&v, msg.as_bytes(), &sig));
            assert!(!agree(&v, b"other", &sig));
            sig[(i as usize * 7) % 64] ^= 1 << (i % 8);
            assert!(!agree(&v, msg.as_bytes(), &sig));
        }
        // s + ℓ: the same residue, not canonical.
        let msg = b"m";
        let mut sig = sk.sign(msg).to_bytes();
        let ell: [u8; 32] = {
            let mut l = [0u8; 32];
            l[..16].copy_from_slice(&0x14def9dea2f79cd65812631a5cf5d3edu128.to_le_bytes());
            l[31] = 0x10;
            l
        };
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = sig[32 + i] as u16 + ell[i] as u16 + carry;
            sig[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert!(!agree(&v, msg, &sig));
        assert!(!agree(&v, msg, &[0; 64]));
        assert!(!agree(&v, msg, &[0xff; 64]));
    }

    #[test]
    fn torsion_in_r_or_key_is_refused_alike() {
        let ts = torsion();
        for i in 0..24u32 {
            let a = scalar(&i.to_le_bytes());
            let t = ts[i as usize % ts.len()];
            for key_point in [ED25519_BASEPOINT_POINT * a, ED25519_BASEPOINT_POINT * a + t] {
                let key = key_point.compress().to_bytes();
                let v = FixedKeyVerifier::new(VerifyingKey::from_bytes(&key).unwrap());
                let msg = format!("msg {i}");
                let r = scalar(msg.as_bytes());
                let clean = craft(&a, &key, msg.as_bytes(), &r, EdwardsPoint::default());
                let pure_key = key_point == ED25519_BASEPOINT_POINT * a;
                // Valid for a torsion-free key; for a mixed key only when [k]t vanishes.
                let verdict = agree(&v, msg.as_bytes(), &clean);
                assert!(verdict || !pure_key);
                agree(&v, msg.as_bytes(), &craft(&a, &key, msg.as_bytes(), &r, t));
                // R of small order, s = k·a: [s]B - [k]A = R only for a key without torsion.
                let small_r = craft(&a, &key, msg.as_bytes(), &Scalar::ZERO, t);
                assert!(!agree(&v, msg.as_bytes(), &small_r));
            }
        }
        for t in ts.iter().chain([&EdwardsPoint::default()]) {
            let key = t.compress().to_bytes();
            let v = FixedKeyVerifier::new(VerifyingKey::from_bytes(&key).unwrap());
            let sig = craft(
                &Scalar::ONE,
                &key,
                b"m",
                &scalar(b"r"),
                EdwardsPoint::default(),
            );
            assert!(!agree(&v, b"m", &sig));
        }
    }

    #[test]
    fn switches_to_the_table_after_some_uses() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let v = FixedKeyVerifier::new(sk.verifying_key());
        let sig = sk.sign(b"x").to_bytes();
        for _ in 0..TABLE_AFTER + 3 {
            assert!(v.verify_strict(b"x", &sig));
            assert!(!v.verify_strict(b"y", &sig));
        }
        assert!(v.table.get().is_some());
    }
}
