//! The zstd stream reader, with decoding contexts and input buffers reused across streams.
//!
//! A zstd decoding context holds its window buffer (2 MiB for a stream compressed without
//! a pledged size at level 3) besides its tables, and the input buffer is another 128 KiB;
//! allocating (and faulting in) them for every NAR cost more than decoding a small NAR
//! does. Finished readers give both back to a small process-wide pool. A context with a
//! window of 8 MiB or more is freed instead, so the pool stays small.

use std::io::{self, Read};
use std::sync::Mutex;

use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::ZSTD_WINDOW_LOG_MAX;

/// Contexts kept for reuse (about one per concurrent download).
const POOL_SIZE: usize = 32;
/// A context using more memory than this is not kept. Streams written without a pledged
/// size use a 2 MiB window at level 3, for which a context holds about 2.5 MiB (mostly
/// untouched for a small NAR); windows of 8 MiB and more are freed.
const KEEP_AT_MOST: usize = 8 << 20;

/// A context with its input buffer.
struct Slot {
    ctx: DCtx<'static>,
    input: Box<[u8]>,
}

static POOL: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

fn zstd_error(code: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("zstd: {}", zstd_safe::get_error_name(code)),
    )
}

fn take_slot() -> io::Result<Slot> {
    if let Some(slot) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
        return Ok(slot);
    }
    let mut ctx = DCtx::try_create()
        .ok_or_else(|| io::Error::other("cannot allocate a zstd decoding context"))?;
    ctx.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
        .map_err(zstd_error)?;
    Ok(Slot {
        ctx,
        input: vec![0; DCtx::in_size()].into_boxed_slice(),
    })
}

/// Decodes concatenated zstd frames from `R`. The end of the input in the middle of a
/// frame is an error, never a short success.
pub(super) struct ZstdReader<R: Read> {
    inner: R,
    /// `None` only after a decoding error (the context is then not reused).
    slot: Option<Slot>,
    /// Unconsumed input is `slot.input[start..end]`.
    start: usize,
    end: usize,
    /// Whether the last frame started is complete and flushed.
    between_frames: bool,
    eof: bool,
}

impl<R: Read> ZstdReader<R> {
    pub(super) fn new(inner: R) -> io::Result<Self> {
        Ok(ZstdReader {
            inner,
            slot: Some(take_slot()?),
            start: 0,
            end: 0,
            between_frames: true,
            eof: false,
        })
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(slot) = self.slot.as_mut() else {
                return Err(io::Error::other("zstd: reading after an error"));
            };
            if self.start == self.end && !self.eof {
                match self.inner.read(&mut slot.input) {
                    Ok(0) => self.eof = true,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let mut input = InBuffer::around(&slot.input[self.start..self.end]);
            let mut output = OutBuffer::around(&mut *buf);
            let decoded = slot.ctx.decompress_stream(&mut output, &mut input);
            let (consumed, produced) = (input.pos(), output.pos());
            match decoded {
                // A call that moves nothing answers for the next frame, not the last.
                Ok(hint) if consumed > 0 || produced > 0 => self.between_frames = hint == 0,
                Ok(_) => {}
                Err(code) => {
                    self.slot = None;
                    return Err(zstd_error(code));
                }
            }
            self.start += consumed;
            if produced > 0 {
                return Ok(produced);
            }
            if self.eof && self.start == self.end {
                if self.between_frames {
                    return Ok(0);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "zstd: the input ends in the middle of a frame",
                ));
            }
            // No output and input left over that the decoder would not take: the output
            // buffer is not the reason (it is not empty), so this cannot make progress.
            if consumed == 0 && self.start < self.end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "zstd: the decoder makes no progress",
                ));
            }
        }
    }
}

impl<R: Read> Drop for ZstdReader<R> {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        if slot.ctx.sizeof() > KEEP_AT_MOST || slot.ctx.reset(ResetDirective::SessionOnly).is_err()
        {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(slot);
        }
    }
}
