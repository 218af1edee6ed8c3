//! Cache URLs (`file:///abs/dir`, `http(s)://host[:port]/path`, `s3://bucket[/prefix]`,
//! with `?name=value` parameters such as `priority` and `compression`) and the validation
//! of object keys.
//!
//! ```text
//! cache-url = "file://" abs-path ["?" params]              ; no host, no credentials
//!           | ("http" | "https") "://" [user [":" password] "@"] host [":" port] [path] ["?" params]
//!           | "s3://" bucket ["/" prefix] ["?" params]          ; no credentials (see s3/config.rs)
//! params    = param *("&" param)                           ; each name at most once
//! priority  = ["-"] digits                                 ; i32
//! ```
//!
//! The parameters are ours (like Nix's store URL settings); they are never sent to the
//! server. Credentials in the URL are kept for basic auth but never displayed.
//!
//! Keys are relative object names: `nix-cache-info`, `<hash>.narinfo`,
//! `nar/<file>.nar.zst`, `log/<drv>`, the `URL:` of a narinfo. Hostile caches choose the
//! `URL:` of their narinfos, so every key is checked before use ([`ObjectKey::parse`],
//! store-format.md §7):
//!
//! ```text
//! key   = path ["?" query]              ; at most MAX_KEY_LEN bytes in all
//! path  = segment *("/" segment)        ; no leading "/", no "", "." or ".." segment,
//!                                       ; no NUL, control character, "\", "?" or "#"
//! query = *(any char but control characters, "#" and whitespace)
//! ```
//!
//! The path names the object, always inside the cache; the query (harmonia writes
//! `nar/<hash>.nar?hash=<hash>`) is sent with an HTTP request and ignored by a `file://`
//! cache, and only read keys may carry one. A fragment (`#`) and absolute URLs
//! (`scheme:...`, which Nix would fetch as they are) are refused: the `URL:` is not
//! signed, so following one would let any cache make us fetch from, and send our
//! credentials to, any host or local file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use url::Url;

use super::CacheError;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a cache URL was refused. Never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("malformed URL")]
    Syntax(#[source] url::ParseError),
    #[error("unsupported cache URL scheme '{0}' (expected file, http, https or s3)")]
    UnsupportedScheme(String),
    #[error("a file cache URL must be file:///absolute/path, with no host or relative path")]
    FileNotAbsolute,
    #[error("a file cache URL cannot carry credentials")]
    FileCredentials,
    #[error("an s3:// cache URL cannot carry credentials (they come from the environment)")]
    S3Credentials,
    #[error("invalid s3:// prefix '{0}'")]
    S3Prefix(String),
    #[error("cache URL has no host")]
    NoHost,
    #[error("cache URL must not have a fragment ('#...')")]
    Fragment,
    #[error("cache URL parameter '{0}' is given twice")]
    DuplicateParam(String),
    #[error("cache URL parameter '{name}' has an invalid value '{value}'")]
    BadParam { name: String, value: String },
}

/// A parsed cache URL. `Display` and `Debug` leave credentials out.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL as given, with credentials, without the query.
    url: Url,
    /// `file://` caches: the directory.
    path: Option<PathBuf>,
    params: Vec<(String, String)>,
    priority: Option<i32>,
}

impl CacheUrl {
    /// `file`, `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The directory of a `file://` cache.
    pub fn file_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The value of `?name=value`, if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All parameters, in the order given.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// `?priority=N`: overrides the nix-cache-info `Priority` (lower is preferred).
    pub fn priority(&self) -> Option<i32> {
        self.priority
    }

    /// The host of an HTTP cache.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str()
    }

    /// The path of an `s3://` URL without its leading and trailing `/`, percent-decoded:
    /// the prefix of every object name (checked like a key path when parsed).
    pub fn path_prefix(&self) -> String {
        let raw = self.url.path().trim_matches('/');
        percent_decode(raw).unwrap_or_else(|| raw.to_owned())
    }

    /// The URL without credentials or parameters, for naming objects in messages.
    pub fn without_params(&self) -> String {
        self.http_base().as_str().trim_end_matches('/').to_owned()
    }

    /// The HTTP base URL: no credentials, query or fragment.
    pub(crate) fn http_base(&self) -> Url {
        let mut base = self.url.clone();
        // Both only fail for URLs that cannot have credentials, which is then a no-op.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base
    }

    /// User name and password given in the URL, if any (percent-decoded).
    pub(crate) fn credentials(&self) -> Option<(String, Option<String>)> {
        let user = self.url.username();
        let password = self.url.password();
        if user.is_empty() && password.is_none() {
            return None;
        }
        let decode = |s: &str| percent_decode(s).unwrap_or_else(|| s.to_owned());
        Some((decode(user), password.map(decode)))
    }
}

/// Decodes `%XX` escapes; `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl FromStr for CacheUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let mut url = Url::parse(s).map_err(UrlError::Syntax)?;
        if url.fragment().is_some() {
            return Err(UrlError::Fragment);
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for (name, value) in url.query_pairs() {
            if params.iter().any(|(n, _)| *n == name) {
                return Err(UrlError::DuplicateParam(name.into_owned()));
            }
            params.push((name.into_owned(), value.into_owned()));
        }
        url.set_query(None);
        let priority = match params.iter().find(|(n, _)| n == "priority") {
            None => None,
            Some((name, value)) => Some(value.parse::<i32>().map_err(|_| UrlError::BadParam {
                name: name.clone(),
                value: value.clone(),
            })?),
        };
        let path = match url.scheme() {
            "file" => {
                let prefix_ok = s
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("file:///"));
                if !prefix_ok || url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(UrlError::FileNotAbsolute);
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(UrlError::FileCredentials);
                }
                let path = url.to_file_path().map_err(|()| UrlError::FileNotAbsolute)?;
                Some(path)
            }
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(UrlError::NoHost);
                }
                None
            }
            "s3" => {
                check_s3(&url)?;
                None
            }
            other => return Err(UrlError::UnsupportedScheme(other.to_owned())),
        };
        Ok(CacheUrl {
            url,
            path,
            params,
            priority,
        })
    }
}

/// An `s3://` URL names a bucket, may name a prefix that is a valid key path, and never
/// carries credentials.
fn check_s3(url: &Url) -> Result<(), UrlError> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::S3Credentials);
    }
    let raw = url.path().trim_matches('/');
    let decoded = percent_decode(raw);
    let bad = |p: &str| !p.is_empty() && path_problem(p).is_some();
    if decoded.as_deref().is_none_or(bad) {
        return Err(UrlError::S3Prefix(raw.to_owned()));
    }
    Ok(())
}

impl fmt::Display for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.http_base();
        if !self.params.is_empty() {
            shown.query_pairs_mut().extend_pairs(&self.params);
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheUrl({self})")
    }
}

/// A checked key: the object's path inside the cache and an optional query (see the
/// module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectKey<'a> {
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> ObjectKey<'a> {
    /// Checks `key` and splits it at its first `?`.
    pub fn parse(key: &'a str) -> Result<Self, CacheError> {
        let bad = |reason: &'static str| Err(CacheError::invalid_key(key, reason));
        if key.len() > MAX_KEY_LEN {
            return bad("longer than 1024 bytes");
        }
        let (path, query) = match key.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (key, None),
        };
        if let Some(reason) = path_problem(path) {
            return bad(reason);
        }
        if let Some(c) = query
            .unwrap_or_default()
            .chars()
            .find(|&c| c.is_control() || c.is_whitespace() || c == '#')
        {
            return bad(match c {
                '#' => "fragment character in the query",
                _ => "control character or whitespace in the query",
            });
        }
        Ok(ObjectKey { path, query })
    }

    /// Checks a key to be written: a query is refused (a query only makes sense when
    /// reading what a narinfo points to).
    pub fn parse_for_writing(key: &'a str) -> Result<Self, CacheError> {
        let parsed = Self::parse(key)?;
        if parsed.query.is_some() {
            return Err(CacheError::invalid_key(key, "a key to write has no query"));
        }
        Ok(parsed)
    }

    /// The object's path relative to the cache root.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query after `?`, if any (possibly empty).
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }
}

/// Checks that `key` is a safe object key (see the module docs).
pub fn check_key(key: &str) -> Result<(), CacheError> {
    ObjectKey::parse(key).map(|_| ())
}

/// Why `path` is not a safe relative object path, if it is not.
fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty key");
    }
    if path.starts_with('/') {
        return Some("absolute path");
    }
    if looks_like_url(path) {
        return Some("absolute URLs are not supported, only keys relative to the cache");
    }
    if let Some(c) = path
        .chars()
        .find(|&c| c.is_control() || matches!(c, '\\' | '#'))
    {
        return Some(match c {
            '\0' => "NUL character",
            '\\' => "backslash",
            '#' => "fragment character",
            _ => "control character",
        });
    }
    path.split('/')
        .any(|component| matches!(component, "" | "." | ".."))
        .then_some("empty, '.' or '..' path component")
}

/// `scheme:` before any `/`, as in `https://host/x` or `s3:bucket`.
fn looks_like_url(key: &str) -> bool {
    let Some((scheme, _)) = key.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CacheUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn file_urls() {
        let u = parse("file:///tmp/my%20cache/?priority=30&compression=zstd").unwrap();
        assert_eq!(u.scheme(), "file");
        assert_eq!(u.file_path(), Some(Path::new("/tmp/my cache/")));
        assert_eq!(u.priority(), Some(30));
        assert_eq!(u.param("compression"), Some("zstd"));
        assert_eq!(u.param("nope"), None);
        assert_eq!(
            u.to_string(),
            "file:///tmp/my%20cache/?priority=30&compression=zstd"
        );
        let u = parse("file:///srv/cache").unwrap();
        assert_eq!(u.priority(), None);
        assert_eq!(u.to_string(), "file:///srv/cache");
        assert_eq!(format!("{u:?}"), "CacheUrl(file:///srv/cache)");
        for bad in [
            "file://relative/dir",
            "file:relative",
            "file:/x",
            "file://host/x",
        ] {
            assert_eq!(parse(bad), Err(UrlError::FileNotAbsolute), "{bad}");
        }
    }

    #[test]
    fn http_urls_hide_credentials() {
        let u = parse("https://alice:s%40cret@cache.example.org:8443/nix/?priority=-5").unwrap();
        assert_eq!(u.scheme(), "https");
        assert_eq!(u.host(), Some("cache.example.org"));
        assert_eq!(u.priority(), Some(-5));
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("cret"),
            "{shown}"
        );
        assert_eq!(
            u.to_string(),
            "https://cache.example.org:8443/nix/?priority=-5"
        );
        assert_eq!(
            u.credentials(),
            Some(("alice".to_owned(), Some("s@cret".to_owned())))
        );
        assert_eq!(
            u.http_base().as_str(),
            "https://cache.example.org:8443/nix/"
        );
        let u = parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(u.credentials(), None);
        assert_eq!(u.to_string(), "http://127.0.0.1:5000/");
    }

    #[test]
    fn s3_urls() {
        let u = parse("s3://my-bucket/nix/cache/?endpoint=http://127.0.0.1:9000&region=x").unwrap();
        assert_eq!(u.scheme(), "s3");
        assert_eq!(u.host(), Some("my-bucket"));
        assert_eq!(u.path_prefix(), "nix/cache");
        assert_eq!(u.param("endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(parse("s3://b").unwrap().path_prefix(), "");
    }

    #[test]
    fn refused_urls() {
        assert!(matches!(parse("/tmp/cache"), Err(UrlError::Syntax(_))));
        assert!(matches!(parse(""), Err(UrlError::Syntax(_))));
        assert_eq!(
            parse("s3://key:secret@bucket"),
            Err(UrlError::S3Credentials)
        );
        assert_eq!(parse("s3:///prefix"), Err(UrlError::NoHost));
        assert_eq!(
            parse("s3://b/a%5Cb"),
            Err(UrlError::S3Prefix("a%5Cb".into()))
        );
        assert_eq!(
            parse("s3://b/a%00b"),
            Err(UrlError::S3Prefix("a%00b".into()))
        );
        assert_eq!(parse("s3://b/a%20b").unwrap().path_prefix(), "a b");
        assert_eq!(
            parse("ftp://host/x"),
            Err(UrlError::UnsupportedScheme("ftp".into()))
        );
        assert_eq!(parse("http://h/x#frag"), Err(UrlError::Fragment));
        assert_eq!(
            parse("http://h/?a=1&a=2"),
            Err(UrlError::DuplicateParam("a".into()))
        );
        assert_eq!(
            parse("http://h/?priority=high"),
            Err(UrlError::BadParam {
                name: "priority".into(),
                value: "high".into()
            })
        );
        assert!(parse("file://u:p@/x").is_err());
        // Errors never echo the input (it may hold credentials).
        let e = parse("http://user:hunter2@[::1").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn keys() {
        for good in [
            "nix-cache-info",
            "a8z667l486sd21m8rs058ir3b2sh8k14.narinfo",
            "nar/0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i.nar.xz",
            "log/scfljnpjg04vw85jk1n0xrdhdyrjpcpr-vec-c.drv",
            "realisations/sha256:0fe36bf3!out.doi",
            ".hidden",
            "a/.b/c..d",
            "100%.nar",
            "nar/x.nar?hash=x",
            "nar/x.nar?",
            "nar/x.nar?a=1&b=c/d?e",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        // Harmonia's narinfo URL: the path names the object, the query is kept apart.
        let k = ObjectKey::parse("nar/abc.nar?hash=abc").unwrap();
        assert_eq!((k.path(), k.query()), ("nar/abc.nar", Some("hash=abc")));
        let k = ObjectKey::parse("nar/abc.nar").unwrap();
        assert_eq!((k.path(), k.query()), ("nar/abc.nar", None));
        assert!(ObjectKey::parse_for_writing("nar/abc.nar").is_ok());
        assert!(ObjectKey::parse_for_writing("nar/abc.nar?hash=abc").is_err());
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "nar/../../x",
            "nar/./x",
            "nar//x",
            "nar/",
            ".",
            "a\0b",
            "a\\b",
            "x.nar#f",
            "x.nar?y=1#f",
            "x.nar?y=a b",
            "x.nar?y=\n",
            "?hash=x",
            "../x.nar?hash=x",
            "nar/../../x?y",
            "/nar/x.nar?hash=x",
            "http://evil.example/x.nar?hash=x",
            "x\ny",
            "http://evil.example/x.nar",
            "https:x",
            "file:///etc/passwd",
            long.as_str(),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(matches!(e, CacheError::InvalidKey { .. }), "{bad}: {e:?}");
        }
        let e = check_key("https://evil.example/nar/x.nar").unwrap_err();
        assert!(
            e.to_string().contains("absolute URLs are not supported"),
            "{e}"
        );
    }
}
