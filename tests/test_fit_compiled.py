"""The compiled kernels: small fits stay out of numba, one signature per kernel, precompile()."""

import os
import subprocess
import sys

import numpy as np
import pytest

import sparse3d
from sparse3d import Sparse3D, _compiled
from sparse3d.testing import dense_reference, random_scene

_SMALL_FIT = """
import sys
import numpy as np
import sparse3d
from sparse3d.testing import random_scene
sc = random_scene(np.random.default_rng(0), imshape=(40, 50), stamp=(5, 5), nsources=60)
S = sparse3d.Sparse3D(sc.data, sc.row, sc.col, sc.imshape)
rng = np.random.default_rng(1)
img = rng.normal(size=sc.imshape)
res = S.fit(img, errors=np.full(sc.imshape, 0.5))
res.weights_err
res = S.fit(img[:, :, None] + rng.normal(size=(*sc.imshape, 3)))
print("numba" in sys.modules)
"""


def test_small_fit_does_not_import_numba():
    out = subprocess.run([sys.executable, "-c", _SMALL_FIT], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def _lstsq_fit(S, img, errors):
    A = dense_reference(S.data, S.row, S.col, S.imshape, S.imcorner).reshape(-1, S.nsources)
    A = A.astype(np.float64) / errors.reshape(-1, 1)
    w = np.linalg.lstsq(A, img.ravel() / errors.ravel(), rcond=None)[0]
    return w, np.sqrt(np.diag(np.linalg.inv(A.T @ A)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_both_paths_match_lstsq(seed, index_dtype, fit_path):
    rng = np.random.default_rng(seed)
    imshape, imcorner, n = (30, 26), (-3, 5), 25
    R, C = np.mgrid[:4, :5]
    # corners spread over the image, stamps hanging over its edges (every source keeps pixels)
    r0 = rng.integers(imcorner[0] - 2, imcorner[0] + imshape[0] - 2, n)
    c0 = rng.integers(imcorner[1] - 3, imcorner[1] + imshape[1] - 2, n)
    row = (R[:, :, None] + r0).astype(index_dtype)
    col = (C[:, :, None] + c0).astype(index_dtype)
    S = Sparse3D(rng.uniform(0.1, 1.0, (4, 5, n)), row, col, imshape, imcorner)
    img = rng.normal(size=imshape)
    errors = rng.uniform(0.5, 2.0, imshape)
    w, err = _lstsq_fit(S, img, errors)
    res = S.fit(img, errors=errors)
    np.testing.assert_allclose(res.weights, w, rtol=1e-8, atol=1e-10 * np.abs(w).max())
    np.testing.assert_allclose(res.weights_err, err, rtol=1e-8)


def test_kernel_registry_lists_the_fit_kernels():
    names = _compiled.kernel_modules()
    assert "sparse3d.fit._stamp_kernels" in names and "sparse3d.fit._factor_kernels" in names
    import importlib

    for name in names:
        module = importlib.import_module(name)
        if hasattr(module, "SIGNATURES"):
            assert module.SIGNATURES and all(callable(getattr(module, k)) for k in module.SIGNATURES)
        else:  # generic over dtypes: a hook compiles the common combinations
            assert callable(module.precompile_kernels)


def test_one_signature_per_kernel_after_fits(compiled_kernels):
    import importlib

    sparse3d.precompile()
    # fits with int32 and int64 positions, float32 and float64 stamps, one and many frames
    for index_dtype, dtype in [(np.int32, np.float32), (np.int64, np.float64)]:
        sc = random_scene(np.random.default_rng(4), imshape=(30, 30), stamp=(4, 4), nsources=30, dtype=dtype)
        S = Sparse3D(sc.data, sc.row.astype(index_dtype), sc.col.astype(index_dtype), sc.imshape)
        res = S.fit(np.ones(sc.imshape), errors=np.full(sc.imshape, 2.0))
        res.weights_err
        S.fit(np.ones((*sc.imshape, 4)))
        # an array with two stamp groups (the cross-group kernels), sources interleaved
        big = random_scene(np.random.default_rng(5), imshape=(30, 30), stamp=(7, 6), nsources=4, dtype=dtype)
        B = Sparse3D(big.data, big.row.astype(index_dtype), big.col.astype(index_dtype), big.imshape)
        G = np.concatenate([S[:, :, :10], B, S[:, :, 10:]], axis=2)
        G.fit(np.ones(sc.imshape), errors=np.full(sc.imshape, 2.0)).weights_err
    for name in _compiled.kernel_modules():
        module = importlib.import_module(name)
        for kernel in getattr(module, "SIGNATURES", ()):
            assert len(getattr(module, kernel).signatures) == 1, (name, kernel)


def test_precompile_reports_times():
    times = sparse3d.precompile()
    assert set(times) == {*_compiled.kernel_modules(), "total"}
    assert all(t >= 0 for t in times.values())


def test_precompile_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "sparse3d", "precompile"], capture_output=True, text=True, check=True
    )
    assert "sparse3d.fit._stamp_kernels" in out.stdout and "total:" in out.stdout


def test_cross_module_kernel_digest_is_current():
    """Kernels that inline code from another module must bump their digest when it changes.

    numba's cache does not see edits to an imported module; a stale digest here means
    ``_factor_kernels`` or ``_supernodal_kernels`` could run cached code built with the old
    amalgamation rule (defined, numba-free, in ``sparse3d.fit.relaxed``).
    """
    import hashlib
    import inspect

    from sparse3d.fit import _factor_kernels as fk
    from sparse3d.fit import _supernodal_kernels as sk
    from sparse3d.fit import relaxed

    assert fk.relaxed_merge.py_func is relaxed.relaxed_merge  # one rule, compiled from its one source
    source = inspect.getsource(relaxed.relaxed_merge) + repr((relaxed.NRELAX, relaxed.ZRELAX))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    for module in (fk, sk):
        assert module.DEPENDENCY_DIGEST == digest, (
            "sparse3d.fit.relaxed.relaxed_merge/NRELAX/ZRELAX changed: set "
            f"{module.__name__}.DEPENDENCY_DIGEST = {digest!r} (this also invalidates its numba cache)"
        )


def test_precompiled_kernels_are_loaded_by_later_calls(tmp_path):
    """What precompile() writes to numba's cache, a call in a later process loads: numba files
    an overload under the signature passed to ``compile``, and a call looks it up by its
    argument types; compiled from the signature *string*, every kernel was compiled again by
    its first call (a fit after precompile still paid ~14 s)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    pre = (
        "from sparse3d._compiled import _cache_key\n"
        "from sparse3d.fit import _supernodal_kernels as K\n"
        "K.etree.compile(_cache_key(K.SIGNATURES['etree']))\n"
    )
    call = (
        "import numpy as np\n"
        "from sparse3d.fit import _supernodal_kernels as K\n"
        "p = np.array([0, 1, 3, 4], dtype=np.intp); i = np.array([0, 0, 1, 2], dtype=np.intp)\n"
        "K.etree(p, i)\n"
        "print(sum(K.etree.stats.cache_hits.values()), sum(K.etree.stats.cache_misses.values()))\n"
    )
    subprocess.run([sys.executable, "-c", pre], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", call], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["1", "0"]  # loaded from the cache, not compiled again
