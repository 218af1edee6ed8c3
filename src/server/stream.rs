//! Response bodies produced by blocking code: a NAR dumped from the store tree (optionally
//! compressed, and then optionally also written to the on-disk cache of compressed
//! NARs), or a file read from that cache.
//!
//! The producer runs on tokio's blocking pool and writes into a [`ChunkWriter`], which
//! hands 256 KiB chunks to the response body over a bounded channel (4 chunks deep), so a
//! NAR is never held in memory and a slow client slows the producer down. A client that
//! goes away closes the channel; the next write fails with `BrokenPipe` and the producer
//! stops. The body ends cleanly only after the producer's explicit end marker: if the
//! producer fails or panics, the body yields an error instead, so hyper aborts the
//! connection rather than terminating a chunked response that is incomplete.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::task::Poll;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::budget::{self, Budget};
use crate::cache::compression::{compress, Compression};
use crate::format::store_path::StorePath;
use crate::store::{LocalStore, StoreError};
use crate::temp_file::TempFile;

/// Size of the chunks handed to the body.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered between producer and connection.
const DEPTH: usize = 4;

enum Msg {
    Data(Bytes),
    End,
    Fail(io::Error),
}

/// A `Write` whose bytes become the response body.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

/// A channel whose receiving end is a response body.
pub(crate) fn body_channel() -> (ChunkWriter, Body) {
    let (tx, mut rx) = mpsc::channel::<Msg>(DEPTH);
    let mut done = false;
    let stream = futures_util::stream::poll_fn(move |cx| {
        if done {
            return Poll::Ready(None);
        }
        let item = match std::task::ready!(rx.poll_recv(cx)) {
            Some(Msg::Data(b)) => return Poll::Ready(Some(Ok(b))),
            Some(Msg::End) => None,
            Some(Msg::Fail(e)) => Some(Err(e)),
            None => Some(Err(io::Error::other("the body producer stopped early"))),
        };
        done = true;
        Poll::Ready(item)
    });
    let writer = ChunkWriter {
        tx,
        buf: BytesMut::with_capacity(CHUNK),
    };
    (writer, Body::from_stream(stream))
}

impl ChunkWriter {
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.send(Msg::Data(chunk))
    }

    /// Sends what is buffered and the end marker: the body is complete.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.send(Msg::End)
    }

    /// Makes the body fail (the connection is aborted).
    pub(crate) fn fail(mut self, e: io::Error) {
        let _ = self.send(Msg::Fail(e));
    }

    /// Reads `file` to its end into the body, a chunk per read.
    fn copy_file(&mut self, file: &mut File) -> io::Result<()> {
        self.send_buffered()?;
        loop {
            self.buf.resize(CHUNK, 0);
            let (n, eof) = match file.read(&mut self.buf[..]) {
                Ok(n) => (n, n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, false),
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            };
            self.buf.truncate(n);
            if eof {
                return Ok(());
            }
            self.send_buffered()?;
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Refuses to pass more than `limit` bytes: a tree that changed on disk must not produce
/// a body longer than the announced Content-Length.
struct Bounded<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() as u64 > self.left {
            return Err(io::Error::other("NAR longer than its recorded NarSize"));
        }
        let n = self.inner.write(data)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes to the body and, while that works, to a second file (the cache entry being
/// built). A failing cache write drops the cache entry, not the response.
struct Tee<'a> {
    body: &'a mut ChunkWriter,
    copy: Option<&'a File>,
    copy_failed: bool,
}

impl Write for Tee<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.body.write(data)?;
        if let Some(mut f) = self.copy {
            if let Err(e) = f.write_all(&data[..n]) {
                tracing::warn!("cannot write the compressed NAR cache: {e}");
                self.copy = None;
                self.copy_failed = true;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn store_io(e: StoreError) -> io::Error {
    io::Error::other(e)
}

/// Streams the plain NAR of `path`, which must be exactly `nar_size` bytes.
pub(crate) fn produce_plain(
    store: &LocalStore,
    path: &StorePath,
    nar_size: u64,
    mut out: ChunkWriter,
) {
    let mut bounded = Bounded {
        inner: &mut out,
        left: nar_size,
    };
    let result = store.dump_path(path, &mut bounded).map_err(store_io);
    let left = bounded.left;
    let result = result.and_then(|_| match left {
        0 => Ok(()),
        _ => Err(io::Error::other("NAR shorter than its recorded NarSize")),
    });
    conclude(store, path, out, result);
}

/// Where a compressed NAR goes in the on-disk cache: written to a temp file in the cache
/// dir, renamed to its final name once complete and synced, within the cache's budget.
pub(crate) struct CacheTarget {
    pub budget: Arc<Budget>,
    pub file_name: String,
}

/// Mode of the server's own files (read by the server only, so not world-writable).
pub(crate) const FILE_MODE: u32 = 0o644;

/// Streams the NAR of `path` compressed with `compression`, also saving it as a cache
/// entry if `cache` is given and the whole response succeeds.
pub(crate) fn produce_compressed(
    store: &LocalStore,
    path: &StorePath,
    compression: Compression,
    level: Option<i32>,
    cache: Option<CacheTarget>,
    mut out: ChunkWriter,
) {
    let temp = cache.and_then(|c| match TempFile::create_in(c.budget.dir(), FILE_MODE) {
        Ok(f) => Some((f, c)),
        Err(e) => {
            tracing::warn!("cannot create a compressed NAR cache entry: {e}");
            None
        }
    });
    let mut tee = Tee {
        body: &mut out,
        copy: temp.as_ref().map(|(f, _)| f.as_file()),
        copy_failed: false,
    };
    let result = (|| {
        let mut z = compress(compression, level, &mut tee)?;
        store.dump_path(path, &mut z).map_err(store_io)?;
        z.finish()?;
        Ok(())
    })();
    let keep = result.is_ok() && !tee.copy_failed;
    if let Some((file, target)) = temp {
        // Dropped unkept, the temp file is removed.
        if keep {
            install_cache_entry(file, &target);
        }
    }
    conclude(store, path, out, result);
}

/// Syncs and renames a complete cache entry into place, if its budget admits it (best
/// effort: a failure only means the next request compresses again).
fn install_cache_entry(file: TempFile, target: &CacheTarget) {
    let dest = target.budget.dir().join(&target.file_name);
    let len = match file.as_file().metadata() {
        Ok(m) if target.budget.admits(m.len()) => m.len(),
        Ok(_) => {
            tracing::debug!(
                "not caching '{}': larger than the NAR cache",
                dest.display()
            );
            return;
        }
        Err(e) => {
            tracing::warn!("cannot install the compressed NAR cache entry: {e}");
            return;
        }
    };
    // Used now, with full precision (the order of eviction).
    budget::touch(file.as_file());
    match file
        .as_file()
        .sync_data()
        .and_then(|()| file.persist(&dest))
    {
        Ok(()) => target.budget.added(len),
        Err(e) => tracing::warn!("cannot install the compressed NAR cache entry: {e}"),
    }
}

/// Streams an already-compressed cache entry.
pub(crate) fn produce_file(mut file: File, mut out: ChunkWriter) {
    let result = out.copy_file(&mut file);
    match result.and_then(|()| out.finish()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            tracing::debug!("NAR download cut short: {e}");
        }
        Err(e) => {
            tracing::error!("cannot read a compressed NAR cache entry: {e}");
        }
    }
}

/// Ends the body: complete on success, aborted (and logged) on failure.
fn conclude(store: &LocalStore, path: &StorePath, out: ChunkWriter, result: io::Result<()>) {
    let printed = || store.print_path(path);
    match result {
        Ok(()) => {
            if let Err(e) = out.finish() {
                tracing::debug!("NAR download of {} cut short: {e}", printed());
            }
        }
        Err(e) if is_disconnect(&e) => {
            tracing::debug!("NAR download of {} cut short: {e}", printed());
        }
        Err(e) => {
            tracing::error!("cannot serve the NAR of {}: {}", printed(), chain(&e));
            out.fail(io::Error::other("NAR production failed"));
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether an error (possibly wrapped by the NAR writer or the store) is the client
/// closing the connection.
fn is_disconnect(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: Body) -> Result<Vec<u8>, axum::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(axum::body::to_bytes(body, usize::MAX))
            .map(|b| b.to_vec())
    }

    #[test]
    fn chunks_arrive_in_order_and_end_cleanly() {
        let (mut w, body) = body_channel();
        let data: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| i as u8).collect();
        let t = std::thread::spawn(move || {
            for part in data.chunks(1000) {
                w.write_all(part).unwrap();
            }
            w.finish().unwrap();
            data
        });
        let got = collect(body).unwrap();
        assert_eq!(got, t.join().unwrap());
    }

    #[test]
    fn producer_failure_or_disappearance_fails_the_body() {
        let (mut w, body) = body_channel();
        let t = std::thread::spawn(move || {
            w.write_all(b"partial").unwrap();
            w.fail(io::Error::other("boom"));
        });
        assert!(collect(body).is_err());
        t.join().unwrap();

        let (mut w, body) = body_channel();
        let t = std::thread::spawn(move || {
            w.write_all(&vec![0; CHUNK]).unwrap();
            drop(w);
        });
        assert!(
            collect(body).is_err(),
            "no end marker: must not look complete"
        );
        t.join().unwrap();
    }

    #[test]
    fn bounded_refuses_overlong_output() {
        let mut sink = Vec::new();
        let mut b = Bounded {
            inner: &mut sink,
            left: 4,
        };
        b.write_all(b"abcd").unwrap();
        assert!(b.write_all(b"e").is_err());
    }
}
