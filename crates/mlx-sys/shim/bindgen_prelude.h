/* Included before mlx-c's headers when bindgen runs on a non-ARM target, so
 * the generated bindings carry the same f16/bf16 declarations as on ARM
 * (mlx-rs 0.33 names `mlx_sys::float16_t` and `mlx_sys::bfloat16_t`). The
 * types match what bindgen emits for aarch64: `__fp16` becomes a 16-bit
 * newtype, bf16 a plain u16. */
#if !defined(__aarch64__)
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef __fp16 float16_t;
typedef unsigned short bfloat16_t;
#endif
