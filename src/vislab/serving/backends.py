"""Which queue a lab server uses: worker processes on this machine, or a Ray cluster when an address is set.

Apart from `vislab.serving.localqueue` and `vislab.serving.rayqueue` (which imports ray), so ray is imported
only when a cluster is named.
"""

from __future__ import annotations

import os

from vislab.serving.jobqueue import Queue
from vislab.serving.jobs import JobError
from vislab.serving.localqueue import LocalQueue


def make_queue(ray_address: str | None = None) -> Queue:
    """The server's queue: on the Ray cluster at `ray_address` or VISLAB_RAY_ADDRESS when one is set
    (vislab.serving.rayqueue, which needs the `ray` extra), else a LocalQueue. Ray is imported only then."""
    ray_address = ray_address or os.environ.get("VISLAB_RAY_ADDRESS")
    if not ray_address:
        return LocalQueue(spares=os.environ.get("VISLAB_SPARE_WORKERS", "1") != "0")
    try:
        from vislab.serving import rayqueue  # ray: an optional dependency, imported only for a cluster
    except ImportError:
        raise JobError("VISLAB_RAY_ADDRESS is set but ray is not installed: pip install 'vislab[ray]', "
                       "or unset it to train on this server") from None
    return rayqueue.RayQueue(addr=ray_address)
