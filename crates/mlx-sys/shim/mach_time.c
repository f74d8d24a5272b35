/* mlx-rs 0.33 seeds RandomState::new() with mach_approximate_time(), a macOS
 * call (through the mach-sys crate, which declares it on every target).
 * Outside macOS this stand-in gives the same kind of value: a monotonic clock
 * in nanoseconds. lockstep itself never draws random numbers from MLX. */
#include <stdint.h>
#include <time.h>

uint64_t mach_approximate_time(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
