"""Builds the one C extension (tabfill/kernels/_quant: CPU kernels over GGUF-quantized weights).

The kernels take raw pointers (called through ctypes), so the build needs only a C compiler: not torch,
not Python headers. The extension is optional: without a compiler the install still succeeds, and
quantize "gguf" falls back to dequantized fp32 weights with a warning (see tabfill/kernels/quant.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tabfill.kernels._quant",
            sources=["csrc/quant.c"],
            depends=["csrc/tiles.h"],  # included by quant.c once per instruction set
            extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fvisibility=default"],
            extra_link_args=["-pthread", "-lm"],
            optional=True,
        )
    ]
)
