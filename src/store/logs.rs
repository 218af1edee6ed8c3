//! Build logs: each build's stdout and stderr, kept zstd-compressed in the state dir at
//! `log/drvs/<first 2 chars of the .drv base name>/<rest>.zst` (Nix keeps
//! `log/nix/drvs/…/….bz2`). A log is written to a locked temp file in `<state>/tmp` (swept
//! once its owner is gone, see `crate::temp_file`) and renamed to its final name when the
//! build ends, so a log file is always complete. The last lines are kept in
//! memory for error messages.
//!
//! Logs live in the store layer so that both the builder (which writes them) and push and
//! the command line (which read them) can use them.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::format::store_path::StorePath;
use crate::store::Layout;
use crate::temp_file::TempFile;

/// Bytes of the end of the log kept for error messages.
const TAIL_BYTES: usize = 16 * 1024;

/// Where the log of `drv` is kept.
pub fn log_path(layout: &Layout, drv: &StorePath) -> PathBuf {
    let base = drv.as_str();
    let (dir, rest) = base.split_at(2);
    layout
        .state_dir()
        .join("log/drvs")
        .join(dir)
        .join(format!("{rest}.zst"))
}

/// The log of `drv`, decompressed, if there is one.
pub fn read_log(layout: &Layout, drv: &StorePath) -> io::Result<Option<Vec<u8>>> {
    let path = log_path(layout, drv);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(file)?.read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Receives a builder's output: compresses it into the log file, keeps its tail, and
/// optionally echoes it to stderr.
pub struct LogSink {
    encoder: Option<zstd::stream::write::Encoder<'static, File>>,
    tmp: Option<TempFile>,
    dest: PathBuf,
    tail: VecDeque<u8>,
    echo: bool,
}

impl LogSink {
    pub fn create(layout: &Layout, drv: &StorePath, echo: bool) -> io::Result<LogSink> {
        let dest = log_path(layout, drv);
        let dir = dest.parent().expect("log path has a parent");
        fs::create_dir_all(dir)?;
        let tmp_dir = layout.temp_files_dir();
        fs::create_dir_all(&tmp_dir)?;
        let tmp = TempFile::create_in(&tmp_dir, 0o644)?;
        let file = tmp.as_file().try_clone()?;
        let encoder = zstd::stream::write::Encoder::new(file, 3)?;
        Ok(LogSink {
            encoder: Some(encoder),
            tmp: Some(tmp),
            dest,
            tail: VecDeque::with_capacity(TAIL_BYTES),
            echo,
        })
    }

    /// The last `lines` lines of what was written (lossily decoded).
    pub fn tail(&self, lines: usize) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.trim_end_matches('\n').lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Completes the log file (renaming it into place).
    pub fn finish(&mut self) -> io::Result<()> {
        if let Some(enc) = self.encoder.take() {
            // Not synced: a log is not store contents; after a crash it may be lost, never
            // mistaken for a path.
            enc.finish()?;
            if let Some(tmp) = self.tmp.take() {
                tmp.persist(&self.dest)?;
            }
        }
        Ok(())
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(enc) = self.encoder.as_mut() {
            enc.write_all(buf)?;
        }
        let keep = buf.len().min(TAIL_BYTES);
        let overflow = (self.tail.len() + keep).saturating_sub(TAIL_BYTES);
        self.tail.drain(..overflow);
        self.tail.extend(&buf[buf.len() - keep..]);
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        if self.encoder.is_some() {
            // Not finished: keep what there is (a failed build's log matters most).
            let _ = self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::store_path::StoreDir;

    #[test]
    fn logs_round_trip_and_keep_a_tail() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(StoreDir::new("/ix/store").unwrap(), Some(root.path()));
        let drv: StorePath = "7rjj86a15146cq0bhw5dds9nn1lrnxpl-x.drv".parse().unwrap();
        assert!(read_log(&layout, &drv).unwrap().is_none());
        let mut sink = LogSink::create(&layout, &drv, false).unwrap();
        let mut expected = Vec::new();
        for i in 0..5000 {
            let line = format!("line {i}\n");
            sink.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        assert_eq!(sink.tail(2), "line 4998\nline 4999");
        sink.finish().unwrap();
        assert_eq!(read_log(&layout, &drv).unwrap().unwrap(), expected);
        assert!(log_path(&layout, &drv)
            .ends_with("log/drvs/7r/jj86a15146cq0bhw5dds9nn1lrnxpl-x.drv.zst"));
    }
}
