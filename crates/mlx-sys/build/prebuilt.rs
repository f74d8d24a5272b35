//! The prebuilt MLX that mlx-c is compiled and linked against: the official
//! wheel from PyPI (`mlx-cpu` for Linux, `mlx-metal` for macOS), or an MLX
//! CMake package named by `MLX_DIR`.
//!
//! A wheel holds `mlx/lib/libmlx.{so,dylib}`, the C++ headers, the CMake
//! package (`mlx/share/cmake/MLX`) and, for mlx-cpu, its own BLAS/LAPACK in
//! `mlx_cpu.libs/`, which libmlx finds through its RPATH: the wheel's layout
//! is kept as unpacked.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{output, python, run};

pub struct Mlx {
    /// Folder with `MLXConfig.cmake`.
    pub cmake_dir: PathBuf,
    /// Folder with `libmlx`.
    pub lib_dir: PathBuf,
    pub include_dir: PathBuf,
}

impl Mlx {
    /// The layout of an installed MLX: `<prefix>/share/cmake/MLX`,
    /// `<prefix>/lib`, `<prefix>/include`.
    fn from_cmake_dir(cmake_dir: PathBuf) -> Self {
        let prefix = cmake_dir.join("../../..");
        let prefix = prefix.canonicalize().unwrap_or(prefix);
        Mlx {
            lib_dir: prefix.join("lib"),
            include_dir: prefix.join("include"),
            cmake_dir,
        }
    }
}

pub fn mlx(out: &Path, version: &str, target_os: &str) -> Mlx {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    if let Some(dir) = env::var_os("MLX_DIR") {
        return Mlx::from_cmake_dir(PathBuf::from(dir));
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets it");
    let (package, platform) = match (target_os, arch.as_str()) {
        ("linux", "x86_64" | "aarch64") => ("mlx-cpu", format!("manylinux_2_35_{arch}")),
        // Untested here (see docs/mlx.md): the Metal build of the same release.
        ("macos", "aarch64") => ("mlx-metal", "macosx_14_0_arm64".to_string()),
        (os, a) => panic!(
            "mlx-sys: no prebuilt MLX wheel for {a}-{os}; set MLX_DIR to the \
             share/cmake/MLX folder of an MLX {version} build"
        ),
    };
    if target_os == "linux" {
        check_glibc(version);
    }
    let root = out.join(format!("{package}-{version}"));
    let done = root.join(".unpacked");
    if !done.exists() {
        let wheels = out.join("wheels");
        let py = python();
        run(
            Command::new(&py)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args(["--disable-pip-version-check", "--platform", &platform, "-d"])
                .arg(&wheels)
                .arg(format!("{package}=={version}")),
            &format!("download the {package} {version} wheel from PyPI"),
        );
        let stem = format!("{}-{version}-", package.replace('-', "_"));
        let wheel = fs::read_dir(&wheels)
            .unwrap_or_else(|e| panic!("{}: {e}", wheels.display()))
            .map(|e| e.expect("readable folder entry").path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
            })
            .unwrap_or_else(|| panic!("mlx-sys: pip left no {stem}*.whl in {}", wheels.display()));
        let _ = fs::remove_dir_all(&root);
        run(
            Command::new(&py)
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&root),
            &format!("unpack {}", wheel.display()),
        );
        fs::write(&done, format!("{}\n", wheel.display()))
            .unwrap_or_else(|e| panic!("{}: {e}", done.display()));
    }
    let mlx = Mlx::from_cmake_dir(root.join("mlx/share/cmake/MLX"));
    assert!(
        mlx.cmake_dir.join("MLXConfig.cmake").is_file(),
        "mlx-sys: {} holds no MLXConfig.cmake",
        mlx.cmake_dir.display()
    );
    mlx
}

/// The mlx-cpu wheels are built for glibc 2.35 and later; on an older system
/// libmlx.so would fail to load only when the tests start. Say so now.
fn check_glibc(version: &str) {
    let Some(text) = output(Command::new("getconf").arg("GNU_LIBC_VERSION")) else {
        return; // not glibc (or no getconf): let the linker decide.
    };
    let found: Vec<u32> = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if found.len() >= 2 && (found[0], found[1]) < (2, 35) {
        panic!(
            "mlx-sys: this system has {} but the mlx-cpu {version} wheel needs glibc 2.35 or \
             later. Build MLX {version} from source and set MLX_DIR to its share/cmake/MLX \
             folder (docs/mlx.md, 'Older Linux').",
            text.trim()
        );
    }
}
