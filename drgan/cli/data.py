"""`drgan data validate`, `drgan data import`, `drgan data contact-sheet`, `drgan data fit-lesions`,
`drgan phantom`, `drgan masks extract`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from drgan.cli.common import SEED, IntRange, dataset_folder, resumes_on_rerun
from drgan.config import MAX_IMAGE_SIDE, MIN_SIDE, NUM_GRADES
from drgan.data.labels import SPLITS
from drgan.errors import DrganError

# The dataset is `--data DIR`, as in every command; a positional DIR is still accepted.
_data_argument = click.argument("directory", required=False, metavar="[DATA]", type=click.Path())
_data_option = click.option("--data", "data_dir", type=click.Path(), help="Dataset folder (images/, masks/, labels.csv).")


@click.group()
def data() -> None:
    """Dataset tools."""


@data.command()
@_data_argument
@_data_option
@click.option("--skip-bad", is_flag=True, help="Exit 0 when usable samples remain; bad ones are counted as skipped.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (counts per grade and split, problems, conversions) as JSON.")
def validate(directory: str | None, data_dir: str | None, skip_bad: bool, as_json: bool) -> None:
    """Check every file of a dataset folder; exits non-zero listing the problems."""
    from drgan.data.validation import validate_dataset

    directory = dataset_folder(directory, data_dir)
    report = validate_dataset(directory)
    click.echo(json.dumps(report.to_dict()) if as_json else report.render())
    if report.problems:
        if skip_bad and report.ok:
            click.echo(f"skipped {len(report.problems)} problem(s); {report.ok} usable samples remain",
                       err=as_json)  # stdout holds the JSON alone
            return
        raise DrganError(f"{directory}: {len(report.problems)} problem(s) found (listed above)")


@data.command("import")
@click.argument("kind")
@click.argument("src", type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True, help="Dataset folder (new, or an earlier import to resume).")
@click.option("--size", type=IntRange(64, MAX_IMAGE_SIDE), default=1280, show_default=True, help="Image side in pixels.")
@click.option("--workers", type=IntRange(0), default=min(4, os.cpu_count() or 1), show_default=True,
              help="Conversion processes.")
@click.option("--vessels", type=click.Choice(["extract", "none"]), default="extract", show_default=True,
              help="Vessel masks from the extractor (no release has vessel labels), or none.")
def import_(kind: str, src: str, out: str, size: int, workers: int, vessels: str) -> None:
    """Import a public DR release (fgadr, idrid, ddr, eyepacs, aptos) unpacked at SRC.

    Images are cropped to the field of view, padded square and resized; lesion masks go to the
    condition channels (positive at >= 128); the release's split is kept, with a val part taken
    from its training images. Rerunning the same command resumes, and converts again the images
    whose files the release replaced.
    """
    from drgan.data.importers import SCANNERS, import_release
    from drgan.data.importers.core import IMPORT_FILE, SHOW_SKIPPED

    if kind.lower() not in SCANNERS:  # a usage error as a click.Choice gives; the importers load too slowly for `-h`
        raise click.BadParameter(f"{kind!r} is not one of {', '.join(map(repr, SCANNERS))}.", param_hint="'KIND'")
    resumes_on_rerun(Path(out) / IMPORT_FILE, "the images converted are kept")
    report = import_release(kind.lower(), src, out, size=size, vessels=vessels, workers=workers)
    click.echo(report.render(limit=SHOW_SKIPPED))


@data.command("contact-sheet")
@_data_argument
@_data_option
@click.option("--out", "out", type=click.Path(), required=True, help="PNG file to write (its folder is created).")
@click.option("--per-grade", type=IntRange(1), default=6, show_default=True, help="Images per row (one row per grade).")
@click.option("--size", type=IntRange(8, 1024), default=192, show_default=True, help="Tile side in pixels.")
def contact_sheet(directory: str | None, data_dir: str | None, out: str, per_grade: int, size: int) -> None:
    """Grid of a dataset's images: one row per grade."""
    from drgan.data.contact_sheet import is_contact_sheet, save_contact_sheet
    from drgan.data.dataset import FundusDataset
    from drgan.io import check_output_file

    directory = dataset_folder(directory, data_dir)
    check_output_file(out, ".png", "a contact sheet", is_contact_sheet, [directory], make_parent=True)  # before the images are read
    ds = FundusDataset(directory, size)
    rows: list[list] = [[] for _ in range(NUM_GRADES)]
    for i, g in enumerate(ds.grades):
        if len(rows[g]) < per_grade:
            rows[g].append(ds.load(i)[0])
    keep = [g for g in range(NUM_GRADES) if rows[g]]
    save_contact_sheet([rows[g] for g in keep], out, [f"grade {g}" for g in keep])
    click.echo(f"wrote {out}")


@data.command("fit-lesions")
@_data_argument
@_data_option
@click.option("--out", "out", type=click.Path(), required=True,
              help="JSON file for `drgan synthesize --lesion-stats` (in an existing folder).")
@click.option("--split", type=click.Choice([*SPLITS, "all"]), default="train", show_default=True,
              help="The rows whose masks are fit; train keeps the test eyes out of a set that augments a grader tested on them.")
@click.option("--skip-bad", is_flag=True, help="Leave bad samples out (counted) instead of stopping.")
def fit_lesions(directory: str | None, data_dir: str | None, out: str, split: str, skip_bad: bool) -> None:
    """Learn per-grade lesion counts, sizes and distances from the disc from a dataset's masks."""
    from drgan.data.lesion_fit import fit_lesion_stats
    from drgan.data.lesion_stats import LesionStats
    from drgan.io import check_output_file

    def earlier_stats(path: Path) -> bool:
        try:
            LesionStats.load(path)
        except DrganError:
            return False
        return True

    directory = dataset_folder(directory, data_dir)
    check_output_file(out, ".json", "lesion statistics", earlier_stats, [directory])  # before the masks are read
    fit_lesion_stats(directory, skip_bad=skip_bad, split=None if split == "all" else split).save(out)
    click.echo(f"wrote {out}")


@click.command()
@click.option("--out", "out", type=click.Path(), required=True, help="New dataset folder.")
@click.option("--count", type=int, default=100, show_default=True, help="Number of samples, 1..1000000 (grades round-robin 0..4).")
@click.option("--size", type=IntRange(MIN_SIDE, MAX_IMAGE_SIDE), default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The same seed gives identical files.")
@click.option("--no-split", is_flag=True, help="Leave the split column out of labels.csv.")
@click.option("--workers", type=IntRange(0), default=min(4, os.cpu_count() or 1), show_default=True,
              help="Rendering processes (the output does not depend on it).")
@click.option("--contact-sheet", "sheet", type=click.Path(), default=None, help="Also write a PNG grid, one row per grade (its folder is created).")
def phantom(out: str, count: int, size: int, seed: int, no_split: bool, workers: int, sheet: str | None) -> None:
    """Render procedural paired retinas (image, masks, grade) in the dataset format."""
    from drgan.data.phantom import write_phantom_dataset

    if sheet:
        from drgan.data.contact_sheet import is_contact_sheet
        from drgan.io import check_output_file

        check_output_file(sheet, ".png", "a contact sheet", is_contact_sheet, [out], make_parent=True)  # before the rendering
    root = write_phantom_dataset(out, count, size, seed, split=not no_split, progress=True, workers=workers)
    click.echo(f"wrote {count} phantom samples to {root}")
    if sheet:
        from drgan.data.contact_sheet import save_contact_sheet
        from drgan.data.decode import read_rgb
        from drgan.data.format import open_dataset

        index = open_dataset(root)
        rows: list[list] = [[] for _ in range(NUM_GRADES)]
        for s in index.samples:
            if len(rows[s.grade]) < 6:
                rows[s.grade].append(read_rgb(s.image)[0])
        keep = [g for g in range(NUM_GRADES) if rows[g]]
        save_contact_sheet([rows[g] for g in keep], sheet, [f"grade {g}" for g in keep])
        click.echo(f"wrote {sheet}")


@click.group()
def masks() -> None:
    """Structural masks from photographs."""


@masks.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", type=click.Path(), required=True, help="New dataset folder.")
@click.option("--grade", type=IntRange(0, NUM_GRADES - 1), default=0, show_default=True,
              help="Grade written to labels.csv for every image.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (counted) instead of stopping.")
def extract(images: tuple[str, ...], out: str, grade: int, skip_bad: bool) -> None:
    """Extract vessel, disc and field-of-view masks from photographs into a dataset.

    Each image is cropped to its field of view and padded square; an overlay PNG per image
    (overlays/<id>.png) shows the masks for checking by eye.
    """
    from tqdm import tqdm

    from drgan.data.dataset_writer import DatasetWriter
    from drgan.data.decode import read_rgb
    from drgan.data.labels import id_problem
    from drgan.data.masks import extract_structure, overlay
    from drgan.data.preprocess import check_has_content, crop_square, fov_box, square_window

    ids = [Path(p).stem for p in images]
    for path, sid in zip(images, ids):  # before any work: the dataset's reader would refuse the id
        if (problem := id_problem(sid)) is not None:
            raise DrganError(f"{path}: {problem} (ids come from file names); rename the file")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DrganError(f"duplicate image names {dup}: ids come from file names")
    skipped = 0
    with DatasetWriter(out) as writer:  # a failure removes the folder: a retry starts clean
        (writer.root / "overlays").mkdir()
        for path, sid in tqdm(list(zip(images, ids)), desc="masks", unit="img"):
            try:
                image, notes = read_rgb(path)
                check_has_content(image, path)
            except DrganError as exc:
                if not skip_bad:
                    raise
                click.echo(f"skipped: {exc}", err=True)
                skipped += 1
                continue
            for note in notes:  # grayscale, RGBA, 16-bit: converted, and said so
                tqdm.write(f"note: {note}", file=sys.stderr)
            image = crop_square(image, square_window(fov_box(image)))
            st = extract_structure(image)
            writer.add(sid, image, {"vessel": st["vessel"], "disc": st["disc"]}, grade,
                       extra={f"overlays/{sid}.png": overlay(image, st)})
        if not writer.rows:
            raise DrganError("no image could be read")
        writer.close()
    click.echo(f"wrote {len(writer.rows)} samples to {out}" + (f"; skipped {skipped}" if skipped else ""))
