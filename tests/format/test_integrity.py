"""Integrity at read time: per-member checksums in the index, zstd frame checksums, on_error policies,
and verify's key grammar."""

import hashlib
import io
import json
import logging
import re
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard

from vortex_data.errors import InputError
from vortex_data.format.integrity import SampleError, member_checksums
from vortex_data.format.manifest import load_manifest
from vortex_data.verify import verify
from vortex_data.format.schema import decode_array, encode_array
from vortex_data.stream import make_loader

from resume_helper import assert_resumes_exactly

SIZE = (32, 48)


def member_span(shard, name):
    with tarfile.open(shard) as tf:
        info = tf.getmember(name)
        return info.offset_data, info.size


def flip_byte(shard, name, at=None):
    off, size = member_span(shard, name)
    raw = bytearray(shard.read_bytes())
    raw[off + (size // 2 if at is None else at)] ^= 0x01
    shard.write_bytes(bytes(raw))


def first_sample(manifest):
    m = load_manifest(manifest)
    row = m.read_index().to_pylist()[1]
    return m.shard_paths()[0], row["key"]


def epoch(manifest, **kw):
    loader = make_loader(manifest=str(manifest), batch_size=4, size=SIZE, training=False, **kw)
    return loader, [k for b in loader for k in b["key"]]


def test_index_records_member_checksums_and_zstd_frames_carry_checksums(nyu_copy):
    shard, key = first_sample(nyu_copy)
    row = next(r for r in load_manifest(nyu_copy).read_index().to_pylist() if r["key"] == key)
    with tarfile.open(shard) as tf:
        members = [(n.name.split(".", 1)[1], tf.extractfile(n).read()) for n in tf if n.name.startswith(key + ".")]
    assert dict(row["member_xxh3_64"]) == member_checksums(members)
    assert set(dict(row["member_xxh3_64"])) == {"json", "rgb.jpg", "depth.npy.zst", "seg.npy.zst"}
    depth = dict(members)["depth.npy.zst"]
    assert zstandard.get_frame_parameters(depth).has_checksum


def test_zstd_frames_without_checksum_still_decode_and_corrupt_ones_with_it_fail():
    arr = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    buf = io.BytesIO()
    np.save(buf, arr)
    old = zstandard.ZstdCompressor(level=3).compress(buf.getvalue())  # how shards were written before
    assert not zstandard.get_frame_parameters(old).has_checksum
    assert np.array_equal(decode_array(old, "zst"), arr)
    new = bytearray(encode_array(arr, "zst"))
    new[len(new) // 2] ^= 0x01
    with pytest.raises(zstandard.ZstdError, match="checksum"):
        decode_array(bytes(new), "zst")


@pytest.mark.parametrize("ext", ["rgb.jpg", "depth.npy.zst", "json"])
def test_flipped_byte_is_caught_by_the_loader_naming_shard_key_member(nyu_copy, ext):
    shard, key = first_sample(nyu_copy)
    if ext == "json":
        # A changed digit of fx: still valid JSON, still a plausible number.
        off, size = member_span(shard, f"{key}.json")
        raw = bytearray(shard.read_bytes())
        text = raw[off:off + size].decode()
        pos = off + re.search(r'"fx":(\d)', text).start(1)
        raw[pos] = ord("1") if raw[pos] != ord("1") else ord("2")
        shard.write_bytes(bytes(raw))
    else:
        flip_byte(shard, f"{key}.{ext}")
    with pytest.raises(SampleError) as e:
        epoch(nyu_copy)
    msg = str(e.value)
    assert shard.name in msg and repr(key) in msg and f"{key}.{ext}" in msg and "checksum" in msg


def test_flipped_byte_is_caught_with_dataloader_workers(nyu_copy):
    shard, key = first_sample(nyu_copy)
    flip_byte(shard, f"{key}.rgb.jpg")
    with pytest.raises(SampleError, match=re.escape(f"{key}.rgb.jpg")):
        epoch(nyu_copy, num_workers=2)


def test_skip_mode_finishes_the_epoch_with_a_deterministic_replacement_counted_and_logged(nyu_copy, caplog):
    _, want = epoch(nyu_copy)
    shard, key = first_sample(nyu_copy)
    flip_byte(shard, f"{key}.depth.npy.zst")
    with caplog.at_level(logging.WARNING, logger="vortex_data.stream"):
        loader, got = epoch(nyu_copy, on_error="skip")
    assert len(got) == len(want) == 8 and key not in got
    assert sum(a != b for a, b in zip(got, want)) == 1
    assert len(loader.skipped) == 1 and shard.name in loader.skipped[0] and f"{key}.depth.npy.zst" in loader.skipped[0]
    assert any("bad samples replaced" in r.message and "1 bad" in r.message for r in caplog.records)
    _, again = epoch(nyu_copy, on_error="skip", num_workers=2)
    assert again == got  # same replacement, whatever the worker count


def test_resume_before_a_bad_sample_makes_the_same_replacement(nyu_copy):
    shard, key = first_sample(nyu_copy)  # plan position 1 of the ordered pass
    flip_byte(shard, f"{key}.rgb.jpg")
    kw = dict(manifest=str(nyu_copy), batch_size=1, size=SIZE, training=False, on_error="skip")
    state, before, after = assert_resumes_exactly(lambda: make_loader(**kw), 1, 7,
                                                  make_resumed=lambda: make_loader(num_workers=2, **kw))
    assert state["samples"] == 1 and key not in [k for b in before + after for k in b["key"]]


def test_bad_policy_is_refused(nyu_copy):
    with pytest.raises(ValueError, match="on_error"):
        make_loader(manifest=str(nyu_copy), on_error="ignore")


def test_old_index_without_checksums_is_refused_or_with_the_opt_out_says_so_once(nyu_copy, caplog):
    index = nyu_copy.with_suffix(".parquet")
    table = pq.read_table(index)
    pq.write_table(table.drop(["member_xxh3_64"]), index)
    with pytest.raises(InputError, match=f"{nyu_copy}: the index has no member checksums.*vortex-data reindex"):
        epoch(nyu_copy)
    with caplog.at_level(logging.WARNING, logger="vortex_data.stream"):
        _, got = epoch(nyu_copy, allow_unchecked_index=True)
        epoch(nyu_copy, allow_unchecked_index=True)
    said = [r for r in caplog.records if "no member checksums" in r.message]
    assert len(got) == 8 and len(said) == 1 and str(nyu_copy) in said[0].message
    shard, key = first_sample(nyu_copy)
    flip_byte(shard, f"{key}.depth.npy.zst")  # the zstd frame checksum still catches this one
    with pytest.raises(SampleError) as e:
        epoch(nyu_copy, allow_unchecked_index=True)
    assert shard.name in str(e.value) and repr(key) in str(e.value) and "checksum" in str(e.value)


def test_verify_checks_member_checksums(nyu_copy):
    shard, key = first_sample(nyu_copy)
    flip_byte(shard, f"{key}.rgb.jpg")
    rep = verify(nyu_copy, decode=False)
    assert any(f"{key}.rgb.jpg" in p and "checksum" in p for p in rep.problems)


def test_verify_refuses_keys_outside_the_grammar_in_a_self_consistent_manifest(nyu_copy):
    """Rename every member to '../<name>' and make manifest + index agree: checksums match, the keys do not."""
    m = json.loads(nyu_copy.read_text())
    index = nyu_copy.with_suffix(".parquet")
    rows = pq.read_table(index).to_pylist()
    for entry, shard in zip(m["shards"], load_manifest(nyu_copy).shard_paths()):
        out = io.BytesIO()
        with tarfile.open(shard) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for info in src:
                data_ = src.extractfile(info).read()
                info.name = "../" + info.name
                dst.addfile(info, io.BytesIO(data_))
        shard.write_bytes(out.getvalue())
        entry["bytes"], entry["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    for r in rows:
        r["key"] = "../" + r["key"]
    pq.write_table(pq.read_table(index).from_pylist(rows, schema=pq.read_schema(index)), index)
    nyu_copy.write_text(json.dumps(m))
    rep = verify(nyu_copy)
    assert not rep.ok
    assert all("../nyu/train" in p and "is not '<dataset>/<split>/<frame id>'" in p for p in rep.problems)
    assert len(rep.problems) == 8


def test_trainer_config_and_cli_pass_on_error_to_the_loader(nyu_copy):
    import argparse

    from vortex_data.train.commands import add_train_parser
    from vortex_data.train.config import build_config
    from vortex_data.train.data import LoaderRequest, stream_loader

    sub = argparse.ArgumentParser().add_subparsers()
    args = add_train_parser(sub).parse_args(["--on-error", "skip"])
    cfg = build_config(None, 1, {"on_error": args.on_error})
    assert cfg.on_error == "skip"
    req = LoaderRequest(mixture=None, manifest=str(nyu_copy), split="val", batch_size=4, image_size=SIZE, augment=None,
                        seed=0, training=False, on_error=cfg.on_error)
    assert stream_loader(req).spec.on_error == "skip"


def test_checksums_survive_a_slurm_array_build_and_merge(tmp_path):
    from loader_data import SyntheticConverter
    from vortex_data.format.manifest import merge
    from vortex_data.convert.shards import BuildConfig, build_shards

    parts = []
    for task in range(2):
        cfg = BuildConfig(out_dir=tmp_path / "shards", manifest_dir=tmp_path / "manifests", shard_samples=2,
                          workers=1, progress=False, num_tasks=2, task_index=task)
        parts += build_shards(SyntheticConverter("nyu", 6), cfg).manifests
    merged = merge(parts)
    rows = load_manifest(merged).read_index().to_pylist()
    assert len(rows) == 6 and all(set(dict(r["member_xxh3_64"])) == {"json", "rgb.jpg", "depth.npy.zst", "seg.npy.zst"}
                                  for r in rows)
    shard = load_manifest(merged).shard_paths()[1]
    key = load_manifest(merged).read_index().to_pylist()[2]["key"]
    flip_byte(shard, f"{key}.json", at=3)
    with pytest.raises(SampleError, match=re.escape(f"{key}.json")):
        epoch(merged)
