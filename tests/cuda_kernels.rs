//! Every CUDA kernel compiles with NVRTC for Hopper (sm_90). Needs only the
//! NVRTC library, not a GPU, so it runs wherever NVRTC is installed; it says
//! it skipped otherwise (LOCKSTEP_REQUIRE_GPU=1 makes that a failure).

#[cfg(feature = "cuda")]
#[test]
fn every_kernel_compiles_for_sm_90() {
    use lockstep::backend::cuda::kernels::{compile, Kernel};
    let loaded = std::panic::catch_unwind(|| compile(Kernel::Embed, "sm_90"));
    let Ok(first) = loaded else {
        let msg =
            "SKIPPED every_kernel_compiles_for_sm_90: NVRTC (libnvrtc.so) could not be loaded";
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_GPU").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
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
    let msg = "SKIPPED every_kernel_compiles_for_sm_90: built without the `cuda` feature";
    assert!(
        std::env::var("LOCKSTEP_REQUIRE_GPU").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("{msg}");
}
