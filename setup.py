"""Package discovery that pyproject.toml cannot express alone.

The top-level ``kernels/`` directory is installed as ``scforge.kernels`` (a PyPI distribution
named ``kernels`` exists, so a bare top-level ``kernels`` package would shadow or be shadowed).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["scforge", "scforge.*"]), "scforge.kernels"],
    package_dir={"scforge.kernels": "kernels"},
)
