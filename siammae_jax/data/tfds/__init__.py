"""TFDS builders of the project: importing this package registers them.

* ``video_folder``: pre-training videos from a folder tree (Apache Beam);
  see :mod:`siammae_jax.data.tfds.video_folder`.

``tfds build`` finds them with ``--imports siammae_jax.data.tfds``.
"""

from siammae_jax.data.tfds.video_folder import VideoFolder, VideoFolderConfig

__all__ = ["VideoFolder", "VideoFolderConfig"]
