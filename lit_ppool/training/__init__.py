"""Training: the LightningModule, datamodules, metrics, callbacks and plugins behind ``lit-ppool``.

The public names are listed once, in :mod:`lit_ppool` (``from lit_ppool import PPoolSegmentationModule``);
each is defined in a module of this package (:mod:`.module`, :mod:`.data`, :mod:`.metrics`,
:mod:`.callbacks`, :mod:`.plugins`, :mod:`.faults`, :mod:`.errors`, ...).
"""
