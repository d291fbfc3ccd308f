"""What users call explicitly under ``torch.distributed``: training helpers and sharded mask checkpoints.

The tree API (``prune``, ``global_unstructured``, ...) takes DTensor leaves as they are; this module
holds the functions that only make sense with a process group. See docs/distributed.md.
"""

# --- sharded mask checkpoints (torch.distributed.checkpoint) ---
from ._dcp import load_masks_dcp, save_masks_dcp  # noqa: E402,F401
