import sys

from model_poller_operator.main import main

sys.exit(main())
