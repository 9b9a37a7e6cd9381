"""Native-format readers and writers: 300W, WFLW, COFW (v7.3 and v5) and plain folders.

Every format is checked twice: against hand-written files with known values (so the 1-based ->
0-based conversion and the MATLAB transposes are tested independently of our writers) and by a
writer -> reader round trip.  Bad input must raise DatasetError naming the file, or be skipped and
reported with ``skip_bad``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdlandmark.data.formats import (
    DatasetError,
    all_splits,
    base_splits,
    open_writer,
    read_dataset,
    write_cofw_v5,
)
from kdlandmark.data.formats._common import format_pts, read_pts
from kdlandmark.data.samples import FaceSample

W300_PARTS = ["afw", "helen/trainset", "helen/testset", "lfpw/trainset", "lfpw/testset", "ibug",
              "01_Indoor", "02_Outdoor"]


def image(seed: int = 0, h: int = 40, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def face(n: int, seed: int = 0, **attributes) -> FaceSample:
    rng = np.random.default_rng(seed)
    lm = (rng.random((n, 2)) * 30 + 4).astype(np.float32)
    occ = rng.random(n) > 0.5
    return FaceSample(image_path="", landmarks=lm, box=(2.0, 3.0, 37.5, 38.25), attributes=attributes,
                      occluded=occ)


def write_image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image(seed))


def pts_text(points_1based: list[tuple[float, float]], declared: int | None = None) -> str:
    n = len(points_1based) if declared is None else declared
    rows = "".join(f"{x} {y}\n" for x, y in points_1based)
    return f"version: 1\nn_points:  {n}\n{{\n{rows}}}\n"


def known_68() -> np.ndarray:
    """1-based coordinates with distinct x and y per point."""
    return np.stack([np.arange(68) * 0.5 + 1.0, np.arange(68) * 0.25 + 2.0], axis=1)


# ------------------------------------------------------------------------------------------- API

def test_unknown_format_split_and_root() -> None:
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset("aflw", ".", "train")
    with pytest.raises(ValueError, match="test-foo"):
        read_dataset("300w", ".", "test-foo")
    with pytest.raises(DatasetError, match="does-not-exist"):
        read_dataset("wflw", "does-not-exist", "train")
    with pytest.raises(ValueError):
        open_writer("nope", ".")


def test_all_splits() -> None:
    assert all_splits("300w") == ["train", "test-common", "test-challenging", "test-full", "test-private"]
    assert all_splits("WFLW") == ["train", "test", "test-pose", "test-expression", "test-illumination",
                                  "test-makeup", "test-occlusion", "test-blur"]
    assert all_splits("cofw") == ["train", "test"]
    assert all_splits("folder") == ["all"]


# ---------------------------------------------------------------------------------------------- .pts

@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (68, 2), elements=st.floats(-50, 5000, allow_nan=False, allow_infinity=False)))
def test_pts_round_trip(landmarks: np.ndarray) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.pts"
        p.write_text(format_pts(landmarks))
        back = read_pts(p, 68)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, landmarks, atol=1e-3, rtol=1e-6)


def test_pts_text_is_one_based(tmp_path: Path) -> None:
    text = format_pts(np.array([[0.0, 0.0], [9.5, 19.25]]))
    assert "1.000 1.000\n10.500 20.250\n" in text and text.startswith("version: 1\nn_points:  2\n{\n")


# ---------------------------------------------------------------------------------------------- 300W

def test_300w_hand_written_pts_is_zero_based(tmp_path: Path) -> None:
    pts = known_68()
    folder = tmp_path / "300W" / "ibug"  # the download's 300W/ subfolder is accepted
    folder.mkdir(parents=True)
    (folder / "image_003_1.pts").write_text(pts_text([(f"{x:g}", f"{y:g}") for x, y in pts]))
    write_image(folder / "image_003_1.PNG")  # upper-case extension, png
    (samples,) = read_dataset("300w", tmp_path, "test-challenging")
    np.testing.assert_allclose(samples.landmarks, pts - 1.0, atol=1e-6)
    assert samples.landmarks.dtype == np.float32 and samples.landmarks.shape == (68, 2)
    assert samples.box == pytest.approx((0.0, 1.0, 33.5, 17.75))
    assert samples.attributes == {"subset": "ibug", "name": "image_003_1"}
    assert samples.occluded is None and samples.image is None
    assert Path(samples.image_path).name == "image_003_1.PNG"


def _write_300w(root: Path, per_part: dict[str, list[str]]) -> dict[str, FaceSample]:
    """Writes named faces per part; returns image path -> sample."""
    written = {}
    with open_writer("300w", root) as w:
        seed = 0
        for part, names in per_part.items():
            for name in names:
                seed += 1
                s = face(68, seed, name=name)
                written[w.add(part, image(seed), s)] = s
    return written


def test_300w_splits_round_trip_and_order(tmp_path: Path) -> None:
    per_part = {"afw": ["z", "a", "m"], "helen/trainset": ["h1"], "lfpw/trainset": ["l1", "l0"],
                "helen/testset": ["t2", "t1"], "lfpw/testset": ["u1"], "ibug": ["i1", "i0"],
                "01_Indoor": ["in"], "02_Outdoor": ["out"]}
    written = _write_300w(tmp_path, per_part)
    assert base_splits("300w", tmp_path) == ["train", "test-common", "test-challenging", "test-private"]
    expected = {"train": 6, "test-common": 3, "test-challenging": 2, "test-full": 5, "test-private": 2}
    for split, count in expected.items():
        samples = read_dataset("300w", tmp_path, split)
        assert len(samples) == count, split
        for s in samples:
            ref = written[s.image_path]
            np.testing.assert_allclose(s.landmarks, ref.landmarks, atol=1e-3)
            x0, y0 = s.landmarks.min(axis=0)
            x1, y1 = s.landmarks.max(axis=0)
            assert s.box == pytest.approx((x0, y0, x1, y1))
            assert s.occluded is None
    train = read_dataset("300w", tmp_path, "train")
    assert [(s.attributes["subset"], s.attributes["name"]) for s in train] == [
        ("afw", "a"), ("afw", "m"), ("afw", "z"), ("helen/trainset", "h1"),
        ("lfpw/trainset", "l0"), ("lfpw/trainset", "l1")]
    assert [s.image_path for s in read_dataset("300w", tmp_path, "train")] == [s.image_path for s in train]
    full = read_dataset("300w", tmp_path, "test-full")
    assert [s.attributes["subset"] for s in full] == ["helen/testset"] * 2 + ["lfpw/testset"] + ["ibug"] * 2
    private = read_dataset("300w", tmp_path, "test-private")
    assert [s.attributes["subset"] for s in private] == ["01_Indoor", "02_Outdoor"]


def test_300w_writer_files(tmp_path: Path) -> None:
    with open_writer("300w", tmp_path) as w:
        first = w.add("afw", image(1), face(68, 1))
        second = w.add("lfpw/testset", image(2), face(68, 2))
        with pytest.raises(ValueError, match="part"):
            w.add("helen", image(3), face(68, 3))
        with pytest.raises(ValueError, match="68"):
            w.add("afw", image(3), face(29, 3))
    assert first == str(tmp_path / "afw" / "image_00001.jpg")
    assert second == str(tmp_path / "lfpw/testset" / "image_00002.jpg")
    lines = (tmp_path / "afw" / "image_00001.pts").read_text().splitlines()
    assert lines[:3] == ["version: 1", "n_points:  68", "{"] and lines[-1] == "}" and len(lines) == 72
    x, y = (float(v) for v in lines[3].split())
    lm = face(68, 1).landmarks
    assert (x, y) == pytest.approx((lm[0, 0] + 1, lm[0, 1] + 1), abs=6e-4)


def test_300w_missing_folder(tmp_path: Path) -> None:
    _write_300w(tmp_path, {"helen/testset": ["a"], "ibug": ["b"]})
    assert base_splits("300w", tmp_path) == ["test-challenging"]  # lfpw/testset missing
    with pytest.raises(DatasetError, match="lfpw/testset"):
        read_dataset("300w", tmp_path, "test-common", skip_bad=True)
    with pytest.raises(DatasetError, match="no 300W"):
        base_splits("300w", tmp_path / "ibug")


def test_300w_empty_folder_raises_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "ibug").mkdir()
    with pytest.raises(DatasetError, match="ibug.*no .pts"):
        read_dataset("300w", tmp_path, "test-challenging", skip_bad=True)


BAD_PTS = {
    "wrong count": (pts_text([(1, 2)] * 67), "67 points, expected 68"),
    "header disagrees": (pts_text([(1, 2)] * 68, declared=70), "n_points 70"),
    "not a number": (pts_text([(1, 2)] * 67 + [("1.0", "abc")]), "not a number"),
    "three fields": (pts_text([(1, 2)] * 67 + [("1.0", "2 3")]), "two numbers"),
    "no open brace": (pts_text([(1, 2)] * 68).replace("{\n", ""), "opening brace"),
    "no close brace": (pts_text([(1, 2)] * 68).replace("}\n", ""), "closing brace"),
    "nan": (pts_text([(1, 2)] * 67 + [("nan", "2")]), "non-finite"),
    "inf": (pts_text([(1, 2)] * 67 + [("3", "-inf")]), "non-finite"),
}


@pytest.mark.parametrize("case", list(BAD_PTS))
def test_300w_bad_pts(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    _write_300w(tmp_path, {"ibug": ["good1", "good2"]})
    text, problem = BAD_PTS[case]
    (tmp_path / "ibug" / "broken.pts").write_text(text)
    write_image(tmp_path / "ibug" / "broken.jpg")
    with pytest.raises(DatasetError, match="broken.pts") as err:
        read_dataset("300w", tmp_path, "test-challenging")
    assert problem in str(err.value)
    skipped: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="kdlandmark"):
        samples = read_dataset("300w", tmp_path, "test-challenging", skip_bad=True, skipped=skipped)
    assert [s.attributes["name"] for s in samples] == ["good1", "good2"]
    assert len(skipped) == 1 and skipped[0][0].endswith("broken.pts") and problem in skipped[0][1]
    assert "skipped 1 bad sample" in caplog.text and "broken.pts" in caplog.text


def test_300w_missing_image(tmp_path: Path) -> None:
    _write_300w(tmp_path, {"ibug": ["good"]})
    (tmp_path / "ibug" / "lonely.pts").write_text(format_pts(np.ones((68, 2)) * np.arange(68)[:, None]))
    with pytest.raises(DatasetError, match=r"lonely\.pts.*no image"):
        read_dataset("300w", tmp_path, "test-challenging")


def test_300w_all_bad_with_skip_raises(tmp_path: Path) -> None:
    folder = tmp_path / "ibug"
    folder.mkdir()
    (folder / "a.pts").write_text("garbage")
    skipped: list[tuple[str, str]] = []
    with pytest.raises(DatasetError, match="no valid samples"):
        read_dataset("300w", tmp_path, "test-challenging", skip_bad=True, skipped=skipped)
    assert len(skipped) == 1


@pytest.mark.parametrize("kind", ["jpeg", "jpeg-tail", "png", "garbage"])
def test_truncated_or_corrupt_image_needs_verify(tmp_path: Path, kind: str) -> None:
    _write_300w(tmp_path, {"ibug": ["good", "bad"]})
    bad = tmp_path / "ibug" / "bad.jpg"
    if kind == "png":
        bad.unlink()
        bad = bad.with_suffix(".png")
        cv2.imwrite(str(bad), image(5))
    data = bad.read_bytes()
    cut = {"jpeg": len(data) // 2, "jpeg-tail": len(data) - 2, "png": len(data) // 2, "garbage": 0}[kind]
    bad.write_bytes(b"this is not an image" if kind == "garbage" else data[:cut])
    assert len(read_dataset("300w", tmp_path, "test-challenging")) == 2  # not decoded without verify
    problem = {"jpeg": "truncated JPEG", "jpeg-tail": "truncated JPEG", "png": "truncated PNG",
               "garbage": "cannot decode"}[kind]
    with pytest.raises(DatasetError, match=problem) as err:
        read_dataset("300w", tmp_path, "test-challenging", verify_images=True)
    assert bad.name in str(err.value)
    skipped: list[tuple[str, str]] = []
    kept = read_dataset("300w", tmp_path, "test-challenging", verify_images=True, skip_bad=True,
                        skipped=skipped)
    assert [s.attributes["name"] for s in kept] == ["good"] and skipped[0][0] == str(bad)


def test_jpeg_with_bytes_after_the_end_marker_is_accepted(tmp_path: Path) -> None:
    _write_300w(tmp_path, {"ibug": ["a"]})
    jpg = tmp_path / "ibug" / "a.jpg"
    jpg.write_bytes(jpg.read_bytes() + b"\x00\x00trailing")
    assert len(read_dataset("300w", tmp_path, "test-challenging", verify_images=True)) == 1


# ---------------------------------------------------------------------------------------------- WFLW

WFLW_LIST = Path("WFLW_annotations/list_98pt_rect_attr_train_test")


def wflw_line(coords: np.ndarray, box: tuple, flags: tuple, path: str) -> str:
    return " ".join([f"{v:g}" for v in coords.reshape(-1)] + [f"{v:g}" for v in box]
                    + [str(f) for f in flags] + [path])


def test_wflw_hand_written(tmp_path: Path) -> None:
    coords = np.stack([np.arange(98) * 0.5, np.arange(98) * 0.25 + 3], axis=1)
    lines = [
        wflw_line(coords, (1, 2, 60, 70), (1, 0, 0, 1, 0, 0), "7--Cheering/a.jpg"),
        wflw_line(coords + 1, (3, 4, 50, 55), (0, 1, 1, 0, 1, 1), "7--Cheering/a.jpg"),  # same image
        wflw_line(coords + 2, (5, 6, 40, 45.5), (1, 1, 0, 0, 0, 0), "8--Parade/b.jpg"),
    ]
    (tmp_path / WFLW_LIST).mkdir(parents=True)
    (tmp_path / WFLW_LIST / "list_98pt_rect_attr_test.txt").write_text("\n".join(lines) + "\n")
    write_image(tmp_path / "WFLW_images/7--Cheering/a.jpg")
    write_image(tmp_path / "WFLW_images/8--Parade/b.jpg")
    assert base_splits("wflw", tmp_path) == ["test"]
    test = read_dataset("wflw", tmp_path, "test", verify_images=True)
    assert len(test) == 3
    np.testing.assert_array_equal(test[0].landmarks, coords.astype(np.float32))  # 0-based as written
    np.testing.assert_array_equal(test[2].landmarks, (coords + 2).astype(np.float32))
    assert test[2].box == (5.0, 6.0, 40.0, 45.5)
    assert test[0].attributes == {"pose": True, "expression": False, "illumination": False, "makeup": True,
                                  "occlusion": False, "blur": False}
    assert test[0].image_path == test[1].image_path == str(tmp_path / "WFLW_images/7--Cheering/a.jpg")
    assert test[0].occluded is None
    subsets = {flag: [int(s.landmarks[0, 0]) for s in read_dataset("wflw", tmp_path, f"test-{flag}")]
               for flag in ("pose", "expression", "illumination", "makeup", "occlusion", "blur")}
    assert subsets == {"pose": [0, 2], "expression": [1, 2], "illumination": [1], "makeup": [0],
                       "occlusion": [1], "blur": [1]}
    with pytest.raises(DatasetError, match="list_98pt_rect_attr_train.txt"):
        read_dataset("wflw", tmp_path, "train", skip_bad=True)  # structural: raises even when skipping


def test_wflw_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    flags = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
    written = {"train": [], "test": []}
    with open_writer("wflw", tmp_path / "wflw") as w:
        for k in range(9):
            part = "train" if k < 3 else "test"
            attrs = {f: bool(rng.random() < 0.5) for f in flags}
            s = face(98, k, **attrs)
            s.box = (1.25 + k, 2.0, 30.5, 33.125)
            w.add(part, image(k), s)
            written[part].append(s)
        # a second face on the same image: the image is written once
        shared = face(98, 50, name="shared", event="3--Riot")
        p1 = w.add("test", image(50), shared)
        p2 = w.add("test", image(51), face(98, 51, name="shared", event="3--Riot"))
        written["test"] += [shared, face(98, 51)]
    assert p1 == p2 == str(tmp_path / "wflw/WFLW_images/3--Riot/shared.jpg")
    assert (tmp_path / "wflw/WFLW_images/0--synthetic/image_00001.jpg").is_file()
    assert base_splits("wflw", tmp_path / "wflw") == ["train", "test"]
    for part in ("train", "test"):
        samples = read_dataset("wflw", tmp_path / "wflw", part, verify_images=True)
        assert len(samples) == len(written[part])
        for s, ref in zip(samples, written[part], strict=True):
            np.testing.assert_allclose(s.landmarks, ref.landmarks, atol=1e-3)
            assert s.box == pytest.approx(ref.box, abs=1e-6)
            assert s.attributes == {f: bool(ref.attributes.get(f, False)) for f in flags}
    test = written["test"]
    for f in flags:
        got = read_dataset("wflw", tmp_path / "wflw", f"test-{f}")
        assert len(got) == sum(bool(s.attributes.get(f)) for s in test) and all(s.attributes[f] for s in got)


def test_wflw_empty_flag_subset_is_empty_not_an_error(tmp_path: Path) -> None:
    with open_writer("wflw", tmp_path) as w:
        w.add("test", image(), face(98, pose=True))
    assert len(read_dataset("wflw", tmp_path, "test-pose")) == 1
    assert read_dataset("wflw", tmp_path, "test-blur") == []


def test_wflw_under_wflw_subfolder(tmp_path: Path) -> None:
    with open_writer("wflw", tmp_path / "WFLW") as w:
        w.add("train", image(), face(98))
    assert len(read_dataset("wflw", tmp_path, "train")) == 1


@pytest.mark.parametrize("case,problem", [
    ("fields", "expected 207 fields"), ("number", "not a number"), ("nan", "non-finite"),
    ("flag", "flags must be 0 or 1"), ("image", "image missing"), ("box", "degenerate face box"),
])
def test_wflw_bad_lines(tmp_path: Path, case: str, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    with open_writer("wflw", tmp_path) as w:
        for k in range(3):
            w.add("train", image(k), face(98, k))
    listed = tmp_path / WFLW_LIST / "list_98pt_rect_attr_train.txt"
    lines = listed.read_text().splitlines()
    fields = lines[1].split()
    if case == "fields":
        fields = fields[1:]
    elif case == "number":
        fields[5] = "x1.5"
    elif case == "nan":
        fields[7] = "nan"
    elif case == "flag":
        fields[-3] = "2"
    elif case == "image":
        fields[-1] = "0--synthetic/missing.jpg"
    elif case == "box":
        fields[196], fields[198] = "30", "10"
    lines[1] = " ".join(fields)
    listed.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=problem) as err:
        read_dataset("wflw", tmp_path, "train")
    assert ("missing.jpg" if case == "image" else "list_98pt_rect_attr_train.txt:2") in str(err.value)
    skipped: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="kdlandmark"):
        kept = read_dataset("wflw", tmp_path, "train", skip_bad=True, skipped=skipped)
    assert len(kept) == 2 and len(skipped) == 1 and problem in skipped[0][1]
    assert "skipped 1 bad sample" in caplog.text


# ---------------------------------------------------------------------------------------------- COFW

def _hand_built_v73(path: Path, grey: np.ndarray, colour_rgb: np.ndarray, phis: np.ndarray,
                    boxes: np.ndarray, names=("IsT", "phisT", "bboxesT")) -> None:
    """A MATLAB v7.3 file built directly with h5py, as MATLAB lays it out (transposed arrays)."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        a = refs.create_dataset("a", data=grey.T)  # MATLAB H x W -> HDF5 (W, H)
        b = refs.create_dataset("b", data=colour_rgb.transpose(2, 1, 0))  # H x W x 3 -> (3, W, H)
        for ds in (a, b):
            ds.attrs["MATLAB_class"] = np.bytes_("uint8")
        cell = np.empty((1, 2), dtype=h5py.ref_dtype)
        cell[0, 0], cell[0, 1] = a.ref, b.ref
        f.create_dataset(names[0], data=cell).attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_dataset(names[1], data=phis.T).attrs["MATLAB_class"] = np.bytes_("double")
        f.create_dataset(names[2], data=boxes.T).attrs["MATLAB_class"] = np.bytes_("double")


def _cofw_known() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h, w = 30, 40  # not square, so a missed transpose shows
    grey = (np.arange(h)[:, None] * 3 + np.arange(w)[None, :]).astype(np.uint8)
    colour = np.zeros((h, w, 3), np.uint8)
    colour[..., 0] = 200  # red
    colour[..., 1] = np.arange(w)[None, :]  # green varies along x
    colour[..., 2] = np.arange(h)[:, None]  # blue varies along y
    phis = np.zeros((2, 87))
    phis[:, :29] = np.arange(29) + 1.0 + np.array([[0.0], [0.5]])
    phis[:, 29:58] = np.arange(29) * 0.5 + 2.0
    phis[0, 58:] = np.arange(29) % 2
    phis[1, 58:] = np.arange(29) % 3 == 0
    boxes = np.array([[1.0, 2.0, 20.0, 25.0], [5.5, 6.0, 10.0, 12.0]])
    return grey, colour, phis, boxes


def _check_cofw_known(samples: list[FaceSample], phis: np.ndarray, grey: np.ndarray,
                      colour: np.ndarray) -> None:
    assert len(samples) == 2
    for s, phi in zip(samples, phis, strict=True):
        np.testing.assert_allclose(s.landmarks[:, 0], phi[:29] - 1.0)
        np.testing.assert_allclose(s.landmarks[:, 1], phi[29:58] - 1.0)
        np.testing.assert_array_equal(s.occluded, phi[58:] != 0)
        assert s.landmarks.dtype == np.float32 and s.occluded.dtype == np.bool_
    assert samples[0].box == (0.0, 1.0, 20.0, 26.0)
    assert samples[1].box == (4.5, 5.0, 14.5, 17.0)
    g, c = samples[0].image, samples[1].image
    assert g.shape == c.shape == (30, 40, 3) and g.dtype == c.dtype == np.uint8
    for ch in range(3):
        np.testing.assert_array_equal(g[..., ch], grey)  # greyscale -> 3 equal channels
    np.testing.assert_array_equal(c, colour[..., ::-1])  # RGB -> BGR
    assert samples[0].image_path.endswith(".mat#0") and samples[1].image_path.endswith(".mat#1")


def test_cofw_hand_built_v73(tmp_path: Path) -> None:
    grey, colour, phis, boxes = _cofw_known()
    _hand_built_v73(tmp_path / "COFW_test_color.mat", grey, colour, phis, boxes)
    assert base_splits("cofw", tmp_path) == ["test"]
    _check_cofw_known(read_dataset("cofw", tmp_path, "test"), phis, grey, colour)


def test_cofw_v5_combined_file(tmp_path: Path) -> None:
    grey, colour, phis, boxes = _cofw_known()
    path = tmp_path / "COFW" / "COFW.mat"
    write_cofw_v5(path, [grey, colour], phis, boxes, split="train")
    write_cofw_v5(path, [colour, grey], phis[::-1], boxes[::-1], split="test")  # keeps the train split
    assert scipy.io.matlab.matfile_version(str(path))[0] < 2
    assert base_splits("cofw", tmp_path) == ["train", "test"]
    _check_cofw_known(read_dataset("cofw", tmp_path, "train"), phis, grey, colour)
    test = read_dataset("cofw", tmp_path, "test")
    np.testing.assert_allclose(test[0].landmarks[:, 0], phis[1, :29] - 1.0)
    np.testing.assert_array_equal(test[0].image, colour[..., ::-1])


def test_cofw_writer_round_trip(tmp_path: Path) -> None:
    written = {}
    with open_writer("cofw", tmp_path) as w:
        for k in range(5):
            part = "train" if k < 3 else "test"
            img = image(k, 36, 44) if k != 2 else image(k, 36, 44)[..., 0].copy()  # one greyscale
            written[w.add(part, img, face(29, k))] = (face(29, k), img)
    header = (tmp_path / "COFW_train_color.mat").read_bytes()[:128]
    assert header.startswith(b"MATLAB 7.3 MAT-file") and header[-4:] == b"\x00\x02IM"
    assert scipy.io.matlab.matfile_version(str(tmp_path / "COFW_train_color.mat")) == (2, 0)
    with h5py.File(tmp_path / "COFW_train_color.mat", "r") as f:
        assert f["phisTr"].shape == (87, 3) and f["bboxesTr"].shape == (4, 3)  # MATLAB 3 x 87, transposed
        assert f["IsTr"].attrs["MATLAB_class"] == b"cell"
        assert f[f["IsTr"][0, 0]].shape == (3, 44, 36)  # 36 x 44 x 3 image stored transposed
    assert base_splits("cofw", tmp_path) == ["train", "test"]
    for split, count in (("train", 3), ("test", 2)):
        samples = read_dataset("cofw", tmp_path, split)
        assert len(samples) == count
        for s in samples:
            ref, img = written[s.image_path]
            np.testing.assert_allclose(s.landmarks, ref.landmarks, atol=1e-3)
            assert s.box == pytest.approx(ref.box)
            np.testing.assert_array_equal(s.occluded, ref.occluded)
            expected = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
            np.testing.assert_array_equal(s.image, expected)


@pytest.mark.parametrize("version", ["v73", "v5"])
def test_cofw_missing_fields_raise_even_when_skipping(tmp_path: Path, version: str) -> None:
    grey, colour, phis, boxes = _cofw_known()
    if version == "v73":
        _hand_built_v73(tmp_path / "COFW_train_color.mat", grey, colour, phis, boxes,
                        names=("IsTr", "phisTr", "bboxes"))
    else:
        scipy.io.savemat(str(tmp_path / "COFW.mat"), {"IsTr": np.empty((0, 1), object), "phisTr": phis})
    with pytest.raises(DatasetError, match=r"\.mat.*missing variable.*bboxesTr"):
        read_dataset("cofw", tmp_path, "train", skip_bad=True)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no COFW file"):
        read_dataset("cofw", empty, "test")


def test_cofw_table_shape_mismatch(tmp_path: Path) -> None:
    grey, colour, phis, boxes = _cofw_known()
    _hand_built_v73(tmp_path / "COFW_test_color.mat", grey, colour, phis[:, :86], boxes)
    with pytest.raises(DatasetError, match=r"COFW_test_color\.mat.*phisT is 2 x 86, expected 2 x 87"):
        read_dataset("cofw", tmp_path, "test", skip_bad=True)


def test_cofw_bad_sample_skipped_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grey, colour, phis, boxes = _cofw_known()
    phis[1, 3] = np.nan
    _hand_built_v73(tmp_path / "COFW_test_color.mat", grey, colour, phis, boxes)
    with pytest.raises(DatasetError, match=r"COFW_test_color\.mat#1.*non-finite"):
        read_dataset("cofw", tmp_path, "test")
    skipped: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="kdlandmark"):
        kept = read_dataset("cofw", tmp_path, "test", skip_bad=True, skipped=skipped)
    assert len(kept) == 1 and kept[0].image_path.endswith("#0")
    assert skipped[0][0].endswith("COFW_test_color.mat#1") and "COFW_test_color.mat#1" in caplog.text


# -------------------------------------------------------------------------------------------- folder

def test_folder_round_trip_and_subfolder_split(tmp_path: Path) -> None:
    written = {}
    with open_writer("folder", tmp_path) as w:
        for k, part in enumerate(["b", "a/x", "a/x", "", "a"]):
            s = face(98, k)
            written[w.add(part, image(k), s)] = s
    assert base_splits("folder", tmp_path) == ["all"]
    samples = read_dataset("folder", tmp_path, "all")
    assert [(s.attributes["subset"], s.attributes["name"]) for s in samples] == [
        ("a", "image_00005"), ("a/x", "image_00002"), ("a/x", "image_00003"), ("b", "image_00001"),
        (".", "image_00004")]
    for s in samples:
        np.testing.assert_allclose(s.landmarks, written[s.image_path].landmarks, atol=1e-3)
        assert s.occluded is None
    assert [s.attributes["name"] for s in read_dataset("folder", tmp_path, "a")] == [
        "image_00005", "image_00002", "image_00003"]
    with pytest.raises(DatasetError, match="nope"):
        read_dataset("folder", tmp_path, "nope")


def test_folder_hand_written_cofw_layout(tmp_path: Path) -> None:
    pts = [(k + 1, 2 * k + 1) for k in range(29)]
    (tmp_path / "one.pts").write_text(pts_text(pts))
    write_image(tmp_path / "one.jpeg")
    (s,) = read_dataset("folder", tmp_path, "all", verify_images=True)
    np.testing.assert_array_equal(s.landmarks, np.array([(k, 2 * k) for k in range(29)], np.float32))


def test_folder_counts_must_agree(tmp_path: Path) -> None:
    with open_writer("folder", tmp_path) as w:
        w.add("", image(0), face(68, 0))
        w.add("", image(1), face(68, 1))
        with pytest.raises(ValueError, match="same point count"):
            w.add("", image(2), face(29, 2))
    (tmp_path / "odd.pts").write_text(pts_text([(k + 1, k + 2) for k in range(29)]))
    write_image(tmp_path / "odd.jpg")
    with pytest.raises(DatasetError, match=r"odd\.pts.*29 points.*68"):
        read_dataset("folder", tmp_path, "all")
    skipped: list[tuple[str, str]] = []
    assert len(read_dataset("folder", tmp_path, "all", skip_bad=True, skipped=skipped)) == 2
    assert skipped[0][0].endswith("odd.pts")


def test_folder_unknown_layout_and_empty(tmp_path: Path) -> None:
    (tmp_path / "five.pts").write_text(pts_text([(k + 1, k + 2) for k in range(5)]))
    write_image(tmp_path / "five.jpg")
    with pytest.raises(DatasetError, match=r"five\.pts.*5 points"):
        read_dataset("folder", tmp_path, "all", skip_bad=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .pts files"):
        read_dataset("folder", tmp_path, "empty", skip_bad=True)
    with pytest.raises(ValueError, match="no layout"):
        with open_writer("folder", tmp_path / "w") as w:
            w.add("", image(), face(5))
