//! Recording a decode step as a CUDA graph and replaying it. The step's
//! token and position live in device buffers (`StepInputs`) so that every
//! replay reads new ones. While recording, the pools may not allocate and
//! nothing may go through the host. Once recorded, the pools' free buffers
//! stay out of circulation (`Frozen`) until the graph is released, because
//! its launches find their buffers at the addresses they had when recorded.

use super::launch::err;
use super::pool::Frozen;
use super::{CudaBackend, KernelFamily};
use crate::error::{Error, Result};
use cudarc::driver::{CudaGraph, CudaSlice};
use std::sync::atomic::Ordering;

/// The token and position of the decode step about to run, on the device,
/// so that a recorded step reads new ones on every replay.
pub(super) struct StepInputs {
    pub(super) staged: Option<(u32, usize)>,
    pub(super) ids: CudaSlice<u32>,
    pub(super) pos: CudaSlice<i32>,
}

/// A recorded decode step, the pooled buffers its launches use, and how
/// many launches it holds.
struct Recorded {
    graph: CudaGraph,
    frozen: Frozen,
    launches: u64,
}

#[derive(Default)]
pub(super) struct Recording {
    active: bool,
    /// The launch count when the capture began.
    launches_before: u64,
    step: Option<Recorded>,
}

impl CudaBackend {
    pub(super) fn recording(&self) -> bool {
        self.recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active
    }

    pub(super) fn no_host_transfer(&self, what: &str) -> Result<()> {
        if self.recording() {
            return Err(Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!("{what} needs the host, which a recorded decode step cannot"),
            });
        }
        Ok(())
    }

    /// Leaves `family`'s launches out of every decode step recorded from
    /// now on (None: none), for `lockstep bench --split`: the step's time
    /// without them is what they cost inside it. Such a step computes
    /// nonsense; nothing but a timing may use it. Steps that run op by op
    /// (the warm-up step, prefill) are left whole.
    pub fn omit_from_recorded_steps(&self, family: Option<KernelFamily>) {
        let code = family.map_or(0, |f| {
            1 + KernelFamily::ALL.iter().position(|&g| g == f).unwrap_or(0) as u8
        });
        self.omit.store(code, Ordering::Relaxed);
    }

    /// Whether launching `name` now is left out (recording, and its
    /// family is the one omitted).
    pub(super) fn omitted(&self, name: &str) -> bool {
        let code = self.omit.load(Ordering::Relaxed);
        code != 0
            && self.recording()
            && super::kernels::family_of(name) == KernelFamily::ALL.get(code as usize - 1).copied()
    }

    pub(super) fn staged(&self) -> Option<(u32, usize)> {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).staged
    }

    pub(super) fn stage_step(&self, token: u32, position: usize) -> Result<()> {
        if !self.options().graphs {
            return Ok(());
        }
        let mut st = self.step.lock().unwrap_or_else(|p| p.into_inner());
        let StepInputs { ids, pos, .. } = &mut *st;
        self.stream
            .memcpy_htod(&[token], ids)
            .map_err(err("staging the step token"))?;
        self.stream
            .memcpy_htod(&[position as i32], pos)
            .map_err(err("staging the step position"))?;
        st.staged = Some((token, position));
        Ok(())
    }

    pub(super) fn begin_step_capture(&self) -> Result<bool> {
        if !self.options().graphs {
            return Ok(false);
        }
        self.release_step();
        self.pools.set_recording(true);
        {
            let mut rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
            rec.active = true;
            rec.launches_before = self.launches.load(Ordering::Relaxed);
        }
        self.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(err("begin recording the decode step"))?;
        Ok(true)
    }

    pub(super) fn end_step_capture(&self) -> Result<()> {
        let graph = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        self.pools.set_recording(false);
        let mut rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        rec.active = false;
        // The captured launches did not run: out of the count until the
        // step replays.
        let launches = self.launches.load(Ordering::Relaxed) - rec.launches_before;
        self.launches.fetch_sub(launches, Ordering::Relaxed);
        let graph = graph
            .map_err(err("end recording the decode step"))?
            .ok_or_else(|| Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: "recording the decode step produced no graph".into(),
            })?;
        rec.step = Some(Recorded {
            graph,
            frozen: self.pools.freeze(),
            launches,
        });
        Ok(())
    }

    pub(super) fn replay_step(&self) -> Result<()> {
        let rec = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        let step = rec.step.as_ref().ok_or_else(|| Error::Backend {
            backend: crate::ident::BackendKind::Cuda,
            problem: "no recorded decode step to replay".into(),
        })?;
        step.graph
            .launch()
            .map_err(err("replaying the decode step"))?;
        self.launches.fetch_add(step.launches, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn release_step(&self) {
        let old = self
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .step
            .take();
        if let Some(r) = old {
            let _ = self.stream.synchronize();
            drop(r.graph);
            self.pools.thaw(r.frozen);
        }
    }
}
