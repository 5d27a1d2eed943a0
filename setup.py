"""Install ofa-el so that it imports as ``ofa_el``.

The repository root is itself the fairseq user-dir (``--user-dir <repo>``), so the
root directory is mapped onto the ``ofa_el`` package; its sub-packages (criterions,
tasks, models, ...) are installed as ``ofa_el.criterions`` etc. and never as generic
top-level names in site-packages.
"""
import os

from setuptools import find_packages, setup

#: Directories at the root that are not part of the importable package.
NOT_INSTALLED = ["tests", "tests.*", "benchmarks", "benchmarks.*", "experiments", "experiments.*", "build",
                 "build.*"]
SUBPACKAGES = find_packages(where=os.path.dirname(os.path.abspath(__file__)) or ".", exclude=NOT_INSTALLED)

setup(
    name="ofa-el",
    version="0.1.0",
    description="Encouraging Loss finetuning for OFA-style vision-language models, as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.8",
    packages=["ofa_el"] + [f"ofa_el.{name}" for name in SUBPACKAGES],
    package_dir={"ofa_el": "."},
    # the recipes and the run scripts that launch them travel with the package (`ofa-el recipes` lists both)
    package_data={"ofa_el": ["configs/*.yaml", "configs/*/*.yaml", "run_scripts/*.sh", "run_scripts/*/*.sh"]},
    entry_points={"console_scripts": ["ofa-el = ofa_el.tools.cli:entry_point"]},
    install_requires=[
        # torch is deliberately unpinned: users bring the build that matches their CUDA.
        "torch>=1.10",
        "numpy",
        "omegaconf",
        "hydra-core",
        "sacrebleu",
        "pillow",
        "pycocoevalcap",
        "pyyaml",
        # Official fairseq 0.12.2 does not import on Python >= 3.11; there, install the
        # ve-fairseq wheel with --no-deps (see README.md), which imports as `fairseq`.
        "fairseq==0.12.2; python_version < '3.11'",
    ],
)
