"""Launch Suave or Daino training locally (torchrun) or on Slurm: see common/launcher.py.

    python job_launcher.py --mode local --method suave --script_file suave/scripts/cpu_demo.sh

Installed, the same command is ``suave-daino-launch``. Run, it is ``registry.launch_console``
(the body with the registry's methods handed in). Imported, this name *is*
:mod:`common.launcher` (one module, so monkeypatching ``job_launcher.ROOT`` reaches the code).
"""

import sys

from common import launcher as _launcher

if __name__ == "__main__":
    from registry import launch_console

    launch_console()
else:
    sys.modules[__name__] = _launcher
