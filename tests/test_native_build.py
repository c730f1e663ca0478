"""Native build: CMake configures and builds libdrgan_kernels on a machine without a GPU.

Triton compiles the kernels to cubin for sm_80 and sm_90 (plus PTX), the C launchers compile against
the CUDA headers on the machine, the library exports exactly the C API and installs a working
find_package config. With no driver here, the launchers are run against a fake libcuda.so.1 that
records what they load and launch: which image (by its bytes), grid, block, shared memory and every
kernel parameter. One build, restricted to the padded Q/K widths 16 and 64, serves every test.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = {
    "drgan_status_string", "drgan_last_error",
    "drgan_spatial_attention_fwd", "drgan_spatial_attention_workspace_size",
    "drgan_channel_attention_fwd", "drgan_channel_attention_workspace_size",
    "drgan_adain_fwd", "drgan_adain_workspace_size",
}
KERNELS = ("SPATIAL_FWD", "CHANNEL_GRAM", "CHANNEL_SUM", "CHANNEL_APPLY", "ADAIN_REDUCE", "ADAIN_FORWARD")
EM_CUDA = 190
LOG2E = 1.4426950408889634
STATUS = {"SUCCESS": 0, "INVALID_VALUE": 1, "UNSUPPORTED": 2, "WORKSPACE": 3, "NO_DRIVER": 4, "NO_CONTEXT": 5, "DEVICE": 6}


def _missing_tools() -> str | None:
    for tool in ("cmake", "cc", "nm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    import triton

    hints = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", str(Path(triton.__file__).parent / "backends/nvidia")]
    if not any((Path(h) / "include/cuda.h").is_file() for h in hints if h):
        return "no cuda.h (CUDA toolkit headers) on this machine"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=f"native build: {_missing_tools()}")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("native")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else ["-G", "Unix Makefiles"]
    configure = _run(["cmake", "-S", str(ROOT), "-B", str(out / "build"), *generator, "-DDRGAN_QK_BLOCKS=16;64",
                      f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release"])
    compiled = _run(["cmake", "--build", str(out / "build"), "--parallel", "2"])
    return {"build_log": compiled.stdout + compiled.stderr, "root": out, "dir": out / "build", "lib": out / "build/libdrgan_kernels.so", "configure": configure.stdout,
            "manifest": json.loads((out / "build/kernels/kernels.json").read_text())}


def test_configure_says_the_plugin_is_skipped_in_one_line(build):
    lines = [line for line in build["configure"].splitlines() if "TensorRT" in line]
    assert len(lines) == 1 and "plugin skipped" in lines[0], build["configure"]


def test_c_sources_compile_without_warnings(build):
    assert "warning:" not in build["build_log"], build["build_log"]
    assert "Compiling the Triton kernels" in build["build_log"]


def test_cubins_for_sm80_and_sm90_and_ptx_are_embedded(build):
    kernels = build["dir"] / "kernels"
    images = build["manifest"]["images"]
    lib = build["lib"].read_bytes()
    for kernel in KERNELS:
        for dtype in ("fp32",) if kernel == "CHANNEL_SUM" else ("fp16", "bf16"):
            mine = [im for im in images if im["kernel"] == kernel and im["dtype"] == dtype]
            assert {im["image_arch"] for im in mine} == {0, 80, 90}, (kernel, dtype)
    for im in images:
        if im["image_arch"] == 0:
            ptx = (kernels / "ptx" / f"{im['variant']}.ptx").read_text()
            assert ".target sm_80" in ptx and f".entry {im['function']}" in ptx
            continue
        cubin = (kernels / "cubin" / f"{im['variant']}.sm_{im['arch']}.cubin").read_bytes()
        machine, flags = struct.unpack_from("<H", cubin, 18)[0], struct.unpack_from("<I", cubin, 48)[0]
        assert cubin[:4] == b"\x7fELF" and machine == EM_CUDA and flags & 0xFF == im["arch"], im["variant"]
        assert cubin in lib, f"{im['variant']} sm_{im['arch']} is not embedded in the library"


def test_library_exports_exactly_the_c_api(build):
    defined = _run(["nm", "-D", "--defined-only", str(build["lib"])]).stdout.split()
    assert API <= set(defined)
    assert {s for s in defined if s.startswith("drgan")} == API, "internal symbols leak from the library"
    undefined = _run(["nm", "-D", "--undefined-only", str(build["lib"])]).stdout
    assert "cuLaunchKernel" not in undefined and "dlopen" in undefined, "the driver must be loaded at run time"


def _api(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    i64, p, s3, s4 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64 * 3, ctypes.c_int64 * 4
    lib.drgan_status_string.restype = lib.drgan_last_error.restype = ctypes.c_char_p
    lib.drgan_spatial_attention_workspace_size.restype = ctypes.c_size_t
    lib.drgan_spatial_attention_workspace_size.argtypes = [i64, i64]
    lib.drgan_channel_attention_workspace_size.restype = ctypes.c_size_t
    lib.drgan_channel_attention_workspace_size.argtypes = [i64, i64, i64]
    lib.drgan_adain_workspace_size.restype = ctypes.c_size_t
    lib.drgan_adain_workspace_size.argtypes = [i64, i64, i64, i64]
    lib.drgan_spatial_attention_fwd.argtypes = [p, s3, p, s3, p, s3, p, s3, i64, i64, i64, i64, ctypes.c_float,
                                                ctypes.c_int, p, ctypes.c_size_t, p]
    lib.drgan_channel_attention_fwd.argtypes = [p, p, s3, i64, i64, i64, ctypes.c_int, p, ctypes.c_size_t, p]
    lib.drgan_adain_fwd.argtypes = [p, p, p, p, s4, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int, p, ctypes.c_size_t, p]
    return lib


def test_without_a_driver_calls_fail_cleanly(build):
    lib = _api(build["lib"])
    s3 = ctypes.c_int64 * 3
    qk, vo = s3(400, 4, 1), s3(3200, 32, 1)
    ws = lib.drgan_spatial_attention_workspace_size(2, 100)
    assert ws >= 2 * 100 * 4 and ws % 256 == 0
    call = lambda scale, size: lib.drgan_spatial_attention_fwd(  # noqa: E731
        4096, qk, 4096, qk, 8192, vo, 8192, vo, 2, 100, 4, 32, scale, 0, 16384, size, None)
    assert call(1.0, ws) == STATUS["NO_DRIVER"]
    assert b"libcuda.so.1" in lib.drgan_last_error()
    assert call(-1.0, ws) == STATUS["INVALID_VALUE"] and b"scale" in lib.drgan_last_error()
    assert call(1.0, ws - 1) == STATUS["WORKSPACE"]
    assert lib.drgan_status_string(STATUS["WORKSPACE"]) == b"DRGAN_ERROR_WORKSPACE"
    assert lib.drgan_channel_attention_workspace_size(1, 64, 4096) >= 64 * 64 * 4
    assert lib.drgan_adain_workspace_size(2, 8, 16, 16) >= 2 * 8 * 4 * 3


FAKE_DRIVER = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef struct { uint64_t hash; char name[64]; unsigned grid[3], block, shared; uint64_t stream; int nparams; uint64_t params[72]; } fake_launch;
typedef struct { uint64_t hash; char name[64]; int nparams; } fake_function;
static int capability = 90, max_shared = 232448, has_context = 1, loads = 0, count = 0, nregistered = 0;
static struct { uint64_t hash; int nparams; } registered[1024];
static fake_launch launches[64];
void fake_configure(int cc, int shared, int context) { capability = cc; max_shared = shared; has_context = context; count = 0; }
void fake_register(uint64_t hash, int nparams) { registered[nregistered].hash = hash; registered[nregistered++].nparams = nparams; }
int fake_count(void) { return count; }
int fake_loads(void) { return loads; }
const fake_launch* fake_get(int i) { return &launches[i]; }
uint64_t fake_hash(const unsigned char* image) {
    size_t size;
    if (!memcmp(image, "\x7f" "ELF", 4)) {
        uint64_t shoff, phoff; uint16_t phent, phnum, shent, shnum;
        memcpy(&phoff, image + 0x20, 8); memcpy(&shoff, image + 0x28, 8);
        memcpy(&phent, image + 0x36, 2); memcpy(&phnum, image + 0x38, 2);
        memcpy(&shent, image + 0x3a, 2); memcpy(&shnum, image + 0x3c, 2);
        size = shoff + (size_t)shent * shnum;
        if (phoff + (size_t)phent * phnum > size) size = phoff + (size_t)phent * phnum;
    } else {
        size = strlen((const char*)image);
    }
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; ++i) h = (h ^ image[i]) * 1099511628211ull;
    return h;
}
int cuInit(unsigned flags) { (void)flags; return 0; }
int cuGetErrorName(int rc, const char** name) { (void)rc; *name = "CUDA_ERROR_FAKE"; return 0; }
int cuCtxGetCurrent(void** context) { *context = has_context ? (void*)0x1000 : NULL; return 0; }
int cuCtxGetDevice(int* device) { *device = 0; return 0; }
int cuDeviceGetAttribute(int* value, int attribute, int device) {
    (void)device;
    *value = attribute == 75 ? capability / 10 : attribute == 76 ? capability % 10 : attribute == 97 ? max_shared : 0;
    return 0;
}
int cuModuleLoadData(void** module, const void* image) { uint64_t* h = malloc(8); *h = fake_hash(image); *module = h; ++loads; return 0; }
int cuModuleGetFunction(void** function, void* module, const char* name) {
    fake_function* f = calloc(1, sizeof *f);
    f->hash = *(uint64_t*)module; strncpy(f->name, name, 63); f->nparams = -1;
    for (int i = 0; i < nregistered; ++i) if (registered[i].hash == f->hash) f->nparams = registered[i].nparams;
    *function = f;
    return f->nparams < 0 ? 500 : 0;
}
int cuFuncSetAttribute(void* function, int attribute, int value) { (void)function; (void)attribute; (void)value; return 0; }
int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void* stream, void** params, void** extra) {
    fake_function* f = function; fake_launch* l = &launches[count++];
    (void)by; (void)bz; (void)extra;
    l->hash = f->hash; memcpy(l->name, f->name, 64); l->grid[0] = gx; l->grid[1] = gy; l->grid[2] = gz;
    l->block = bx; l->shared = shared; l->stream = (uint64_t)(uintptr_t)stream; l->nparams = f->nparams;
    for (int i = 0; i < f->nparams; ++i) memcpy(&l->params[i], params[i], 8);
    return 0;
}
"""


class _Launch(ctypes.Structure):
    _fields_ = [("hash", ctypes.c_uint64), ("name", ctypes.c_char * 64), ("grid", ctypes.c_uint * 3),
                ("block", ctypes.c_uint), ("shared", ctypes.c_uint), ("stream", ctypes.c_uint64),
                ("nparams", ctypes.c_int), ("params", ctypes.c_uint64 * 72)]


def _decode(raw: int, kind: str):
    low = struct.pack("<I", raw & 0xFFFFFFFF)
    return raw if kind.startswith("*") else struct.unpack("<f", low)[0] if kind == "fp32" else struct.unpack("<i", low)[0]


def _spatial(lib, n=100, dqk=4, dv=32, batch=2, dtype=0):
    s3 = ctypes.c_int64 * 3
    qk, vo = s3(n * dqk, dqk, 1), s3(n * dv, dv, 1)
    ws = lib.drgan_spatial_attention_workspace_size(batch, n)
    return lib.drgan_spatial_attention_fwd(0x10000, qk, 0x20000, qk, 0x30000, vo, 0x40000, vo, batch, n, dqk, dv, 1.0,
                                           dtype, 0x50000, ws, 0x77)


def _channel(lib, c=64, n=4096):
    # A channels_last map flattened to (B, C, N): unit stride along C.
    ws = lib.drgan_channel_attention_workspace_size(1, c, n)
    return lib.drgan_channel_attention_fwd(0x10000, 0x20000, (ctypes.c_int64 * 3)(n * c, 1, c), 1, c, n, 0, 0x30000, ws, None)


def _adain(lib, b=2, c=8, h=16, w=16, strides=None):
    ws = lib.drgan_adain_workspace_size(b, c, h, w)
    strides = (ctypes.c_int64 * 4)(*(strides or (c * h * w, h * w, w, 1)))
    return lib.drgan_adain_fwd(0x10000, 0x20000, 0x20100, 0x30000, strides, b, c, h, w, 1e-5, 1, 0x40000, ws, None)


def _fake_session() -> None:
    """Child process: load the fake driver, then the library; run the scenarios in argv[1] (JSON)."""
    work, scenarios = Path(sys.argv[2]), json.loads(sys.argv[1])
    driver = ctypes.CDLL(str(work / "libcuda.so.1"), mode=ctypes.RTLD_GLOBAL)
    driver.fake_get.restype = ctypes.POINTER(_Launch)
    driver.fake_register.argtypes = [ctypes.c_uint64, ctypes.c_int]
    driver.fake_hash.restype = ctypes.c_uint64
    driver.fake_hash.argtypes = [ctypes.c_char_p]
    kernels = work / "build/kernels"
    by_hash: dict[int, list[dict]] = {}
    for im in json.loads((kernels / "kernels.json").read_text())["images"]:
        data = ((kernels / "ptx" / f"{im['variant']}.ptx").read_bytes() if im["image_arch"] == 0
                else (kernels / "cubin" / f"{im['variant']}.sm_{im['arch']}.cubin").read_bytes())
        h = driver.fake_hash(data)
        by_hash.setdefault(h, []).append(im)
        driver.fake_register(h, len(im["params"]) + 2)  # + Triton's two scratch pointers
    # A loaded library answers dlopen of its soname: the kernel library's dlopen("libcuda.so.1") gets the fake.
    lib = _api(work / "build/libdrgan_kernels.so")
    results = []
    for device, call, kwargs in scenarios:
        driver.fake_configure(*device)
        status = {"spatial": _spatial, "channel": _channel, "adain": _adain}[call](lib, **kwargs)
        launches = []
        for i in range(driver.fake_count()):
            launch = driver.fake_get(i).contents
            images = by_hash[launch.hash]
            im = images[0]
            params = launch.params[: launch.nparams - 2]
            launches.append({
                "images": [[x["variant"], x["image_arch"]] for x in images], "image": im,
                "grid": list(launch.grid), "block": launch.block, "shared": launch.shared, "stream": launch.stream,
                "args": {n: _decode(v, t) for n, t, v in zip(im["param_names"], im["param_types"], params)},
                "scratch": list(launch.params[launch.nparams - 2: launch.nparams]),
            })
        results.append({"status": status, "error": lib.drgan_last_error().decode(), "launches": launches,
                        "loads": driver.fake_loads()})
    print(json.dumps(results))


def _fake(build, scenarios: list) -> list[dict]:
    work = build["root"]
    if not (work / "libcuda.so.1").is_file():
        (work / "fake_cuda.c").write_text(FAKE_DRIVER)
        _run(["cc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(work / "libcuda.so.1"),
              str(work / "fake_cuda.c")])
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_native_build as t; t._fake_session()"
    out = _run([sys.executable, "-c", code, json.dumps(scenarios), str(work)]).stdout
    return json.loads(out.splitlines()[-1])


H100 = [90, 232448, 1]


def test_spatial_attention_launches_the_specialized_image_with_its_arguments(build):
    first, aligned, generic, bf16 = _fake(build, [
        [H100, "spatial", {}], [H100, "spatial", {"dqk": 16}], [H100, "spatial", {"dv": 20}],
        [H100, "spatial", {"dtype": 1}],
    ])
    assert first["status"] == 0, first["error"]
    (launch,) = first["launches"]
    # Q/K rows of 4 elements are not 16-aligned; V/out rows of 32 are: the qk_unaligned image.
    assert ["spatial_fwd_fp16_qk_unaligned_d16", 90] in launch["images"]
    im = launch["image"]
    assert launch["grid"] == [math.ceil(100 / im["consts"]["BLOCK_M"]), math.ceil(32 / im["consts"]["BLOCK_DV"]), 2]
    assert launch["block"] == 32 * im["num_warps"] and launch["shared"] == im["shared"] and launch["stream"] == 0x77
    args = launch["args"]
    assert [args[k] for k in ("Q", "K", "V", "O", "LSE")] == [0x10000, 0x20000, 0x30000, 0x40000, 0x50000]
    assert [args[k] for k in ("stride_qb", "stride_qn", "stride_vb", "stride_vn")] == [400, 4, 3200, 32]
    assert [args["N"], args["DQK"], args["DV"]] == [100, 4, 32] and "stride_qd" not in args
    assert args["qk_scale"] == pytest.approx(LOG2E, rel=1e-6) and launch["scratch"] == [0, 0]
    assert ["spatial_fwd_fp16_aligned_d16", 90] in aligned["launches"][0]["images"]
    # V rows of 20 elements: nothing to specialize, the generic image with every stride passed.
    assert ["spatial_fwd_fp16_generic_d16", 90] in generic["launches"][0]["images"]
    assert generic["launches"][0]["args"]["stride_vd"] == 1
    assert ["spatial_fwd_bf16_qk_unaligned_d16", 90] in bf16["launches"][0]["images"]


def test_images_follow_the_device(build):
    results = _fake(build, [
        [[86, 101376, 1], "spatial", {}], [[120, 101376, 1], "spatial", {}], [H100, "spatial", {}],
        [H100, "spatial", {}], [[75, 65536, 1], "spatial", {}], [[90, 232448, 0], "spatial", {}],
        [H100, "spatial", {"dqk": 65}], [H100, "spatial", {"dqk": 20}],
    ])
    ampere, blackwell, hopper, again, turing, no_context, wide, between = results
    assert [r["launches"][0]["image"]["image_arch"] for r in (ampere, blackwell, hopper)] == [80, 0, 90]
    assert again["loads"] == hopper["loads"] == 3, "an image is loaded once per context"
    assert turing["status"] == STATUS["DEVICE"] and "sm_75" in turing["error"]
    assert no_context["status"] == STATUS["NO_CONTEXT"]
    assert wide["status"] == STATUS["UNSUPPORTED"] and "DRGAN_QK_BLOCKS" in wide["error"], "widths 16 and 64 were compiled"
    # Width 32 was not compiled: the next one up serves (the kernel masks the columns past qk_dim).
    assert between["status"] == 0, between["error"]
    assert between["launches"][0]["image"]["consts"]["BLOCK_D"] == 64 and between["launches"][0]["args"]["DQK"] == 20
    assert not (turing["launches"] or no_context["launches"] or wide["launches"])


def test_channel_attention_and_adain_launch_their_kernel_sequences(build):
    from drgan.kernels.adain_triton import splits_for, tile
    from drgan.kernels.channel_attention_triton import gram_splits

    channel, adain, unmerged = _fake(build, [
        [H100, "channel", {}], [H100, "adain", {}], [H100, "adain", {"strides": [2048, 256, 1, 16]}],
    ])
    assert channel["status"] == 0, channel["error"]
    gram, total, apply = channel["launches"]
    splits, chunk = gram_splits(1, 64, 4096)
    assert splits > 1 and gram["args"]["chunk"] == chunk and gram["grid"] == [1, splits, 1]
    assert ["channel_gram_fp16_channels_last", 90] in gram["images"]
    assert ["channel_sum_fp32_aligned", 90] in total["images"] and total["args"]["splits"] == splits
    assert total["args"]["PART"] == gram["args"]["E_PART"] == 0x30000 and apply["args"]["E"] == total["args"]["OUT"]
    assert ["channel_apply_fp16_channels_last", 90] in apply["images"] and apply["args"]["OUT"] == 0x20000

    assert adain["status"] == 0, adain["error"]
    reduce, forward = adain["launches"]
    meta = tile(channels_last=False)
    splits, chunk = splits_for(2, 8, 256, meta)
    grid = [2 * math.ceil(8 / meta["BLOCK_C"]), splits, 1]
    assert ["adain_reduce_bf16_contiguous", 90] in reduce["images"] and reduce["grid"] == grid
    assert ["adain_forward_bf16_contiguous", 90] in forward["images"] and forward["grid"] == grid
    assert forward["args"]["chunk"] == reduce["args"]["chunk"] == chunk
    assert forward["args"]["PART"] == reduce["args"]["PART"] and forward["args"]["eps"] == pytest.approx(1e-5)
    assert unmerged["status"] == STATUS["INVALID_VALUE"], "H and W that do not merge into one axis"


CONSUMER = """
cmake_minimum_required(VERSION 3.24)
project(consumer C)
find_package(drgan 0.1 REQUIRED)
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE drgan::kernels)
"""
CONSUMER_MAIN = """
#include <stdio.h>
#include <drgan_kernels.h>
int main(void) {
    printf("%s %zu\\n", drgan_status_string(DRGAN_ERROR_WORKSPACE), drgan_spatial_attention_workspace_size(1, 64));
    return 0;
}
"""


def test_install_and_find_package(build):
    prefix = build["root"] / "prefix"
    _run(["cmake", "--install", str(build["dir"]), "--prefix", str(prefix)])
    (config,) = prefix.rglob("drganConfig.cmake")
    (library,) = prefix.rglob("libdrgan_kernels.so")
    assert (prefix / "include/drgan_kernels.h").is_file() and config.parent.name == "drgan"
    app = build["root"] / "consumer"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(CONSUMER)
    (app / "main.c").write_text(CONSUMER_MAIN)
    _run(["cmake", "-S", str(app), "-B", str(app / "build"), f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", str(app / "build")])
    out = _run([str(app / "build/consumer")], env={"LD_LIBRARY_PATH": str(library.parent)}).stdout
    assert out.split() == ["DRGAN_ERROR_WORKSPACE", "256"]


def _generator_choices() -> dict[str, list[str]]:
    """What native/gen_kernels.py accepts, from its own --help: CMake must refuse the rest."""
    import re

    text = _run([sys.executable, str(ROOT / "native/gen_kernels.py"), "--help"]).stdout
    return {var: re.search(rf"{flag} \{{([\d,]+)\}}", text).group(1).split(",")
            for var, flag in (("DRGAN_CUDA_ARCHS", "--arch"), ("DRGAN_QK_BLOCKS", "--qk-block"))}


@pytest.mark.parametrize("var, value, bad", [("DRGAN_CUDA_ARCHS", "80;75", "75"), ("DRGAN_QK_BLOCKS", "48", "48")])
def test_configure_refuses_a_value_the_kernel_generator_does_not_accept(tmp_path, var, value, bad):
    generator = ["-G", "Ninja"] if shutil.which("ninja") else ["-G", "Unix Makefiles"]
    result = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), *generator, f"-D{var}={value}",
                             f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True)
    text = " ".join((result.stdout + result.stderr).split())  # CMake wraps its error messages
    assert result.returncode != 0, text
    assert f"{var}=\"{value}\": '{bad}' is not supported" in text, text
    assert f"one of {', '.join(_generator_choices()[var])}" in text, text
    assert not (tmp_path / "build/build.ninja").exists() and not (tmp_path / "build/Makefile").exists()
