"""Where the tasks of a distributed scene fit run: a Dask cluster or this process."""

from __future__ import annotations

import dask
import numpy as np

from ._graph import _distributed_client, is_dask_array
from .tiles import _chunk_summary

#: Per-iteration vectors up to this many bytes in all travel inside the tasks, larger ones
#: are scattered first (Dask warns about task graphs above 10 MB).
_INLINE_BYTES = 4 * 2**20

def _call(method: str, obj, *args):
    return getattr(obj, method)(*args) if method != "summary" else _chunk_summary(obj)


class _Runner:
    """Where tasks run: a distributed cluster (results stay there as futures) or this process."""

    def __init__(self, client):
        self.client = client

    def persist(self, delayeds: list) -> list:
        """Compute ``delayeds`` and keep them where they were computed."""
        if self.client is None:
            return list(dask.compute(*delayeds))
        return self.client.compute(delayeds)

    def as_delayed(self, handle):
        return handle if self.client is None else dask.delayed(handle)

    def share(self, obj):
        """``obj`` as one graph key (scattered once to a cluster)."""
        if self.client is None or obj is None or np.ndim(obj) == 0:
            return obj
        return dask.delayed(self.client.scatter(obj, hash=False))

    def cut(self, image, sl):
        """``image[sl]``: a Dask array stays lazy (cut on the workers); a NumPy cut is scattered."""
        if image is None or is_dask_array(image):
            return None if image is None else image[sl]
        return self.share(np.ascontiguousarray(image[sl]))

    def map(self, method: str, objs: list, args: list | None = None) -> list:
        """``obj.method(arg)`` for every persisted ``obj`` (``args`` aligned): results, in order."""
        if self.client is None:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor() as pool:
                if args is None:
                    return list(pool.map(lambda o: _call(method, o), objs))
                return list(pool.map(lambda o, a: _call(method, o, a), objs, args))
        c = self.client
        names = [method] * len(objs)
        if args is None:
            futures = c.map(_call, names, objs, pure=False)
        else:
            # small arguments ride in the tasks (one round trip fewer); big ones are scattered
            if sum(getattr(a, "nbytes", 0) for a in args) > _INLINE_BYTES:
                args = c.scatter(args, hash=False)
            futures = c.map(_call, names, objs, args, pure=False)
        return c.gather(futures)


def _resolve_client(client):
    """``(client, close_after)`` from a Client, an address string or None (the default client)."""
    if client is None:
        return _distributed_client(), False
    if isinstance(client, str):
        from distributed import Client

        return Client(client, set_as_default=False), True
    if not hasattr(client, "gather") or not hasattr(client, "scatter"):
        raise TypeError(f"client must be a distributed.Client, a scheduler address or None; got {client!r}")
    return client, False
