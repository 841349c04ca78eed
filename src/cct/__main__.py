import os
import sys

from .cli import LAUNCHED, main

status = main()
if os.environ.get(LAUNCHED):
    # A rank of `cct train --nproc N` ends without Python's finalization: after an interrupt, gloo's threads can
    # still hold the tensors of the collective it cut short, and freeing them in a finalizing interpreter aborted
    # the rank ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
