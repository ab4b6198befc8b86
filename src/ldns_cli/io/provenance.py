"""Deterministic file identity: same data and settings -> same identifier and timestamps.

`ldns sample --seed S` must give the same file twice. Wall-clock times and random UUIDs would
break that, so generated files carry:
- a reference time: `SOURCE_DATE_EPOCH` (the reproducible-builds convention) when set; else, for
  synthetic data (which has no recording session), the fixed time 2000-01-01T00:00:00Z; else now;
- an identifier derived from the content (a UUID5 of a hash of counts, lengths and settings),
  and NWB's per-object `object_id`s derived from it and each object's place in the file: unique
  across files of different content (as the NWB standard intends), equal for equal content.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.core.paths import check_interrupt

if TYPE_CHECKING:
    from ldns_cli.io.scratch import StoredSpikes

SYNTHETIC_REFERENCE_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
_HASH_BLOCK = 1 << 20  # counts hashed at a time
_NAMESPACE = uuid.UUID("5c1d8a8e-6f0a-4c55-9a57-2b1f3f6c8d10")


def reference_time(synthetic: bool) -> datetime:
    """The time stamped into a written file (see module docstring)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.strip().isdigit():
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    if synthetic:
        return SYNTHETIC_REFERENCE_TIME
    return datetime.now(timezone.utc).replace(microsecond=0)


def fix_object_ids(root: Any, identifier: str) -> None:
    """Give `root` (an hdmf container, e.g. an `NWBFile`) and every object under it an id derived
    from `identifier` and its place in the tree, instead of hdmf's random `uuid4()`.

    hdmf offers no public way to set an id on a new object; it keeps it in the private
    `_AbstractContainer__object_id`. If a future hdmf drops that attribute the ids stay random
    (the file is still valid; only byte-identity is lost, which tests/test_robustness.py checks).
    """
    for index, obj in enumerate([root, *root.all_children()[1:]]):
        if hasattr(obj, "_AbstractContainer__object_id"):
            name = f"{identifier}/{index}/{type(obj).__name__}/{getattr(obj, 'name', '')}"
            obj._AbstractContainer__object_id = str(uuid.uuid5(_NAMESPACE, name))


def content_identifier(
    data: SpikeData | StoredSpikes, settings: dict[str, str] | None = None
) -> str:
    """A UUID5 naming the content: equal for equal counts, lengths, bin size and settings.

    The counts are hashed a block of trials at a time (the same bytes as the whole array), so
    on-disk counts (`scratch.StoredSpikes`) never need to fit in memory.
    """
    h = hashlib.sha256()
    counts = data.counts
    n_trials = counts.shape[0]
    step = max(1, _HASH_BLOCK // max(1, int(np.prod(counts.shape[1:]))))
    for start in range(0, n_trials, step):
        check_interrupt()
        h.update(np.ascontiguousarray(counts[start : start + step]).reshape(-1).view(np.uint8))
    h.update(np.ascontiguousarray(data.lengths).tobytes())
    h.update(repr(data.bin_size_s).encode())
    for key in sorted(settings or {}):
        h.update(f"{key}={settings[key]}\n".encode())
    return str(uuid.uuid5(_NAMESPACE, h.hexdigest()))
