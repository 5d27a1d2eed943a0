"""ofa-el: Encouraging Loss finetuning for OFA-style models, as a fairseq user-dir plugin.

Importing the package (``import ofa_el`` or ``fairseq-train --user-dir <repo root>``)
registers the criteria, tasks and models with fairseq and installs the safe checkpoint
loader. Without fairseq only the torch-only parts (``ofa_el.losses``, the loss math)
are usable.
"""
import os
import sys

__version__ = "0.1.0"
#: This package's folder: what ``--user-dir`` names, and in a clone the repository root (configs/, run_scripts/).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _reuse_copy_loaded_under_another_name() -> bool:
    """fairseq imports a user-dir under its folder name (e.g. ``ofa-el``); if this same folder
    is already loaded as another package (e.g. the installed ``ofa_el``), become that module,
    submodules included, instead of registering every component with fairseq a second time."""
    here = os.path.abspath(__file__)
    for name, module in list(sys.modules.items()):
        if name == __name__ or "." in name or os.path.abspath(getattr(module, "__file__", "") or "") != here:
            continue
        for sub_name, sub_module in list(sys.modules.items()):
            if sub_name.startswith(name + "."):
                sys.modules[__name__ + sub_name[len(name):]] = sub_module
        sys.modules[__name__] = module
        return True
    return False


def claim_folder_name() -> None:
    """Make fairseq's ``--user-dir <this folder>`` find this already-loaded package.

    fairseq imports a user-dir as ``import <folder name>``, which fails for a folder whose name holds a dot (a clone in
    ``/tmp/tmp.Ab3.x``, ``ofa-el-0.1``) and loads a second copy otherwise. The plugin's entry points, which run as
    ``python -m ofa_el.tools...``, call this before fairseq reads ``--user-dir``; a name already taken by another
    module is left alone."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
    if folder != __name__:
        sys.modules.setdefault(folder, sys.modules[__name__])


if not _reuse_copy_loaded_under_another_name():
    try:
        import fairseq  # noqa: F401
    except ImportError:  # torch-only use: losses and loss math stay importable
        pass
    else:
        from . import checkpoint_safety  # noqa: F401  (allow-lists the types fairseq checkpoints hold)
        from . import ema_compat  # noqa: F401  (stock fairseq's --store-ema on OFA models, as OFA's EMA)
        from . import criterions, models, schedulers, tasks  # noqa: F401  (fairseq registries)
