//! What an `s3://` cache URL and the environment say: bucket, prefix, endpoint, region,
//! addressing, upload tuning, and where the credentials come from (store-format.md §7.5).
//!
//! Credentials, first match wins:
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. the profile named by `?profile=`, else `AWS_PROFILE`, else `default`, from
//!    `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), then `~/.aws/config` (or
//!    `AWS_CONFIG_FILE`, sections `[profile NAME]`); a profile named in the URL must exist;
//! 3. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, CI runners) and
//!    container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or `_FULL_URI` with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), exchanged by the S3 library;
//! 4. none: requests go unsigned (anonymous reads of a public bucket). The EC2 instance
//!    metadata service is never asked: on any other machine that costs a timeout per run.
//!
//! Secrets live only in [`Credentials`], whose `Debug` hides them; nothing here formats one
//! into an error.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cache::CacheUrl;

/// Smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// Default [`S3Config::part_size`]: files larger than this upload in parts of this size.
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Default [`S3Config::upload_parts`].
pub const DEFAULT_UPLOAD_PARTS: usize = 4;
/// Default [`S3Config::narinfo_max_age`] in seconds.
pub const DEFAULT_NARINFO_MAX_AGE: u32 = 300;
/// Largest credentials or config file read.
const MAX_PROFILE_FILE: u64 = 1 << 20;

/// Why an `s3://` URL or its credentials cannot be used. Never contains a secret.
#[derive(Debug, Error)]
pub enum S3ConfigError {
    #[error("an s3:// URL names a bucket: s3://BUCKET[/PREFIX]")]
    NoBucket,
    #[error("parameter '{name}' has an invalid value '{value}' ({expected})")]
    BadParam {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("AWS profile '{0}' is not in the shared credentials or config file")]
    NoProfile(String),
    #[error("AWS profile '{profile}' has an access key id but no secret access key")]
    HalfProfile { profile: String },
    #[error("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")]
    HalfEnv,
    #[error("cannot read '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A static key pair with an optional session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where requests get their signature from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Static(Credentials),
    /// Web identity or container credentials, from these `AWS_*` variables.
    Exchanged(Vec<(String, String)>),
    Anonymous,
}

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Object names start with `<prefix>/` (no leading or trailing `/`), if not empty.
    pub prefix: String,
    /// `scheme://host[:port]`; `None` means AWS for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// `https://BUCKET.host` instead of `https://host/BUCKET`.
    pub virtual_hosted: bool,
    pub credentials: CredentialSource,
    /// Multipart part size; files up to this size go up in one PUT.
    pub part_size: usize,
    /// Parts in flight per upload.
    pub upload_parts: usize,
    /// `Cache-Control: max-age` of everything but NARs, in seconds.
    pub narinfo_max_age: u32,
}

/// The environment, as a function so tests need not touch the process's.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Config {
    /// Reads the URL, then the environment and profile files for what it leaves open.
    pub fn resolve(url: &CacheUrl, env: Env<'_>) -> Result<S3Config, S3ConfigError> {
        let bucket = url
            .host()
            .filter(|b| !b.is_empty())
            .ok_or(S3ConfigError::NoBucket)?;
        let prefix = url.path_prefix();
        let explicit_profile = url.param("profile");
        let profile_name = explicit_profile
            .map(str::to_owned)
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let profile = load_profile(&profile_name, env)?;
        if explicit_profile.is_some() && profile.is_none() {
            return Err(S3ConfigError::NoProfile(profile_name));
        }
        let profile = profile.unwrap_or_default();
        let region = url
            .param("region")
            .map(str::to_owned)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| profile.get("region"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = endpoint(url, env, &profile)?;
        let virtual_hosted = match url.param("addressing") {
            None => endpoint.is_none(),
            Some("path") => false,
            Some("virtual") => true,
            Some(v) => return Err(bad("addressing", v, "path or virtual")),
        };
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix,
            endpoint,
            region,
            virtual_hosted,
            credentials: credentials(env, &profile_name, &profile)?,
            part_size: number(url, "part-size", DEFAULT_PART_SIZE, MIN_PART_SIZE..=1 << 30)?,
            upload_parts: number(url, "upload-parts", DEFAULT_UPLOAD_PARTS, 1..=64)?,
            narinfo_max_age: number(url, "narinfo-max-age", DEFAULT_NARINFO_MAX_AGE, 0..=86400)?,
        })
    }
}

fn bad(name: &'static str, value: &str, expected: &'static str) -> S3ConfigError {
    S3ConfigError::BadParam {
        name,
        value: value.to_owned(),
        expected,
    }
}

fn number<T>(
    url: &CacheUrl,
    name: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, S3ConfigError>
where
    T: std::str::FromStr + PartialOrd,
{
    let Some(value) = url.param(name) else {
        return Ok(default);
    };
    match value.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(bad(name, value, "a number in the allowed range")),
    }
}

/// `?endpoint=` (with a scheme, or a bare host plus `?scheme=http|https`, as Nix takes
/// it), else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `endpoint_url`.
fn endpoint(
    url: &CacheUrl,
    env: Env<'_>,
    profile: &Profile,
) -> Result<Option<String>, S3ConfigError> {
    let given = url
        .param("endpoint")
        .map(str::to_owned)
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| profile.get("endpoint_url"));
    let Some(given) = given else {
        return Ok(None);
    };
    let with_scheme = if given.contains("://") {
        given
    } else {
        let scheme = match url.param("scheme").unwrap_or("https") {
            s @ ("http" | "https") => s,
            other => return Err(bad("scheme", other, "http or https")),
        };
        format!("{scheme}://{given}")
    };
    let parsed =
        url::Url::parse(&with_scheme).map_err(|_| bad("endpoint", &with_scheme, "a URL"))?;
    let host_ok = parsed.host_str().is_some_and(|h| !h.is_empty());
    if !matches!(parsed.scheme(), "http" | "https") || !host_ok || parsed.query().is_some() {
        return Err(bad("endpoint", &with_scheme, "http(s)://host[:port]"));
    }
    Ok(Some(with_scheme.trim_end_matches('/').to_owned()))
}

fn credentials(
    env: Env<'_>,
    name: &str,
    profile: &Profile,
) -> Result<CredentialSource, S3ConfigError> {
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => {
            return Ok(CredentialSource::Static(Credentials {
                key_id,
                secret,
                token: env("AWS_SESSION_TOKEN"),
            }))
        }
        (None, None) => {}
        _ => return Err(S3ConfigError::HalfEnv),
    }
    match (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
    ) {
        (Some(key_id), Some(secret)) => {
            return Ok(CredentialSource::Static(Credentials {
                key_id,
                secret,
                token: profile.get("aws_session_token"),
            }))
        }
        (None, None) => {}
        _ => {
            return Err(S3ConfigError::HalfProfile {
                profile: name.to_owned(),
            })
        }
    }
    const EXCHANGED: [&str; 8] = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_ENDPOINT_URL_STS",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_STS_REGIONAL_ENDPOINTS",
    ];
    let vars: Vec<(String, String)> = EXCHANGED
        .iter()
        .filter_map(|n| env(n).map(|v| (n.to_string(), v)))
        .collect();
    let web_identity =
        env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && env("AWS_ROLE_ARN").is_some();
    let container = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || (env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            && env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some());
    if web_identity || container {
        return Ok(CredentialSource::Exchanged(vars));
    }
    Ok(CredentialSource::Anonymous)
}

/// One profile's `key = value` settings, keys lower-cased.
#[derive(Debug, Default)]
struct Profile(Vec<(String, String)>);

impl Profile {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

/// The profile from the credentials file, with settings the config file adds; `None` if
/// neither has it.
fn load_profile(name: &str, env: Env<'_>) -> Result<Option<Profile>, S3ConfigError> {
    let home = env("HOME").map(PathBuf::from);
    let in_home = |rel: &str| home.as_ref().map(|h| h.join(rel));
    let credentials_file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| in_home(".aws/credentials"));
    let config_file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| in_home(".aws/config"));
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    let from_credentials = read_section(credentials_file.as_deref(), name)?;
    let from_config = read_section(config_file.as_deref(), &config_section)?;
    Ok(match (from_credentials, from_config) {
        (None, None) => None,
        (a, b) => {
            let mut settings = a.unwrap_or_default();
            settings.extend(b.unwrap_or_default());
            Some(Profile(settings))
        }
    })
}

/// The `key = value` lines of `[section]` in an INI-style AWS file; `None` if the file or
/// the section is absent.
fn read_section(
    path: Option<&Path>,
    section: &str,
) -> Result<Option<Vec<(String, String)>>, S3ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = match read_limited(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(S3ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(parse_section(&text, section))
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_PROFILE_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

fn parse_section(text: &str, section: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == section;
            if in_section && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if let (true, Some(settings), Some((k, v))) =
            (in_section, found.as_mut(), line.split_once('='))
        {
            let settings: &mut Vec<(String, String)> = settings;
            settings.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(url: &str, vars: &[(&str, &str)]) -> Result<S3Config, S3ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.get(k).cloned();
        S3Config::resolve(&url.parse().unwrap(), &env)
    }

    #[test]
    fn url_parts_and_defaults() {
        let c = resolve(
            "s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu",
            &[],
        )
        .unwrap();
        assert_eq!(c.bucket, "bucket");
        assert_eq!(c.prefix, "some/prefix");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu");
        assert!(!c.virtual_hosted, "custom endpoints default to path style");
        assert_eq!(c.credentials, CredentialSource::Anonymous);
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
        let aws = resolve("s3://b", &[("AWS_REGION", "us-west-2")]).unwrap();
        assert_eq!(
            (aws.endpoint, aws.region.as_str(), aws.virtual_hosted),
            (None, "us-west-2", true)
        );
        let nixish = resolve("s3://b?endpoint=minio.local:9000&scheme=http", &[]).unwrap();
        assert_eq!(nixish.endpoint.as_deref(), Some("http://minio.local:9000"));
    }

    #[test]
    fn bad_params_are_refused() {
        for url in [
            "s3://b?part-size=1000",
            "s3://b?upload-parts=0",
            "s3://b?addressing=sideways",
            "s3://b?endpoint=ftp://x",
            "s3://b?endpoint=host&scheme=gopher",
        ] {
            assert!(
                matches!(resolve(url, &[]), Err(S3ConfigError::BadParam { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn env_credentials_win_and_are_hidden() {
        let c = resolve(
            "s3://b",
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "sekrit"),
                ("AWS_SESSION_TOKEN", "tok"),
            ],
        )
        .unwrap();
        let CredentialSource::Static(creds) = &c.credentials else {
            panic!("{c:?}")
        };
        assert_eq!(
            (creds.key_id.as_str(), creds.token.as_deref()),
            ("AKID", Some("tok"))
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("sekrit") && !shown.contains("tok\""),
            "{shown}"
        );
        assert!(matches!(
            resolve("s3://b", &[("AWS_ACCESS_KEY_ID", "A")]),
            Err(S3ConfigError::HalfEnv)
        ));
    }

    #[test]
    fn profiles_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\naws_secret_access_key = dsecret\n\n# c\n[ci]\naws_access_key_id=C\naws_secret_access_key = csecret\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile ci]\nregion = ap-south-1\nendpoint_url = http://127.0.0.1:3900\n",
        )
        .unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ];
        let d = resolve("s3://b", &files).unwrap();
        assert!(matches!(&d.credentials, CredentialSource::Static(c) if c.key_id == "D"));
        let ci = resolve("s3://b?profile=ci", &files).unwrap();
        assert!(
            matches!(&ci.credentials, CredentialSource::Static(c) if c.key_id == "C" && c.secret == "csecret")
        );
        assert_eq!(ci.region, "ap-south-1");
        assert_eq!(ci.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        let mut with_env = files.to_vec();
        with_env.push(("AWS_PROFILE", "ci"));
        assert!(
            matches!(&resolve("s3://b", &with_env).unwrap().credentials, CredentialSource::Static(c) if c.key_id == "C")
        );
        assert!(
            matches!(resolve("s3://b?profile=nope", &files), Err(S3ConfigError::NoProfile(p)) if p == "nope")
        );
    }

    #[test]
    fn web_identity_is_exchanged() {
        let c = resolve(
            "s3://b",
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/x"),
            ],
        )
        .unwrap();
        let CredentialSource::Exchanged(vars) = c.credentials else {
            panic!()
        };
        assert_eq!(vars.len(), 2);
    }
}
