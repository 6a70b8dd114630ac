"""TFDS builders of the project: importing this package registers them.

* ``video_folder``: pre-training videos from a folder tree, prepared with
  Apache Beam (:mod:`siammae_jax.data.tfds.video_folder`);
* ``jhmdb`` and ``vip``: the evaluation benchmarks from their official layouts
  (:mod:`~siammae_jax.data.tfds.jhmdb`, :mod:`~siammae_jax.data.tfds.vip`);
  DAVIS-2017 is the TFDS catalog's ``davis`` builder.

``tfds build`` finds them with ``--imports siammae_jax.data.tfds``; every
dataset is written in the array_record format unless told otherwise, so
``tfds.data_source`` (and grain) read it without TensorFlow.
"""

from siammae_jax.data.tfds.jhmdb import Jhmdb, JhmdbConfig
from siammae_jax.data.tfds.video_folder import VideoFolder, VideoFolderConfig
from siammae_jax.data.tfds.vip import Vip

__all__ = ["Jhmdb", "JhmdbConfig", "VideoFolder", "VideoFolderConfig", "Vip"]
