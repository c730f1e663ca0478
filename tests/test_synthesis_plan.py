"""The synthesis plan and its shards (parameters, membership, seeds) and the set fingerprint
(the lesion statistics digest, damaged or absent fingerprints)."""
import dataclasses

import pytest

from drgan.errors import ParameterError, UsageError
from drgan.synthesis.plan import Plan, Shard


def test_a_single_shard_and_a_single_image_are_accepted():
    assert Shard.parse("0/1") == Shard(0, 1)
    plan = Plan(count=1, grades=(2,), seed=0, batch=1)
    assert (plan.num_batches, list(plan.batch_items(0)), plan.shard_size(Shard(0, 1))) == (1, [0], 1)


@pytest.mark.parametrize("text", ["x", "1", "1/2/3", "a/2", ""])
def test_a_shard_not_of_the_form_i_over_n_is_a_usage_error(text):
    with pytest.raises(UsageError, match="expected i/n"):
        Shard.parse(text)


@pytest.mark.parametrize("text", ["0/0", "-1/2", "2/2"])
def test_a_shard_outside_its_count_is_bad_input_not_usage(text):
    with pytest.raises(ParameterError, match="need 0 <= i < n") as err:
        Shard.parse(text)
    assert not isinstance(err.value, UsageError)


@pytest.mark.parametrize("kw, message", [
    ({"count": 0}, "need at least one image"),
    ({"batch": 0}, "batch 0: need at least 1"),
    ({"grades": (1, 1)}, "each grade once"),
    ({"grades": ()}, "grades must lie in"),
])
def test_plan_refuses_bad_parameters(kw, message):
    with pytest.raises(ParameterError, match=message):
        Plan(**{"count": 5, "grades": (0, 1), "seed": 0, "batch": 1, **kw})


def test_plans_and_shards_are_immutable_hashable_values():
    plan, shard = Plan(count=5, grades=(0, 1), seed=0, batch=2), Shard.parse("1/3")
    assert hash(plan) == hash(Plan(count=5, grades=(0, 1), seed=0, batch=2)) and hash(shard) == hash(Shard(1, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.count = 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        shard.index = 0


def test_in_shard_agrees_with_the_shards_batches():
    plan = Plan(count=23, grades=(0, 1, 2, 3, 4), seed=3, batch=4)
    for n in (1, 2, 3, 7):
        for index in range(n):
            shard = Shard(index, n)
            mine = {i for k in plan.shard_batches(shard) for i in plan.batch_items(k)}
            assert {i for i in range(plan.count) if plan.in_shard(i, shard)} == mine
            assert len(mine) == plan.shard_size(shard)


def test_item_seeds_use_all_63_bits():
    """Seeds are the top 63 bits of 64-bit SeedSequence words: below 2**63, and not fewer bits."""
    plan = Plan(count=100, grades=(0,), seed=7, batch=4)
    seeds = [s for i in range(32) for s in plan.item_seeds(i)]
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert max(seeds) >= 2 ** 62
    assert len(set(seeds)) == len(seeds)


def test_lesion_stats_id_is_default_without_a_file_and_a_digest_of_the_statistics_as_loaded(tmp_path):
    import json

    from drgan.data.lesion_stats import DEFAULT_STATS
    from drgan.synthesis.fingerprint import lesion_stats_id

    assert lesion_stats_id(None) == "default"
    data = DEFAULT_STATS.to_dict()
    plain, reordered, other = tmp_path / "plain.json", tmp_path / "reordered.json", tmp_path / "other.json"
    plain.write_text(json.dumps(data))
    # the same statistics, grades and fields in another order and formatted otherwise
    shuffled = {"grades": {g: {t: dict(reversed(list(s.items()))) for t, s in reversed(list(types.items()))}
                           for g, types in reversed(list(data["grades"].items()))}}
    reordered.write_text(json.dumps(shuffled, indent=3))
    data["grades"]["0"]["ma"]["log_area_mean"] += 0.5
    other.write_text(json.dumps(data))
    digest = lesion_stats_id(str(plain))
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert lesion_stats_id(str(reordered)) == digest
    assert lesion_stats_id(str(other)) != digest


def test_fingerprint_check_says_whether_the_folder_holds_this_set(tmp_path):
    from drgan.synthesis import fingerprint as fp

    setup = {"seed": 0, "structures": {"seed": 0, "sha256": "0" * 64}}
    assert fp.check(tmp_path / "new", setup) is False
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".drgan.lock").write_text("")
    assert fp.check(tmp_path / "locked", setup) is False  # a job killed before its first write
    fp.record(tmp_path / "locked", setup, lambda path, data: path.write_bytes(data))
    assert fp.check(tmp_path / "locked", setup) is True


def test_a_damaged_fingerprint_or_a_file_is_one_error(tmp_path):
    from drgan.errors import DrganError
    from drgan.synthesis import fingerprint as fp

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / fp.FILE_NAME).write_text('{"seed": 0')  # cut short
    with pytest.raises(DrganError, match="damaged set fingerprint"):
        fp.check(tmp_path / "set", {"seed": 0})
    (tmp_path / "file").write_text("x")
    with pytest.raises(DrganError, match="exists and is not a folder"):
        fp.check(tmp_path / "file", {"seed": 0})


def test_the_bound_is_the_lane_group_with_most_time_per_lane_and_the_main_thread_is_one_lane():
    from drgan.synthesis.stages import StageTimes

    times = StageTimes({"placement": 8, "main": 1, "device": 1, "nvjpeg": 1, "output": 8})
    for stage, seconds in (("placement", 40.0), ("rasterization", 1.0), ("generation", 3.0), ("encoding", 30.0),
                           ("writing", 2.0)):
        times.add(stage, seconds)
    assert times.bound() == "placement"          # 5 s per placement lane, 4 s on the device
    times.add("queueing", 4.5)
    assert times.bound() == "placement"
    times.add("queueing", 1.0)                  # the main thread's 5.5 s: the GPU waits on its launches
    assert times.bound() == "queueing" and times.device_seconds() == 4.0
    times.add("nvjpeg", 6.0)                    # GPU JPEG beside generation: a lane of its own, not device time
    assert times.bound() == "nvjpeg" and times.device_seconds() == 4.0
