"""Registered offline datasets for every model family's task beyond image/text classification.

Each module builds on data that ships in a package or is generated on this machine (nothing is
downloaded): byte-level language modelling and question -> answer pairs from chatterbot-corpus
(:mod:`.text`), spoken digit sequences with character transcripts for CTC (:mod:`.speech`), digit
masks, reconstructions and captions from MNIST (:mod:`.vision`), point clouds and pixel graphs of
digits (:mod:`.structured`) and a chaotic time series to forecast (:mod:`.series`).
"""

from deepseek.data.tasks import series, speech, structured, text, vision  # noqa: F401  (register the datasets)
