"""Builds ``silverrec._C``: the C++ CPU kernels of ``torch.ops.silverrec``.

Every ``silverrec/ops/csrc/*.cpp`` is one translation unit of one extension (compiling a
file against the torch headers takes about a minute on 2 cores, so keep them few).
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = sorted(
    os.path.relpath(p, _HERE) for p in glob.glob(os.path.join(_HERE, "silverrec", "ops", "csrc", "*.cpp"))
)

setup(
    ext_modules=[
        CppExtension(
            name="silverrec._C",
            sources=_SOURCES,
            extra_compile_args=["-O3", "-mavx2", "-mfma", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
