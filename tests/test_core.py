"""Construction, attributes, repr, validation and immutability of Sparse3D."""

import copy
import pickle

import numpy as np
import pytest

from sparse3d import DenseAllocationError, Sparse3D, set_options
from sparse3d.testing import assert_equal_dense, dense_reference, random_scene


def test_attributes_match_dense_reference(scene):
    S = scene.build()
    dense = scene.dense()
    H, W = scene.imshape
    n = scene.data.shape[2]
    assert S.shape == (H, W, n) == dense.shape
    assert S.ndim == 3
    assert S.dtype == scene.data.dtype
    assert len(S) == n
    assert S.imshape == scene.imshape
    assert S.imcorner == scene.imcorner
    assert S.stamp_shape == scene.data.shape
    assert S.size == dense.size
    assert S.nnz == int(S.in_image.sum())
    assert_equal_dense(S, dense)


def test_nnz_counts_in_image_elements_only():
    R, C = np.mgrid[:2, :2]
    row = R[:, :, None] + np.array([0, 4, -1])
    col = C[:, :, None] + np.array([0, 4, 0])
    S = Sparse3D(np.ones((2, 2, 3)), row, col, imshape=(5, 5))
    # source 0 fully in, source 1 has 1 pixel in (4,4), source 2 has 2 pixels in (row 0)
    assert S.nnz == 4 + 1 + 2


def test_repr_is_the_tutorials():
    S = random_scene(0, imshape=(1024, 1024), nsources=3).build()
    assert repr(S) == "<(1024, 1024, 3) Sparse3D array of type float64>"
    html = S._repr_html_()
    for word in ("shape", "dtype", "nnz", "stamp shape", "memory", "image rows"):
        assert word in html


def test_broadcast_positions_and_integer_valued_floats():
    R, C = np.mgrid[:3, :3]
    rint = np.array([1, 5])
    S1 = Sparse3D(np.ones((3, 3, 2)), R[:, :, None] + rint, C[:, :, None] + 2, imshape=(10, 10))
    S2 = Sparse3D(np.ones((3, 3, 2)), (R[:, :, None] + rint).astype(float), (C[:, :, None] + 2.0), (10, 10))
    assert np.array_equal(S1.todense(), S2.todense())
    assert S1.row.shape == (3, 3, 2)


def test_inputs_are_not_mutated_or_aliased(scene):
    data, row, col = scene.data.copy(), scene.row.copy(), scene.col.copy()
    S = Sparse3D(data, row, col, scene.imshape, scene.imcorner)
    before = S.todense()
    _ = np.exp(S) + S * 2
    assert np.array_equal(data, scene.data) and np.array_equal(row, scene.row)
    data[...] = 99
    row[...] = -1000
    np.testing.assert_array_equal(S.todense(), before)
    assert not S.data.flags.writeable and not S.row.flags.writeable
    with pytest.raises(ValueError):
        S.data[0, 0, 0] = 1


def test_same_positions_share_structure_and_mutation_is_detected():
    sc = random_scene(3)
    X = Sparse3D(sc.data, sc.row, sc.col, sc.imshape)
    Y = Sparse3D(sc.data * 2, sc.row, sc.col, sc.imshape)
    assert X._structure is Y._structure
    row = sc.row.copy()
    A = Sparse3D(sc.data, row, sc.col, sc.imshape)
    row += 1  # same object, new contents: must not reuse the old structure
    B = Sparse3D(sc.data, row, sc.col, sc.imshape)
    assert not np.array_equal(A.row, B.row)
    # equal but distinct position arrays combine (compared, not identical)
    Z = Sparse3D(sc.data, sc.row.copy(), sc.col.copy(), sc.imshape)
    assert_equal_dense(X + Z, sc.dense(sc.data * 2))


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        (dict(data=np.ones((3, 3))), ValueError, ["data", "3-D"]),
        (dict(data=np.ones((3, 3, 2, 1))), ValueError, ["data", "3-D"]),
        (dict(data=np.array([["a"]] * 3)), TypeError, ["data"]),
        (dict(row=np.zeros((3, 3, 5))), ValueError, ["row", "broadcast"]),
        (dict(col=np.zeros((2, 3, 2))), ValueError, ["col", "broadcast"]),
        (dict(row=np.full((3, 3, 2), 1.5)), ValueError, ["row", "fractional"]),
        (dict(col=np.full((3, 3, 2), np.nan)), ValueError, ["col", "NaN"]),
        (dict(row=np.full((3, 3, 2), True)), TypeError, ["row", "integer"]),
        (dict(imshape=(0, 5)), ValueError, ["imshape", "positive"]),
        (dict(imshape=(5,)), ValueError, ["imshape"]),
        (dict(imshape=(5.5, 5)), ValueError, ["imshape", "integer"]),
        (dict(imshape=5), TypeError, ["imshape"]),
        (dict(imcorner=(0.5, 0)), ValueError, ["imcorner"]),
    ],
)
def test_bad_input_errors_name_the_argument(kwargs, err, words):
    args = dict(data=np.ones((3, 3, 2)), row=np.zeros((3, 3, 2)), col=np.zeros((3, 3, 2)), imshape=(5, 5))
    args.update(kwargs)
    with pytest.raises(err) as info:
        Sparse3D(**args)
    for w in words:
        assert w in str(info.value)


def test_todense_guard_and_asarray_refusal():
    S = random_scene(0, imshape=(4000, 4000), nsources=50).build()
    with pytest.raises(DenseAllocationError, match="todense"):
        S.todense()
    with pytest.raises(TypeError, match="todense"):
        np.asarray(S)
    with set_options(max_dense_bytes=10):
        with pytest.raises(DenseAllocationError, match="max_dense_bytes"):
            random_scene(0).build().todense()
    assert random_scene(0).build().todense(force=False).shape == (13, 17, 6)


def test_pickle_copy_deepcopy_hash(scene):
    S = scene.build()
    S.tocsr()  # populate caches; they must not travel
    T = pickle.loads(pickle.dumps(S))
    assert "_csr" not in T.__dict__
    assert_equal_dense(T, scene.dense())
    assert T.imcorner == S.imcorner and T.stamp_shape == S.stamp_shape
    D = copy.deepcopy(S)
    assert_equal_dense(D, scene.dense())
    assert copy.copy(S) is S
    with pytest.raises(TypeError):
        hash(S)


def test_inplace_operators_rebind_and_do_not_mutate():
    sc = random_scene(5)
    S = sc.build()
    alias = S
    S += 1
    S *= 2
    assert_equal_dense(alias, sc.dense())
    assert_equal_dense(S, sc.dense((sc.data + 1) * 2))


def test_translate_is_pure_and_reversible(scene):
    S = scene.build()
    T = S.translate((3, -2))
    expected = scene.dense()  # unchanged
    assert_equal_dense(S, expected)
    moved = Sparse3D(scene.data, scene.row + 3, scene.col - 2, scene.imshape, scene.imcorner)
    assert_equal_dense(T, moved.todense())
    big = S.translate((1000, 1000))
    assert big.nnz == 0
    assert_equal_dense(big.translate((-1000, -1000)), expected)
    # a ufunc result translates with its own values (1.x reverted to the pre-ufunc ones)
    ref = dense_reference(np.exp(scene.data), scene.row + 3, scene.col - 2, scene.imshape, scene.imcorner)
    assert_equal_dense(np.exp(S).translate((3, -2)), ref)


def test_with_data_and_errors():
    sc = random_scene(2)
    S = sc.build()
    assert_equal_dense(S.with_data(sc.data * 3), sc.dense(sc.data * 3))
    with pytest.raises(ValueError, match="stamp shape"):
        S.with_data(np.ones((2, 2, 2)))


def test_iteration_and_truth_are_refused():
    S = random_scene(0).build()
    with pytest.raises(TypeError, match="iterable"):
        iter(S)
    with pytest.raises(ValueError, match="ambiguous"):
        bool(S)


def test_huge_image_works_without_image_sized_allocation():
    R, C = np.mgrid[:4, :4]
    row = R[:, :, None] + np.array([10, 59_990, 30_000])
    col = C[:, :, None] + np.array([10, 59_990, 45_000])
    data = np.arange(48, dtype=float).reshape(4, 4, 3) + 1
    S = Sparse3D(data, row, col, imshape=(60_000, 60_000))
    assert S.nnz == 16 + 16 + 16
    csc = S.tocsc()
    assert csc.shape == (60_000 * 60_000, 3) and csc.indices.dtype == np.int64
    coo = S.tocoo()
    assert coo.row.max() == 59_993 * 60_000 + 59_993
    sp = S.to_sparse()
    assert sp.shape == (60_000, 60_000, 3) and sp.nnz == 48
    assert sp[10, 10, 0] == 1
    cut = S[29_990:30_010, 44_995:45_010]
    assert cut.imshape == (20, 15) and cut.imcorner == (29_990, 44_995)
    np.testing.assert_array_equal(cut.dot(np.ones(3)), cut.todense().sum(axis=2))
    with pytest.raises(DenseAllocationError, match="GiB"):
        S.dot(np.ones(3))
    with pytest.raises(DenseAllocationError, match="CSR"):
        S.tocsr()
    proj = np.tensordot(S[0:20, 0:20], np.ones((20, 20)), axes=([0, 1], [0, 1]))
    np.testing.assert_allclose(proj, [data[:, :, 0].sum(), 0, 0])
    T = S.translate((-10, -10))
    assert T.nnz == 48 and T.to_sparse()[0, 0, 0] == 1
