"""ssl_jax: self-supervised image representation learning in JAX and Flax."""
from setuptools import find_packages, setup

setup(
    name="ssl_jax",
    version="0.1.0",
    description="Thirteen self-supervised image representation methods in JAX and Flax.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ssl_jax", "ssl_jax.*"]),
    package_data={"ssl_jax.data": ["quickstart_cifar10.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
        "tensorflow>=2.16; platform_machine!='x86_64'",
        "tensorboard",
        "tensorflow-datasets>=4.9",
        "ml-collections>=0.1.1",
        "clu>=0.0.12",
        "numpy",
        "pillow",
        "matplotlib",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout", "pytest-xdist", "nbclient", "nbformat", "ipykernel"],
                    # python -m ssl_jax.convert: the originals' released PyTorch checkpoints
                    "convert": ["torch==2.13.0"]},
)
