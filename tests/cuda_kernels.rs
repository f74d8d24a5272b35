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

/// A kernel that does not compile fails with the file's name and NVRTC's
/// own log (the line and the undefined name), not a bare status code.
#[cfg(feature = "cuda")]
#[test]
fn a_broken_kernel_reports_nvrtc_s_log() {
    use lockstep::backend::cuda::kernels::compile_source;
    let src =
        "extern \"C\" __global__ void broken(float* y) {\n  y[0] = not_declared_anywhere;\n}\n";
    let Ok(result) = std::panic::catch_unwind(|| compile_source("broken.cu", src.into(), "sm_90"))
    else {
        skip(
            Need::Gpu,
            "a_broken_kernel_reports_nvrtc_s_log",
            "NVRTC (libnvrtc.so) could not be loaded",
        );
        return;
    };
    let msg = result.expect_err("the kernel must not compile").to_string();
    println!("{msg}");
    assert!(msg.contains("kernels/broken.cu"), "{msg}");
    assert!(msg.contains("not_declared_anywhere"), "{msg}");
    assert!(msg.contains("sm_90"), "{msg}");
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
