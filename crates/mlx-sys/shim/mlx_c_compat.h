/* Force-included (`-include`) into every mlx-c translation unit on targets
 * other than macOS. Two gaps between mlx-c 0.7.0 and a Linux toolchain:
 *
 * 1. mlx-c's private/io.h calls std::format, which libstdc++ only has from
 *    GCC 13 on (Debian 12 ships GCC 12). mlx-c uses only "{}" placeholders,
 *    so a stream-based stand-in is enough; it is defined only when the
 *    standard library lacks the real one.
 * 2. mlx-c declares its f16/bf16 accessors (mlx_array_data_float16, ...) only
 *    on ARM, but mlx-rs 0.33 imports them everywhere. The accessors only hand
 *    out pointers to, or copy, the 16-bit values (MLX's array::data<T> and
 *    item<T> reinterpret the buffer), so a 16-bit integer stands in for the
 *    element type without changing a bit.
 */
#pragma once

#ifdef __cplusplus
#include <version>
#if !defined(__cpp_lib_format)
#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>
namespace std {
template <class... Args>
inline string format(string_view fmt, const Args&... args) {
  ostringstream out;
  size_t pos = 0;
  auto put = [&](const auto& value) {
    size_t at = fmt.find("{}", pos);
    if (at == string_view::npos) {
      return;
    }
    out << fmt.substr(pos, at - pos) << value;
    pos = at + 2;
  };
  (put(args), ...);
  out << fmt.substr(pos);
  return out.str();
}
} // namespace std
#endif
#endif

#if !defined(__aarch64__)
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef uint16_t float16_t;
typedef uint16_t bfloat16_t;
#endif
