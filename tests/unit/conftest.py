"""The unit tier: no root, no Cyrus, no borg; seconds. Runs as any user."""

import os

from hypothesis import settings
from hypothesis.database import InMemoryExampleDatabase

from support.common import ROOT

if not os.access(ROOT, os.W_OK):  # a read-only checkout (another user): keep examples in memory
    settings.register_profile("read-only", database=InMemoryExampleDatabase())
    settings.load_profile("read-only")
