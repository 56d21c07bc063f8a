"""The example project's settings with the hand-written floor views mounted too."""

from example_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor"
