//! Shape checks every backend runs before an op, so a mismatch is reported
//! the same way whichever backend meets it.

use super::AttnDims;
use crate::error::{Error, Result};

fn fail(op: &'static str, problem: String) -> Result<()> {
    Err(Error::Shape { op, problem })
}

/// `x [rows, cols] @ w[out, in]^T` needs cols == in.
pub fn linear(x: (usize, usize), weight: &str, w: (usize, usize)) -> Result<()> {
    if x.1 != w.1 {
        return fail(
            "linear",
            format!("input has {} columns, weight `{weight}` has {}", x.1, w.1),
        );
    }
    Ok(())
}

pub fn rms_norm(cols: usize, width: usize) -> Result<()> {
    if width == 0 || cols % width != 0 {
        return fail(
            "rms_norm",
            format!("row width {cols} is not a multiple of norm width {width}"),
        );
    }
    Ok(())
}

pub fn rope(x: (usize, usize), positions: usize, head_dim: usize) -> Result<()> {
    if positions != x.0 || head_dim == 0 || x.1 % head_dim != 0 || head_dim % 2 != 0 {
        return fail(
            "rope",
            format!(
                "{} rows, {positions} positions, width {} vs head_dim {head_dim}",
                x.0, x.1
            ),
        );
    }
    Ok(())
}

pub fn fused_qkv(
    x: (usize, usize),
    packed: (usize, usize),
    dims: &AttnDims,
    positions: usize,
) -> Result<()> {
    let rows = dims.q_dim() + 2 * dims.kv_dim();
    if packed != (rows, x.1) || positions != x.0 {
        return fail(
            "fused_qkv",
            format!(
                "packed weight {}x{} (expected {rows}x{}), {} rows with {positions} positions",
                packed.0, packed.1, x.1, x.0
            ),
        );
    }
    Ok(())
}

/// Rows and columns of the weight made by stacking `parts` (each
/// `[.., cols]`); all parts must share the column count.
pub fn packed(
    name: &str,
    parts: &[&crate::model::safetensors::HostTensor],
) -> Result<(usize, usize)> {
    let cols = match parts.first() {
        Some(t) => *t.shape.last().unwrap_or(&1),
        None => {
            return Err(Error::Shape {
                op: "upload",
                problem: format!("{name}: nothing to upload"),
            })
        }
    };
    let mut rows = 0;
    for t in parts {
        let c = *t.shape.last().unwrap_or(&1);
        if c != cols {
            return Err(Error::Shape {
                op: "upload_packed",
                problem: format!("{name}: {c} columns, expected {cols}"),
            });
        }
        rows += t.numel() / c.max(1);
    }
    Ok((rows, cols))
}

pub fn same_shape(op: &'static str, a: (usize, usize), b: (usize, usize)) -> Result<()> {
    if a != b {
        return fail(op, format!("{}x{} vs {}x{}", a.0, a.1, b.0, b.1));
    }
    Ok(())
}
