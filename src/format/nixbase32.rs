//! Nix base-32 ("nix32"), the encoding of store path hashes and narinfo hashes.
//!
//! The digest is read as a little-endian integer and written most significant digit
//! first in the alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no `e o u t`), padded to
//! `ceil(8n/5)` characters. Decoding is strict: exact length, lowercase alphabet only,
//! and bits beyond the digest must be zero. See store-format.md, "Hash encodings".

use thiserror::Error;

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Reverse table: byte -> digit value, or 0xff for bytes outside the alphabet.
const REVERSE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Why a nix32 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("invalid nix32 length {got}, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("invalid nix32 character {0:?}")]
    Character(char),
    #[error("nix32 string has bits set beyond the digest")]
    Overflow,
}

/// The number of nix32 characters for a digest of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Whether `c` is a nix32 digit.
pub fn is_digit(c: u8) -> bool {
    REVERSE[c as usize] != 0xff
}

/// Encodes `bytes` in nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let (i, j) = (bit / 8, bit % 8);
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nix32 string into a digest of `n` bytes.
pub fn decode(s: &[u8], n: usize) -> Result<Vec<u8>, DecodeError> {
    let expected = encoded_len(n);
    if s.len() != expected {
        return Err(DecodeError::Length {
            got: s.len(),
            expected,
        });
    }
    let mut out = vec![0u8; n];
    for (pos, &c) in s.iter().enumerate() {
        let digit = REVERSE[c as usize];
        if digit == 0xff {
            return Err(DecodeError::Character(c as char));
        }
        let bit = (expected - 1 - pos) * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(b) => *b |= carry as u8,
                None => return Err(DecodeError::Overflow),
            }
        }
    }
    Ok(out)
}

/// Decodes into a fixed-size array.
pub fn decode_array<const N: usize>(s: &[u8]) -> Result<[u8; N], DecodeError> {
    let v = decode(s, N)?;
    let mut a = [0u8; N];
    a.copy_from_slice(&v);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let mut d = [0u8; 32];
        d[0] = 1;
        assert_eq!(encode(&d), format!("{}1", "0".repeat(51)));
        let mut d = [0u8; 32];
        d[31] = 0x80;
        assert_eq!(encode(&d), format!("1{}", "0".repeat(51)));
        assert_eq!(encode(&[0xff; 20]), "z".repeat(32));
        assert_eq!(encode(&[0xff; 32]), format!("1{}", "z".repeat(51)));
    }

    #[test]
    fn round_trip_and_strictness() {
        for n in [16usize, 20, 32, 64] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let s = encode(&bytes);
            assert_eq!(s.len(), encoded_len(n));
            assert_eq!(decode(s.as_bytes(), n).unwrap(), bytes);
        }
        let bad = format!("z0xyy{}", "0".repeat(47));
        assert_eq!(decode(bad.as_bytes(), 32), Err(DecodeError::Overflow));
        assert!(matches!(decode(b"E", 1), Err(DecodeError::Length { .. })));
        let upper = "A".repeat(32);
        assert_eq!(
            decode(upper.as_bytes(), 20),
            Err(DecodeError::Character('A'))
        );
        assert_eq!(decode(&[b'0'; 32][..], 20).unwrap(), vec![0; 20]);
    }
}
