"""The batched torch rasterizer against the numpy reference drawing of the same primitives.

Tolerance: a pixel may differ only where its ellipse equation ((u/a)^2 + (v/b)^2, in float64) is
within 1e-5 of 1, the border, where another device's float32 rounding (fused multiply-add) may
fall on the other side. The reference divides by the semi-axes as float64 scalars (NumPy 2), which
moves a border pixel now and then on the CPU too.
"""
import numpy as np
import pytest
import torch

from drgan.config import COND_CHANNELS
from drgan.data.lesion_stats import LESION_TYPES
from drgan.data.lesions import draw_primitives, imitate_lesions, lesion_primitives
from drgan.synthesis.raster import condition_masks
from drgan.synthesis.structures import DeviceStructures, StructurePool

BORDER = 1e-5
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def border_distance(rows: np.ndarray, y: int, x: int) -> float:
    """Smallest |q - 1| over the ellipses in rows at pixel (y, x)."""
    _, cy, cx, a, b, angle = rows.T
    dy, dx = y - cy, x - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
    return float(np.abs(u * u + v * v - 1).min()) if len(rows) else np.inf


def assert_same(got: np.ndarray, want: np.ndarray, primitives: list[np.ndarray]) -> None:
    """got/want: bool (B, 8, R, R); lesion planes may differ only on the border of an ellipse."""
    assert (got[:, :2] == want[:, :2]).all()
    for b, c, y, x in np.argwhere(got != want):
        rows = primitives[b][primitives[b][:, 0] == c - 2]
        assert border_distance(rows, y, x) < BORDER, (b, COND_CHANNELS[c], y, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [96, 333])
def test_placed_lesions_match_the_reference(device, size):
    pool = StructurePool.phantom(size, 7)
    structures = DeviceStructures(pool, size, torch.device(device), batch=10)
    items = [(i % 4, i % 5, i) for i in range(10)]        # (structure, grade, seed)
    primitives, want = [], []
    for j, grade, seed in items:
        p, counts = lesion_primitives(pool.geometry(j), grade, np.random.default_rng(seed))
        masks, ref_counts = imitate_lesions(pool.get(j), grade, np.random.default_rng(seed))
        assert counts == ref_counts
        primitives.append(p)
        want.append(np.stack([pool.get(j)["vessel"], pool.get(j)["disc"], *(masks[t] for t in LESION_TYPES)]) > 0)
    assert sum(map(len, primitives)) > 50
    got = condition_masks(structures.planes, structures.slots([j for j, _, _ in items]), primitives).cpu().numpy()
    assert got.dtype == np.float32 and got.max() == 1 and set(np.unique(got)) == {0, 1}
    assert_same(got.astype(bool), np.stack(want), primitives)


@pytest.mark.parametrize("device", DEVICES)
def test_random_ellipses_across_the_border_match_the_reference(device):
    """Ellipses of every size and angle, many cut by the image border, overlapping freely."""
    size, rng = 64, np.random.default_rng(0)
    n = 300
    prims = np.stack([rng.integers(0, len(LESION_TYPES), n), rng.uniform(-10, size + 10, n), rng.uniform(-10, size + 10, n),
                      rng.uniform(0.5, 20, n), rng.uniform(0.5, 20, n), rng.uniform(0, np.pi, n)], 1)
    primitives = [prims[:150], prims[150:]]
    everywhere = {"vessel": np.zeros((size, size), np.uint8), "disc": np.zeros((size, size), np.uint8),
                  "fov": np.full((size, size), 255, np.uint8)}
    pool = StructurePool(["open"], lambda j: everywhere, {"kind": "test"})
    structures = DeviceStructures(pool, size, torch.device(device), batch=2)
    got = condition_masks(structures.planes, structures.slots([0, 0]), primitives).cpu().numpy().astype(bool)
    want = []
    for p in primitives:
        drawn = draw_primitives(p, (size, size))
        want.append(np.stack([np.zeros((size, size), bool)] * 2 + [drawn[t] for t in LESION_TYPES]))
    assert np.stack(want).any()
    assert_same(got, np.stack(want), primitives)


def test_ellipses_split_over_several_passes_draw_the_same_masks(monkeypatch):
    """A batch whose boxes exceed PASS_PIXELS is drawn in runs of ellipses (one larger than the
    limit alone): the masks are those of one pass."""
    from drgan.synthesis import raster

    size, rng = 64, np.random.default_rng(1)
    n = 120
    prims = np.stack([rng.integers(0, len(LESION_TYPES), n), rng.uniform(0, size, n), rng.uniform(0, size, n),
                      rng.uniform(0.5, 30, n), rng.uniform(0.5, 12, n), rng.uniform(0, np.pi, n)], 1)
    primitives = [prims[:70], prims[70:]]
    everywhere = {"vessel": np.zeros((size, size), np.uint8), "disc": np.zeros((size, size), np.uint8),
                  "fov": np.full((size, size), 255, np.uint8)}
    structures = DeviceStructures(StructurePool(["open"], lambda j: everywhere, {"kind": "test"}), size,
                                  torch.device("cpu"), batch=2)
    slots = structures.slots([0, 0])
    one = condition_masks(structures.planes, slots, primitives)
    monkeypatch.setattr(raster, "PASS_PIXELS", 700)
    _, area, passes = raster._box_table(primitives, size)
    assert len(passes) > 5 and area.max() > 700
    assert torch.equal(condition_masks(structures.planes, slots, primitives), one) and one[:, 2:].any()


def test_a_batch_is_a_fixed_number_of_operations_whatever_its_items_and_ellipses():
    """Each operation is a launch the main thread queues on a GPU: their number must not grow with
    the batch (it was about 1,100 for 16 items at 1280, most of them per item or per patch size)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    size = 256
    pool = StructurePool.phantom(size, 3)
    counts = []
    for batch in (2, 12):
        structures = DeviceStructures(pool, size, torch.device("cpu"), batch=batch)
        slots = structures.slots([i % 4 for i in range(batch)])
        primitives = [lesion_primitives(pool.geometry(i % 4), 2 + i % 3, np.random.default_rng(i))[0] for i in range(batch)]
        Count.ops = 0
        with Count():
            condition_masks(structures.planes, slots, primitives)
        counts.append(Count.ops)
    assert counts[0] == counts[1] < 80, counts

def test_structure_slots_are_reused_least_recently_used_first():
    size = 32
    pool = StructurePool([str(j) for j in range(5)], lambda j: {"vessel": np.full((size, size), 255 * (j % 2), np.uint8),
                                                                "disc": np.zeros((size, size), np.uint8),
                                                                "fov": np.full((size, size), 255, np.uint8)}, {"kind": "test"})
    structures = DeviceStructures(pool, size, torch.device("cpu"), batch=2)
    structures.planes = structures.planes[:2]      # two slots: force evictions
    assert structures.slots([0, 1]) == [0, 1]
    assert structures.slots([1, 2]) == [1, 0]      # 0 was the least recently used
    assert structures.planes[0, 0].max() == 0 and structures.planes[1, 0].min() == 255   # 2: even, 1: odd
    assert structures.slots([3, 2]) == [1, 0]


def test_a_structure_without_one_of_its_masks_is_one_named_error():
    from drgan.errors import DrganError

    pool = StructurePool(["x"], lambda j: {"vessel": np.zeros((8, 8), np.uint8), "disc": np.zeros((8, 8), np.uint8)},
                         {"kind": "test"})
    with pytest.raises(DrganError, match="^structure lacks the 'fov' mask$"):
        pool.get(0)


def test_ellipses_off_the_image_or_none_at_all_draw_nothing_and_lesions_stay_where_allowed():
    size = 32
    yy, xx = np.mgrid[:size, :size]
    fov = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 12 ** 2).astype(np.uint8) * 255   # a disc of view, not the frame
    disc = ((yy - 16) ** 2 + (xx - 24) ** 2 <= 3 ** 2).astype(np.uint8) * 255
    masks = {"vessel": np.zeros((size, size), np.uint8), "disc": disc, "fov": fov}
    structures = DeviceStructures(StructurePool(["s"], lambda j: masks, {"kind": "test"}), size, torch.device("cpu"), batch=2)
    slots = structures.slots([0, 0])
    assert not condition_masks(structures.planes, slots, [np.zeros((0, 6))] * 2)[:, 2:].any()
    below = np.array([[0, 3 * size, 10, 4, 4, 0]])                     # wholly below the image
    assert not condition_masks(structures.planes, slots, [below, np.zeros((0, 6))])[:, 2:].any()
    ma, membrane = LESION_TYPES.index("ma"), LESION_TYPES.index("membrane")
    wide = np.array([[ma, 16, 16, 20, 20, 0], [membrane, 16, 16, 20, 20, 0]])   # covers the whole frame
    got = condition_masks(structures.planes, slots, [wide, np.zeros((0, 6))]).numpy()
    allowed = (fov > 0) & (disc == 0)
    assert np.array_equal(got[0, 2 + ma] > 0, allowed)
    assert np.array_equal(got[0, 2 + membrane] > 0, allowed | (disc > 0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", [160, 333, 48])
def test_lesions_drawn_at_the_datas_side_are_resampled_as_training_resamples_them(device, side):
    """drawn_at: the ellipses drawn at the data's side, then resized to the run's as the loaders
    resize a mask (Pillow's antialiased bilinear, 8-bit), then clipped: within one 8-bit step of
    that reference (a border pixel at the data's side may round otherwise on a GPU), soft, and
    with about the lesions' area."""
    from PIL import Image

    from drgan.synthesis.raster import scaled

    size = 64
    pool = StructurePool.phantom(size, 7)
    structures = DeviceStructures(pool, size, torch.device(device), batch=6)
    items = [(i % 4, 1 + i % 4, i) for i in range(6)]        # (structure, grade 1..4, seed)
    primitives = [lesion_primitives(pool.geometry(j), grade, np.random.default_rng(seed))[0] for j, grade, seed in items]
    slots = structures.slots([j for j, _, _ in items])
    got = condition_masks(structures.planes, slots, primitives, drawn_at=side).cpu().numpy()
    hard = condition_masks(structures.planes, slots, primitives).cpu().numpy()
    want = []
    for (j, _, _), p in zip(items, primitives):
        drawn, masks = draw_primitives(scaled(p, side / size), (side, side)), pool.get(j)
        allowed = (masks["fov"] > 0) & (masks["disc"] == 0)
        want.append([np.asarray(Image.fromarray(drawn[t].astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR))
                     * (allowed | (masks["disc"] > 0) if t == "membrane" else allowed) / 255 for t in LESION_TYPES])
    diff = np.abs(got[:, 2:] - np.array(want))
    assert (diff > 1.01 / 255).mean() < 1e-3 and (device != "cpu" or diff.max() <= 1.01 / 255)
    assert (got[:, :2] == hard[:, :2]).all()                                 # vessel and disc as before
    assert np.array_equal(np.round(got * 255), got * 255)                    # 8-bit steps
    lesions = got[:, 2:]
    assert ((lesions > 0) & (lesions < 1)).sum() > ((lesions == 1).sum())    # soft edges, faint small lesions
    # About the area drawn at the run's side (pixel centres miscount a small ellipse's area there).
    assert abs(lesions.sum() / hard[:, 2:].sum() - 1) < 0.25


@pytest.mark.parametrize("side", [96, 160, 333])
def test_a_lesion_drawn_at_another_side_stays_where_it_was_placed(side):
    """Pixel centres map between the sides as resampling maps them: the resampled lesion's centroid
    is the ellipse's centre at the run's side, its area the ellipse's."""
    size = 64
    everywhere = {"vessel": np.zeros((size, size), np.uint8), "disc": np.zeros((size, size), np.uint8),
                  "fov": np.full((size, size), 255, np.uint8)}
    structures = DeviceStructures(StructurePool(["open"], lambda j: everywhere, {"kind": "test"}), size, torch.device("cpu"), 1)
    cy, cx, a, b = 20.3, 40.7, 4.0, 2.5
    primitives = [np.array([[LESION_TYPES.index("he"), cy, cx, a, b, 0.4]])]
    plane = condition_masks(structures.planes, structures.slots([0]), primitives, drawn_at=side)[0, 2 + LESION_TYPES.index("he")].numpy()
    rows, cols = np.mgrid[:size, :size]
    # A centre mapped without the half-pixel terms is half a pixel off.
    assert abs((plane * rows).sum() / plane.sum() - cy) < 0.1 and abs((plane * cols).sum() / plane.sum() - cx) < 0.1
    assert abs(plane.sum() / (np.pi * a * b) - 1) < 0.03


def test_resampling_in_parts_equals_resampling_at_once(monkeypatch):
    """The float copy resampled from the data's side is bounded (RESAMPLE_BYTES): item by item, the
    same conditions."""
    from drgan.synthesis import raster

    size, side = 64, 160
    pool = StructurePool.phantom(size, 7)
    structures = DeviceStructures(pool, size, torch.device("cpu"), batch=5)
    primitives = [lesion_primitives(pool.geometry(j), 4, np.random.default_rng(j))[0] for j in range(5)]
    slots = structures.slots(list(range(5)))
    whole = condition_masks(structures.planes, slots, primitives, drawn_at=side)
    calls, interpolate = [], raster.F.interpolate
    monkeypatch.setattr(raster.F, "interpolate", lambda *a, **k: calls.append(len(a[0])) or interpolate(*a, **k))
    for limit, parts in ((2 * 4 * 6 * side * side, [2, 2, 1]), (1, [1] * 5)):   # two items at a time; less than one
        monkeypatch.setattr(raster, "RESAMPLE_BYTES", limit)
        calls.clear()
        assert torch.equal(condition_masks(structures.planes, slots, primitives, drawn_at=side), whole)
        assert calls == parts
    assert whole[:, 2:].max() == 1


def test_resampled_lesions_are_clipped_to_where_lesions_may_lie():
    """Frame-filling lesions drawn at another side: nothing outside the field of view or on the disc
    (membranes: on the disc too)."""
    size = 32
    yy, xx = np.mgrid[:size, :size]
    fov = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 12 ** 2).astype(np.uint8) * 255
    disc = ((yy - 16) ** 2 + (xx - 24) ** 2 <= 3 ** 2).astype(np.uint8) * 255
    masks = {"vessel": np.zeros((size, size), np.uint8), "disc": disc, "fov": fov}
    structures = DeviceStructures(StructurePool(["s"], lambda j: masks, {"kind": "test"}), size, torch.device("cpu"), 1)
    ma, membrane = LESION_TYPES.index("ma"), LESION_TYPES.index("membrane")
    wide = np.array([[ma, 16, 16, 20, 20, 0], [membrane, 16, 16, 20, 20, 0]], float)
    got = condition_masks(structures.planes, structures.slots([0]), [wide], drawn_at=80)[0].numpy()
    allowed = (fov > 0) & (disc == 0)
    assert got[2 + ma][allowed].min() == 1 and not got[2 + ma][~allowed].any()
    assert got[2 + membrane][fov > 0].min() == 1 and not got[2 + membrane][fov == 0].any()
