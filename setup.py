"""Packaging for siammae_jax (setuptools)."""

from setuptools import find_packages, setup

BEAM = ["apache-beam>=2.77", "mlcroissant>=1.0"]

setup(
    name="siammae_jax",
    version="0.1.0",
    description="Siamese Masked Autoencoders (SiamMAE) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["siammae_jax", "siammae_jax.*"]),
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.8",  # nnx.List, eager_sharding metadata
        "optax>=0.2.8",
        "numpy>=2.0",
        "absl-py>=2.1",
        "grain>=0.2.18",
        "array_record>=0.8",
        "av>=14.0",
        "pillow>=10.0",
        "scipy>=1.11",  # .mat files (JHMDB layout)
        "scikit-image>=0.22",  # bundled photographs: synthetic textures
        "etils[epath]>=1.7",
        "msgpack>=1.0",
        "tqdm>=4.66",
        "safetensors>=0.4",  # numpy API: encoder exports without torch
        "ml_collections>=1.0",
        "orbax-checkpoint>=0.12.8",
        "clu>=0.0.12",
        # clu.metric_writers imports TensorFlow; the CPU build never grabs GPUs.
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",  # clu's summary writer; not pulled in by tensorflow-cpu
        # Named datasets (siammae_jax.data.tfds), read without TensorFlow; TFDS's
        # builder code imports importlib_resources, which it does not require.
        "tensorflow-datasets>=4.9.10",
        "importlib_resources>=6.0",
    ],
    extras_require={
        # Preparing datasets with the package's TFDS builders (`tfds build`):
        # Apache Beam, and mlcroissant, which the `tfds` command line imports.
        "beam": BEAM,
        "test": [
            *BEAM,
            "pytest>=8.0",
            "pytest-xdist>=3.6",  # `make test` runs on 2 workers
            "ruff>=0.17,<0.18",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        # Mutation testing (`make mutation`, benchmarks/mutation.py); not in CI.
        "mutation": ["mutmut==3.8.1"],
        # PyTorch/timm interop tests (`make test-interop`); never needed by the core.
        "torch": ["torch==2.14.1", "torchvision==0.29.1", "timm>=1.0"],
    },
)
