import sys

from prefixtune.cli import main

sys.exit(main())
