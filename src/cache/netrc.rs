//! A strict parser for netrc files: basic-auth credentials for HTTP caches, looked up by
//! host name. Passwords are redacted in `Debug`, wiped on drop and never put in errors.
//!
//! ```text
//! netrc   = *(entry | macdef | comment)
//! entry   = ("machine" token | "default") *(("login" | "password" | "account") token)
//! macdef  = "macdef" token <text up to the next blank line>
//! comment = "#" <rest of the line>           ; only where a keyword is expected
//! token   = 1*non-space | '"' *(char | "\" char) '"'
//! ```
//!
//! Each of login, password and account may appear once per entry. Anything else (an
//! unknown keyword, a value without its keyword, a keyword without its value, an
//! unterminated quote) is an error naming the line; error messages never quote tokens,
//! which might be passwords. Lookup: the first `machine` whose name equals the host
//! (ASCII case-insensitive, port ignored, like curl), else the first `default`.

use std::fmt;

use thiserror::Error;
use zeroize::Zeroize;

/// Why a netrc file was refused. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetrcError {
    #[error("line {line}: unexpected token (expected machine, default, login, password, account or macdef)")]
    Unexpected { line: usize },
    #[error("line {line}: '{keyword}' needs a value")]
    MissingValue { line: usize, keyword: &'static str },
    #[error("line {line}: '{keyword}' comes before any machine or default entry")]
    Orphan { line: usize, keyword: &'static str },
    #[error("line {line}: '{keyword}' given twice in one entry")]
    Duplicate { line: usize, keyword: &'static str },
    #[error("line {line}: unterminated quoted string")]
    Unterminated { line: usize },
}

/// A secret string: `Debug` shows `***`, dropped values are zeroed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The credentials for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Empty when the entry has no `login`.
    pub login: String,
    pub password: Option<Secret>,
}

#[derive(Debug, Default)]
struct Entry {
    /// `None` for `default`.
    machine: Option<String>,
    login: Option<String>,
    password: Option<Secret>,
    account: bool,
}

/// A parsed netrc file.
#[derive(Debug, Default)]
pub struct Netrc {
    entries: Vec<Entry>,
}

impl Netrc {
    /// Parses the file text.
    pub fn parse(text: &str) -> Result<Self, NetrcError> {
        let mut lexer = Lexer {
            rest: text,
            line: 1,
        };
        let mut entries: Vec<Entry> = Vec::new();
        while let Some(word) = lexer.keyword()? {
            let line = lexer.line;
            match word {
                "machine" => {
                    let name = lexer.value(line, "machine")?;
                    entries.push(Entry {
                        machine: Some(name),
                        ..Entry::default()
                    });
                }
                "default" => entries.push(Entry::default()),
                "macdef" => {
                    lexer.value(line, "macdef")?;
                    lexer.skip_macro();
                }
                "login" | "password" | "account" => {
                    let keyword = match word {
                        "login" => "login",
                        "password" => "password",
                        _ => "account",
                    };
                    let value = lexer.value(line, keyword)?;
                    let entry = entries
                        .last_mut()
                        .ok_or(NetrcError::Orphan { line, keyword })?;
                    let taken = match keyword {
                        "login" => entry.login.replace(value).is_some(),
                        "password" => entry.password.replace(Secret(value)).is_some(),
                        _ => std::mem::replace(&mut entry.account, true),
                    };
                    if taken {
                        return Err(NetrcError::Duplicate { line, keyword });
                    }
                }
                _ => return Err(NetrcError::Unexpected { line }),
            }
        }
        Ok(Netrc { entries })
    }

    /// The credentials for `host`, if any entry applies.
    pub fn credentials_for(&self, host: &str) -> Option<Credentials> {
        let entry = self
            .entries
            .iter()
            .find(|e| {
                e.machine
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(host))
            })
            .or_else(|| self.entries.iter().find(|e| e.machine.is_none()))?;
        Some(Credentials {
            login: entry.login.clone().unwrap_or_default(),
            password: entry.password.clone(),
        })
    }
}

struct Lexer<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn skip_space(&mut self) {
        let trimmed = self.rest.trim_start();
        let skipped = &self.rest[..self.rest.len() - trimmed.len()];
        self.line += skipped.matches('\n').count();
        self.rest = trimmed;
    }

    /// The next keyword, skipping comments; `None` at the end.
    fn keyword(&mut self) -> Result<Option<&'a str>, NetrcError> {
        loop {
            self.skip_space();
            if self.rest.starts_with('#') {
                let end = self.rest.find('\n').unwrap_or(self.rest.len());
                self.rest = &self.rest[end..];
                continue;
            }
            if self.rest.is_empty() {
                return Ok(None);
            }
            let end = self
                .rest
                .find(char::is_whitespace)
                .unwrap_or(self.rest.len());
            let (word, rest) = self.rest.split_at(end);
            self.rest = rest;
            return Ok(Some(word));
        }
    }

    /// The value after `keyword` (which was on line `line`).
    fn value(&mut self, line: usize, keyword: &'static str) -> Result<String, NetrcError> {
        self.skip_space();
        if self.rest.is_empty() {
            return Err(NetrcError::MissingValue { line, keyword });
        }
        if let Some(quoted) = self.rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.rest = &quoted[i + 1..];
                        return Ok(value);
                    }
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    c => {
                        if c == '\n' {
                            self.line += 1;
                        }
                        value.push(c);
                    }
                }
            }
            value.zeroize();
            return Err(NetrcError::Unterminated { line: self.line });
        }
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        let (value, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(value.to_owned())
    }

    /// Skips a macro body: everything up to and including the next blank line.
    fn skip_macro(&mut self) {
        let body_end = match self.rest.find("\n\n") {
            Some(i) => i + 2,
            None => self.rest.len(),
        };
        self.line += self.rest[..body_end].matches('\n').count();
        self.rest = &self.rest[body_end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(login: &str, password: Option<&str>) -> Option<Credentials> {
        Some(Credentials {
            login: login.to_owned(),
            password: password.map(|p| Secret::new(p.to_owned())),
        })
    }

    #[test]
    fn lookup() {
        let text = "# my caches\n\
                    machine cache.example.org login alice password s3cret\n\
                    machine other.example.org\n  login bob\n  password \"with space \\\" quote\"\n  account x\n\
                    macdef init\ncd /pub\nmachine ignored login no\n\n\
                    default login anon password #notacomment\n";
        let n = Netrc::parse(text).unwrap();
        assert_eq!(
            n.credentials_for("cache.example.org"),
            creds("alice", Some("s3cret"))
        );
        assert_eq!(
            n.credentials_for("CACHE.example.ORG"),
            creds("alice", Some("s3cret"))
        );
        assert_eq!(
            n.credentials_for("other.example.org"),
            creds("bob", Some("with space \" quote"))
        );
        assert_eq!(
            n.credentials_for("ignored"),
            creds("anon", Some("#notacomment"))
        );
        assert_eq!(
            n.credentials_for("elsewhere"),
            creds("anon", Some("#notacomment"))
        );
        let n = Netrc::parse("machine a password p\n").unwrap();
        assert_eq!(n.credentials_for("a"), creds("", Some("p")));
        assert_eq!(n.credentials_for("b"), None);
        assert_eq!(Netrc::parse("").unwrap().credentials_for("a"), None);
    }

    #[test]
    fn refusals_never_quote_tokens() {
        let cases = [
            (
                "machine a login x password hunter2 extra\n",
                NetrcError::Unexpected { line: 1 },
            ),
            (
                "login x\n",
                NetrcError::Orphan {
                    line: 1,
                    keyword: "login",
                },
            ),
            (
                "machine a\npassword",
                NetrcError::MissingValue {
                    line: 2,
                    keyword: "password",
                },
            ),
            (
                "machine",
                NetrcError::MissingValue {
                    line: 1,
                    keyword: "machine",
                },
            ),
            (
                "machine a password x\npassword hunter2\n",
                NetrcError::Duplicate {
                    line: 2,
                    keyword: "password",
                },
            ),
            (
                "machine a password \"hunter2\n",
                NetrcError::Unterminated { line: 2 },
            ),
            ("machine a port 80\n", NetrcError::Unexpected { line: 1 }),
        ];
        for (text, want) in cases {
            let e = Netrc::parse(text).unwrap_err();
            assert_eq!(e, want, "{text:?}");
            assert!(!e.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let n = Netrc::parse("machine a login u password hunter2\n").unwrap();
        let shown = format!("{n:?} {:?}", n.credentials_for("a"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
