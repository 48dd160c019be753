"""Crash-safe HDF5 episode store: one file per episode, written step by step on the robot host.

Real-robot episodes are the most expensive data a lab has, so the store is built so that no
failure loses one:

- An episode is written to ``<episode_id>.partial.h5`` while it runs. Every ``append`` writes one
  observation (frame, state, timestamp, seq) and the action executed after it, bumps the commit
  counters ``num_observations`` / ``num_actions``, flushes HDF5's caches and fsyncs, so a killed
  station (or a power cut) leaves every completed step readable.
- ``finish`` / ``abort`` write the labels and a content checksum, fsync, close, and only then
  rename the file to ``<episode_id>.h5`` (and fsync the folder). The rename is the commit: a
  file named ``<episode_id>.h5`` is always complete.
- ``recover_partials`` (run at station start-up) renames a leftover partial file to
  ``<id>.crashed.h5`` (readable, termination ``station_crashed``) or ``<id>.corrupt.h5`` (HDF5
  cannot open it), each with a JSON note beside it. Their bytes are never modified and they are
  never listed as complete.
- Write failures (disk full, file-size limit, I/O errors) raise ``EpisodeWriteError`` naming the
  file; what was already written stays on disk.

The package, by job: ``schema`` (file layout, names, labels, ``EpisodeMeta``, ``Episode``),
``writer`` (``EpisodeWriter``), ``reader`` (``read_episode``, ``read_episode_header``,
``list_episodes``, ``list_corrupt``), ``validate`` (``validate_episode``, ``recover_partials``) and
``summary`` (``summarize``, ``format_summary``). Import from the package: ``from
robot_bridge.episodes import EpisodeWriter``. The command line is ``gymnast episodes
list|validate|recover|export``.

This package runs on the robot host: it imports only numpy, h5py and the standard library (plus
``robot_bridge.spec``, which is numpy-only).
"""

from robot_bridge.episodes.reader import (
    list_corrupt,
    list_episodes,
    read_episode,
    read_episode_header,
)
from robot_bridge.episodes.schema import (
    ABORT_TERMINATIONS,
    COMPLETE_SUFFIX,
    CORRUPT_SUFFIX,
    CRASHED_SUFFIX,
    PARTIAL_SUFFIX,
    SCHEMA_VERSION,
    SUCCESS_SOURCES,
    TERMINATIONS,
    UNFINISHED,
    Episode,
    EpisodeHeader,
    EpisodeMeta,
    EpisodeReadError,
    EpisodeWriteError,
    episode_id_of,
)
from robot_bridge.episodes.summary import format_summary, summarize
from robot_bridge.episodes.validate import recover_partials, validate_episode
from robot_bridge.episodes.writer import EpisodeWriter

__all__ = [
    "ABORT_TERMINATIONS",
    "COMPLETE_SUFFIX",
    "CORRUPT_SUFFIX",
    "CRASHED_SUFFIX",
    "PARTIAL_SUFFIX",
    "SCHEMA_VERSION",
    "SUCCESS_SOURCES",
    "TERMINATIONS",
    "UNFINISHED",
    "Episode",
    "EpisodeHeader",
    "EpisodeMeta",
    "EpisodeReadError",
    "EpisodeWriteError",
    "EpisodeWriter",
    "episode_id_of",
    "format_summary",
    "list_corrupt",
    "list_episodes",
    "read_episode",
    "read_episode_header",
    "recover_partials",
    "summarize",
    "validate_episode",
]
