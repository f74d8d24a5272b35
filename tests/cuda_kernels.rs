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

/// Each planted fault (negative controls of the verify rows) rewrites text
/// its kernel file holds exactly once, and the rewritten file still
/// compiles: a control that planted nothing, or did not build, would prove
/// nothing. The text check needs no NVRTC.
#[cfg(feature = "cuda")]
#[test]
fn every_planted_fault_rewrites_its_kernel_and_compiles() {
    use lockstep::backend::cuda::kernels::{compile_source, fault_kernel, faulty_source, Kernel};
    use lockstep::backend::cuda::CudaFault;
    let mut sources = Vec::new();
    for f in CudaFault::ALL {
        let k = fault_kernel(f);
        let src = faulty_source(k, f).unwrap_or_else(|e| panic!("{}: {e}", f.name()));
        // Another file's fault leaves this one as it was.
        let other = Kernel::ALL.into_iter().find(|&o| o != k).unwrap();
        assert!(faulty_source(other, f).is_err(), "{}", f.name());
        sources.push((f, k, src));
    }
    if std::panic::catch_unwind(|| {
        lockstep::backend::cuda::kernels::compile(Kernel::Embed, "sm_90")
    })
    .is_err()
    {
        skip(
            Need::Gpu,
            "every_planted_fault_rewrites_its_kernel_and_compiles",
            "NVRTC (libnvrtc.so) could not be loaded (the rewrites were checked)",
        );
        return;
    }
    for (f, k, src) in sources {
        compile_source(k.file(), src, "sm_90").unwrap_or_else(|e| panic!("{}: {e}", f.name()));
    }
}
