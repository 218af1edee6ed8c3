//! NAR compression in binary caches: the `Compression:` labels and file extensions of
//! Nix 2.8, streaming decoders that sniff the real format like libarchive does, and
//! streaming encoders. Synchronous, pure `io::Read`/`io::Write`. See store-format.md §7.1
//! (compression).
//!
//! Reading (`decompress`), as Nix 2.8 does:
//!
//! ```text
//! label "none" or ""   -> the bytes as they are
//! label "br"           -> brotli (brotli has no magic number, so it is never sniffed)
//! anything else        -> sniffed from the first bytes, the label is ignored:
//!   FD 37 7A 58 5A 00  -> xz    (concatenated streams allowed)
//!   28 B5 2F FD        -> zstd  (concatenated frames allowed)
//!   42 5A 68 ("BZh")   -> bzip2 (concatenated streams allowed)
//!   1F 8B              -> gzip  (concatenated members allowed)
//!   other              -> error "input compression not recognized"
//! ```
//!
//! A missing label (`None`) is what Nix reads as `bzip2`, so it is sniffed too.
//!
//! Memory is bounded whatever the input: the xz decoder runs with a memory limit of
//! [`XZ_MEMLIMIT`] (128 MiB, enough for `xz -9e`, whose dictionary is 64 MiB), zstd frames
//! may use a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`] bytes (128 MiB; `zstd --ultra -22`
//! and `--long=27` fit, `--long=31` does not), brotli windows are at most 16 MiB, and
//! bzip2 and gzip need less than 8 MiB. Output is not bounded here: a small input may
//! expand enormously, so the **caller** must cap what it reads (NarSize + 1 bytes).
//!
//! Writing (`compress`): none, xz (default preset 6, like Nix), zstd (default level 3,
//! single-threaded, with the frame checksum), bzip2 (default 9), gzip (default 6) and
//! brotli (default quality 6; Nix uses 11, which is very slow). Nix's other writable
//! formats (lzma, compress, lz4, lzip) are refused. Note that Nix names gzip files
//! `.nar`, without a suffix.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use thiserror::Error;

mod zstd_pool;

/// Memory limit of the xz decoder, in bytes.
pub const XZ_MEMLIMIT: u64 = 128 << 20;

/// Largest zstd window accepted when decoding, as a power of two.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// How many bytes the sniffer looks at.
const SNIFF_LEN: usize = 6;

/// Buffer size of the brotli encoder and decoder.
const BROTLI_BUFFER: usize = 64 * 1024;

/// Why compressed data or a compression setting was refused. Carried inside the
/// `io::Error`s of this module (kind `InvalidData` or `InvalidInput`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressionError {
    #[error("unknown compression method '{0}'")]
    Unknown(String),
    #[error("compression method '{0}' is not supported")]
    Unsupported(String),
    #[error("input compression not recognized")]
    NotRecognized,
    #[error("{method} level {level} is out of range {min}..={max}")]
    BadLevel {
        method: &'static str,
        level: i32,
        min: i32,
        max: i32,
    },
}

impl From<CompressionError> for io::Error {
    fn from(e: CompressionError) -> Self {
        let kind = match e {
            CompressionError::NotRecognized => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// A compression method we can write, named by its Nix label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Gzip,
    Br,
}

impl Compression {
    /// Every method, in label order of the Nix docs.
    pub const ALL: [Compression; 6] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Gzip,
        Compression::Br,
    ];

    /// The label written in `Compression:` and accepted in `?compression=`.
    pub fn label(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Gzip => "gzip",
            Compression::Br => "br",
        }
    }

    /// The suffix of the NAR file name, exactly as Nix 2.8 writes it (gzip gets none).
    pub fn nar_extension(self) -> &'static str {
        match self {
            Compression::None | Compression::Gzip => ".nar",
            Compression::Xz => ".nar.xz",
            Compression::Zstd => ".nar.zst",
            Compression::Bzip2 => ".nar.bz2",
            Compression::Br => ".nar.br",
        }
    }

    /// The level used when none is given.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Xz => 6,
            Compression::Zstd => 3,
            Compression::Bzip2 => 9,
            Compression::Gzip => 6,
            Compression::Br => 6,
        }
    }

    fn level_range(self) -> (i32, i32) {
        match self {
            Compression::None => (0, 0),
            Compression::Xz => (0, 9),
            Compression::Zstd => (1, 22),
            Compression::Bzip2 => (1, 9),
            Compression::Gzip => (0, 9),
            Compression::Br => (0, 11),
        }
    }

    fn check_level(self, level: Option<i32>) -> Result<i32, CompressionError> {
        let level = match (self, level) {
            (Compression::None, _) | (_, None) => return Ok(self.default_level()),
            (_, Some(l)) => l,
        };
        let (min, max) = self.level_range();
        if (min..=max).contains(&level) {
            Ok(level)
        } else {
            Err(CompressionError::BadLevel {
                method: self.label(),
                level,
                min,
                max,
            })
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Compression {
    type Err = CompressionError;
    fn from_str(s: &str) -> Result<Self, CompressionError> {
        if let Some(c) = Compression::ALL.into_iter().find(|c| c.label() == s) {
            return Ok(c);
        }
        match s {
            "lzma" | "compress" | "lz4" | "lzip" | "grzip" | "lrzip" | "lzop" => {
                Err(CompressionError::Unsupported(s.to_owned()))
            }
            _ => Err(CompressionError::Unknown(s.to_owned())),
        }
    }
}

/// The formats recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Xz,
    Zstd,
    Bzip2,
    Gzip,
}

fn sniff(prefix: &[u8]) -> Result<Sniffed, CompressionError> {
    if prefix.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Sniffed::Xz)
    } else if prefix.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Ok(Sniffed::Zstd)
    } else if prefix.starts_with(b"BZh") {
        Ok(Sniffed::Bzip2)
    } else if prefix.starts_with(&[0x1F, 0x8B]) {
        Ok(Sniffed::Gzip)
    } else if prefix.starts_with(&[0x04, 0x22, 0x4D, 0x18]) {
        Err(CompressionError::Unsupported("lz4".to_owned()))
    } else if prefix.starts_with(b"LZIP") {
        Err(CompressionError::Unsupported("lzip".to_owned()))
    } else if prefix.starts_with(&[0x1F, 0x9D]) {
        Err(CompressionError::Unsupported("compress".to_owned()))
    } else {
        Err(CompressionError::NotRecognized)
    }
}

/// Reads up to `SNIFF_LEN` bytes (fewer only at end of input).
fn read_prefix(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut prefix = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < SNIFF_LEN {
        match r.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    prefix.truncate(filled);
    Ok(prefix)
}

/// A streaming reader of the uncompressed bytes of `r`, whose narinfo says
/// `Compression: label` (`None` when the field is missing). See the module docs for the
/// rules. Errors in the data surface from `read`; a truncated stream is an error, never a
/// short success.
pub fn decompress<'a>(
    label: Option<&str>,
    r: impl Read + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    match label {
        Some("none") | Some("") => return Ok(Box::new(r)),
        Some("br") => {
            return Ok(Box::new(BrotliReader {
                inner: brotli::Decompressor::new(r, BROTLI_BUFFER),
            }))
        }
        _ => {}
    }
    let mut r = r;
    let prefix = read_prefix(&mut r)?;
    let format = sniff(&prefix)?;
    let input = io::Cursor::new(prefix).chain(r);
    Ok(match format {
        Sniffed::Xz => {
            let stream =
                xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                    .map_err(io::Error::other)?;
            Box::new(xz2::read::XzDecoder::new_stream(input, stream))
        }
        Sniffed::Zstd => Box::new(zstd_pool::ZstdReader::new(input)?),
        Sniffed::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Sniffed::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
    })
}

/// The brotli decoder, with truncation turned into an error: the underlying decoder
/// reports end of data when its input ends in the middle of a stream.
struct BrotliReader<R: Read> {
    inner: brotli::Decompressor<R>,
}

impl<R: Read> Read for BrotliReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated brotli stream",
            )),
            other => other,
        }
    }
}

/// A streaming encoder writing compressed bytes to `W`. Call [`Compressor::finish`] at the
/// end: dropping it without doing so leaves the output truncated.
pub struct Compressor<W: Write> {
    inner: Encoder<W>,
}

enum Encoder<W: Write> {
    None(W),
    Xz(xz2::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Gzip(flate2::write::GzEncoder<W>),
    Br(Box<brotli::CompressorWriter<ErrorLatch<W>>>),
}

/// Makes a compressor for method `c` writing to `w`. `level` defaults to
/// [`Compression::default_level`]; it is ignored for `none` and checked for the others.
pub fn compress<W: Write>(c: Compression, level: Option<i32>, w: W) -> io::Result<Compressor<W>> {
    let level = c.check_level(level)?;
    // The range checks above make these conversions lossless.
    let unsigned = u32::try_from(level).unwrap_or(0);
    let inner = match c {
        Compression::None => Encoder::None(w),
        Compression::Xz => Encoder::Xz(xz2::write::XzEncoder::new(w, unsigned)),
        Compression::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(w, level)?;
            e.include_checksum(true)?;
            Encoder::Zstd(e)
        }
        Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
            w,
            bzip2::Compression::new(unsigned),
        )),
        Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
            w,
            flate2::Compression::new(unsigned),
        )),
        Compression::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
            ErrorLatch {
                inner: w,
                error: None,
            },
            BROTLI_BUFFER,
            unsigned,
            22,
        ))),
    };
    Ok(Compressor { inner })
}

impl<W: Write> Compressor<W> {
    /// Writes the end of the compressed stream and returns the writer (not flushed).
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Encoder::None(w) => Ok(w),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => {
                let latch = e.into_inner();
                match latch.error {
                    Some(err) => Err(err),
                    None => Ok(latch.inner),
                }
            }
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Encoder::None(w) => w.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Br(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Encoder::None(w) => w.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
        }
    }
}

/// Remembers the first write error, because the brotli encoder's `into_inner` discards
/// the error of its final write.
struct ErrorLatch<W> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Write for ErrorLatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("an earlier write failed"));
        }
        self.inner.write(buf).inspect_err(|e| {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.error
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }
}

#[cfg(test)]
mod tests;
