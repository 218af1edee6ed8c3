use std::io::{self, Read, Write};

use super::*;

/// Deterministic, somewhat compressible test data.
fn sample(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if i % 3 == 0 {
                b'a' + (state % 4) as u8
            } else {
                (state >> 8) as u8
            }
        })
        .collect()
}

fn compressed(c: Compression, data: &[u8]) -> Vec<u8> {
    let mut enc = compress(c, None, Vec::new()).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn read_all(label: Option<&str>, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress(label, data)?.read_to_end(&mut out)?;
    Ok(out)
}

fn inner_error(e: &io::Error) -> Option<&CompressionError> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<CompressionError>())
}

#[test]
fn labels_and_extensions_are_nix_s() {
    let table = [
        ("none", ".nar"),
        ("xz", ".nar.xz"),
        ("zstd", ".nar.zst"),
        ("bzip2", ".nar.bz2"),
        ("gzip", ".nar"),
        ("br", ".nar.br"),
    ];
    for (c, (label, ext)) in Compression::ALL.into_iter().zip(table) {
        assert_eq!(c.label(), label);
        assert_eq!(c.to_string(), label);
        assert_eq!(c.nar_extension(), ext);
        assert_eq!(label.parse::<Compression>(), Ok(c));
    }
    assert_eq!(
        "lz4".parse::<Compression>(),
        Err(CompressionError::Unsupported("lz4".into()))
    );
    assert_eq!(
        "foo".parse::<Compression>(),
        Err(CompressionError::Unknown("foo".into()))
    );
    assert!("".parse::<Compression>().is_err());
    assert!("XZ".parse::<Compression>().is_err());
}

#[test]
fn round_trip_every_method_and_label() {
    let data = sample(300_000);
    for c in Compression::ALL {
        let packed = compressed(c, &data);
        if c != Compression::None {
            assert!(packed.len() < data.len(), "{c} did not compress");
        }
        // Its own label, and for sniffed formats any label at all (as Nix does).
        assert_eq!(read_all(Some(c.label()), &packed).unwrap(), data, "{c}");
        if !matches!(c, Compression::None | Compression::Br) {
            for label in [None, Some("bzip2"), Some("foo"), Some("xz")] {
                assert_eq!(read_all(label, &packed).unwrap(), data, "{c} as {label:?}");
            }
        }
    }
    // The empty input round-trips too.
    for c in Compression::ALL {
        assert_eq!(read_all(Some(c.label()), &compressed(c, b"")).unwrap(), b"");
    }
}

#[test]
fn levels() {
    let data = sample(10_000);
    for (c, level) in [
        (Compression::Xz, 0),
        (Compression::Xz, 9),
        (Compression::Zstd, 1),
        (Compression::Zstd, 19),
        (Compression::Bzip2, 1),
        (Compression::Gzip, 9),
        (Compression::Br, 11),
        (Compression::None, 42),
    ] {
        let mut enc = compress(c, Some(level), Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        assert_eq!(read_all(Some(c.label()), &packed).unwrap(), data);
    }
    for (c, level) in [
        (Compression::Xz, 10),
        (Compression::Xz, -1),
        (Compression::Zstd, 0),
        (Compression::Zstd, 23),
        (Compression::Bzip2, 0),
        (Compression::Br, 12),
    ] {
        let e = compress(c, Some(level), Vec::new()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(matches!(
            inner_error(&e),
            Some(CompressionError::BadLevel { .. })
        ));
    }
}

#[test]
fn sniffing_uses_magic_bytes() {
    assert_eq!(sniff(&[0xFD, b'7', b'z', b'X', b'Z', 0]), Ok(Sniffed::Xz));
    assert_eq!(sniff(&[0x28, 0xB5, 0x2F, 0xFD, 0]), Ok(Sniffed::Zstd));
    assert_eq!(sniff(b"BZh9"), Ok(Sniffed::Bzip2));
    assert_eq!(sniff(&[0x1F, 0x8B, 8]), Ok(Sniffed::Gzip));
    assert_eq!(
        sniff(&[0x04, 0x22, 0x4D, 0x18]),
        Err(CompressionError::Unsupported("lz4".into()))
    );
    assert_eq!(
        sniff(b"LZIP\x01"),
        Err(CompressionError::Unsupported("lzip".into()))
    );
    assert_eq!(
        sniff(&[0x1F, 0x9D]),
        Err(CompressionError::Unsupported("compress".into()))
    );
    // xz magic cut short is not xz.
    assert_eq!(
        sniff(&[0xFD, b'7', b'z']),
        Err(CompressionError::NotRecognized)
    );
    assert_eq!(sniff(b""), Err(CompressionError::NotRecognized));
}

/// A reader that hands out one byte per call, to exercise the prefix loop.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn sniffing_works_with_short_reads() {
    let data = sample(5000);
    let packed = compressed(Compression::Xz, &data);
    let mut out = Vec::new();
    decompress(Some("xz"), OneByte(&packed))
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, data);
}

#[test]
fn mislabelled_data() {
    let nar = b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1\x00\x00\x00".to_vec();
    // Uncompressed data under a compression label: Nix's error.
    for label in [None, Some("xz"), Some("zstd"), Some("bzip2"), Some("foo")] {
        let e = read_all(label, &nar).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "input compression not recognized");
        assert_eq!(inner_error(&e), Some(&CompressionError::NotRecognized));
    }
    // "none" passes compressed bytes through untouched.
    let xz = compressed(Compression::Xz, &nar);
    assert_eq!(read_all(Some("none"), &xz).unwrap(), xz);
    assert_eq!(read_all(Some(""), &xz).unwrap(), xz);
    // "br" is never sniffed: xz data under it fails.
    assert!(read_all(Some("br"), &xz).is_err());
    // xz data labelled zstd is read as xz.
    assert_eq!(read_all(Some("zstd"), &xz).unwrap(), nar);
}

#[test]
fn truncated_streams_are_errors() {
    let data = sample(200_000);
    for c in Compression::ALL {
        if c == Compression::None {
            continue;
        }
        let packed = compressed(c, &data);
        for cut in [packed.len() / 2, packed.len() - 1] {
            let r = read_all(Some(c.label()), &packed[..cut]);
            assert!(r.is_err(), "{c} cut at {cut}/{} was accepted", packed.len());
        }
    }
}

#[test]
fn corrupt_streams_are_errors() {
    let data = sample(100_000);
    for c in Compression::ALL {
        if c == Compression::None {
            continue;
        }
        let mut packed = compressed(c, &data);
        let mid = packed.len() / 2;
        for b in &mut packed[mid..mid + 16] {
            *b ^= 0x5A;
        }
        let r = read_all(Some(c.label()), &packed);
        assert!(r.map(|out| out != data).unwrap_or(true), "{c}");
        // Integrity-checked formats must report it.
        if c != Compression::Br {
            assert!(read_all(Some(c.label()), &packed).is_err(), "{c}");
        }
    }
}

#[test]
fn concatenated_streams_are_read_whole() {
    for c in [
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Gzip,
    ] {
        let mut packed = compressed(c, b"hello ");
        packed.extend(compressed(c, b"world"));
        assert_eq!(
            read_all(Some(c.label()), &packed).unwrap(),
            b"hello world",
            "{c}"
        );
    }
}

/// A writer of `n` zero bytes into an encoder, without holding them in memory.
fn zero_bomb(c: Compression, n: usize) -> Vec<u8> {
    let mut enc = compress(c, Some(1), Vec::new()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..n / chunk.len() {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn bombs_stay_bounded_by_the_caller_s_limit() {
    let size = 128 << 20;
    for c in [Compression::Zstd, Compression::Xz] {
        let bomb = zero_bomb(c, size);
        assert!(bomb.len() < 1 << 20, "{c} bomb is {} bytes", bomb.len());
        let limit = 3 << 20;
        let mut out = Vec::new();
        let r = decompress(Some(c.label()), &bomb[..]).unwrap();
        r.take(limit + 1).read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, limit + 1, "{c}");
        assert!(out.iter().all(|&b| b == 0));
    }
}

#[test]
fn zstd_window_over_the_limit_is_refused() {
    use zstd::stream::raw::CParameter;
    let data = sample(1000);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX + 1))
        .unwrap();
    enc.write_all(&data).unwrap();
    let big_window = enc.finish().unwrap();
    assert!(read_all(Some("zstd"), &big_window).is_err());
    // At the limit it is fine.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX))
        .unwrap();
    enc.write_all(&data).unwrap();
    let ok = enc.finish().unwrap();
    assert_eq!(read_all(Some("zstd"), &ok).unwrap(), data);
}

/// A writer that fails after `room` bytes.
struct Full {
    room: usize,
}

impl Write for Full {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_are_reported_by_write_or_finish() {
    let data = sample(100_000);
    for c in Compression::ALL {
        let mut enc = compress(c, None, Full { room: 10 }).unwrap();
        let wrote = enc.write_all(&data);
        let finished = enc.finish();
        assert!(wrote.is_err() || finished.is_err(), "{c}");
    }
}

#[test]
fn zstd_contexts_reused_after_abandoned_and_failed_streams_decode_afresh() {
    let data = sample(300_000);
    let packed = compressed(Compression::Zstd, &data);
    let mut corrupt = packed.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 16].iter_mut().for_each(|b| *b ^= 0x5A);
    for _ in 0..40 {
        // Dropped in the middle of a frame: its context goes back to the pool.
        let mut r = decompress(Some("zstd"), &packed[..]).unwrap();
        let mut some = vec![0; 1000];
        r.read_exact(&mut some).unwrap();
        assert_eq!(some, data[..1000]);
        drop(r);
        assert!(read_all(Some("zstd"), &corrupt).is_err());
        assert!(read_all(Some("zstd"), &packed[..mid]).is_err());
    }
    // Many at once, each with its own context, then all reused.
    let readers: Vec<_> = (0..40)
        .map(|_| decompress(Some("zstd"), &packed[..]).unwrap())
        .collect();
    for mut r in readers {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(out == data);
    }
    assert_eq!(read_all(Some("zstd"), &packed).unwrap(), data);
}
