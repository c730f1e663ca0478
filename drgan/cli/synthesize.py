"""`drgan synthesize` / `drgan-synthesize`: the main job."""
from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from drgan.cli.common import BATCH, DEVICE_HELP, HELP_NAMES, SEED, IntRange, resumes_on_rerun
from drgan.config import MAX_SET, NUM_GRADES, PRECISIONS, PRESETS
from drgan.data.labels import SPLITS
from drgan.synthesis.registry import BACKENDS


def _grades(text: str) -> tuple[int, ...]:
    """Malformed --grades is a usage error (exit 2); grades out of 0..4 are bad input (Plan, exit 1)."""
    from drgan.errors import UsageError

    try:
        grades = tuple(int(g) for g in text.split(","))
    except ValueError:
        raise UsageError(f"{{grades}} {text!r}: expected comma-separated grades, e.g. 0,1,2,3,4") from None
    return grades


def _imbalance(count: int, grades: tuple[int, ...]) -> str:
    """One line on a --count that does not divide evenly: which grades get one image more."""
    more = ", ".join(map(str, grades[: count % len(grades)]))
    return (f"--count {count} over {len(grades)} grades is not balanced: grade(s) {more} get {count // len(grades) + 1}, "
            f"the others {count // len(grades)} (--per-grade gives each grade the same number)")


@click.command(context_settings=HELP_NAMES)
@click.option("--run", "--checkpoint", "run", type=click.Path(), help="Run folder of a trained GAN.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="With --backend null instead of --run: the preset's resolution, standard-normal grading spaces.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (dataset format + manifest.csv).")
@click.option("--count", type=IntRange(1, MAX_SET), help="Images in the whole set, spread over --grades in turn (balanced when a multiple of their number). This or --per-grade is required.")
@click.option("--per-grade", type=IntRange(1, MAX_SET), help=f"Images per grade (instead of --count); at most {MAX_SET:,} in the set.")
@click.option("--grades", default=",".join(map(str, range(NUM_GRADES))), show_default=True,
              help=f"Comma-separated grades to synthesize, each in 0..{NUM_GRADES - 1}.")
@click.option("--structures", type=click.Path(), help="Dataset folder whose vessel/disc masks are the structure pool (default: phantom structures).")
@click.option("--structures-split", type=click.Choice([*SPLITS, "all"]), default="train", show_default=True,
              help="The rows of --structures whose masks are used; train keeps the test eyes out of a set that augments a grader tested on them.")
@click.option("--lesion-stats", type=click.Path(), help="Lesion statistics JSON (fit on a dataset); default: the DR scale's.")
@click.option("--label", type=click.Choice(["planned", "predicted"]), default="planned", show_default=True,
              help="Grading space the vector comes from. planned: the grade the lesions were imitated for, so the vector, "
                   "the lesions and labels.csv agree. predicted: the paper's test time, the grade the generator's encoder "
                   "predicts from the masks, as good as that head is; manifest.csv records both and the summary their agreement.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the whole set: item i depends on (seed, i) only.")
@click.option("--batch", type=BATCH, default=8, show_default=True, help="Generation batch (fixed batches keep resumes bit-identical).")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True, help="auto: bf16 on CUDA, fp32 on CPU.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True,
              help="null: a fixed image instead of a generator, to measure whether this host can feed a GPU. "
                   "tensorrt and aoti load an engine or package of RUN/export that runs native code: only ones you built or trust.")
@click.option("--trt-plugin", type=click.Path(dir_okay=False),
              help="TensorRT plugin library (libdrgan_trt_plugin.so) an engine exported with --trt-plugin needs; it runs native code: only one you built or trust.")
@click.option("--fp8-attention", is_flag=True,
              help="Spatial attention's P@V product in float8 e4m3 (torch backend; CUDA: bf16/fp16 on compute capability 8.9+, "
                   "CPU: emulated). Opt-in: about ten times bf16's attention error; README says what it changes in the images.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default="png", show_default=True, help="Image file format.")
@click.option("--quality", type=IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--png-level", type=IntRange(0, 9), default=1, show_default=True, help="PNG compression: 0 stored, 1 fast, 2..9 zlib levels (slower; README).")
@click.option("--save-masks", is_flag=True, help="Also write the conditioning masks (masks/<id>/<name>.png).")
@click.option("--verify", is_flag=True, help="On a rerun, first check the images already written (sha256 against the journal, "
                                              "else that they decode; masks: that they decode) and make damaged items again; reads every file of this shard.")
@click.option("--shard", help="i/n: generate the i-th of n interleaved parts (default: torchrun's RANK/WORLD_SIZE).")
@click.option("--loader", type=click.Choice(["torch", "dali"]), default="torch", show_default=True, help="Reader of --structures.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the summary (with per-stage times) as JSON.")
def synthesize(run, preset, out, count, per_grade, grades, structures, structures_split, lesion_stats, label, seed, batch, precision,
               backend, trt_plugin, fp8_attention, fmt, quality, png_level, save_masks, verify, shard, loader, device, as_json) -> None:
    """Generate a balanced augmentation set; rerun the same command to resume.

    The size of the set is --count (whole set) or --per-grade (each grade): one of them is required.
    """
    from drgan.synthesis.fingerprint import FILE_NAME as SET_MARKER

    # Armed before the runner's imports (torch: about a second), so that a rerun of a set begun
    # before and stopped while importing says how it goes on too.
    resumes_on_rerun(Path(out) / SET_MARKER, "the images written are kept")
    from drgan.errors import ParameterError, UsageError
    from drgan.synthesis.plan import Plan
    from drgan.synthesis.runner import SynthesisOptions, condition_shift, format_summary, synthesize as synthesize_set

    grade_list = _grades(grades)
    if (count is None) == (per_grade is None):
        raise UsageError("give exactly one of --count and --per-grade")
    given = click.get_current_context().get_parameter_source
    # Options that would do nothing are refused, not ignored: a usage error, as two that exclude each other.
    if fmt == "png" and given("quality") is not ParameterSource.DEFAULT:
        raise UsageError("{quality} is the JPEG quality; with {fmt} png it would do nothing ({png_level} sets PNG compression)")
    if fmt == "jpeg" and given("png_level") is not ParameterSource.DEFAULT:
        raise UsageError("{png_level} is the PNG compression; with {fmt} jpeg it would do nothing ({quality} sets JPEG quality)")
    for option in ("loader", "structures_split"):
        if structures is None and given(option) is not ParameterSource.DEFAULT:
            raise UsageError(f"{{{option}}} reads {{structures}}; without it (phantom structures) it would do nothing")
    total = count if count is not None else per_grade * len(grade_list)
    if total > MAX_SET:
        raise ParameterError(f"{{per_grade}} {per_grade}: {len(grade_list)} grades of it are {total:,} images, past {MAX_SET:,} in a set")
    Plan(total, grade_list, seed, batch)  # its checks of the grades come before a warning about their balance
    warnings = [_imbalance(total, grade_list)] if total % len(grade_list) else []
    warnings += [shift] if (shift := condition_shift(run)) else []
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    summary = synthesize_set(SynthesisOptions(
        run=run, preset=preset, out=out, count=total, grades=grade_list, structures=structures,
        structures_split=structures_split, lesion_stats=lesion_stats,
        seed=seed, batch=batch, precision=precision, backend=backend, format=fmt, quality=quality, png_level=png_level,
        save_masks=save_masks, shard=shard, loader=loader, device=device, label=label, trt_plugin=trt_plugin,
        fp8_attention=fp8_attention, verify=verify,
    ))
    click.echo(json.dumps({**summary.to_dict(), "warnings": warnings}) if as_json else format_summary(summary))
