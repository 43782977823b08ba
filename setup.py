"""The optional C extension; everything else about the package is in pyproject.toml.

`serve.protocol._jsonnum` parses image-sized numeric JSON tensors straight into arrays
(serve/protocol/_jsonnum.c). It needs a C compiler and the Python headers at build time; where
they are missing the build goes on without it and the server uses the pysimdjson path instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "serve.protocol._jsonnum",
            ["serve/protocol/_jsonnum.c"],
            depends=["serve/protocol/_jsonnum_pow5.h"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
