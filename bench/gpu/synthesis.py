"""paper-1280 synthesis on the GPU: images/s end to end and the share of time the GPU sat idle.

images_per_second runs on the pipeline's clock (first batch queued to last file written): it holds
the CUDA-graph capture and the pipeline's fill and drain, and leaves out process start, imports,
Triton autotuning (done in the warm-up), model load and the manifest. steady_images_per_second
is the marginal rate that a 50,000-image set runs at: the timed run's images less one batch, over
its pipeline time less a one-batch run's (the fixed costs cancel).

Untrained weights (speed does not depend on training), phantom structures (rendered before the
clock starts), bf16, channels_last, Triton kernels (impl auto), CUDA graphs, JPEG encoded on the
GPU where torchvision is present. Each format runs with the real generator and with the null
backend (the host side alone: can this host feed the GPU?), with per-stage times and the
bounding stage (queueing: the main thread's time queueing each batch). The last run holds only a
batch of structures on the GPU, so that most batches upload theirs, as a dataset pool of more than
64 structures (FGADR's 1,842) does. Before the timed runs, the correctness checks of
synthesis_checks.py (CUDA-graph replay against eager, images written with and without graphs,
GPU JPEG, structure uploads); the part exits 1 when one fails.

    python3 bench/gpu/synthesis.py --out OUT/synthesis.json [--checks-only] [--dry-run]
"""
import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import _part  # first: with --dry-run it switches Triton's interpreter on before drgan.kernels loads

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from synthesis_fixtures import make_run  # noqa: E402
from synthesis_checks import replay_matches_eager, uploads_match, written_images_match  # noqa: E402

from drgan import config  # noqa: E402
from drgan.synthesis import runner as runner_module  # noqa: E402
from drgan.synthesis.runner import SynthesisOptions, synthesize  # noqa: E402
from drgan.synthesis.encode import gpu_jpeg_encoder  # noqa: E402
from drgan.synthesis import structures  # noqa: E402
from drgan.synthesis.structures import StructurePool  # noqa: E402

PRESET, COUNT, BATCH = "paper-1280", 320, 16
DRY_PRESET, DRY_COUNT, DRY_BATCH = "tiny-64", 2, 2
CHECK_BATCH = 4  # batch of the correctness checks (DRY_BATCH in the dry run): two batches, graphs of their own
BUDGET_S = 115   # no timed run starts later: the part ends with its JSON within gpu_check.sh's 150 s
# Timed runs: (backend, format, JPEG on the GPU where it can be, structures held on the GPU: None
# for the default). The checks come first (~50 s).
RUNS = [("torch", "jpeg", True, None), ("torch", "jpeg", False, None), ("torch", "png", False, None),
        ("null", "jpeg", True, None), ("null", "png", False, None), ("torch", "jpeg", True, "batch")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks-only", action="store_true", help="the correctness checks, no timed runs")
    args = _part.arguments(__doc__, parser)
    t0 = time.time()
    preset, count, batch = (DRY_PRESET, DRY_COUNT, DRY_BATCH) if args.dry_run else (PRESET, COUNT, BATCH)
    device = _part.device(args)
    results = {"device": _part.device_name(device), "preset": preset, "batch": batch,
               "gpu_jpeg": device == "cuda" and gpu_jpeg_encoder(95) is not None, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", preset_name=preset)

        def options(out: str, images: int, fmt: str, backend: str, size: int = batch) -> SynthesisOptions:
            return SynthesisOptions(run=str(run), out=f"{tmp}/{out}", count=images, batch=size, format=fmt,
                                    device=device, progress=False, backend=backend)

        # Warm-up: the structure pool of seed 0 rendered (the runner reuses it), Triton
        # autotuning, CUDA-graph capture.
        pool = StructurePool.phantom(config.preset(preset).resolution, 0)   # make_run: local stage
        for j in range(len(pool)):
            pool.geometry(j)
        synthesize(options("warm", batch, "jpeg", "torch"))
        check_batch = DRY_BATCH if args.dry_run else CHECK_BATCH
        results["checks"] = {
            "replay": replay_matches_eager(run, preset, device, check_batch),
            "written": written_images_match(lambda out, n, fmt: options(out, n, fmt, "torch", check_batch), 2 * check_batch),
            "uploads": uploads_match(preset, device, batch),
        }
        print("checks:", results["checks"])
        _part.write(args.out, results, args.dry_run)  # kept if the timed runs below run out of time
        for backend, fmt, gpu_encode, slots in [] if args.checks_only else RUNS:
            encoder = "gpu" if gpu_encode and results["gpu_jpeg"] else "host"
            if (fmt, gpu_encode) == ("jpeg", False) and not results["gpu_jpeg"]:
                continue  # the host-encoded JPEG run is already the run above
            if time.time() - t0 > BUDGET_S and not args.dry_run:
                results["runs"].append({"backend": backend, "format": fmt, "encoder": encoder,
                                        "device_slots": slots or "default", "skipped": "time budget"})
                continue
            host_only = mock.patch.object(runner_module, "gpu_jpeg_encoder", lambda quality: None)
            few_slots = mock.patch.object(structures, "DEVICE_SLOTS", batch)
            with nullcontext() if encoder == "gpu" else host_only, nullcontext() if slots is None else few_slots:
                name = f"{backend}-{fmt}-{encoder}" + (f"-slots-{slots}" if slots else "")
                one = synthesize(options(f"{name}-one", batch, fmt, backend))
                s = synthesize(options(name, count, fmt, backend))
            summary = s.to_dict()
            extra = s.pipeline_seconds - one.pipeline_seconds
            row = {"backend": backend, "format": fmt, "encoder": encoder, "device_slots": slots or "default", "images": s.generated,
                   "seconds": round(s.seconds, 2), "images_per_second": round(s.generated / s.pipeline_seconds, 1),
                   "steady_images_per_second": (round((s.generated - one.generated) / extra, 1)
                                                if extra > 0 and s.generated > one.generated else None),  # None: one batch
                   "gpu_idle_share": summary["gpu_idle_share"], "bound": s.bound,
                   "stage_ms_per_image": summary["stage_ms_per_image"]}
            results["runs"].append(row)
            print(f"{backend:5s} {fmt:5s} {encoder:4s} {'slots ' + slots + ' ' if slots else ''}{row['images']} images  "
                  f"{row['images_per_second']:7.1f} images/s "
                  f"(steady {row['steady_images_per_second']})  "
                  f"GPU idle {row['gpu_idle_share']}  bound by {row['bound']}")
            _part.write(args.out, results, args.dry_run)
    _part.write(args.out, results, args.dry_run)
    raise SystemExit(0 if all(c["pass"] for c in results["checks"].values()) else 1)


if __name__ == "__main__":
    main()
