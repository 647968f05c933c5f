"""Results of sparse3d 1.2.11 on small scenes, stored for ``tests/test_legacy.py``.

The scenarios below use only the 1.x API and avoid the 1.x bugs that the compatibility
namespace fixes (those are tested against dense NumPy references instead). The test runs
the same :func:`scenarios` on :mod:`sparse3d.legacy` and compares with the stored values.

Regenerate (1.2.11 and 2.x share the import name, so 1.2.11 is put first on the path)::

    pip install --no-deps --target /tmp/ref112 sparse3d==1.2.11
    PYTHONPATH=/tmp/ref112 python scripts/gen_legacy_fixtures.py

(``python -c "from benchmarks.legacy import ensure_legacy; print(ensure_legacy())"`` gives
an install directory too.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "legacy_1_2_11.npz"


def scene(rng, stamp=(4, 5), nsources=7, imshape=(23, 19), imcorner=(-3, 5), zeros=False):
    """Stamps around random centres, some hanging over the image edges."""
    nr, nc = stamp
    R, C = np.mgrid[:nr, :nc]
    r0 = rng.integers(imcorner[0] - 2, imcorner[0] + imshape[0] - 1, nsources)
    c0 = rng.integers(imcorner[1] - 2, imcorner[1] + imshape[1] - 1, nsources)
    row = R[:, :, None] + r0
    col = C[:, :, None] + c0
    data = rng.uniform(0.5, 2.0, size=(nr, nc, nsources))
    if zeros:
        data[rng.uniform(size=data.shape) < 0.2] = 0.0
    return data, row, col, imshape, imcorner


def scenarios(Sparse3D, ROISparse3D, stack) -> dict[str, np.ndarray]:
    """Named results computed with the 1.x API given by the three arguments."""
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(20261128)
    data, row, col, imshape, imcorner = scene(rng)
    n = data.shape[-1]
    w = rng.uniform(0.5, 3.0, n)
    W2 = rng.uniform(-1.0, 1.0, (n, 3))

    S = Sparse3D(data, row, col, imshape, imcorner=imcorner)
    out["shape"] = np.array(S.shape)
    out["subrow"] = S.subrow
    out["subcol"] = S.subcol
    out["coo_data"] = S.data
    out["coo_row"] = S.row
    out["coo_col"] = S.col
    out["dot_1d"] = S.dot(w)
    out["dot_2d"] = S.dot(W2)
    out["matmul_1d"] = S @ w
    out["matmul_2d"] = S @ W2
    out["tocsr"] = S.tocsr().toarray()
    out["tocsc"] = S.tocsc().toarray()
    out["toarray"] = S.toarray()

    # absolute translate, the downstream loop
    offsets = [(0, 0), (1, 0), (-2, 3), (1, 0), (5, -4), (0, 0), (-30, 0)]
    models, frames, counts = [], [], []
    for off in offsets:
        S.translate(off)
        models.append(S.dot(w))
        frames.append(S.dot(W2))
        counts.append(len(S.data))
    S.reset()
    out["translate_dot_1d"] = np.array(models)
    out["translate_dot_2d"] = np.array(frames)
    out["translate_nnz"] = np.array(counts)
    out["reset_dot"] = S.dot(w)
    S.translate((2, -1))
    out["translated_tocsr"] = S.tocsr().toarray()
    out["translated_coo_data"] = S.data
    out["translated_coo_row"] = S.row
    S.reset()

    # operators and ufuncs (on an untranslated array; stamp values, then the model)
    stamp = rng.uniform(0.5, 1.5, data.shape)
    ops = {
        "add_scalar": lambda S: S + 2.5,
        "radd_vector": lambda S: w + S,
        "sub_stamp": lambda S: S - stamp,
        "rsub_scalar": lambda S: 2.0 - S,
        "mul_vector": lambda S: S * w,
        "rmul_scalar": lambda S: 3 * S,
        "div_vector": lambda S: S / w,
        "div_stamp": lambda S: S / stamp,
        "pow": lambda S: S**2,
        "mod": lambda S: S % 0.7,
        "lt": lambda S: S < 1.2,
        "le": lambda S: S <= 1.2,
        "gt": lambda S: S > 1.2,
        "eq": lambda S: S == S,
        "ne": lambda S: S != 1.2,
        "add_self": lambda S: S + S,
        "mul_self": lambda S: S * S,
        "multiply": lambda S: S.multiply(w),
        "np_add": lambda S: np.add(S, 1.5),
        "np_multiply": lambda S: np.multiply(S, w),
    }
    for name in ("exp", "log", "log10", "sqrt", "sin", "cos", "tan", "arctan", "sinh", "cosh", "tanh"):
        ufunc = getattr(np, name)
        ops[f"np_{name}"] = lambda S, f=ufunc: f(S)
    for name, fn in ops.items():
        R = fn(S)
        out[f"op_{name}_subdata"] = np.asarray(R.subdata, dtype=float)
        out[f"op_{name}_dot"] = R.dot(w)

    # a ufunc on a translated array keeps the translation
    S.translate((1, 2))
    E = np.exp(S)
    out["ufunc_translated_dot"] = E.dot(w)
    S.reset()

    # source selection and stacking
    out["slice_int_dot"] = S[:, :, 2].dot(np.array([2.0]))
    out["slice_range_dot"] = S[:, :, 1:4].dot(w[1:4])
    out["slice_range_subdata"] = S[:, :, 1:4].subdata
    T = stack([S, S[:, :, 1:3], S[:, :, 0]])
    out["stack_shape"] = np.array(T.shape)
    out["stack_dot"] = T.dot(np.arange(1.0, T.shape[1] + 1))

    # regions of interest (windows inside the image: 1.x read past the right edge wrongly)
    data2, row2, col2, imshape2, _ = scene(rng, stamp=(5, 5), nsources=9, imshape=(30, 26), imcorner=(0, 0))
    corners = [(0, 0), (10, 12), (22, 14), (-3, 4)]
    size = (8, 12)
    w9 = rng.uniform(0.5, 3.0, 9)
    W9 = rng.uniform(-1.0, 1.0, (9, 4))
    Q = ROISparse3D(data2, row2, col2, imshape2, nROIs=len(corners), ROI_size=size, ROI_corners=corners)
    out["roi_dot_1d"] = Q.dot(w9)
    out["roi_dot_2d"] = Q.dot(W9)
    out["roi_dot_kn"] = Q.dot(W9.T)
    out["roi_tocsr"] = Q.tocsr().toarray()
    roi_models = []
    for off in [(1, 1), (-2, 0), (0, 5), (1, 1)]:
        Q.translate(off)
        roi_models.append(Q.dot(W9))
    Q.reset()
    out["roi_translate_dot"] = np.array(roi_models)
    out["roi_reset_dot"] = Q.dot(w9)
    out["roi_to_sparse3d_dot"] = Q.to_Sparse3D().dot(w9)
    out["roi_multiply_dot"] = Q.multiply(w9).dot(w9)
    out["roi_slice_dot"] = Q[:, :, 3:6].dot(w9[3:6])
    out["roi_stack_dot"] = stack([Q, Q]).dot(np.concatenate([w9, w9]))
    P = Sparse3D(data2, row2, col2, imshape2).to_ROISparse3D(len(corners), size, corners)
    out["to_roi_dot"] = P.dot(w9)

    # scipy interplay (found by the differential fuzzer): the COO order survives scipy's
    # methods, operators with scipy matrices are scipy's, a ROI with a plain array is plain
    from scipy import sparse as sp

    rng = np.random.default_rng(7)
    S = Sparse3D(data, row, col, imshape, imcorner=imcorner)
    S.translate((1, -2))
    out["scipy_max"] = np.array([S.max(), S.min()])
    out["scipy_order_data"] = S.data
    out["scipy_order_row"] = S.row
    out["scipy_order_col"] = S.col
    S.reset()
    out["scipy_mean"] = np.array([S.mean()])
    M = sp.random(*S.shape, density=0.3, random_state=rng.integers(1000), format="csr")
    out["scipy_add"] = (S + M).toarray()
    out["scipy_radd"] = (M + S).toarray()
    out["scipy_eq"] = (S == M).toarray()
    out["scipy_ne"] = (S != M).toarray()
    out["scipy_rsub"] = (M - S).toarray()
    windows = [imcorner, (imcorner[0] + 4, imcorner[1] + 3)]
    Q = ROISparse3D(data, row, col, imshape, 2, (5, 6), windows, imcorner)
    out["roi_plus_plain_dot"] = (Q + S).dot(w)
    out["plain_plus_roi_dot"] = (S + Q).dot(w)
    rr, cc = np.mgrid[imcorner[0] - 2 : imcorner[0] + 12, imcorner[1] - 2 : imcorner[1] + 12]
    out["roi_mask"] = Q.get_ROI_mask(rr, cc)

    # COO entries changed through S.data: 1.x's products read them until translate/reset
    W3 = rng.normal(size=(data.shape[-1], 3))
    S.translate((2, 1))
    S.data = S.data * 3.0
    S.data[::4] = 0.5
    out["edited_dot"] = S.dot(w)
    out["edited_dot_2d"] = S.dot(W3)
    out["edited_matmul"] = S @ w
    out["edited_tocsr"] = S.tocsr().toarray()
    out["edited_exp_dot"] = np.exp(S).dot(w)
    out["edited_copy_dot"] = S.copy().dot(w)
    S.reset()
    out["edited_reset_dot"] = S.dot(w)
    Q.translate((1, 0))
    Q.data = Q.data * 2.0
    out["edited_roi_dot"] = Q.dot(w)
    out["edited_roi_dot_2d"] = Q.dot(W3)
    return out


def main() -> None:
    import sparse3d

    if not sparse3d.__version__.startswith("1."):
        found = f"{sparse3d.__version__} at {sparse3d.__file__}"
        sys.exit(f"put sparse3d 1.2.11 first on PYTHONPATH (found {found})")
    from sparse3d import ROISparse3D, Sparse3D, stack

    out = scenarios(Sparse3D, ROISparse3D, stack)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    size = OUT.stat().st_size
    print(f"wrote {len(out)} arrays ({size} bytes) from sparse3d {sparse3d.__version__} to {OUT}")


if __name__ == "__main__":
    main()
