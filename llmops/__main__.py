import sys

from llmops.cli.main import main

sys.exit(main())
