//! What the loaded libmlx can run on, asked of the library itself: its
//! version, whether it is a CUDA, Metal or CPU-only build, and the GPU's
//! own description. The same `lockstep` binary runs on MLX's CPU wheel or,
//! with `LD_LIBRARY_PATH` pointing at it, on the CUDA wheel of the same
//! version (the C++ headers mlx-c compiles against are identical; docs/mlx.md),
//! so none of this can be decided at build time.

use super::MlxBuild;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr};

/// Copies a C string mlx-c owns.
///
/// SAFETY: `p` is null or a NUL-terminated string valid for this call.
unsafe fn owned(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// Installs mlx-rs's error handler (it does so lazily, on its first
/// operation) before a raw mlx-c call: mlx-c's default handler exits the
/// process on any error.
fn with_error_handler() {
    let _ = mlx_rs::Device::try_default();
}

/// The version string of the libmlx this process loaded.
pub fn loaded_mlx_version() -> String {
    with_error_handler();
    // SAFETY: `mlx_string_new` returns an empty string handle that
    // `mlx_version` fills; `mlx_string_data` points into that handle and is
    // copied before `mlx_string_free` releases it.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let v = match mlx_sys::mlx_version(&mut s) {
            0 => owned(mlx_sys::mlx_string_data(s)),
            _ => None,
        };
        mlx_sys::mlx_string_free(s);
        v.unwrap_or_else(|| "unknown".into())
    }
}

/// The MLX version mlx-c (under mlx-rs 0.33) was compiled against.
pub const PINNED_MLX: &str = env!("LOCKSTEP_MLX_PINNED");

/// Refuses a loaded libmlx of another version than the one mlx-c binds:
/// mlx-c compiles against MLX's C++ headers, so another release may differ
/// in layouts the binary assumes (docs/mlx.md: a 0.32.4 wheel does not even
/// build against mlx-c 0.7.0).
pub fn check_version(loaded: &str, pinned: &str) -> Result<(), String> {
    if loaded == pinned {
        Ok(())
    } else {
        Err(format!(
            "the loaded libmlx is MLX {loaded}, but this build's mlx-c binds MLX {pinned}: \
             load an MLX {pinned} library (the CPU wheel it was built with, or the CUDA \
             build of the same version)"
        ))
    }
}

/// What the loaded libmlx was built for.
pub fn loaded_build() -> MlxBuild {
    with_error_handler();
    let (mut cuda, mut metal) = (false, false);
    // SAFETY: both write one bool through a valid pointer; a non-zero return
    // (an exception inside MLX) leaves it false.
    unsafe {
        mlx_sys::mlx_cuda_is_available(&mut cuda);
        mlx_sys::mlx_metal_is_available(&mut metal);
    }
    match (cuda, metal) {
        (true, _) => MlxBuild::Cuda,
        (_, true) => MlxBuild::Metal,
        _ => MlxBuild::Cpu,
    }
}

/// What MLX reports of GPU 0 that can change results or names the card
/// (`device_name`, `architecture`, compute capability, total memory),
/// sorted by key; empty without a GPU. Free memory, the UUID and the PCI
/// address change from run to run or machine to machine without changing a
/// number, so a fingerprint leaves them out.
pub fn gpu_properties() -> BTreeMap<String, String> {
    with_error_handler();
    let mut out = BTreeMap::new();
    // SAFETY: every handle is created here and freed before returning; key
    // and value strings are copied while the info object that owns them is
    // alive; `mlx_vector_string_get` writes a pointer into the vector.
    unsafe {
        let dev = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
        let mut avail = false;
        if mlx_sys::mlx_device_is_available(&mut avail, dev) != 0 || !avail {
            mlx_sys::mlx_device_free(dev);
            return out;
        }
        let mut info = mlx_sys::mlx_device_info_new();
        if mlx_sys::mlx_device_info_get(&mut info, dev) == 0 {
            let mut keys = mlx_sys::mlx_vector_string_new();
            if mlx_sys::mlx_device_info_get_keys(&mut keys, info) == 0 {
                for i in 0..mlx_sys::mlx_vector_string_size(keys) {
                    let mut k: *mut c_char = std::ptr::null_mut();
                    if mlx_sys::mlx_vector_string_get(&mut k, keys, i) != 0 || k.is_null() {
                        continue;
                    }
                    let mut is_string = false;
                    mlx_sys::mlx_device_info_is_string(&mut is_string, info, k);
                    let value = if is_string {
                        let mut v: *const c_char = std::ptr::null();
                        (mlx_sys::mlx_device_info_get_string(&mut v, info, k) == 0)
                            .then(|| owned(v))
                            .flatten()
                    } else {
                        let mut v = 0usize;
                        (mlx_sys::mlx_device_info_get_size(&mut v, info, k) == 0)
                            .then(|| v.to_string())
                    };
                    if let (Some(key), Some(value)) = (owned(k), value) {
                        if !["free", "uuid", "pci"].iter().any(|x| key.contains(x)) {
                            out.insert(key, value);
                        }
                    }
                }
            }
            mlx_sys::mlx_vector_string_free(keys);
        }
        mlx_sys::mlx_device_info_free(info);
        mlx_sys::mlx_device_free(dev);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_libmlx_of_another_version_is_refused_naming_both() {
        assert!(super::check_version("0.32.2", "0.32.2").is_ok());
        let e = super::check_version("0.32.4", "0.32.2").unwrap_err();
        assert!(e.contains("0.32.4") && e.contains("0.32.2"), "{e}");
    }

    #[test]
    fn this_build_loads_the_version_it_was_built_against() {
        assert_eq!(super::loaded_mlx_version(), super::PINNED_MLX);
    }
}
