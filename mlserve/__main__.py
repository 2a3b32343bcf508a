import sys

from mlserve.cli import main

sys.exit(main())
