"""Prepared sets: geometry of the stored crops, bad images, atomic writes, reopening."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kdlandmark.data import prepare as prepare_mod
from kdlandmark.data.crop import DEFAULT_MARGIN, apply_affine, crop_affine, landmark_box
from kdlandmark.data.formats import open_writer, read_dataset
from kdlandmark.data.prepare import (
    DEFAULT_CONTEXT_MARGIN,
    crop_image,
    decode_image,
    format_summary,
    prepare_dataset,
)
from kdlandmark.data.samples import DatasetError, FaceSample
from kdlandmark.data.store import PreparedSet, save_array_atomic, write_soft_landmarks
from kdlandmark.layouts import get_layout

L300 = get_layout("300w")
LWFLW = get_layout("wflw")
MARK = 30            # the landmark that carries a red dot in every source image
SIZE = 96            # small stored crops keep the tests fast


def face_image(rng: np.random.Generator, h: int, w: int, landmarks: np.ndarray, side: float) -> np.ndarray:
    """Dark noisy BGR image with one red Gaussian dot at ``landmarks[MARK]``."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(0, 30, size=(h, w, 3)).astype(np.float32)
    sigma = max(1.5, side / 30.0)
    x, y = landmarks[MARK]
    img[..., 2] += 220.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))   # red in BGR
    return np.clip(img, 0, 255).astype(np.uint8)


def random_face(rng: np.random.Generator, n: int, h: int, w: int, side: float) -> np.ndarray:
    cx, cy = rng.uniform(0.35 * w, 0.65 * w), rng.uniform(0.35 * h, 0.65 * h)
    return np.stack([cx + rng.uniform(-side / 2, side / 2, n), cy + rng.uniform(-side / 2, side / 2, n)],
                    axis=1).astype(np.float32)


# (part, image h, image w, face side): faces from small (crop upscales) to large (crop downscales).
PARTS_300W = [("afw", 200, 240, 60.0), ("afw", 700, 600, 380.0), ("helen/trainset", 300, 300, 120.0),
              ("lfpw/trainset", 900, 800, 520.0), ("helen/testset", 260, 330, 90.0),
              ("lfpw/testset", 500, 420, 200.0), ("ibug", 320, 320, 140.0)]


def make_300w(root: Path, seed: int = 0, parts: list | None = None) -> Path:
    rng = np.random.default_rng(seed)
    with open_writer("300w", root) as writer:
        for part, h, w, side in parts or PARTS_300W:
            lm = random_face(rng, L300.num_points, h, w, side)
            writer.add(part, face_image(rng, h, w, lm, side), FaceSample("", lm, landmark_box(lm)))
    return root


@pytest.fixture(scope="module")
def tiny_300w(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_300w(tmp_path_factory.mktemp("w300") / "300W")


@pytest.fixture(scope="module")
def prepared_300w(tiny_300w: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedSet:
    return prepare_dataset("300w", tiny_300w, tmp_path_factory.mktemp("prep") / "set", size=SIZE, workers=1)


def dot_centroid(channel: np.ndarray, radius: int = 4) -> np.ndarray:
    ch = channel.astype(np.float64)
    y0, x0 = np.unravel_index(np.argmax(ch), ch.shape)
    ys = slice(max(0, y0 - radius), min(ch.shape[0], y0 + radius + 1))
    xs = slice(max(0, x0 - radius), min(ch.shape[1], x0 + radius + 1))
    w = np.clip(ch[ys, xs] - np.median(ch), 0, None)
    yy, xx = np.mgrid[ys, xs]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def test_shapes_dtypes_and_meta(prepared_300w: PreparedSet, tiny_300w: Path) -> None:
    p = prepared_300w
    meta = json.loads((p.root / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dataset"] == "300w" and meta["layout"] == "300w"
    assert meta["num_points"] == 68 and meta["size"] == SIZE
    assert meta["margin"] == DEFAULT_MARGIN and meta["context_margin"] == DEFAULT_CONTEXT_MARGIN
    assert meta["skipped"] == [] and meta["source_root"] == str(tiny_300w.absolute())
    assert p.split_names == ["train", "test-common", "test-challenging"]
    assert p.layout is L300 and p.size == SIZE
    assert p.view_scale == pytest.approx((1 + 2 * DEFAULT_MARGIN) / (1 + 2 * DEFAULT_CONTEXT_MARGIN))
    counts = {"train": 4, "test-common": 2, "test-challenging": 1}
    for name, m in counts.items():
        sp = p.split(name)
        assert len(sp) == m == meta["splits"][name]["count"]
        assert meta["splits"][name]["crop_from"] == ("landmarks" if name == "train" else "box")
        assert isinstance(sp.images, np.memmap) and not sp.images.flags.writeable
        assert sp.images.shape == (m, SIZE, SIZE, 3) and sp.images.dtype == np.uint8
        assert sp.landmarks.shape == (m, 68, 2) and sp.landmarks.dtype == np.float32
        assert sp.affines.shape == (m, 2, 3) and sp.affines.dtype == np.float64
        assert sp.occluded.shape == (m, 68) and sp.occluded.dtype == bool and not sp.occluded.any()
        assert sp.boxes.shape == (m, 4) and sp.boxes.dtype == np.float32
        assert len(sp.image_paths) == len(sp.attributes) == m and sp.soft_landmarks is None
        assert all(Path(path).is_file() for path in sp.image_paths)
    assert {a["subset"] for a in p.split("test-common").attributes} == {"helen/testset", "lfpw/testset"}
    with pytest.raises(KeyError, match="no split 'valid'"):
        p.split("valid")


def test_stored_landmarks_are_the_affine_of_the_originals(prepared_300w: PreparedSet,
                                                          tiny_300w: Path) -> None:
    for name in prepared_300w.split_names:
        sp = prepared_300w.split(name)
        originals = read_dataset("300w", tiny_300w, name)
        assert [s.image_path for s in originals] == sp.image_paths
        orig = np.stack([s.landmarks for s in originals])
        np.testing.assert_allclose(sp.landmarks, apply_affine(sp.affines, orig), atol=1e-3)
        for i, s in enumerate(originals):
            np.testing.assert_allclose(sp.affines[i], crop_affine(s.box, SIZE, DEFAULT_CONTEXT_MARGIN))
            np.testing.assert_allclose(sp.boxes[i], s.box, rtol=1e-6)
        # Every face fits its crop: landmarks inside the model's at-rest view.
        lo = (SIZE - 1) / 2 - prepared_300w.view_scale * SIZE / 2
        assert (sp.landmarks > lo - 1).all() and (sp.landmarks < SIZE - lo).all()


def test_marked_source_pixel_ends_at_the_stored_landmark(prepared_300w: PreparedSet) -> None:
    """The red dot drawn at landmark MARK in each source photo is found at the stored landmark (RGB)."""
    for name in prepared_300w.split_names:
        sp = prepared_300w.split(name)
        for i in range(len(sp)):
            img = np.asarray(sp.images[i])
            assert img[..., 0].max() > 80 and img[..., 2].max() < 80          # red is channel 0: RGB
            err = np.linalg.norm(dot_centroid(img[..., 0]) - sp.landmarks[i, MARK])
            assert err < 0.5, f"{name}[{i}] dot off its landmark by {err:.2f} px"


def test_test_splits_crop_from_the_dataset_box(tmp_path: Path) -> None:
    """WFLW has its own boxes: train crops follow the landmarks' box, test crops the face box."""
    rng = np.random.default_rng(1)
    with open_writer("wflw", tmp_path / "wflw") as writer:
        for part in ("train", "train", "test"):
            lm = random_face(rng, LWFLW.num_points, 240, 260, 100.0)
            x0, y0, x1, y1 = landmark_box(lm)
            box = (x0 - 12.0, y0 - 30.0, x1 + 8.0, y1 + 5.0)
            img = rng.integers(0, 255, size=(240, 260, 3), dtype=np.uint8)
            writer.add(part, img, FaceSample("", lm, box))
    p = prepare_dataset("wflw", tmp_path / "wflw", tmp_path / "prep", size=64, workers=1)
    assert p.layout is LWFLW and p.split_names == ["train", "test"]
    for name, from_landmarks in (("train", True), ("test", False)):
        originals = read_dataset("wflw", tmp_path / "wflw", name)
        for s, affine in zip(originals, p.split(name).affines, strict=True):
            box = landmark_box(s.landmarks) if from_landmarks else s.box
            np.testing.assert_allclose(affine, crop_affine(box, 64, DEFAULT_CONTEXT_MARGIN))
            assert not np.allclose(landmark_box(s.landmarks), s.box)
    assert p.split("test").attributes[0].keys() >= {"pose", "occlusion", "blur"}


def test_corrupt_image_raises_naming_the_file(tmp_path: Path) -> None:
    root = make_300w(tmp_path / "data")
    bad = sorted((root / "helen" / "trainset").glob("*.jpg"))[0]
    bad.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(DatasetError) as info:
        prepare_dataset("300w", root, tmp_path / "prep", size=SIZE, workers=1)
    assert info.value.path == str(bad) and "decode" in info.value.problem
    assert not PreparedSet.is_complete(tmp_path / "prep")
    assert not list((tmp_path / "prep").rglob(".*.tmp-*"))                # no temporary files left


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    root = make_300w(tmp_path / "data")
    bad = sorted((root / "ibug").glob("*.jpg"))[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as info:
        decode_image(bad)
    assert info.value.path == str(bad)
    with pytest.raises(DatasetError) as info:
        prepare_dataset("300w", root, tmp_path / "prep", size=SIZE, splits=["test-challenging"], workers=1)
    assert info.value.path == str(bad)


def test_skip_bad_skips_records_and_keeps_order_with_worker_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    parts = [("afw", 150, 160, 60.0)] * 5 + [("helen/trainset", 170, 150, 70.0)] * 3 + \
        [("lfpw/trainset", 400, 380, 250.0)] * 3
    root = make_300w(tmp_path / "data", seed=3, parts=parts)
    bad = sorted((root / "afw").glob("*.jpg"))[2]
    bad.write_bytes(b"\x00" * 100)
    monkeypatch.setattr(prepare_mod, "CHUNK", 2)                           # several tasks for the pool
    with caplog.at_level("WARNING", logger="kdlandmark"):
        p = prepare_dataset("300w", root, tmp_path / "prep", size=SIZE, workers=2, skip_bad=True)
    sp = p.split("train")
    assert len(sp) == 10 and p.meta["splits"]["train"]["skipped"] == 1
    assert [s[0] for s in p.meta["skipped"]] == [str(bad)]
    assert p.meta["skipped"][0][1].startswith("cannot decode image")
    assert str(bad) not in sp.image_paths and "skipped 1 bad sample" in caplog.text
    originals = {s.image_path: s.landmarks for s in read_dataset("300w", root, "train", skip_bad=True)}
    for i, path in enumerate(sp.image_paths):                              # rows still line up
        np.testing.assert_allclose(sp.landmarks[i], apply_affine(sp.affines[i], originals[path]), atol=1e-3)
        assert np.linalg.norm(dot_centroid(np.asarray(sp.images[i])[..., 0]) - sp.landmarks[i, MARK]) < 0.5
    assert "1 skipped" in format_summary(p) and str(bad) in format_summary(p)


def test_reader_skips_are_recorded_too(tmp_path: Path) -> None:
    root = make_300w(tmp_path / "data")
    pts = sorted((root / "afw").glob("*.pts"))[0]
    pts.write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(DatasetError) as info:
        prepare_dataset("300w", root, tmp_path / "prep", size=SIZE, splits=["train"], workers=1)
    assert info.value.path == str(pts)
    p = prepare_dataset("300w", root, tmp_path / "prep", size=SIZE, splits=["train"], workers=1,
                        skip_bad=True)
    assert len(p.split("train")) == 3 and [s[0] for s in p.meta["skipped"]] == [str(pts)]


def test_missing_or_corrupt_files_are_named(prepared_300w: PreparedSet, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared_300w.root, root)
    assert PreparedSet.is_complete(root)

    (root / "test-challenging" / "boxes.npy").unlink()
    with pytest.raises(DatasetError, match="boxes.npy"):
        PreparedSet(root)
    assert not PreparedSet.is_complete(root)
    shutil.copy(prepared_300w.root / "test-challenging" / "boxes.npy", root / "test-challenging")

    np.save(root / "train" / "landmarks.npy", np.zeros((3, 68, 2), np.float32))     # wrong count
    with pytest.raises(DatasetError, match=r"landmarks.npy.*shape"):
        PreparedSet(root)
    np.save(root / "train" / "landmarks.npy", np.zeros((4, 68, 2), np.float64))     # wrong dtype
    with pytest.raises(DatasetError, match=r"landmarks.npy.*dtype"):
        PreparedSet(root)
    (root / "train" / "landmarks.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"landmarks.npy.*corrupt"):
        PreparedSet(root)
    shutil.copy(prepared_300w.root / "train" / "landmarks.npy", root / "train")

    (root / "train" / "samples.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"samples.json.*0 records"):
        PreparedSet(root)
    shutil.copy(prepared_300w.root / "train" / "samples.json", root / "train")

    (root / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta.json.*corrupt"):
        PreparedSet(root)
    (root / "meta.json").unlink()
    with pytest.raises(DatasetError, match=r"meta.json.*missing"):
        PreparedSet(root)
    assert not PreparedSet.is_complete(root)


def test_a_killed_prepare_never_looks_complete(tiny_300w: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prep"
    prepare_dataset("300w", tiny_300w, out, size=SIZE, workers=1)
    assert PreparedSet.is_complete(out)
    calls = {"n": 0}
    real = prepare_mod.save_array_atomic

    def dies_on_the_fifth_array(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        real(path, array)

    monkeypatch.setattr(prepare_mod, "save_array_atomic", dies_on_the_fifth_array)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("300w", tiny_300w, out, size=SIZE, workers=1)
    assert not (out / "meta.json").exists() and not PreparedSet.is_complete(out)
    assert not list(out.rglob(".*.tmp-*"))


def test_reopen_round_trip_and_soft_landmarks(tiny_300w: Path, tmp_path: Path) -> None:
    out = tmp_path / "prep"
    a = prepare_dataset("300w", tiny_300w, out, size=SIZE, workers=1, splits=["train", "test-challenging"])
    b = PreparedSet(out)
    assert b.split_names == ["train", "test-challenging"] and b.meta == a.meta
    for name in b.split_names:
        x, y = a.split(name), b.split(name)
        for field in ("images", "landmarks", "affines", "occluded", "boxes"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.image_paths == y.image_paths and x.attributes == y.attributes
    soft = b.split("train").landmarks + 0.25
    write_soft_landmarks(out, "train", soft)
    c = PreparedSet(out)
    np.testing.assert_array_equal(c.split("train").soft_landmarks, soft)
    assert c.split("test-challenging").soft_landmarks is None
    with pytest.raises(DatasetError, match="soft_landmarks.npy"):
        write_soft_landmarks(out, "train", soft[:2])
    with pytest.raises(DatasetError, match="NaN"):
        write_soft_landmarks(out, "train", np.full_like(soft, np.nan))
    # Preparing again replaces the crops, so soft landmarks made from the old ones are removed.
    prepare_dataset("300w", tiny_300w, out, size=SIZE, workers=1, splits=["train"])
    assert PreparedSet(out).split("train").soft_landmarks is None


def test_save_array_atomic_round_trip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_array_atomic(tmp_path / "sub" / "a.npy", arr)
    save_array_atomic(tmp_path / "sub" / "a.npy", arr * 2)                  # replaces
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "a.npy"), arr * 2)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.npy"]


@pytest.mark.parametrize("side", [40.0, 150.0, 600.0])
def test_crop_image_matches_warp_geometry(side: float) -> None:
    """crop_image (area reduction + warp) and a plain bilinear warp put a dot at the same place."""
    rng = np.random.default_rng(2)
    h = w = 900
    lm = random_face(rng, L300.num_points, h, w, side)
    img = face_image(rng, h, w, lm, side)
    affine = crop_affine(landmark_box(lm), 128, DEFAULT_CONTEXT_MARGIN)
    expected = apply_affine(affine, lm[MARK][None])[0]
    ours = crop_image(img, affine, 128)
    assert ours.shape == (128, 128, 3) and ours.dtype == np.uint8
    assert np.linalg.norm(dot_centroid(ours[..., 0]) - expected) < 0.3
    plain = cv2.cvtColor(cv2.warpAffine(img, affine, (128, 128), flags=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    assert np.abs(ours.astype(float) - plain).mean() < 8.0


def test_crop_outside_the_image_is_black() -> None:
    img = np.full((100, 100, 3), 200, np.uint8)
    for scale_box in (20.0, 45.0, 60.0):                                   # inside: no dark seams at all
        inner = crop_affine((50 - scale_box / 2, 50 - scale_box / 2, 50 + scale_box / 2, 50 + scale_box / 2),
                            16, 0.3)
        assert crop_image(img, inner, 16).min() == 200
    far = crop_affine((1000.0, 1000.0, 1400.0, 1400.0), 32, 0.4)        # downscaling, nowhere near
    assert not crop_image(img, far, 32).any()
    # The image spans [-0.5, 99.5] (pixel centres at integers): this crop's right half lies outside.
    half = crop_affine((49.5, -0.5, 149.5, 99.5), 32, 0.0)
    out = crop_image(img, half, 32)
    assert out[:, :15].min() >= 199 and out[:, 17:].max() == 0
