//! Small helpers shared across modules.

use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `path` through a temporary file in the same folder and renames it
/// into place, so a reader never sees a half-written file and an interrupted
/// write leaves the previous file intact.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Rounds an f32 to the nearest bf16 (ties to even), returned widened to f32.
/// NaN stays NaN.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// The bf16 bit pattern nearest to `x` (round to nearest, ties to even).
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// f64 -> bf16 through f32. Double rounding can differ from a direct f64 ->
/// bf16 rounding only when the f64 lies within 2^-24 relative of a bf16 tie;
/// torch rounds f32 intermediates, so this is the rounding it performs.
#[inline]
pub fn round_bf16_f64(x: f64) -> f64 {
    round_bf16(x as f32) as f64
}

pub fn write_json_atomically<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomically(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })
}

/// Refuses anything at `path` but a regular file (a FIFO would block the
/// read, a device or directory is never a model file), naming the path.
pub fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(Error::invalid(
            path.display().to_string(),
            format!("is {kind}; expected a regular file"),
        ));
    }
    Ok(meta)
}

/// The text of a regular file of at most `max` bytes: larger files, files
/// that grow past `max` while read, non-regular files and non-UTF-8 text
/// are errors naming the path, so no input is read without bound.
pub fn read_text_bounded(path: &Path, max: u64) -> Result<String> {
    use std::io::Read;
    let meta = regular_file(path)?;
    let too_big = |n: u64| {
        Error::invalid(
            path.display().to_string(),
            format!("is {n} bytes or more; files of this kind are at most {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("is not UTF-8 text: {e}"),
        )
    })
}

/// Size limits of the text files lockstep reads whole (a real Qwen3
/// tokenizer.json is about 11 MB, a shard index well under 1 MB).
pub mod limits {
    pub const CONFIG: u64 = 1 << 20;
    pub const SHARD_INDEX: u64 = 64 << 20;
    pub const TOKENIZER: u64 = 256 << 20;
    pub const GOLDEN: u64 = 16 << 20;
    pub const REFERENCE: u64 = 1 << 30;
}

/// The host's available memory (Linux `MemAvailable`), bytes; `None` where
/// the system does not say.
pub fn host_memory_available() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}
