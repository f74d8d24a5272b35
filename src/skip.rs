//! Loud skips. A test that cannot run here (no GPU, no MLX, no MLX GPU)
//! prints that it skipped and why; with LOCKSTEP_REQUIRE_GPU=1,
//! LOCKSTEP_REQUIRE_MLX=1 or LOCKSTEP_REQUIRE_MLX_GPU=1 the skip becomes a
//! failure, so a machine that should run the test cannot pass by skipping it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Gpu,
    Mlx,
    /// MLX's GPU device: a CUDA (or Metal) build of libmlx and its GPU.
    MlxGpu,
}

impl Need {
    pub fn env_var(self) -> &'static str {
        match self {
            Need::Gpu => "LOCKSTEP_REQUIRE_GPU",
            Need::Mlx => "LOCKSTEP_REQUIRE_MLX",
            Need::MlxGpu => "LOCKSTEP_REQUIRE_MLX_GPU",
        }
    }
}

/// The message a skip prints, or `Err` with the failure text when the
/// environment (`required`: the variable's value) demands the test run.
pub fn decide(need: Need, required: Option<&str>, test: &str, why: &str) -> Result<String, String> {
    let msg = format!("SKIPPED {test}: {why}");
    if required == Some("1") {
        Err(format!("{msg} ({}=1 forbids skipping)", need.env_var()))
    } else {
        Ok(msg)
    }
}

/// Prints the skip on stderr, or panics when the skip is forbidden. The line
/// is written to the stderr handle directly, not through `eprintln!`, which
/// the test harness captures and hides for passing tests.
pub fn skip(need: Need, test: &str, why: &str) {
    use std::io::Write;
    let required = std::env::var(need.env_var()).ok();
    match decide(need, required.as_deref(), test, why) {
        Ok(msg) => {
            let _ = std::io::stderr().write_all(format!("{msg}\n").as_bytes());
        }
        Err(msg) => panic!("{msg}"),
    }
}
