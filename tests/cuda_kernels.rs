//! Every CUDA kernel compiles with NVRTC for Hopper (sm_90). Needs only the
//! NVRTC library, not a GPU, so it runs wherever NVRTC is installed; it says
//! it skipped otherwise (LOCKSTEP_REQUIRE_GPU=1 makes that a failure).

use lockstep::skip::{skip, Need};

#[cfg(feature = "cuda")]
#[test]
fn every_kernel_compiles_for_sm_90() {
    use lockstep::backend::cuda::kernels::{compile, Kernel};
    let Ok(first) = std::panic::catch_unwind(|| compile(Kernel::Embed, "sm_90")) else {
        skip(
            Need::Gpu,
            "every_kernel_compiles_for_sm_90",
            "NVRTC (libnvrtc.so) could not be loaded",
        );
        return;
    };
    first.unwrap();
    for k in Kernel::ALL {
        if let Err(e) = compile(k, "sm_90") {
            panic!("{e}");
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn every_kernel_compiles_for_sm_90() {
    skip(
        Need::Gpu,
        "every_kernel_compiles_for_sm_90",
        "built without the `cuda` feature",
    );
}
