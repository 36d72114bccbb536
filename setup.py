"""Installs the megaproc trainer and the data_tools preparation package."""

from setuptools import find_packages, setup

setup(
    name="megaproc",
    version="0.1.0",
    description="DeepSpeed training engine for procedural pre-pretraining research",
    packages=find_packages(include=["megaproc", "megaproc.*", "data_tools", "data_tools.*"]),
    python_requires=">=3.10",
    # torch is installed by scripts/setup_env.sh first (CPU 2.13.0 here, an existing CUDA build
    # elsewhere is kept); the range below is satisfied by either, so pip installs nothing more.
    # The floors are what the code needs: transformers 5's config API (RoPE settings live in
    # ``rope_parameters``; a 4.x install would silently drop them from the presets), DeepSpeed
    # 0.19's universal-checkpoint loaders (re-sharding repairs are written against 0.19.8).
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.19",
        "transformers>=5.0,<6",
        "tokenizers>=0.19",
        "sentencepiece",
        "protobuf",                 # sentencepiece .model -> fast tokenizer conversion
        "datasets>=2.18",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm",
        "zstandard",
        "pyarrow",
        "psutil",
        "xxhash",  # checkpoint manifests (megaproc/checkpoint/manifest.py)
        "pyzipper",  # EWoK archives: ZipCrypto and WinZip-AES encrypted zips
    ],
    extras_require={
        "logging": ["tensorboard", "wandb", "matplotlib"],
        "test": ["pytest>=7", "tensorboard", "wandb", "matplotlib", "megatron-core==0.16.1",
                 "lm-eval>=0.4.13", "accelerate"],
    },
    entry_points={
        "console_scripts": [
            "megaproc-train=megaproc.train:main",
            "megaproc-export=megaproc.export:main",
            "megaproc-evaluate=megaproc.evaluate:main",
            "megaproc-pipeline=megaproc.pipeline:main",
            "megaproc-plot=megaproc.plot:main",
            "megaproc-sweep=megaproc.sweep:main",
            "megaproc-plan=megaproc.plan:main",
        ]
    },
)
