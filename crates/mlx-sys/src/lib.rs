//! Raw bindings to mlx-c 0.7.0 (the C API of MLX), generated at build time.
//!
//! This crate replaces the registry's `mlx-sys` 0.7.0 for lockstep (see
//! docs/mlx.md): the bindings come from the same mlx-c headers, so `mlx-rs`
//! 0.33.0 compiles against them unchanged. On non-ARM targets mlx-c hides its
//! f16/bf16 accessors; the build defines 16-bit stand-ins (`float16_t`,
//! `bfloat16_t`) whose values only pass through pointers.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
