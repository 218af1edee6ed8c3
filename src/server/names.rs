//! The file names the server serves and accepts.
//!
//! ```text
//! narinfo   = hash32 ".narinfo"                       ; looked up by hash part
//! served    = "nar/" hash32 "-" narhash52 ".nar" [".zst"]
//! uploaded  = "nar/" 1*(lower | digit | "-" | "_") ".nar" ["." 1*8(lower | digit)]
//! ```
//!
//! A served NAR name carries the store path's hash part and the nix32 sha256 of its NAR,
//! so it maps back to exactly one path and one content: if the path's NarHash is not the
//! one in the name, the NAR is "not found" (never another content under an old name). The
//! suffix chooses the encoding, whatever the server's default is.
//!
//! Uploaded names are whatever the client chose (Nix 2.8 uses `<nix32 FileHash>.nar.xz`);
//! they only name a staged file until the narinfo that points to it arrives, so they are
//! restricted to a small alphabet that can never escape the staging directory.

use crate::format::nixbase32;
use crate::format::store_path::{StorePathHash, HASH_CHARS};

/// Length of a nix32 sha256.
const NAR_HASH_CHARS: usize = 52;
/// Longest accepted upload name.
const MAX_UPLOAD_NAME: usize = 128;

/// How a served NAR is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarEncoding {
    /// `.nar`: the NAR itself; its length (NarSize) is known up front.
    Plain,
    /// `.nar.zst`.
    Zstd,
}

impl NarEncoding {
    /// The suffix after the hash parts, including the leading dot.
    pub fn suffix(self) -> &'static str {
        match self {
            NarEncoding::Plain => ".nar",
            NarEncoding::Zstd => ".nar.zst",
        }
    }

    /// The narinfo `Compression` label.
    pub fn label(self) -> &'static str {
        match self {
            NarEncoding::Plain => "none",
            NarEncoding::Zstd => "zstd",
        }
    }
}

/// The hash part named by `<hash32>.narinfo`.
pub fn parse_narinfo_name(file: &str) -> Option<StorePathHash> {
    let hash = file.strip_suffix(".narinfo")?;
    if hash.len() != HASH_CHARS {
        return None;
    }
    hash.parse().ok()
}

/// A served NAR name (the part after `nar/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarName<'a> {
    pub hash: StorePathHash,
    /// The nix32 NarHash as written in the name (syntactically valid).
    pub nar_hash: &'a str,
    pub encoding: NarEncoding,
}

/// Parses `<hash32>-<narhash52>.nar[.zst]`.
pub fn parse_nar_name(file: &str) -> Option<NarName<'_>> {
    let (stem, encoding) = if let Some(s) = file.strip_suffix(NarEncoding::Zstd.suffix()) {
        (s, NarEncoding::Zstd)
    } else {
        (
            file.strip_suffix(NarEncoding::Plain.suffix())?,
            NarEncoding::Plain,
        )
    };
    if stem.len() != HASH_CHARS + 1 + NAR_HASH_CHARS || stem.as_bytes()[HASH_CHARS] != b'-' {
        return None;
    }
    let hash = stem[..HASH_CHARS].parse().ok()?;
    let nar_hash = &stem[HASH_CHARS + 1..];
    if !nar_hash.bytes().all(nixbase32::is_digit) {
        return None;
    }
    Some(NarName {
        hash,
        nar_hash,
        encoding,
    })
}

/// The URL (relative to the cache root) under which a path's NAR is served.
pub fn nar_url(hash_part: &str, nar_hash_nix32: &str, encoding: NarEncoding) -> String {
    format!("nar/{hash_part}-{nar_hash_nix32}{}", encoding.suffix())
}

/// Whether `file` (the part after `nar/`) is an acceptable upload name.
pub fn is_upload_name(file: &str) -> bool {
    if file.is_empty() || file.len() > MAX_UPLOAD_NAME {
        return false;
    }
    let Some(at) = file.find(".nar") else {
        return false;
    };
    let (stem, rest) = (&file[..at], &file[at + 4..]);
    let stem_ok = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let ext_ok = match rest.strip_prefix('.') {
        None => rest.is_empty(),
        Some(ext) => {
            !ext.is_empty()
                && ext.len() <= 8
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
    };
    stem_ok && ext_ok
}

/// The staged file name a narinfo `URL` refers to, if it is an acceptable upload name.
pub fn upload_name_of_url(url: &str) -> Option<&str> {
    let file = url.strip_prefix("nar/")?;
    is_upload_name(file).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "a8z667l486sd21m8rs058ir3b2sh8k14";
    const N: &str = "0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i";

    #[test]
    fn narinfo_names() {
        assert_eq!(
            parse_narinfo_name(&format!("{H}.narinfo"))
                .unwrap()
                .to_string(),
            H
        );
        for bad in [
            "x.narinfo",
            "a8z667l486sd21m8rs058ir3b2sh8k1.narinfo",
            "a8z667l486sd21m8rs058ir3b2sh8k1e.narinfo",
            "a8z667l486sd21m8rs058ir3b2sh8k14",
            "a8z667l486sd21m8rs058ir3b2sh8k14.narinfo.x",
        ] {
            assert_eq!(parse_narinfo_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn nar_names_round_trip() {
        for enc in [NarEncoding::Plain, NarEncoding::Zstd] {
            let url = nar_url(H, N, enc);
            let name = parse_nar_name(url.strip_prefix("nar/").unwrap()).unwrap();
            assert_eq!(name.hash.to_string(), H);
            assert_eq!(name.nar_hash, N);
            assert_eq!(name.encoding, enc);
        }
        for bad in [
            format!("{H}-{N}.nar.xz"),
            format!("{H}{N}.nar"),
            format!("{H}-{}.nar", &N[1..]),
            format!("{H}-{}e.nar", &N[1..]),
            format!("{N}.nar"),
        ] {
            assert_eq!(parse_nar_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn upload_names() {
        for ok in [
            format!("{N}.nar.xz"),
            format!("{N}.nar"),
            format!("{H}-{N}.nar.zst"),
            "x_y.nar.bz2".to_owned(),
        ] {
            assert!(is_upload_name(&ok), "{ok}");
            assert_eq!(upload_name_of_url(&format!("nar/{ok}")), Some(ok.as_str()));
        }
        for bad in [
            "",
            ".nar",
            "../x.nar",
            "x/y.nar",
            "X.nar",
            ".tmp-1.nar",
            "x.nar.",
            "x.nar.xz.zst",
            "x.narx",
            "x.nar.toolongext",
        ] {
            assert!(!is_upload_name(bad), "{bad}");
        }
        assert_eq!(upload_name_of_url("http://h/nar/x.nar"), None);
        assert_eq!(upload_name_of_url("x.nar"), None);
    }
}
