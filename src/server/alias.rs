//! Upload aliases: the NAR names clients used when uploading, kept after the import.
//!
//! After `nix copy --to` a binary cache, Nix 2.8 keeps the narinfo *it* wrote (with its
//! own `URL: nar/<FileHash>.nar.xz`) in its local narinfo cache for 30 days, so the same
//! client later asks this server for that name. And before uploading a NAR, Nix asks
//! (HEAD) whether that name exists, and skips the upload if it does. So every successful
//! narinfo upload records `serve/aliases/<upload name>`:
//!
//! ```text
//! alias = base-name " " nar-hash-nix32 " " label "\n"   ; label "-" when absent
//! ```
//!
//! A NAR requested under an alias is produced from the store (like any NAR) if the path is
//! still valid with that NarHash; it is sent plain for label `none`, brotli for `br`, and
//! zstd otherwise (Nix 2.8 sniffs the real format for every other label). A narinfo whose
//! `URL` names an alias but no staged upload (because Nix skipped re-uploading identical
//! bytes, e.g. for two paths with the same contents) is imported from the aliased path's
//! NAR, if its NarHash is the same.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use super::budget::{self, Budget};
use super::stream::FILE_MODE;
use crate::error_chain::Chain;
use crate::format::store_path::StorePath;
use crate::store::{AddOutcome, LocalStore, NarImport, StoreError};
use crate::temp_file::TempFile;

/// Largest alias file read.
const MAX_ALIAS: u64 = 1024;

/// One alias record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alias {
    pub path: StorePath,
    pub nar_hash_nix32: String,
    /// The `Compression` label of the upload, if it had one.
    pub label: Option<String>,
}

impl Alias {
    fn to_line(&self) -> String {
        let label = self.label.as_deref().unwrap_or("-");
        format!("{} {} {label}\n", self.path, self.nar_hash_nix32)
    }

    fn parse(text: &str) -> Option<Alias> {
        let mut words = text.strip_suffix('\n')?.split(' ');
        let (path, hash, label) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() || label.is_empty() {
            return None;
        }
        Some(Alias {
            path: path.parse().ok()?,
            nar_hash_nix32: hash.to_owned(),
            label: (label != "-").then(|| label.to_owned()),
        })
    }
}

/// Reads the alias `name` (an upload name, already checked) in `dir`; `None` if there is
/// none or it is unreadable.
pub(crate) fn read(dir: &Path, name: &str) -> Option<Alias> {
    let file = fs::File::open(dir.join(name)).ok()?;
    budget::touch(&file);
    let mut text = String::new();
    file.take(MAX_ALIAS).read_to_string(&mut text).ok()?;
    let alias = Alias::parse(&text);
    if alias.is_none() {
        tracing::warn!("ignoring malformed alias '{name}'");
    }
    alias
}

/// Records (or replaces) the alias `name` in the directory of `aliases`, within its
/// budget.
pub(crate) fn write(aliases: &Budget, name: &str, alias: &Alias) -> io::Result<()> {
    let dir = aliases.dir();
    let line = alias.to_line();
    let tmp = TempFile::create_in(dir, FILE_MODE)?;
    tmp.as_file().write_all(line.as_bytes())?;
    // Used now, with full precision (the order of eviction).
    budget::touch(tmp.as_file());
    tmp.persist(&dir.join(name))?;
    aliases.added(line.len() as u64);
    Ok(())
}

/// Imports `meta` with the NAR of the valid path `source` (same contents).
pub(crate) fn import_from_path(
    store: &LocalStore,
    source: &StorePath,
    meta: NarImport,
) -> Result<AddOutcome, StoreError> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let dumper = scope.spawn(move || {
            let mut w = PipeWriter { tx };
            store.dump_path(source, &mut w)
        });
        let imported = store.import_nar(
            meta,
            PipeReader {
                rx,
                current: Vec::new(),
                pos: 0,
            },
        );
        match dumper.join() {
            Ok(Err(e)) if imported.is_err() => {
                tracing::error!(
                    "cannot dump '{}' for an aliased upload: {}",
                    store.print_path(source),
                    Chain(&e)
                )
            }
            Err(_) => tracing::error!("the NAR dump thread panicked"),
            Ok(_) => {}
        }
        imported
    })
}

/// The writing end of an in-memory pipe of chunks.
struct PipeWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tx
            .send(data.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end; end of data when the writer is dropped.
struct PipeReader {
    rx: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let a = Alias {
            path: "a8z667l486sd21m8rs058ir3b2sh8k14-vec-c".parse().unwrap(),
            nar_hash_nix32: "0y6qgvyaayf94lsazzb8jgxm1c0c4a8dpx17y09yhayahzcs1w2i".into(),
            label: Some("xz".into()),
        };
        assert_eq!(Alias::parse(&a.to_line()), Some(a.clone()));
        let none = Alias { label: None, ..a };
        assert_eq!(Alias::parse(&none.to_line()), Some(none));
        for bad in ["", "x y z\n", "a8z667l486sd21m8rs058ir3b2sh8k14-c h\n"] {
            assert_eq!(Alias::parse(bad), None, "{bad:?}");
        }
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), "n.nar.xz"), None);
    }

    #[test]
    fn pipe_carries_everything() {
        let (tx, rx) = mpsc::sync_channel(2);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let expect = data.clone();
        let t = std::thread::spawn(move || {
            let mut w = PipeWriter { tx };
            for c in data.chunks(777) {
                w.write_all(c).unwrap();
            }
        });
        let mut got = Vec::new();
        PipeReader {
            rx,
            current: Vec::new(),
            pos: 0,
        }
        .read_to_end(&mut got)
        .unwrap();
        t.join().unwrap();
        assert_eq!(got, expect);
    }
}
