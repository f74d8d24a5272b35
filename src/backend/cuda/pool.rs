//! Recycled device buffers. Every op's output comes from here and goes back
//! on drop, so a decode step allocates nothing once warm: that is what lets
//! a step be recorded as a CUDA graph (a recording may not allocate, and
//! the replayed launches must find their buffers where they were), and it
//! spares the allocator a call per op. While a step graph lives, the
//! buffers it uses are taken out of circulation (`freeze`).
//!
//! The backend keeps one pool per element type (`Pools`); recording and
//! freezing act on all four together, because a recorded step's launches
//! use buffers of every type.

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, DriverError};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Free buffers kept beyond this many bytes are released (outside a recording).
const KEEP_BYTES: usize = 2 << 30;

pub struct Pool<T> {
    state: Mutex<PoolState<T>>,
}

struct PoolState<T> {
    free: Vec<CudaSlice<T>>,
    bytes: usize,
    /// While set, a miss is an error and nothing is released.
    recording: bool,
}

pub struct Buf<T: DeviceRepr> {
    slice: ManuallyDrop<CudaSlice<T>>,
    pool: Arc<Pool<T>>,
}

pub enum Take<T: DeviceRepr> {
    Got(Buf<T>),
    /// Nothing of that length is free while recording.
    MissWhileRecording,
}

impl<T: DeviceRepr> Pool<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Pool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                bytes: 0,
                recording: false,
            }),
        })
    }

    /// A buffer of exactly `len` elements (contents undefined).
    pub fn take(
        self: &Arc<Self>,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<Take<T>, DriverError> {
        let len = len.max(1);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = st.free.iter().position(|s| s.len() == len) {
            let slice = st.free.swap_remove(i);
            st.bytes -= len * std::mem::size_of::<T>();
            return Ok(Take::Got(self.wrap(slice)));
        }
        if st.recording {
            return Ok(Take::MissWhileRecording);
        }
        drop(st);
        // SAFETY: the contents are undefined until written; every user writes
        // the elements it later reads (kernels write their whole output).
        let slice = unsafe { stream.alloc::<T>(len) }?;
        Ok(Take::Got(self.wrap(slice)))
    }

    fn wrap(self: &Arc<Self>, slice: CudaSlice<T>) -> Buf<T> {
        Buf {
            slice: ManuallyDrop::new(slice),
            pool: self.clone(),
        }
    }

    pub fn set_recording(&self, on: bool) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recording = on;
    }

    /// Takes every free buffer out of circulation (a step graph uses them).
    pub fn freeze(&self) -> Vec<CudaSlice<T>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.bytes = 0;
        std::mem::take(&mut st.free)
    }

    /// Returns frozen buffers once their graph is gone.
    pub fn thaw(&self, bufs: Vec<CudaSlice<T>>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.bytes += bufs
            .iter()
            .map(|b| b.len() * std::mem::size_of::<T>())
            .sum::<usize>();
        st.free.extend(bufs);
    }

    fn give_back(&self, slice: CudaSlice<T>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let size = slice.len() * std::mem::size_of::<T>();
        if !st.recording && st.bytes + size > KEEP_BYTES {
            drop(st);
            drop(slice);
            return;
        }
        st.bytes += size;
        st.free.push(slice);
    }
}

/// The backend's pools, one per element type its kernels use.
pub struct Pools {
    pub u16s: Arc<Pool<u16>>,
    pub f32s: Arc<Pool<f32>>,
    pub i32s: Arc<Pool<i32>>,
    pub u32s: Arc<Pool<u32>>,
    pub u64s: Arc<Pool<u64>>,
}

/// Pooled buffers out of circulation while a recorded step uses them.
pub struct Frozen {
    u16s: Vec<CudaSlice<u16>>,
    f32s: Vec<CudaSlice<f32>>,
    i32s: Vec<CudaSlice<i32>>,
    u32s: Vec<CudaSlice<u32>>,
    u64s: Vec<CudaSlice<u64>>,
}

impl Pools {
    pub fn new() -> Self {
        Pools {
            u16s: Pool::new(),
            f32s: Pool::new(),
            i32s: Pool::new(),
            u32s: Pool::new(),
            u64s: Pool::new(),
        }
    }

    /// `Pool::set_recording` on every pool.
    pub fn set_recording(&self, on: bool) {
        self.u16s.set_recording(on);
        self.f32s.set_recording(on);
        self.i32s.set_recording(on);
        self.u32s.set_recording(on);
        self.u64s.set_recording(on);
    }

    /// Takes every free buffer of every pool out of circulation (a step
    /// graph uses them).
    pub fn freeze(&self) -> Frozen {
        Frozen {
            u16s: self.u16s.freeze(),
            f32s: self.f32s.freeze(),
            i32s: self.i32s.freeze(),
            u32s: self.u32s.freeze(),
            u64s: self.u64s.freeze(),
        }
    }

    /// Returns frozen buffers to their pools once their graph is gone.
    pub fn thaw(&self, frozen: Frozen) {
        let Frozen {
            u16s,
            f32s,
            i32s,
            u32s,
            u64s,
        } = frozen;
        self.u16s.thaw(u16s);
        self.f32s.thaw(f32s);
        self.i32s.thaw(i32s);
        self.u32s.thaw(u32s);
        self.u64s.thaw(u64s);
    }
}

impl<T: DeviceRepr> Drop for Buf<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; the field is never used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        self.pool.give_back(slice);
    }
}

impl<T: DeviceRepr> Deref for Buf<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T: DeviceRepr> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}
