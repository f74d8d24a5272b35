//! Embeds an rpath to the prebuilt MLX library when the `mlx` feature is on,
//! so the `lockstep` binary and the test binaries find libmlx outside cargo.
//! mlx-sys (`links = "mlx"`) reports the folder as `DEP_MLX_LIBDIR`; a link
//! argument set in mlx-sys itself would not reach this crate's binaries. It
//! also reports the MLX version mlx-c pins (`DEP_MLX_VERSION`), which the
//! backend compares with the libmlx it loads at run time (a CUDA build can
//! take the CPU wheel's place through LD_LIBRARY_PATH).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(dir) = std::env::var_os("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.to_string_lossy());
    }
    if let Some(v) = std::env::var_os("DEP_MLX_VERSION") {
        println!(
            "cargo:rustc-env=LOCKSTEP_MLX_PINNED={}",
            v.to_string_lossy()
        );
    }
}
