//! mlx-c's source without committing it: the registry's `mlx-sys` 0.7.0
//! ships mlx-c in `src/mlx-c`. A throwaway manifest in OUT_DIR depends on that
//! exact version; `cargo metadata` downloads it (or finds it in cargo's cache)
//! and reports its manifest path.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::UPSTREAM_VERSION;

/// The `mlx-c` folder (holding `CMakeLists.txt` and `mlx/c/*.h`).
pub fn mlx_c_source(out: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=MLX_C_SOURCE_DIR");
    if let Some(dir) = env::var_os("MLX_C_SOURCE_DIR") {
        return PathBuf::from(dir);
    }
    let dir = out.join("upstream-fetch");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let manifest = dir.join("Cargo.toml");
    fs::write(
        &manifest,
        format!(
            "[package]\nname = \"mlx-sys-source-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[lib]\npath = \"lib.rs\"\n\n[dependencies]\n\
             mlx-sys = {{ version = \"={UPSTREAM_VERSION}\", default-features = false }}\n\n\
             [workspace]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    fs::write(dir.join("lib.rs"), "").unwrap_or_else(|e| panic!("{}: {e}", dir.display()));

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&dir)
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest);
        if offline {
            cmd.arg("--offline");
        }
        cmd.output()
    };
    // Offline first: after the first build the crate sits in cargo's cache.
    let result = match metadata(true) {
        Ok(o) if o.status.success() => o,
        _ => metadata(false)
            .unwrap_or_else(|e| panic!("mlx-sys: cannot start `{cargo} metadata`: {e}")),
    };
    assert!(
        result.status.success(),
        "mlx-sys: `cargo metadata` could not fetch mlx-sys {UPSTREAM_VERSION} (for its mlx-c \
         source): {}\nSet MLX_C_SOURCE_DIR to an mlx-c 0.7.0 checkout to build offline.",
        String::from_utf8_lossy(&result.stderr)
    );
    let json = String::from_utf8_lossy(&result.stdout);
    let wanted = format!("mlx-sys-{UPSTREAM_VERSION}");
    let crate_dir = manifest_paths(&json)
        .into_iter()
        .map(PathBuf::from)
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .find(|d| d.file_name().is_some_and(|n| n == wanted.as_str()))
        .unwrap_or_else(|| panic!("mlx-sys: `cargo metadata` did not list {wanted}"));
    let mlx_c = crate_dir.join("src/mlx-c");
    assert!(
        mlx_c.join("CMakeLists.txt").is_file(),
        "mlx-sys: {} has no mlx-c source",
        crate_dir.display()
    );
    mlx_c
}

/// Every `"manifest_path":"..."` value in `cargo metadata` JSON (a small
/// scan instead of a JSON parser as a build dependency).
fn manifest_paths(json: &str) -> Vec<String> {
    const KEY: &str = "\"manifest_path\":\"";
    let mut found = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(KEY) {
        rest = &rest[at + KEY.len()..];
        let mut value = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    rest = &rest[i + 1..];
                    break;
                }
                c => value.push(c),
            }
        }
        found.push(value);
    }
    found
}

/// The MLX release mlx-c builds against (`GIT_TAG vX.Y.Z` in its
/// CMakeLists.txt): the prebuilt MLX must be exactly this version, since
/// mlx-c compiles against MLX's C++ headers and class layouts.
pub fn pinned_mlx_version(mlx_c: &Path) -> String {
    let cmake = mlx_c.join("CMakeLists.txt");
    fs::read_to_string(&cmake)
        .unwrap_or_else(|e| panic!("{}: {e}", cmake.display()))
        .lines()
        .find_map(|l| {
            let tag = l.trim().strip_prefix("GIT_TAG v")?;
            tag.split(|c: char| c == ')' || c.is_whitespace())
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("mlx-sys: no `GIT_TAG v...` line in {}", cmake.display()))
}
