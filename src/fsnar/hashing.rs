//! sha256 + byte count of a stream, as a `Write` sink ([`HashingWriter`]) or a `Read` pass-through
//! ([`HashingReader`]). Used for NarHash/NarSize while dumping, copying and restoring.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Hashes (sha256) and counts every byte written, then forwards it to `inner` (by default a
/// sink, i.e. hash only).
#[derive(Debug, Clone, Default)]
pub struct HashingWriter<W = io::Sink> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl HashingWriter<io::Sink> {
    /// A writer that only hashes and counts.
    pub fn new() -> Self {
        Self::wrap(io::sink())
    }
}

impl<W> HashingWriter<W> {
    /// Hashes and counts everything written, and forwards it to `inner`.
    pub fn wrap(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 digest and the byte count.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.len)
    }

    /// The sha256 digest, the byte count and the inner writer.
    pub fn into_parts(self) -> ([u8; 32], u64, W) {
        (self.hasher.finalize().into(), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes (sha256) and counts every byte read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 digest and the byte count of everything read.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_counts() {
        let mut w = HashingWriter::new();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"nix\n").unwrap();
        let (digest, len) = w.finish();
        let expected: [u8; 32] = Sha256::digest(b"hello nix\n").into();
        assert_eq!((digest, len), (expected, 10));

        let mut r = HashingReader::new(&b"hello nix\n"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.finish(), (expected, 10));

        let mut tee = HashingWriter::wrap(Vec::new());
        tee.write_all(b"hello nix\n").unwrap();
        let (digest, len, inner) = tee.into_parts();
        assert_eq!(
            (digest, len, inner.as_slice()),
            (expected, 10, &b"hello nix\n"[..])
        );
    }
}
