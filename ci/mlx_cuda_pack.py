#!/usr/bin/env python3
"""MLX's CUDA build, cut down to one GPU architecture and packed for the GPU machine.

The GPU machine starts bare and is reached only through a tool that copies
at most 64 MiB per call, and nothing that a script can fetch is committed.
The official `mlx-cuda-13==0.32.2` wheel (87 MB; its `libmlx.so` alone is
142 MB) does not fit, so this fetches it from PyPI with pip, strips
`libmlx.so`, and in its `.nv_fatbin` section zeroes the payload of every
fat-binary entry that is not a cubin for the target architecture (sm_90:
H100 and H200). Headers and sizes stay as they are, so every offset in the
library is unchanged; the zeros cost nothing once compressed. It then packs

    mlx/lib/libmlx.so      (stripped and pruned)
    mlx/include/           (MLX's CUDA backend compiles kernels at run time
                            with NVRTC against these: CCCL, CUTLASS, CuTe)
    mlx/share/             (MLX's CMake package)
    mlx_cuda_13.libs/      (OpenBLAS/LAPACK/gfortran, found through RPATH)

into one .tar.xz with the wheel's layout kept, since libmlx's RPATH
(`$ORIGIN/../../mlx_cuda_13.libs`, `$ORIGIN/../../nvidia/*/lib`) is relative
to it. The CUDA libraries themselves (cuBLAS, cuDNN, NVRTC, ...) are not
packed: the GPU machine's Python environment has them (docs/mlx.md), reached
with LD_LIBRARY_PATH or a `nvidia` link next to `mlx/` (ci/device-mlx.sh).

usage: ci/mlx_cuda_pack.py [--out PATH] [--arch sm_90] [--cache DIR] [--preset N]
"""
import argparse
import collections
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile

VERSION = "0.32.2"
WHEEL = f"mlx_cuda_13-{VERSION}-py3-none-manylinux_2_35_x86_64.whl"
# Pinned so that a replaced or corrupted download cannot slip into a device
# run; pip itself only checks the hash that the index serves alongside.
WHEEL_SHA256 = "335094ccd1c0c6dc3e09c8caba207c8180602bacc0c38ba20c1d81e9456ab394"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def default_out(arch):
    """The archive's default path for an architecture (`sm_90` -> `...-sm90.tar.xz`)."""
    return os.path.join(REPO, ".device-mlx", f"mlx-cuda-13-{VERSION}-sm{arch}.tar.xz")
LIB = "mlx/lib/libmlx.so"

FATBIN_MAGIC = 0xBA55ED50
KIND_NAMES = {1: "ptx", 2: "cubin"}
# Leaves room in the same 64 MiB device call for the lockstep binaries and
# the rest of the working tree.
SIZE_LIMIT = 25 * 1000 * 1000


class PackError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache):
    wheel = os.path.join(cache, WHEEL)
    if os.path.exists(wheel):
        log(f"wheel: {wheel} (reused)")
    else:
        os.makedirs(cache, exist_ok=True)
        python = os.environ.get("PYTHON", sys.executable or "python3")
        # --platform needs --only-binary; --python-version keeps the wheel's
        # Requires-Python (>= 3.10) from depending on this machine's python.
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "manylinux_2_35_x86_64", "--python-version", "3.12",
               f"mlx-cuda-13=={VERSION}", "-d", cache]
        log("wheel: " + " ".join(cmd))
        if subprocess.run(cmd).returncode != 0 or not os.path.exists(wheel):
            raise PackError(f"pip did not produce {wheel}")
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise PackError(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256}; "
                        "delete it to download again, or update WHEEL_SHA256 "
                        "if PyPI's file really changed")
    return wheel


def unpack(wheel, cache):
    dest = os.path.join(cache, "unpacked")
    # The marker is written last, so an interrupted unpack is redone.
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        log(f"unpacked: {dest} (reused)")
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest)
    open(marker, "w").close()
    log(f"unpacked: {dest}")
    return dest


def strip_lib(src, dst):
    strip = shutil.which("strip")
    if strip is None:
        raise PackError("`strip` (binutils) not found")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # -o leaves the unpacked wheel pristine, so a rerun starts from the original.
    r = subprocess.run([strip, "--strip-unneeded", "-o", dst, src])
    if r.returncode != 0:
        raise PackError(f"strip failed on {src}")


def find_section(data, name):
    """(offset, size) of a section in a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PackError("libmlx.so is not a little-endian ELF64 file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if e_shoff == 0 or e_shentsize != 64:
        raise PackError("libmlx.so has no usable section header table")

    def header(i):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize)

    strtab_off = header(e_shstrndx)[4]
    for i in range(e_shnum):
        sh_name, sh_type, _, _, sh_offset, sh_size = header(i)
        end = data.index(b"\0", strtab_off + sh_name)
        if data[strtab_off + sh_name:end].decode() == name:
            if sh_type == 8:  # SHT_NOBITS: nothing in the file to prune
                raise PackError(f"section {name} has no file contents")
            return sh_offset, sh_size
    raise PackError(f"no {name} section in libmlx.so")


def prune_fatbins(data, sec_off, sec_size, arch):
    """Zero every fat-binary entry's payload except `arch` cubins, in place.

    Returns the number of fat binaries, byte and entry counts per (kind,
    arch, kept or zeroed), and the indices of fat binaries without an
    `arch` cubin.
    """
    stats = collections.defaultdict(lambda: {"entries": 0, "bytes": 0})
    lacking = []
    p, end, n = sec_off, sec_off + sec_size, 0
    while p < end:
        if data[p] == 0:
            # The linker may pad between fat binaries for alignment.
            p += 1
            continue
        if end - p < 16:
            raise PackError(f"truncated fat binary header at 0x{p:x}")
        magic, version, hsize, psize = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:
            raise PackError(f"no fat binary magic at 0x{p:x} "
                            f"(found 0x{magic:08x}, expected 0x{FATBIN_MAGIC:08X})")
        if version != 1 or hsize != 16:
            raise PackError(f"fat binary at 0x{p:x}: version {version}, "
                            f"header size {hsize} (expected 1, 16)")
        e, fend = p + hsize, p + hsize + psize
        if fend > end:
            raise PackError(f"fat binary at 0x{p:x} runs past the section end")
        has_arch = False
        while e < fend:
            kind, = struct.unpack_from("<H", data, e)
            ehsize, = struct.unpack_from("<I", data, e + 4)
            epsize, = struct.unpack_from("<Q", data, e + 8)
            earch, = struct.unpack_from("<I", data, e + 28)
            # A kind or size outside these means the layout assumed here is
            # wrong for this file: better to stop than to zero the wrong bytes.
            if kind not in KIND_NAMES or ehsize < 32 or e + ehsize + epsize > fend:
                raise PackError(f"unexpected fat binary entry at 0x{e:x}: kind {kind}, "
                                f"header {ehsize}, payload {epsize}")
            keep = kind == 2 and earch == arch
            has_arch |= keep
            key = (KIND_NAMES[kind], earch, "kept" if keep else "zeroed")
            stats[key]["entries"] += 1
            stats[key]["bytes"] += epsize
            if not keep:
                start = e + ehsize
                data[start:start + epsize] = bytes(epsize)
            e += ehsize + epsize
        if e != fend:
            raise PackError(f"fat binary at 0x{p:x}: entries end at 0x{e:x}, "
                            f"header says 0x{fend:x}")
        if not has_arch:
            lacking.append(n)
        n += 1
        p = fend
    if n == 0:
        raise PackError("the .nv_fatbin section holds no fat binary")
    return n, stats, lacking


def add_tree(tar, root, rel):
    """Adds root/rel, sorted and with fixed metadata, so that equal inputs
    give an equal archive."""
    def clean(ti):
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    top = os.path.join(root, rel)
    if os.path.isfile(top):
        tar.add(top, arcname=rel, filter=clean)
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        arc = os.path.relpath(dirpath, root)
        tar.add(dirpath, arcname=arc, recursive=False, filter=clean)
        for f in sorted(filenames):
            tar.add(os.path.join(dirpath, f), arcname=os.path.join(arc, f), filter=clean)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help=f"archive to write (default {default_out(90)} for sm_90)")
    ap.add_argument("--arch", default="sm_90", help="the one SM architecture to keep (default sm_90)")
    ap.add_argument("--cache", default="/tmp/mlx-cuda-wheel",
                    help="where the wheel is downloaded and unpacked, reused if there")
    ap.add_argument("--preset", type=int, default=6, choices=range(10),
                    help="xz preset (default 6; 9 gains little here and is slower)")
    args = ap.parse_args()

    m = re.fullmatch(r"sm_?(\d+)", args.arch)
    if not m:
        raise PackError(f"--arch {args.arch!r}: expected sm_NN, e.g. sm_90")
    arch = int(m.group(1))
    out = args.out or default_out(arch)

    t0 = time.monotonic()
    wheel = fetch_wheel(args.cache)
    root = unpack(wheel, args.cache)
    src = os.path.join(root, LIB)
    pruned_root = os.path.join(args.cache, f"pruned-sm_{arch}")
    pruned = os.path.join(pruned_root, LIB)
    strip_lib(src, pruned)
    log(f"strip: {os.path.getsize(src):,} -> {os.path.getsize(pruned):,} bytes")

    with open(pruned, "rb") as f:
        data = bytearray(f.read())
    sec_off, sec_size = find_section(data, ".nv_fatbin")
    n, stats, lacking = prune_fatbins(data, sec_off, sec_size, arch)
    log(f".nv_fatbin: {sec_size:,} bytes at 0x{sec_off:x}, {n} fat binaries")
    log(f"  {'kind':<6}{'arch':>6}{'':>8}{'entries':>9}{'bytes':>14}")
    for (kind, earch, what), s in sorted(stats.items()):
        log(f"  {kind:<6}{'sm_' + str(earch):>6}{what:>8}{s['entries']:>9}{s['bytes']:>14,}")
    kept = sum(s["bytes"] for k, s in stats.items() if k[2] == "kept")
    zeroed = sum(s["bytes"] for k, s in stats.items() if k[2] == "zeroed")
    log(f"  kept {kept:,} bytes, zeroed {zeroed:,} bytes")
    if kept == 0:
        raise PackError(f"no sm_{arch} cubin in libmlx.so: nothing would run on that GPU")
    if lacking:
        # The only PTX is for a newer architecture, which the driver cannot
        # compile down for an older GPU: these kernels would be missing.
        raise PackError(f"{len(lacking)} of {n} fat binaries have no sm_{arch} cubin "
                        f"(indices {lacking[:10]}...)")
    with open(pruned, "wb") as f:
        f.write(data)
    del data

    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".part"
    t1 = time.monotonic()
    with tarfile.open(tmp, "w:xz", preset=args.preset) as tar:
        add_tree(tar, pruned_root, LIB)
        for rel in ("mlx/include", "mlx/share", "mlx_cuda_13.libs"):
            if os.path.exists(os.path.join(root, rel)):
                add_tree(tar, root, rel)
            elif rel != "mlx/share":
                raise PackError(f"the wheel has no {rel}")
    os.replace(tmp, out)
    t2 = time.monotonic()
    size = os.path.getsize(out)
    log(f"archive: {out}")
    log(f"  {size:,} bytes ({size / 2**20:.1f} MiB), xz preset {args.preset}: "
        f"{t2 - t1:.0f} s to pack, {t2 - t0:.0f} s in all")
    if size > SIZE_LIMIT:
        raise PackError(f"archive is {size:,} bytes, over the {SIZE_LIMIT:,} allowed "
                        "beside the rest of one device call")


if __name__ == "__main__":
    try:
        main()
    except PackError as e:
        sys.exit(f"mlx_cuda_pack: error: {e}")
