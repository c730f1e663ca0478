"""GPU check of libdrgan_kernels (the ahead-of-time compiled kernels behind a C API) at the paper's shapes.

Builds the library with CMake into /tmp for this GPU's architecture (skips, writing {"skipped": reason},
without CMake or a C compiler), loads it with ctypes and runs each C entry point on PyTorch tensors:
compared with the Triton JIT kernel and the PyTorch reference, with the timings side by side.

    python3 bench/gpu/native.py --out OUT/native.json [--dry-run]

--dry-run builds for sm_90 with one Q/K width and loads the bindings; the kernels need a GPU to run.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads
from _part import rel_err, time_ms
import torch

from drgan.config import preset
from drgan.kernels import adain, adain_ref, channel_attention, channel_attention_ref, spatial_attention
from drgan.kernels.spatial_attention import spatial_attention_ref

ROOT = Path(__file__).resolve().parents[2]
# One build folder per checkout: CMake refuses a folder configured from another source tree.
BUILD = Path("/tmp") / f"drgan-native-build-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
QK_BLOCKS, DRY_QK_BLOCKS = "16;64", "16"
SPATIAL_SHAPES = list(preset("paper-1280").attention_shapes)  # (N, Dqk, Dv), batch 1
CHANNEL_SHAPES = [(512, 6400), (256, 25600), (128, 102400)]  # (C, N), batch 1, channels_last
ADAIN_SHAPES = [(80, 512), (640, 64)]  # (side, C), batch 8, both layouts
DTYPES = {"bf16": (torch.bfloat16, 1), "fp16": (torch.float16, 0)}  # torch dtype, drgan_dtype
CHECK_ROWS = 4096  # query rows compared with the reference at N = 102,400
REL_TOL = 2e-2
TIME_BUDGET_S = 33  # gpu_check.sh stops this part at 40 s: timings are skipped past the budget


def build(arch: int, qk_blocks: str, folder: Path) -> Path | str:
    """The built library, or the reason it cannot be built here."""
    missing = [tool for tool in ("cmake", "cc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed on this machine"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(folder), *generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DDRGAN_CUDA_ARCHS={arch}", f"-DDRGAN_QK_BLOCKS={qk_blocks}", f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(folder), "--parallel"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return folder / "libdrgan_kernels.so"


class Native:
    """ctypes bindings of drgan_kernels.h; each call allocates its workspace and checks the status."""

    def __init__(self, path: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(path))
        i64, p, f32, s3, s4 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int64 * 3, ctypes.c_int64 * 4
        lib.drgan_status_string.restype = lib.drgan_last_error.restype = ctypes.c_char_p
        for name, args in (("spatial_attention", [i64, i64]), ("channel_attention", [i64, i64, i64]),
                           ("adain", [i64, i64, i64, i64])):
            fn = getattr(lib, f"drgan_{name}_workspace_size")
            fn.restype, fn.argtypes = ctypes.c_size_t, args
        lib.drgan_spatial_attention_fwd.argtypes = [p, s3, p, s3, p, s3, p, s3, i64, i64, i64, i64, f32, ctypes.c_int,
                                                    p, ctypes.c_size_t, p]
        lib.drgan_channel_attention_fwd.argtypes = [p, p, s3, i64, i64, i64, ctypes.c_int, p, ctypes.c_size_t, p]
        lib.drgan_adain_fwd.argtypes = [p, p, p, p, s4, i64, i64, i64, i64, f32, ctypes.c_int, p, ctypes.c_size_t, p]
        self.s3, self.s4 = s3, s4

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"{self.lib.drgan_status_string(status).decode()}: {self.lib.drgan_last_error().decode()}")

    @staticmethod
    def _workspace(size: int) -> torch.Tensor:
        return torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")

    def spatial(self, q, k, v, dtype_id: int, out=None, ws=None):
        b, n, dqk = q.shape
        out = torch.empty(b, n, v.shape[2], device="cuda", dtype=v.dtype) if out is None else out
        size = self.lib.drgan_spatial_attention_workspace_size(b, n)
        ws = self._workspace(size) if ws is None else ws
        self._check(self.lib.drgan_spatial_attention_fwd(
            q.data_ptr(), self.s3(*q.stride()), k.data_ptr(), self.s3(*k.stride()), v.data_ptr(), self.s3(*v.stride()),
            out.data_ptr(), self.s3(*out.stride()), b, n, dqk, v.shape[2], 1.0, dtype_id, ws.data_ptr(), size,
            torch.cuda.current_stream().cuda_stream))
        return out

    def channel(self, x, dtype_id: int):
        b, c, n = x.shape
        out = torch.empty_like(x)
        size = self.lib.drgan_channel_attention_workspace_size(b, c, n)
        ws = self._workspace(size)
        self._check(self.lib.drgan_channel_attention_fwd(x.data_ptr(), out.data_ptr(), self.s3(*x.stride()), b, c, n,
                                                         dtype_id, ws.data_ptr(), size, torch.cuda.current_stream().cuda_stream))
        return out

    def adain(self, x, gamma, beta, dtype_id: int):
        b, c, h, w = x.shape
        y = torch.empty_like(x)
        size = self.lib.drgan_adain_workspace_size(b, c, h, w)
        ws = self._workspace(size)
        self._check(self.lib.drgan_adain_fwd(x.data_ptr(), gamma.contiguous().data_ptr(), beta.contiguous().data_ptr(),
                                             y.data_ptr(), self.s4(*x.stride()), b, c, h, w, 1e-5, dtype_id, ws.data_ptr(),
                                             size, torch.cuda.current_stream().cuda_stream))
        return y


def run(native: Native, deadline: float) -> dict:
    report = {"spatial": [], "channel": [], "adain": []}
    for dname, (dtype, dtype_id) in DTYPES.items():
        for n, dqk, dv in SPATIAL_SHAPES:
            gen = torch.Generator(device="cuda").manual_seed(n)
            q, k = ((torch.randn(1, n, dqk, device="cuda", generator=gen) * 0.5).to(dtype) for _ in range(2))
            v = torch.randn(1, n, dv, device="cuda", generator=gen).to(dtype)
            got = native.spatial(q, k, v, dtype_id)
            rows = torch.cat([torch.arange(CHECK_ROWS // 2), torch.arange(n - CHECK_ROWS // 2, n)]).cuda()
            entry = {"dtype": dname, "N": n, "Dqk": dqk, "Dv": dv,
                     "vs_reference_rel_err": rel_err(got[:, rows], spatial_attention_ref(q[:, rows], k, v))}
            if dname == "bf16":  # the JIT kernel autotunes per shape: compared and timed in bf16 only
                jit = spatial_attention(q, k, v, impl="triton")
                entry["vs_triton_jit_rel_err"] = rel_err(got, jit)
                if time.monotonic() < deadline:
                    out, ws = torch.empty_like(got), native._workspace(native.lib.drgan_spatial_attention_workspace_size(1, n))
                    entry["native_ms"] = time_ms(lambda: native.spatial(q, k, v, dtype_id, out, ws), rep_ms=20)
                    entry["triton_jit_ms"] = time_ms(lambda: spatial_attention(q, k, v, impl="triton"), rep_ms=20)
            report["spatial"].append(_row("spatial", entry))
        for c, n in CHANNEL_SHAPES:
            gen = torch.Generator(device="cuda").manual_seed(c)
            x = (torch.randn(1, n, c, device="cuda", generator=gen) * 0.05).to(dtype).transpose(1, 2)
            got = native.channel(x, dtype_id)
            entry = {"dtype": dname, "C": c, "N": n, "vs_reference_rel_err": rel_err(got, channel_attention_ref(x)),
                     "vs_triton_jit_rel_err": rel_err(got, channel_attention(x, impl="triton"))}
            if time.monotonic() < deadline:
                entry["native_ms"] = time_ms(lambda: native.channel(x, dtype_id), rep_ms=20)
                entry["triton_jit_ms"] = time_ms(lambda: channel_attention(x, impl="triton"), rep_ms=20)
            report["channel"].append(_row("channel", entry))
        for side, c in ADAIN_SHAPES:
            for channels_last in (False, True):
                gen = torch.Generator(device="cuda").manual_seed(side)
                x = (torch.randn(8, c, side, side, device="cuda", generator=gen) + 0.5).to(dtype)
                x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                gamma = (1 + 0.1 * torch.randn(8, c, device="cuda", generator=gen)).to(dtype)
                beta = (0.1 * torch.randn(8, c, device="cuda", generator=gen)).to(dtype)
                got = native.adain(x, gamma, beta, dtype_id)
                entry = {"dtype": dname, "shape": [8, c, side, side], "channels_last": channels_last,
                         "vs_reference_rel_err": rel_err(got, adain_ref(x, gamma, beta)),
                         "vs_triton_jit_rel_err": rel_err(got, adain(x, gamma, beta, impl="triton")),
                         "layout_kept": got.stride() == x.stride()}
                if time.monotonic() < deadline:
                    entry["native_ms"] = time_ms(lambda: native.adain(x, gamma, beta, dtype_id), rep_ms=20)
                    entry["triton_jit_ms"] = time_ms(lambda: adain(x, gamma, beta, impl="triton"), rep_ms=20)
                report["adain"].append(_row("adain", entry))
    report["pass"] = all(e["pass"] for part in ("spatial", "channel", "adain") for e in report[part])
    return report


def _row(part: str, entry: dict) -> dict:
    entry["pass"] = entry.get("layout_kept", True) and all(
        v <= REL_TOL for key, v in entry.items() if key.endswith("rel_err"))
    cells = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items() if k != "pass"]
    print(f"{'PASS' if entry['pass'] else 'FAIL'} {part:8s} " + " ".join(cells), flush=True)
    return entry


def main() -> None:
    args = _part.arguments(__doc__)
    start = time.monotonic()
    if args.dry_run:
        arch, qk_blocks, folder = 90, DRY_QK_BLOCKS, BUILD.with_name(BUILD.name + "-dry-run")
    else:
        # Other GPUs than sm_90 run the sm_80 cubins or their PTX.
        arch, qk_blocks, folder = 90 if torch.cuda.get_device_capability() == (9, 0) else 80, QK_BLOCKS, BUILD
    library = build(arch, qk_blocks, folder)
    if isinstance(library, str):
        _part.write(args.out, {"skipped": library}, args.dry_run)
        print(f"native: skipped ({library})")
        return
    build_s = time.monotonic() - start
    print(f"native: built {library} for sm_{arch} in {build_s:.1f} s", flush=True)
    native = Native(library)
    report = {"device": _part.device_name(_part.device(args)), "arch": arch, "build_s": build_s, "rel_tol": REL_TOL}
    if args.dry_run:
        report.update({"not_run": "dry run: built and bound; the kernels need a GPU", "pass": True})
    else:
        report.update(run(native, start + TIME_BUDGET_S))
    _part.write(args.out, report, args.dry_run)
    print(f"{'all checks passed' if report['pass'] else 'SOME CHECKS FAILED'}; report in {args.out}")
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
