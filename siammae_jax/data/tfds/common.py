"""What the package's TFDS builders share: the array_record default, the
manual directory's check, the Beam map over a split's items."""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

FILE_FORMAT = "array_record"  # random access: tfds.data_source and grain


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder that writes array_record files unless told another format.

    Subclasses give ``_features()`` (the ``FeaturesDict`` contents) and
    ``HOMEPAGE``; the description is the first line of their docstring.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    HOMEPAGE = ""

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)

    def _features(self) -> dict:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(self.__doc__ or "").split("\n")[0],
            features=tfds.features.FeaturesDict(self._features()),
            homepage=self.HOMEPAGE,
        )


def manual_root(dl_manager: tfds.download.DownloadManager, instructions: str):
    """The manual directory, or FileNotFoundError with the instructions."""
    root = epath.Path(dl_manager.manual_dir)
    if not root.exists():
        raise FileNotFoundError(f"--manual_dir {root} does not exist.\n{instructions}")
    return root


def beam_map(items: list, fn):
    """A Beam transform for ``_generate_examples``: ``items`` spread over the
    workers, each mapped by ``fn`` (picklable) to one ``(key, example)``."""
    beam = tfds.core.lazy_imports.apache_beam

    def expand(pipeline):
        return (
            pipeline
            | "list" >> beam.Create(items)
            | "spread" >> beam.Reshuffle()
            | "read" >> beam.Map(fn)
        )

    return beam.ptransform_fn(expand)()
