//! Nix-format ed25519 signing keys, detached signatures and the trusted-key set, as in
//! Nix 2.8 (`libstore/crypto.cc`). See store-format.md §4.1 and §5.
//!
//! ```text
//! secret-key = name ":" base64(seed[32] ‖ public[32])   ; libsodium layout, 64 bytes
//! public-key = name ":" base64(public[32])
//! signature  = name ":" base64(ed25519-signature[64])  ; the narinfo `Sig:` value
//! name       = 1* any char except ":", whitespace and control characters
//! ```
//!
//! * Names are checked in one place, [`KeyName::new`], for generated keys, key files,
//!   `trusted-public-keys` and signatures alike: non-empty and no `:` as in Nix (a name
//!   with a `:` would write a key file that no one can read back), plus our own rule below.
//! * The name is everything before the **first** `:`; the key part must be non-empty. A
//!   single trailing `\n` is tolerated when reading key files; printing never adds one.
//! * base64 is the standard padded alphabet and is decoded strictly (canonical padding
//!   and trailing bits), which is stricter than Nix but accepts everything Nix writes.
//! * Stricter than Nix: names may not contain whitespace or control characters (they
//!   end up in space-separated lists and in narinfo lines); a secret key whose public
//!   half does not match its seed, and a public key that is not a valid curve point, are
//!   refused.
//! * Verification ([`TrustedKeys::verify`]) follows Nix's `verifyDetached`: a signature
//!   without `:` or with an unknown name does not count (not an error); under a known
//!   name, bad base64 or a length other than 64 bytes is a hard error; otherwise
//!   ed25519 `verify_strict` decides (through [`super::ed25519`], which gives the same
//!   verdicts faster for a key that checks many signatures).
//!
//! Secret material: [`SecretKey`] has a redacted `Debug`, is zeroized on drop (by
//! `ed25519_dalek::SigningKey`), compares in constant time, and is only printed through
//! [`SecretKey::to_nix_string`], which returns a zeroizing buffer. This module does no
//! file I/O; callers read and write the key files.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRngCore, OsRng};
use thiserror::Error;
use zeroize::Zeroizing;

use super::ed25519::FixedKeyVerifier;

/// Length of a decoded secret key (seed ‖ public key).
pub const SECRET_KEY_LEN: usize = 64;
/// Length of a decoded public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a decoded signature.
pub const SIGNATURE_LEN: usize = 64;

/// Which kind of `name:base64` value an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Secret,
    Public,
    Signature,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret key",
            KeyKind::Public => "public key",
            KeyKind::Signature => "signature",
        })
    }
}

/// Why a key or signature was refused. Never contains key material, only names.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{kind} has no ':' between name and key")]
    MissingColon { kind: KeyKind },
    #[error("invalid {kind} name {name:?}")]
    BadName {
        kind: KeyKind,
        name: String,
        #[source]
        reason: KeyNameError,
    },
    #[error("{kind} '{name}' has an empty key part")]
    EmptyKey { kind: KeyKind, name: String },
    #[error("{kind} '{name}' is not valid base64")]
    Base64 { kind: KeyKind, name: String },
    #[error("{kind} '{name}' decodes to {got} bytes, expected {expected}")]
    Size {
        kind: KeyKind,
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("secret key '{name}': the public half does not match the seed")]
    Mismatch { name: String },
    #[error("public key '{name}' is not a valid ed25519 point")]
    InvalidPoint { name: String },
    #[error("two different trusted public keys are named '{name}'")]
    ConflictingName { name: String },
}

/// Splits `name:key`, checking the name and that the key part is non-empty.
fn split_named(s: &str, kind: KeyKind) -> Result<(KeyName, &str), KeyError> {
    let (raw, key) = s.split_once(':').ok_or(KeyError::MissingColon { kind })?;
    let name = check_name(raw, kind)?;
    if key.is_empty() {
        return Err(KeyError::EmptyKey {
            kind,
            name: name.to_string(),
        });
    }
    Ok((name, key))
}

fn check_name(name: &str, kind: KeyKind) -> Result<KeyName, KeyError> {
    KeyName::new(name).map_err(|reason| KeyError::BadName {
        kind,
        name: name.to_owned(),
        reason,
    })
}

/// Why a key name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyNameError {
    #[error("a key name must not be empty")]
    Empty,
    #[error("a key name must not contain ':'")]
    Colon,
    #[error("a key name must not contain whitespace or control characters")]
    Whitespace,
}

/// The name of a key or signature: non-empty, no `:`, no whitespace or control
/// characters. The only place key names are checked (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    pub fn new(name: &str) -> Result<Self, KeyNameError> {
        if name.is_empty() {
            return Err(KeyNameError::Empty);
        }
        if name.contains(':') {
            return Err(KeyNameError::Colon);
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KeyNameError::Whitespace);
        }
        Ok(KeyName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyName {
    type Err = KeyNameError;
    fn from_str(s: &str) -> Result<Self, KeyNameError> {
        Self::new(s)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes strict padded base64 into exactly `N` bytes. The buffer is zeroized on drop.
fn decode_fixed<const N: usize>(
    b64: &str,
    kind: KeyKind,
    name: &str,
) -> Result<Zeroizing<[u8; N]>, KeyError> {
    let decoded = Zeroizing::new(
        BASE64
            .decode(b64.as_bytes())
            .map_err(|_| KeyError::Base64 {
                kind,
                name: name.to_owned(),
            })?,
    );
    if decoded.len() != N {
        return Err(KeyError::Size {
            kind,
            name: name.to_owned(),
            got: decoded.len(),
            expected: N,
        });
    }
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(&decoded);
    Ok(out)
}

/// Removes one trailing `\n`, which Nix tolerates in key files.
fn strip_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// An ed25519 secret key with its name, as in a Nix `.sec` file.
#[derive(Clone)]
pub struct SecretKey {
    name: KeyName,
    key: SigningKey,
}

impl SecretKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        Self::generate_with(name, &mut OsRng)
    }

    /// Generates a key from the given CSPRNG.
    pub fn generate_with<R: CryptoRngCore + ?Sized>(
        name: &str,
        rng: &mut R,
    ) -> Result<Self, KeyError> {
        Ok(SecretKey {
            name: check_name(name, KeyKind::Secret)?,
            key: SigningKey::generate(rng),
        })
    }

    /// Builds a key from a name and a 32-byte ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        Ok(SecretKey {
            name: check_name(name, KeyKind::Secret)?,
            key: SigningKey::from_bytes(seed),
        })
    }

    /// Parses the text of a secret key file (`name:base64(seed ‖ public)`, optionally
    /// followed by one `\n`).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let kind = KeyKind::Secret;
        let (name, b64) = split_named(strip_newline(s), kind)?;
        let bytes = decode_fixed::<SECRET_KEY_LEN>(b64, kind, name.as_str())?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Mismatch {
            name: name.to_string(),
        })?;
        Ok(SecretKey { name, key })
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The matching public key (`nix key convert-secret-to-public`).
    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The file text `name:base64(seed ‖ public)`, without a trailing newline, in a
    /// buffer that is zeroized when dropped.
    pub fn to_nix_string(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.key.to_keypair_bytes());
        let mut out = Zeroizing::new(String::with_capacity(
            self.name.as_str().len() + 1 + BASE64.encode_len(SECRET_KEY_LEN),
        ));
        out.push_str(self.name.as_str());
        out.push(':');
        BASE64.encode_append(&bytes[..], &mut out);
        out
    }

    /// Signs `fingerprint` (its UTF-8 bytes). Deterministic, like libsodium.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            name: self.name.clone(),
            sig: self.key.sign(fingerprint.as_bytes()),
        }
    }
}

/// Constant-time comparison of the key bytes (via `SigningKey`), plus the name.
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        let same_key = self.key == other.key;
        same_key & (self.name == other.name)
    }
}

impl Eq for SecretKey {}

/// Redacted: shows the name and the public key only.
impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name.as_str())
            .field("public", &self.to_public().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

/// An ed25519 public key with its name, as in a Nix `.pub` file or `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: KeyName,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `name:base64(public)`, optionally followed by one `\n`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let kind = KeyKind::Public;
        let (name, b64) = split_named(strip_newline(s), kind)?;
        let bytes = decode_fixed::<PUBLIC_KEY_LEN>(b64, kind, name.as_str())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPoint {
            name: name.to_string(),
        })?;
        Ok(PublicKey { name, key })
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.key.as_bytes()
    }

    /// Whether `sig` is a valid signature of `fingerprint` by this key. Only the
    /// signature bytes are checked, not the name (see [`TrustedKeys::verify`] for that).
    pub fn verify(&self, fingerprint: &str, sig: &Signature) -> bool {
        self.key
            .verify_strict(fingerprint.as_bytes(), &sig.sig)
            .is_ok()
    }
}

/// `name:base64(public)`, without a trailing newline.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

/// A detached signature with the name of the key that made it: a narinfo `Sig:` value.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    name: KeyName,
    sig: ed25519_dalek::Signature,
}

impl Signature {
    /// Parses `name:base64(64 bytes)` strictly.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let kind = KeyKind::Signature;
        let (name, b64) = split_named(s, kind)?;
        let bytes = decode_fixed::<SIGNATURE_LEN>(b64, kind, name.as_str())?;
        Ok(Signature {
            name,
            sig: ed25519_dalek::Signature::from_bytes(&bytes),
        })
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.sig.to_bytes()
    }
}

/// `name:base64(signature)`.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(&self.sig.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// Ordered as their text (`name:base64`) sorts, so a set of signatures lists (and is
/// stored) in the same order as the strings it is parsed from.
impl Ord for Signature {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn text_name(s: &Signature) -> impl Iterator<Item = u8> + '_ {
            s.name.as_str().bytes().chain(std::iter::once(b':'))
        }
        text_name(self).cmp(text_name(other)).then_with(|| {
            let text = |s: &Signature| BASE64.encode(&s.sig.to_bytes());
            text(self).cmp(&text(other))
        })
    }
}

impl PartialOrd for Signature {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

/// The set of trusted public keys, looked up by name (Nix's `PublicKeys` map). Clones
/// share each key's verifier (and so its precomputed table).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, Trusted>,
}

#[derive(Clone)]
struct Trusted {
    key: PublicKey,
    verifier: Arc<FixedKeyVerifier>,
}

impl PartialEq for TrustedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for TrustedKeys {}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key. Adding the same key twice is fine; a different key under a name that
    /// is already present is refused, since matching is by name only.
    pub fn insert(&mut self, key: PublicKey) -> Result<(), KeyError> {
        match self.keys.get(key.name()) {
            Some(existing) if existing.key != key => Err(KeyError::ConflictingName {
                name: key.name().to_owned(),
            }),
            Some(_) => Ok(()),
            None => {
                let verifier = Arc::new(FixedKeyVerifier::new(key.key));
                self.keys
                    .insert(key.name().to_owned(), Trusted { key, verifier });
                Ok(())
            }
        }
    }

    /// Builds the set from keys, refusing conflicting names.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, KeyError> {
        let mut set = Self::new();
        for key in keys {
            set.insert(key)?;
        }
        Ok(set)
    }

    /// Parses a whitespace-separated list of public keys, like the
    /// `trusted-public-keys` setting.
    pub fn parse_list(s: &str) -> Result<Self, KeyError> {
        let mut set = Self::new();
        for word in s.split_whitespace() {
            set.insert(PublicKey::parse(word)?)?;
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name).map(|t| &t.key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values().map(|t| &t.key)
    }

    /// Nix's `verifyDetached`: `Ok(true)` if `sig` is a valid signature of
    /// `fingerprint` by the trusted key of that name; `Ok(false)` if the signature does
    /// not count (no `:`, unknown name) or does not verify; `Err` if the name is trusted
    /// but the signature is not valid base64 of exactly 64 bytes.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> Result<bool, KeyError> {
        let Some((name, b64)) = sig.split_once(':') else {
            return Ok(false);
        };
        let Some(trusted) = self.keys.get(name) else {
            return Ok(false);
        };
        let kind = KeyKind::Signature;
        let bytes = BASE64
            .decode(b64.as_bytes())
            .map_err(|_| KeyError::Base64 {
                kind,
                name: name.to_owned(),
            })?;
        let bytes: [u8; SIGNATURE_LEN] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Size {
                kind,
                name: name.to_owned(),
                got: bytes.len(),
                expected: SIGNATURE_LEN,
            })?;
        Ok(trusted
            .verifier
            .verify_strict(fingerprint.as_bytes(), &bytes))
    }

    /// How many of `sigs` are valid signatures of `fingerprint` by trusted keys (Nix's
    /// `checkSignatures`). Any hard error (see [`TrustedKeys::verify`]) fails the whole
    /// check, as in Nix.
    pub fn count_valid<'a>(
        &self,
        fingerprint: &str,
        sigs: impl IntoIterator<Item = &'a str>,
    ) -> Result<usize, KeyError> {
        let mut good = 0;
        for sig in sigs {
            if self.verify(fingerprint, sig)? {
                good += 1;
            }
        }
        Ok(good)
    }
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: &str = "test-cache-1:WC78b6Ubdu8RzFaTFJPnP7/eQAnm752kjk6XkPEXyhw1iC2iu6LO6vKiUIu7me7J4shbsEqule7YG9Www4bbQA==";
    const PUB: &str = "test-cache-1:NYgtoruizuryolCLu5nuyeLIW7BKrpXu2BvVsMOG20A=";
    const FP: &str = "1;/nix/store/si47kwc33psiwfxkyw4c9qwx7r6n5zca-vec-a.txt;sha256:1mjgk9r4fiia8gac4jd35rx48xcp0saqy76iaqrkcz6295lyzi0x;128;";
    const SIG: &str = "test-cache-1:6O2C4MF6DvFH6Cj1BdZesHAvopRNuBN+b2JzhtkH6sj/quWZx8XWnqRIrXLJvF73LJD/2NeNsxL8f2T4E53KDg==";

    #[test]
    fn signatures_sort_as_their_text() {
        let sig = |name: &str, seed: u8| SecretKey::from_seed(name, &[seed; 32]).unwrap().sign(FP);
        // `a` is a prefix of `a-b`; ':' sorts after '-', as in the text.
        let sigs = [
            sig("a", 1),
            sig("a", 2),
            sig("a-b", 1),
            sig("b", 3),
            sig("a", 9),
        ];
        let mut by_value = sigs.to_vec();
        by_value.sort();
        let mut by_text: Vec<String> = sigs.iter().map(ToString::to_string).collect();
        by_text.sort();
        let printed: Vec<String> = by_value.iter().map(ToString::to_string).collect();
        assert_eq!(printed, by_text);
    }

    #[test]
    fn parse_print_sign() {
        let sk = SecretKey::parse(SEC).unwrap();
        assert_eq!(sk.name(), "test-cache-1");
        assert_eq!(&*sk.to_nix_string(), SEC);
        assert_eq!(sk.to_public().to_string(), PUB);
        assert_eq!(SecretKey::parse(&format!("{SEC}\n")).unwrap(), sk);
        let pk = PublicKey::parse(&format!("{PUB}\n")).unwrap();
        assert_eq!(pk, sk.to_public());
        let sig = sk.sign(FP);
        assert_eq!(sig.to_string(), SIG);
        assert_eq!(Signature::parse(SIG).unwrap(), sig);
        assert!(pk.verify(FP, &sig));
        assert!(!pk.verify("other", &sig));
    }

    #[test]
    fn debug_is_redacted() {
        let sk = SecretKey::parse(SEC).unwrap();
        let dbg = format!("{sk:?}");
        assert!(dbg.contains("test-cache-1"), "{dbg}");
        assert!(!dbg.contains("WC78b6Ubdu8"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn refusals() {
        let k = KeyKind::Secret;
        assert_eq!(
            SecretKey::parse("nocolon"),
            Err(KeyError::MissingColon { kind: k })
        );
        assert_eq!(
            SecretKey::parse(":AAAA"),
            Err(KeyError::BadName {
                kind: k,
                name: String::new(),
                reason: KeyNameError::Empty
            })
        );
        assert!(matches!(
            SecretKey::parse("a:"),
            Err(KeyError::EmptyKey { .. })
        ));
        assert!(matches!(
            SecretKey::parse("a b:AAAA"),
            Err(KeyError::BadName { .. })
        ));
        assert!(matches!(
            SecretKey::parse("a:!!!!"),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            SecretKey::parse(PUB),
            Err(KeyError::Size {
                got: 32,
                expected: 64,
                ..
            })
        ));
        assert!(matches!(
            PublicKey::parse(SEC),
            Err(KeyError::Size {
                got: 64,
                expected: 32,
                ..
            })
        ));
        assert!(SecretKey::parse(&format!("{SEC}\n\n")).is_err());
        assert!(SecretKey::parse(&format!("{SEC}\r\n")).is_err());
        // Public half replaced by another key's: refused.
        let other = SecretKey::from_seed("test-cache-1", &[7; 32]).unwrap();
        let mut bytes = SecretKey::parse(SEC).unwrap().key.to_keypair_bytes();
        bytes[32..].copy_from_slice(other.to_public().as_bytes());
        let forged = format!("test-cache-1:{}", BASE64.encode(&bytes));
        assert!(matches!(
            SecretKey::parse(&forged),
            Err(KeyError::Mismatch { .. })
        ));
        // The name is everything before the first colon.
        let pk = PublicKey::parse("a:b:c").unwrap_err();
        assert!(matches!(pk, KeyError::Base64 { ref name, .. } if name == "a"));
    }

    #[test]
    fn trusted_key_rules() {
        let sk = SecretKey::parse(SEC).unwrap();
        let keys = TrustedKeys::parse_list(&format!(" {PUB}  {PUB}\n")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.verify(FP, SIG), Ok(true));
        assert_eq!(keys.verify("1;x", SIG), Ok(false));
        // No colon, unknown name: does not count.
        assert_eq!(keys.verify(FP, "garbage"), Ok(false));
        assert_eq!(keys.verify(FP, "other:!!"), Ok(false));
        assert_eq!(keys.verify(FP, ":AAAA"), Ok(false));
        // Known name, bad base64 or size: hard error.
        assert!(matches!(
            keys.verify(FP, "test-cache-1:!!"),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            keys.verify(FP, "test-cache-1:AAAA"),
            Err(KeyError::Size { got: 3, .. })
        ));
        // Same name, different key: verifies false.
        let other = SecretKey::from_seed("test-cache-1", &[1; 32]).unwrap();
        assert_eq!(keys.verify(FP, &other.sign(FP).to_string()), Ok(false));
        let mut conflicting = keys.clone();
        assert!(matches!(
            conflicting.insert(other.to_public()),
            Err(KeyError::ConflictingName { .. })
        ));
        assert_eq!(keys.count_valid(FP, [SIG, "x:y", SIG]), Ok(2));
        assert!(keys.count_valid(FP, [SIG, "test-cache-1:AAAA"]).is_err());
        assert_eq!(sk.sign(FP).to_string(), SIG);
    }

    #[test]
    fn generate_round_trip() {
        let sk = SecretKey::generate("gen-1").unwrap();
        let again = SecretKey::parse(&sk.to_nix_string()).unwrap();
        assert_eq!(again, sk);
        assert_ne!(SecretKey::generate("gen-1").unwrap(), sk);
        let pk = PublicKey::parse(&sk.to_public().to_string()).unwrap();
        assert!(pk.verify("hello", &sk.sign("hello")));
        assert!(SecretKey::generate("").is_err());
    }

    /// Issue 13: `a:b` was accepted by generate and gave a key file no one could read.
    #[test]
    fn key_names_are_checked_in_one_place() {
        assert_eq!(
            KeyName::new("cache.example.org-1").unwrap().as_str(),
            "cache.example.org-1"
        );
        assert_eq!(KeyName::new(""), Err(KeyNameError::Empty));
        assert_eq!(KeyName::new("a:b"), Err(KeyNameError::Colon));
        assert_eq!(KeyName::new("a b"), Err(KeyNameError::Whitespace));
        assert_eq!(KeyName::new("a\u{7f}"), Err(KeyNameError::Whitespace));
        for generated in [
            SecretKey::generate("a:b"),
            SecretKey::from_seed("a:b", &[1; 32]),
        ] {
            assert_eq!(
                generated.unwrap_err(),
                KeyError::BadName {
                    kind: KeyKind::Secret,
                    name: "a:b".into(),
                    reason: KeyNameError::Colon
                }
            );
        }
        // Every name a parser accepts, the generator accepts, and the file reads back.
        let sk = SecretKey::generate("ok-1").unwrap();
        assert_eq!(SecretKey::parse(&sk.to_nix_string()).unwrap(), sk);
        assert!(matches!(
            TrustedKeys::parse_list(":NYgtoruizuryolCLu5nuyeLIW7BKrpXu2BvVsMOG20A="),
            Err(KeyError::BadName {
                kind: KeyKind::Public,
                ..
            })
        ));
    }
}
