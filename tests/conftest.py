"""Shared fixtures: small random scenes with edge-hanging stamps, corners, dtypes, 0/1 sources."""

import zlib

import numpy as np
import pytest

from sparse3d.testing import random_grouped_scene, random_scene

SCENE_PARAMS = {
    "basic": dict(),
    "corner_neg": dict(imcorner=(-7, 4)),
    "corner_pos": dict(imcorner=(100, 250)),
    "float32": dict(dtype=np.float32),
    "one_source": dict(nsources=1),
    "zero_sources": dict(nsources=0),
    "big_stamps": dict(stamp=(6, 5), imshape=(9, 8), nsources=9),
    "one_pixel_image": dict(imshape=(1, 1), stamp=(2, 2), nsources=4),
}


@pytest.fixture(params=sorted(SCENE_PARAMS), ids=sorted(SCENE_PARAMS))
def scene(request):
    return random_scene(
        np.random.default_rng(zlib.crc32(request.param.encode())), **SCENE_PARAMS[request.param]
    )


# arrays with several stamp groups (mixed stamp sizes): corners, float32, groups of one
# source, an empty part, equal shapes adjacent and apart (one group), big and small stamps
GROUPED_PARAMS = {
    "basic": dict(),
    "corner_neg": dict(imcorner=(-7, 4)),
    "corner_pos": dict(imcorner=(100, 250)),
    "float32": dict(dtype=np.float32),
    "one_source_groups": dict(nsources=(1, 1, 1)),
    "empty_part": dict(nsources=(3, 0, 4)),
    "same_shape_adjacent": dict(stamps=((3, 4), (3, 4), (2, 2)), nsources=(2, 3, 2)),
    "same_shape_apart": dict(stamps=((3, 4), (2, 2), (3, 4)), nsources=(2, 3, 2)),
    "big_and_small": dict(stamps=((7, 7), (2, 3)), nsources=(2, 8), imshape=(9, 8)),
}


@pytest.fixture(params=sorted(GROUPED_PARAMS), ids=sorted(GROUPED_PARAMS))
def gscene(request):
    return random_grouped_scene(
        np.random.default_rng(zlib.crc32(request.param.encode())), **GROUPED_PARAMS[request.param]
    )


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---- hypothesis profiles (tests/test_properties.py): HYPOTHESIS_PROFILE=long for thousands ----
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def compiled_kernels(monkeypatch):
    """Force the compiled (numba) fit paths whatever the problem size."""
    import sparse3d._compiled

    monkeypatch.setattr(sparse3d._compiled, "COMPILED_MIN_NNZ", 0)


@pytest.fixture(params=["numpy", "compiled"])
def fit_path(request, monkeypatch):
    """Run a test on the small-problem NumPy/SciPy path and on the compiled (numba) path."""
    import sparse3d._compiled

    threshold = 0 if request.param == "compiled" else 2**62
    monkeypatch.setattr(sparse3d._compiled, "COMPILED_MIN_NNZ", threshold)
    return request.param


@pytest.fixture
def small_kernels(monkeypatch):
    """Force the compiled kernels and the buffer lending on small arrays (``_kernels.MIN_ELEMENTS
    = 0``, ``_pool.MIN_BYTES = 0``), which would otherwise take the NumPy paths."""
    from sparse3d import _kernels, _pool

    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
