//! CMake, a make program and libclang: taken from the machine when present,
//! otherwise installed from PyPI into OUT_DIR with `pip install --target`
//! (nothing is installed system-wide). Versions are pinned so every machine
//! builds with the same tools.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{output, python, run};

const CMAKE_WHEEL: &str = "cmake==3.31.6";
const NINJA_WHEEL: &str = "ninja==1.13.0";
const LIBCLANG_WHEEL: &str = "libclang==18.1.1";
/// mlx-c's `cmake_minimum_required`.
const CMAKE_MIN: (u32, u32) = (3, 16);

pub struct Tools {
    pub cmake: PathBuf,
    /// Set when the machine has no `make`: CMake then generates for Ninja.
    pub ninja: Option<PathBuf>,
    /// Folder holding the libclang that bindgen loads (`None`: clang-sys
    /// searches itself, honouring `LIBCLANG_PATH`).
    pub libclang_dir: Option<PathBuf>,
    /// Extra clang arguments for bindgen.
    pub clang_args: Vec<String>,
}

impl Tools {
    pub fn find_or_fetch(out: &Path) -> Tools {
        let pytools = out.join("pytools");
        let cmake = find_cmake().unwrap_or_else(|| {
            pip_install(&pytools, "cmake", CMAKE_WHEEL).join("cmake/data/bin/cmake")
        });
        let ninja = if works(Command::new("make").arg("--version")) {
            None
        } else if works(Command::new("ninja").arg("--version")) {
            Some(PathBuf::from("ninja"))
        } else {
            Some(pip_install(&pytools, "ninja", NINJA_WHEEL).join("ninja/data/bin/ninja"))
        };
        println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
        let (libclang_dir, clang_args) = if env::var_os("LIBCLANG_PATH").is_some() {
            (None, Vec::new())
        } else if let Some(dir) = system_libclang() {
            (Some(dir), Vec::new())
        } else {
            let dir = pip_install(&pytools, "libclang", LIBCLANG_WHEEL).join("clang/native");
            // The wheel has libclang but not clang's own headers (float.h,
            // stddef.h, ...); the C compiler's are close enough for parsing
            // declarations.
            (Some(dir), compiler_builtin_includes())
        };
        Tools {
            cmake,
            ninja,
            libclang_dir,
            clang_args,
        }
    }
}

fn works(cmd: &mut Command) -> bool {
    output(cmd).is_some()
}

/// `CMAKE`, or a `cmake` on PATH that is new enough.
fn find_cmake() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=CMAKE");
    if let Some(c) = env::var_os("CMAKE") {
        return Some(PathBuf::from(c));
    }
    let text = output(Command::new("cmake").arg("--version"))?;
    let v: Vec<u32> = text
        .split_whitespace()
        .nth(2)?
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    (v.len() >= 2 && (v[0], v[1]) >= CMAKE_MIN).then(|| PathBuf::from("cmake"))
}

/// Installs one pinned wheel into `pytools/<name>` (once) and returns that folder.
fn pip_install(pytools: &Path, name: &str, requirement: &str) -> PathBuf {
    let dir = pytools.join(name);
    let done = dir.join(".installed");
    if fs::read_to_string(&done).is_ok_and(|r| r.trim() == requirement) {
        return dir;
    }
    let _ = fs::remove_dir_all(&dir);
    run(
        Command::new(python())
            .args(["-m", "pip", "install", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "-q",
            ])
            .arg("--target")
            .arg(&dir)
            .arg(requirement),
        &format!("install {requirement} from PyPI (the machine has no usable {name})"),
    );
    fs::write(&done, requirement).unwrap_or_else(|e| panic!("{}: {e}", done.display()));
    dir
}

/// A folder with a libclang shared library, searched where distributions
/// and Xcode put it.
fn system_libclang() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = output(Command::new("llvm-config").arg("--libdir")) {
        dirs.push(PathBuf::from(d.trim()));
    }
    if let Some(m) = output(Command::new("cc").arg("-print-multiarch")) {
        if !m.trim().is_empty() {
            dirs.push(Path::new("/usr/lib").join(m.trim()));
        }
    }
    for d in ["/usr/lib", "/usr/lib64", "/usr/local/lib"] {
        dirs.push(PathBuf::from(d));
    }
    let mut llvm: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llvm-"))
        })
        .map(|p| p.join("lib"))
        .collect();
    llvm.sort();
    dirs.extend(llvm.into_iter().rev()); // newest LLVM first
    if let Some(x) = output(Command::new("xcode-select").arg("-p")) {
        dirs.push(Path::new(x.trim()).join("Toolchains/XcodeDefault.xctoolchain/usr/lib"));
        dirs.push(Path::new(x.trim()).join("usr/lib"));
    }
    dirs.push(PathBuf::from("/Library/Developer/CommandLineTools/usr/lib"));
    dirs.into_iter().find(|d| {
        fs::read_dir(d).into_iter().flatten().any(|e| {
            e.ok().is_some_and(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n == "libclang.dylib"
                    || n == "libclang.so"
                    || n.starts_with("libclang.so.")
                    || (n.starts_with("libclang-")
                        && !n.starts_with("libclang-cpp")
                        && n.contains(".so"))
            })
        })
    })
}

/// `-isystem <the C compiler's builtin include folder>`.
fn compiler_builtin_includes() -> Vec<String> {
    let compiler = cc::Build::new().get_compiler();
    let dir = output(Command::new(compiler.path()).arg("-print-file-name=include"))
        .map(|s| PathBuf::from(s.trim()))
        .filter(|d| d.join("stddef.h").is_file());
    match dir {
        Some(d) => vec!["-isystem".into(), d.display().to_string()],
        None => {
            println!(
                "cargo:warning=mlx-sys: {} did not name its builtin include folder; bindgen may \
                 not find float.h",
                compiler.path().display()
            );
            Vec::new()
        }
    }
}
