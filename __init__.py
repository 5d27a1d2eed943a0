"""ofa-el: Encouraging Loss finetuning for OFA-style models, as a fairseq user-dir plugin.

Importing the package (``import ofa_el`` or ``fairseq-train --user-dir <repo root>``)
registers the criteria, tasks and models with fairseq and installs the safe checkpoint
loader. Without fairseq only the torch-only parts (``ofa_el.losses``, the loss math)
are usable.
"""
__version__ = "0.1.0"

try:
    import fairseq  # noqa: F401
except ImportError:  # torch-only use: losses and loss math stay importable
    _HAVE_FAIRSEQ = False
else:
    _HAVE_FAIRSEQ = True

if _HAVE_FAIRSEQ:
    from . import checkpoint_safety  # noqa: F401  (allow-lists the types fairseq checkpoints hold)
    from . import criterions, models, tasks  # noqa: F401  (fairseq registries)
