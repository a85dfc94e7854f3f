import sys

from borg_cyrus.cli import main

sys.exit(main())
