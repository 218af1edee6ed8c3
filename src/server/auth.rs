//! Bearer tokens for uploads (and optionally reads).
//!
//! A client proves it knows a token with either `Authorization: Bearer <token>` or HTTP
//! basic auth whose password is the token (the user name is ignored). The latter is what
//! Nix sends when the credentials come from a netrc file (`machine H login x password T`).
//!
//! Only the sha256 of a token is kept in memory, and comparisons are of the two digests in
//! constant time, so neither the token's bytes nor its length leak through timing.

use std::fmt;

use axum::http::{header, HeaderMap};
use data_encoding::BASE64;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// Why a token was refused when configuring the server.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token contains whitespace or control characters")]
    BadChar,
}

/// A secret shared with the clients; only its digest is kept.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// A token from the text of a token file: surrounding whitespace (a final newline) is
    /// dropped; what remains must be non-empty and printable without spaces.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::BadChar);
        }
        Ok(Token {
            digest: Sha256::digest(t.as_bytes()).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of both values.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let got: [u8; 32] = Sha256::digest(presented).into();
        let diff = got
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What the request carries in `Authorization`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    Nothing,
    /// A header we cannot read (unknown scheme, bad base64, no `:` in basic credentials).
    Malformed,
    Secret(Zeroizing<Vec<u8>>),
}

/// Extracts the presented secret: a bearer token, or the password of basic credentials.
pub(crate) fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Presented::Malformed;
    };
    let (scheme, rest) = (&value[..space], trim(&value[space + 1..]));
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Presented::Secret(Zeroizing::new(rest.to_vec()));
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let Ok(decoded) = BASE64.decode(rest).map(Zeroizing::new) else {
            return Presented::Malformed;
        };
        return match decoded.iter().position(|&b| b == b':') {
            Some(colon) => Presented::Secret(Zeroizing::new(decoded[colon + 1..].to_vec())),
            None => Presented::Malformed,
        };
    }
    Presented::Malformed
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ').unwrap_or(b.len());
    let end = b.iter().rposition(|c| *c != b' ').map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn tokens() {
        assert_eq!(Token::new(" \n").unwrap_err(), TokenError::Empty);
        assert_eq!(Token::new("a b").unwrap_err(), TokenError::BadChar);
        let t = Token::new("s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret\n"));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn headers() {
        assert_eq!(presented(&HeaderMap::new()), Presented::Nothing);
        let secret = |h: &HeaderMap| match presented(h) {
            Presented::Secret(s) => Some(s.to_vec()),
            _ => None,
        };
        assert_eq!(secret(&with_auth("Bearer abc")), Some(b"abc".to_vec()));
        assert_eq!(secret(&with_auth("bearer  abc ")), Some(b"abc".to_vec()));
        let basic = format!("Basic {}", BASE64.encode(b"user:pa:ss"));
        assert_eq!(secret(&with_auth(&basic)), Some(b"pa:ss".to_vec()));
        let no_colon = format!("Basic {}", BASE64.encode(b"user"));
        assert_eq!(presented(&with_auth(&no_colon)), Presented::Malformed);
        assert_eq!(presented(&with_auth("Basic !!")), Presented::Malformed);
        assert_eq!(presented(&with_auth("Digest x")), Presented::Malformed);
        assert_eq!(presented(&with_auth("Bearer")), Presented::Malformed);
    }
}
