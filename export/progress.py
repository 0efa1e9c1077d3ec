"""Progress of long work (an engine build takes 1–7 minutes at SD 1.5 size, static int8 calibration alone 3–7):
each stage printed as it starts and as it ends, with its time, on stderr.

    stages = Stages(quiet=False)
    with stages("unet: export to ONNX"):
        ...
    # rtcore export: unet: export to ONNX ...
    # rtcore export: unet: export to ONNX: 12.3 s
"""

import contextlib
import io
import sys
import time


class Stages:
    def __init__(self, quiet=False, prefix="rtcore export"):
        self.quiet, self.prefix = quiet, prefix

    def say(self, text):
        if not self.quiet:
            print(f"{self.prefix}: {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def __call__(self, what):
        """Times the block; when quiet, also swallows what libraries print to stdout inside it (NNCF's bars)."""
        if self.quiet:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
            return
        self.say(f"{what} ...")
        start = time.perf_counter()
        yield
        self.say(f"{what}: {time.perf_counter() - start:.1f} s")
