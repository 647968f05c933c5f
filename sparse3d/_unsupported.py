"""The NumPy functions Sparse3D deliberately does not implement, each with the way out.

Every overridable NumPy function is either registered in ``HANDLED_FUNCTIONS``
(:mod:`sparse3d._functions`) or listed here; ``tests/test_functions.py`` checks that against
``numpy.testing.overrides.get_overridable_numpy_array_functions()``, so a NumPy release
that adds a function makes the test fail until it is classified.
"""

from __future__ import annotations

__all__ = ["UNSUPPORTED_FUNCTIONS", "function_key"]


def function_key(func) -> str:
    """``'module.name'`` of a NumPy function, e.g. ``'numpy.linalg.solve'``."""
    return f"{func.__module__}.{func.__name__}"


_GROUPS: dict[str, str] = {
    # reason -> space-separated names (``numpy.`` prefix implied unless a module is given)
    "a shape or layout change has no stamp structure; convert with S.to_sparse() (a sparse.COO) "
    "or work on the stamp block S.data": """
        append apply_along_axis apply_over_axes array_split atleast_1d atleast_2d atleast_3d block
        broadcast_arrays broadcast_to column_stack delete diag diagflat diagonal dsplit dstack
        expand_dims flip fliplr flipud hsplit hstack insert matrix_transpose moveaxis pad ravel
        repeat reshape resize roll rollaxis rot90 split squeeze swapaxes tile trace unstack vsplit
        vstack numpy.lib.stride_tricks.sliding_window_view
    """,
    "array creation and conversion to ndarray would densify; use S.todense() on a cutout": """
        arange array asanyarray asarray ascontiguousarray asfortranarray astype empty eye frombuffer
        fromfile fromfunction fromiter fromstring full genfromtxt geomspace identity linspace loadtxt
        logspace ones require tri zeros copyto may_share_memory shares_memory
    """,
    "sorting, searching, set operations and order statistics need every implicit zero; use "
    "S.to_sparse() or S.todense() on a cutout": """
        argmax argmin argpartition argsort argwhere digitize flatnonzero intersect1d isin lexsort
        nanargmax nanargmin partition searchsorted setdiff1d setxor1d sort sort_complex union1d unique
        unique_all unique_counts unique_inverse unique_values median nanmedian percentile nanpercentile
        quantile nanquantile
    """,
    "statistics and cumulative operations are not implemented with stamp semantics; use np.sum / "
    "np.mean / np.max along an axis, or S.to_sparse()": """
        average cov corrcoef cumprod cumsum cumulative_prod cumulative_sum diff ediff1d
        histogram histogram2d histogram_bin_edges histogramdd bincount nancumprod nancumsum nanprod
        nanstd nanvar ptp std var trapezoid interp unwrap
    """,
    "index-array helpers are not implemented; index with S[...] or use S.to_sparse()": """
        choose compress diag_indices_from extract fill_diagonal ix_ place put put_along_axis putmask
        ravel_multi_index select take take_along_axis tril tril_indices_from triu triu_indices_from
        unravel_index trim_zeros piecewise meshgrid
    """,
    "other products are not implemented; use S.dot(w), S @ w, np.tensordot(S, image, "
    "axes=([0, 1], [0, 1])) or S.tocsr()": """
        convolve correlate cross einsum_path inner kron outer vdot
    """,
    "linear algebra works on the 2-D design matrix: use S.tocsr() (shape (H*W, nsources)) with "
    "scipy.sparse.linalg": """
        numpy.linalg.cholesky numpy.linalg.cond numpy.linalg.cross numpy.linalg.det
        numpy.linalg.diagonal numpy.linalg.eig numpy.linalg.eigh numpy.linalg.eigvals
        numpy.linalg.eigvalsh numpy.linalg.inv numpy.linalg.lstsq numpy.linalg.matmul
        numpy.linalg.matrix_norm numpy.linalg.matrix_power numpy.linalg.matrix_rank
        numpy.linalg.matrix_transpose numpy.linalg.multi_dot numpy.linalg.norm numpy.linalg.outer
        numpy.linalg.pinv numpy.linalg.qr numpy.linalg.slogdet numpy.linalg.solve numpy.linalg.svd
        numpy.linalg.svdvals numpy.linalg.tensordot numpy.linalg.tensorinv numpy.linalg.tensorsolve
        numpy.linalg.trace numpy.linalg.vecdot numpy.linalg.vector_norm
    """,
    "saving and printing the dense array is not supported; save the stamp view "
    "(S.to_xarray(view='stamps').to_netcdf(...)) and use repr(S)": """
        save savetxt savez savez_compressed array2string array_repr array_str
    """,
    "polynomial, window, dtype and datetime helpers have no meaning for a Sparse3D; apply them to S.data": """
        poly polyadd polyder polydiv polyfit polyint polymul polysub polyval roots vander i0 sinc
        angle fix iscomplex isreal isneginf isposinf real_if_close common_type min_scalar_type
        can_cast packbits unpackbits busday_count busday_offset is_busday datetime_as_string
        array_equiv
    """,
    "the complex-valued numpy.lib.scimath variants are not supported; use the ufuncs (np.sqrt, "
    "np.log, …) on S, which act on the stamp values": """
        numpy.lib.scimath.arccos numpy.lib.scimath.arcsin numpy.lib.scimath.arctanh
        numpy.lib.scimath.log numpy.lib.scimath.log10 numpy.lib.scimath.log2 numpy.lib.scimath.logn
        numpy.lib.scimath.power numpy.lib.scimath.sqrt
    """,
    "FFTs need a dense image: make one with S.dot(w) or np.sum(S, axis=2), then use numpy.fft": """
        numpy.fft.fft numpy.fft.fft2 numpy.fft.fftn numpy.fft.fftshift numpy.fft.hfft numpy.fft.ifft
        numpy.fft.ifft2 numpy.fft.ifftn numpy.fft.ifftshift numpy.fft.ihfft numpy.fft.irfft
        numpy.fft.irfft2 numpy.fft.irfftn numpy.fft.rfft numpy.fft.rfft2 numpy.fft.rfftn
    """,
    "2-D polynomial evaluation has no meaning for a Sparse3D; apply it to S.data": """
        numpy.polynomial.polynomial.polygrid2d numpy.polynomial.polynomial.polyval2d
    """,
    "string functions do not apply to a numeric Sparse3D": """
        numpy.char.equal numpy.char.greater numpy.char.greater_equal numpy.char.less
        numpy.char.less_equal numpy.char.not_equal numpy.strings._join numpy.strings._rsplit
        numpy.strings._split numpy.strings._splitlines numpy.strings.capitalize numpy.strings.center
        numpy.strings.decode numpy.strings.encode numpy.strings.expandtabs numpy.strings.ljust
        numpy.strings.lower numpy.strings.mod numpy.strings.multiply numpy.strings.partition
        numpy.strings.replace numpy.strings.rjust numpy.strings.rpartition numpy.strings.swapcase
        numpy.strings.title numpy.strings.translate numpy.strings.upper numpy.strings.zfill
    """,
    "structured-array helpers do not apply to a numeric Sparse3D": """
        numpy.lib.recfunctions.append_fields numpy.lib.recfunctions.apply_along_fields
        numpy.lib.recfunctions.assign_fields_by_name numpy.lib.recfunctions.drop_fields
        numpy.lib.recfunctions.find_duplicates numpy.lib.recfunctions.join_by
        numpy.lib.recfunctions.merge_arrays numpy.lib.recfunctions.rec_append_fields
        numpy.lib.recfunctions.rec_drop_fields numpy.lib.recfunctions.rec_join
        numpy.lib.recfunctions.recursive_fill_fields numpy.lib.recfunctions.rename_fields
        numpy.lib.recfunctions.repack_fields numpy.lib.recfunctions.require_fields
        numpy.lib.recfunctions.stack_arrays numpy.lib.recfunctions.structured_to_unstructured
        numpy.lib.recfunctions.unstructured_to_structured
    """,
}

UNSUPPORTED_FUNCTIONS: dict[str, str] = {
    (name if name.startswith("numpy.") else f"numpy.{name}"): reason
    for reason, names in _GROUPS.items()
    for name in names.split()
}
