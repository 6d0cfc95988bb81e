import sys

from ._extra import missing_reid_packages, reid_extra_message

if missing := missing_reid_packages():
    sys.exit(reid_extra_message(missing))

from .cli import main

sys.exit(main())
