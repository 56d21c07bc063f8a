"""Test settings: the example project's, with a fast password hasher.

PBKDF2 costs ~0.3 s per hash on purpose; factories hash a password for every user.
"""

from example_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
