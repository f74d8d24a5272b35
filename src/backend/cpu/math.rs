//! Reductions with a fixed, documented order. Results never depend on the
//! number of threads: threads split independent outputs, never a sum.

/// Graph-path dot product: 8 interleaved partial sums (element i goes to
/// lane i % 8), combined pairwise. This is how a vectorised CPU GEMV sums.
pub trait Real:
    Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
}
impl Real for f32 {}
impl Real for f64 {}

#[inline]
pub fn dot8<T: Real>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::default(); 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = acc[l] + *x * *y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Fused-path dot product: the order of a 32-lane warp (lane i sums elements
/// i, i+32, i+64, ...) followed by a butterfly (xor-shuffle) reduction, as a
/// GPU kernel with one warp per output row computes it.
#[inline]
pub fn dot_warp<T: Real>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::default(); 32];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..32 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] = acc[l] + *x * *y;
    }
    butterfly(acc)
}

/// xor-shuffle reduction over 32 lanes: offsets 16, 8, 4, 2, 1.
#[inline]
pub fn butterfly<T: Real>(mut acc: [T; 32]) -> T {
    let mut off = 16;
    while off > 0 {
        for l in 0..off {
            acc[l] = acc[l] + acc[l + off];
        }
        off /= 2;
    }
    acc[0]
}

/// Sum of squares in the graph order (8 lanes).
#[inline]
pub fn sum_sq8<T: Real>(a: &[T]) -> T {
    dot8(a, a)
}

/// Number of worker threads for a job of `work` multiply-adds.
pub fn threads_for(work: usize) -> usize {
    if work < (1 << 20) {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16)
    }
}

/// Runs `f(start, end, out_chunk)` over `0..n` split into contiguous ranges,
/// one per thread; `out` has `per_item` values per item.
pub fn par_ranges<T: Send>(
    n: usize,
    per_item: usize,
    threads: usize,
    out: &mut [T],
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        f(0, n, out);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per * per_item).enumerate() {
            let f = &f;
            let start = t * per;
            let end = (start + per).min(n);
            s.spawn(move || f(start, end, chunk));
        }
    });
}
